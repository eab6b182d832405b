"""The CUDA emulation (tests/cuda_emu/leo_cuda_emulate.h) behaves like a GPU where the kernels rely on
it, and catches the mistakes docs/GPU.md says it catches: a missing __syncthreads, a barrier that
not all live threads reach, a shuffle from a lane that has exited. And the poisoning of CPU
allocations the emulated tests rely on."""
import importlib.util
import pathlib
import re

import pytest
import torch

from tests.cuda_emu import emulated_ops, poisoned_outputs  # noqa: F401 (autouse fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = sorted(p.name.removesuffix("_cuda.cu") for p in (REPO / "csrc" / "cuda").glob("*_cuda.cu"))


@pytest.fixture(scope="module")
def ops():
    return emulated_ops("emulator")


def test_shared_memory_with_barrier_matches_gpu(ops):
    x = torch.randn(3, 128)
    assert torch.equal(ops.rotate(x, True), x.roll(-1, dims=1))


def test_missing_barrier_is_visible(ops):
    """Threads run in a shuffled order, so some thread reads its neighbour's slot before it is written."""
    ops.rotate(torch.randn(3, 128), True)  # leave other values in the shared array
    x = torch.randn(3, 128)
    assert not torch.equal(ops.rotate(x, False), x.roll(-1, dims=1))


def test_warp_shuffles(ops):
    x = torch.randn(2, 128, dtype=torch.float64).float()
    want = x.view(2, 4, 32).double().sum(-1, keepdim=True).expand(2, 4, 32).reshape(2, 128)
    torch.testing.assert_close(ops.warp_sum(x).double(), want, rtol=1e-6, atol=1e-6)


def test_divergent_barrier_raises_instead_of_hanging(ops):
    with pytest.raises(RuntimeError, match="deadlock"):
        ops.divergent(torch.empty(0))


def test_shuffle_from_exited_lane_raises(ops):
    with pytest.raises(RuntimeError, match="did not take part"):
        ops.shuffle_exited(torch.empty(0))


def test_allocations_are_poisoned():
    """at::empty, as the emulated ops' host code calls it, returns NaN / -1 under the fixture."""
    assert torch.empty(5).isnan().all() and torch.empty(3, dtype=torch.bfloat16).isnan().all()
    assert (torch.empty(4, dtype=torch.int64) == -1).all()


def _kernels_in(family):
    src = (REPO / "csrc" / "cuda" / f"{family}_cuda.cu").read_text()
    return set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(", src))


class _AllEmulatedOps:
    """The compiled ops of every family, emulated, under their torch.ops.leo_kernels names."""

    def __getattr__(self, name):
        for fam in FAMILIES:
            ns = getattr(torch.ops, f"leo_{fam}_cuda_emu")
            if hasattr(ns, name):
                return getattr(ns, name)
        raise AttributeError(name)


def test_every_cuda_kernel_runs_emulated():
    """tools/gpu_check.py's sanitizer cases, run on the emulated kernels, launch every __global__
    kernel of every csrc/cuda/*.cu file: a new kernel or file without a case (or without an emulated
    build) fails here."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    fams = {fam: emulated_ops(fam) for fam in FAMILIES}
    for ops in fams.values():
        ops.launched_kernels(True)
    gpu_check.sanitizer_cases("cpu", ops=_AllEmulatedOps())
    for fam, ops in fams.items():
        kernels = _kernels_in(fam)
        assert kernels, f"no __global__ kernels found in csrc/cuda/{fam}_cuda.cu"
        missing = kernels - set(ops.launched_kernels(False))
        assert not missing, f"{fam}: kernels never launched by the cases: {sorted(missing)}"
