"""The CUDA StyleGAN2 kernels (csrc/cuda/stylegan_cuda.cu: upfirdn2d, bias_act) compiled as host C++
and run on CPU tensors (tests/cuda_emu/leo_cuda_emulate.h), vs the eager reference.

Same fuzzed cases as the other backends (tests/_cases.py), every dtype and layout; the
LIA shapes span several 256-thread blocks with a partial last one. (upfirdn2d's backward is this
forward kernel with other arguments, covered by the general cases.) Outputs start as NaN
(poisoned CPU allocations), so an element a kernel does not write fails.
"""

import pytest
import torch

from leo_kernels import reference
from tests._cases import BIAS_SHAPES, GENERAL_CASES, LIA_CASES, bias_act_inputs, bias_act_variants
from tests._cases import fir as _fir
from tests._util import assert_close, channels_last, non_contiguous
from tests.cuda_emu import emulated_ops, poisoned_outputs  # noqa: F401 (autouse fixture)

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = (("contiguous", lambda t: t), ("channels_last", channels_last), ("strided", non_contiguous))


@pytest.fixture(scope="module")
def ops():
    return emulated_ops("stylegan")


def _upfirdn2d(ops, x, k, up, down, pad):
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return ops.upfirdn2d_fwd(x, k.to(acc), ux, uy, dx, dy, px0, px1, py0, py1)


def _check_upfirdn2d(ops, x, k, up, down, pad, what):
    ref = reference.upfirdn2d(x, k.to(x.dtype), up, down, pad)
    for name, layout in LAYOUTS:
        out = _upfirdn2d(ops, layout(x), k, up, down, pad)
        assert out.dtype == x.dtype
        if name == "channels_last" and x.shape[1] > 1:
            assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close(out, ref, name=f"{what} {name} {x.dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("idx", range(len(GENERAL_CASES)))
def test_upfirdn2d_general_cases(ops, idx, dtype):
    shape, ks, up, down, pad = GENERAL_CASES[idx]
    g = torch.Generator().manual_seed(10 + idx)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    k = torch.randn(ks, generator=g, dtype=torch.float64).to(dtype)  # the reference's kernel values
    _check_upfirdn2d(ops, x, k, up, down, pad, f"{shape} {ks} up={up} down={down} pad={pad}")


@pytest.mark.parametrize("case", sorted(LIA_CASES))
def test_upfirdn2d_lia_cases(ops, case):
    scale, up, down, pad = LIA_CASES[case]
    g = torch.Generator().manual_seed(1)
    for dtype, shape in ((torch.float32, (1, 32, 9, 11)), (torch.bfloat16, (2, 24, 8, 7)), (torch.float64, (2, 3, 8, 8))):
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 10).to(dtype)
        _check_upfirdn2d(ops, x, _fir(scale=scale), (up, up), (down, down), (*pad, *pad), case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_act(ops, dtype):
    g = torch.Generator().manual_seed(3)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for shape in BIAS_SHAPES + [(3, 40, 9, 8)]:  # the last spans 11 blocks, the final one partial
        x64, b64 = bias_act_inputs(shape, g)
        x, b = x64.to(dtype), b64.to(acc)
        go = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        for name, layout, bias, slope, gain in bias_act_variants(len(shape), b):
            what = f"{shape} {dtype} {name} bias={bias is not None} slope={slope}"
            out = ops.bias_act_fwd(layout(x), bias, slope, gain)
            assert_close(out, reference.bias_act(x, bias, slope, gain), name=what)
            # backward: grad * d/dx[leaky_relu(x + b) * gain], computed in the accumulation type
            v = x.to(acc) + (0 if bias is None else bias.view(1, -1, *([1] * (x.dim() - 2))))
            want = (go.to(acc) * torch.full_like(v, gain).where(v > 0, gain * slope)).to(dtype)
            assert_close(ops.bias_act_bwd(layout(go), layout(x), bias, slope, gain), want, name="grad " + what)


def test_errors_name_the_argument(ops):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match="kernel must be"):
        ops.upfirdn2d_fwd(x, torch.ones(2, 2, dtype=torch.float64), 1, 1, 1, 1, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        ops.upfirdn2d_fwd(x, torch.ones(6, 6), 1, 1, 1, 1, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        ops.bias_act_fwd(x, torch.ones(3), 0.2, 1.0)
