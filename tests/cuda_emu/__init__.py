"""csrc/cuda/<family>_cuda.cu built as host C++ with the CUDA emulation (leo_cuda_emulate.h).

`emulated_ops("attention")` compiles tests/cuda_emu/attention_cuda_emu.cpp once (cached by
torch.utils.cpp_extension) and returns an object whose attributes are the family's compiled ops
without the leading underscore: `ops.temporal_attention_fwd(q, k, v, rope)` on CPU tensors.
`poisoned_outputs` is an autouse fixture for the emulated tests (import it into the test module).
"""
import pathlib

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
_LOADED: set = set()


class _EmulatedOps:
    def __init__(self, namespace):
        self._ns = namespace

    def __getattr__(self, name):
        return getattr(getattr(torch.ops, self._ns), "_" + name)


def emulated_ops(family: str):
    name = f"leo_{family}_cuda_emu"
    if name not in _LOADED:
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=name,
            sources=[str(HERE / f"{family}_cuda_emu.cpp")],
            extra_include_paths=[str(HERE)],
            extra_cflags=["-O1", "-std=c++20", "-w"],
            is_python_module=False,
            verbose=False,
        )
        _LOADED.add(name)
    return _EmulatedOps(name)



@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every CPU allocation during the test starts as 0xff bytes (NaN, or -1 for integers): the
    outputs the emulated kernels' host code allocates with at::empty are poisoned."""
    ops = emulated_ops("emulator")
    ops.poison_cpu_allocations(True)
    try:
        yield
    finally:
        ops.poison_cpu_allocations(False)
