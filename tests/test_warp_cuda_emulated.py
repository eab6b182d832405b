"""The CUDA warp kernels (csrc/cuda/warp_cuda.cu) compiled as host C++ and run on CPU tensors.

No GPU here, so tests/cuda_emu/leo_cuda_emulate.h runs kernel launches block by block, each block's
threads as cooperating fibers, and the file is built with the C++ compiler. This checks the kernels'
index math, strides, the channels_last 16-byte path, float32 accumulation, the deterministic
sort-gather path and the host code against the reference, with outputs starting as NaN (poisoned
CPU allocations); it cannot see races or anything GPU-specific (those are covered by
tests/test_warp_cuda.py on a CUDA machine, docs/GPU.md).
"""
import functools

import pytest
import torch

from tests._util import non_contiguous
from tests._warp_gpu_checks import DTYPES, PADS, check_grid_sample, check_warp_inpaint, randn
from tests._warp_gpu_checks import compose_flow_case, grid_sample_case, warp_inpaint_case
from tests.cuda_emu import emulated_ops, poisoned_outputs  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def ops():
    return emulated_ops("warp")


_randn = functools.partial(randn, device="cpu")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_grid_sample(ops, dtype, layout):
    torch.manual_seed(1)
    # the last spans several 256-thread blocks, the final one partial
    for N, C, H, W, Ho, Wo in [(1, 1, 1, 1, 1, 1), (2, 3, 2, 2, 3, 2), (1, 16, 7, 6, 4, 9), (2, 40, 5, 3, 3, 5),
                               (2, 24, 9, 11, 13, 17)]:
        grid_sample_case(ops, (N, C, H, W, Ho, Wo), dtype, "cpu", layout, det_repeat=True)


def test_grid_sample_special_inputs(ops):
    torch.manual_seed(2)
    inp, grid = _randn(2, 8, 5, 7), _randn(2, 3, 4, 2)
    for i, g in ((non_contiguous(inp), non_contiguous(grid)), (inp, grid * 40.0), (inp, grid * 0.05)):
        for pad in PADS:
            check_grid_sample(ops, i, g, pad, False, det_repeat=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compose_flow(ops, dtype):
    torch.manual_seed(3)
    for shape in [(1, 1, 1, 1), (2, 3, 3, 5), (1, 2, 4, 1), (2, 3, 9, 11)]:
        compose_flow_case(ops, shape, dtype, "cpu")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_warp_inpaint(ops, dtype, layout):
    torch.manual_seed(4)
    for shape in [(1, 1, 1, 1, False), (1, 2, 2, 2, True), (2, 3, 5, 7, False),
                  (2, 16, 6, 10, True), (1, 40, 4, 2, True), (2, 20, 14, 18, True)]:
        warp_inpaint_case(ops, shape, dtype, "cpu", layout, det_repeat=True)


def test_warp_inpaint_special_inputs(ops):
    torch.manual_seed(5)
    feat, x = _randn(2, 8, 6, 4), _randn(2, 8, 6, 4)
    logits, skip = _randn(2, 3, 6, 4), _randn(2, 3, 3, 2)
    check_warp_inpaint(ops, *map(non_contiguous, (feat, x, logits, skip)), False, det_repeat=True)
    check_warp_inpaint(ops, feat, x, logits * 30.0, skip, True, det_repeat=True)


def test_bad_padding_mode_is_clear_error(ops):
    with pytest.raises(RuntimeError, match="padding_mode"):
        ops.grid_sample_fwd(_randn(1, 1, 2, 2), _randn(1, 1, 1, 2), 3, False)
