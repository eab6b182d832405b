"""Triton backend of the warp ops vs the eager reference.

On a CPU-only machine these run under TRITON_INTERPRET=1 (set by conftest.py), on CPU tensors;
with CUDA they run the compiled Triton kernels on the GPU. Shapes are tiny: the interpreter is slow.
"""
import functools

import pytest
import torch

import leo_kernels
from leo_kernels import reference as R
from leo_kernels.triton import warp_triton as T
from tests._util import assert_close, channels_last, non_contiguous
from tests._warp_gpu_checks import DTYPES, check_grid_sample_modes, check_warp_inpaint, randn, tol
from tests._warp_gpu_checks import compose_flow_case, grid_sample_case, warp_inpaint_case

DEV = "cuda" if torch.cuda.is_available() else "cpu"
_randn = functools.partial(randn, device=DEV)


# --------------------------------------------------------------------------- grid_sample
GS_SHAPES = [  # N, C, H, W, Ho, Wo
    (1, 1, 1, 1, 1, 1),
    (2, 3, 2, 2, 3, 2),
    (1, 5, 7, 6, 4, 9),
    (2, 40, 3, 5, 5, 3),  # two channel blocks
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GS_SHAPES, ids=str)
def test_grid_sample_matches_reference(shape, dtype):
    torch.manual_seed(sum(shape))
    grid_sample_case(T, shape, dtype, DEV)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "far_out_of_range"])
def test_grid_sample_layouts_and_far_samples(layout):
    torch.manual_seed(1)
    inp = _randn(2, 6, 5, 7)
    grid = _randn(2, 3, 4, 2)
    if layout == "channels_last":
        inp = channels_last(inp)
    elif layout == "non_contiguous":
        inp, grid = non_contiguous(inp), non_contiguous(grid)
        assert not inp.is_contiguous() and not grid.is_contiguous()
    else:
        grid = grid * 40.0  # samples tens of images away
    check_grid_sample_modes(T, inp, grid, det_repeat=True)


def test_grid_sample_channels_last_output_layout():
    inp = channels_last(_randn(1, 4, 3, 3))
    out = T.grid_sample_fwd(inp, _randn(1, 2, 2, 2), 0, False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    gi, _ = T.grid_sample_bwd(_randn(1, 4, 2, 2), inp, _randn(1, 2, 2, 2), 0, False, False)
    assert gi.is_contiguous(memory_format=torch.channels_last)


def test_grid_sample_deterministic_bitwise_with_collisions():
    # Many output pixels hit the same input pixels, so atomics would race; the gather path must not.
    torch.manual_seed(2)
    inp = _randn(1, 3, 2, 3)
    grid = torch.rand(1, 9, 9, 2, device=DEV) * 0.2 - 0.1
    go = _randn(1, 3, 9, 9)
    a = T.grid_sample_bwd(go, inp, grid, 0, False, True)
    for _ in range(2):
        b = T.grid_sample_bwd(go, inp, grid, 0, False, True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_grid_sample_bad_padding_mode():
    with pytest.raises(ValueError, match="padding_mode"):
        T.grid_sample_fwd(_randn(1, 1, 2, 2), _randn(1, 1, 1, 2), 3, False)


# --------------------------------------------------------------------------- compose_flow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 3, 5), (1, 2, 4, 1)], ids=str)
def test_compose_flow_matches_reference(shape, dtype):
    torch.manual_seed(3)
    compose_flow_case(T, shape, dtype, DEV)


# --------------------------------------------------------------------------- warp_inpaint
WI_SHAPES = [  # N, C, H, W, with skip
    (1, 1, 1, 1, False),
    (1, 2, 2, 2, True),
    (2, 3, 5, 7, False),
    (2, 4, 6, 10, True),
    (1, 40, 4, 2, True),  # two channel blocks
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", WI_SHAPES, ids=str)
def test_warp_inpaint_matches_reference(shape, dtype):
    torch.manual_seed(4)
    warp_inpaint_case(T, shape, dtype, DEV)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "far_flows"])
def test_warp_inpaint_layouts_and_far_flows(layout):
    torch.manual_seed(5)
    feat, x = _randn(2, 5, 6, 4), _randn(2, 5, 6, 4)
    logits, skip = _randn(2, 3, 6, 4), _randn(2, 3, 3, 2)
    if layout == "channels_last":
        feat, x, logits, skip = map(channels_last, (feat, x, logits, skip))
    elif layout == "non_contiguous":
        feat, x, logits, skip = map(non_contiguous, (feat, x, logits, skip))
    else:
        logits = logits * 30.0  # tanh saturates: samples up to a full image away, mask at 0 / 1
    for align in (False, True):
        check_warp_inpaint(T, feat, x, logits, skip, align, det_repeat=True)


def test_warp_inpaint_deterministic_bitwise_bf16():
    torch.manual_seed(6)
    dtype = torch.bfloat16
    feat, x = _randn(1, 3, 4, 6, dtype=dtype), _randn(1, 3, 4, 6, dtype=dtype)
    logits = _randn(1, 3, 4, 6, dtype=dtype, scale=0.1)  # small flows: many pixels share targets
    _, _, comp = T.warp_inpaint_fwd(feat, x, logits, None, False)
    gw, gb, gc = (_randn(1, 3, 4, 6, dtype=dtype) for _ in range(3))
    a = T.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
    b = T.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# --------------------------------------------------------------------------- through the public ops
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_public_ops_with_triton_backend(dtype):
    torch.manual_seed(11)
    mk = lambda *s, scale=1.0: _randn(*s, dtype=dtype, scale=scale).requires_grad_()  # noqa: E731
    feat, x, logits, skip = mk(2, 3, 4, 6), mk(2, 3, 4, 6), mk(2, 3, 4, 6, scale=0.5), mk(2, 3, 2, 3)
    outs = leo_kernels.warp_inpaint(channels_last(feat), x, logits, skip, backend="triton")
    assert leo_kernels.last_backend("warp_inpaint") == "triton"
    refs = R.warp_inpaint(feat, x, logits, skip)
    ws = [torch.randn_like(r) for r in refs]
    got = torch.autograd.grad(outs, (feat, x, logits, skip), ws)
    want = torch.autograd.grad(refs, (feat, x, logits, skip), ws)
    for name, a, b in zip(("warped", "blended", "composed", "feat", "x", "logits", "skip"), (*outs, *got), (*refs, *want)):
        assert_close(a, b, dtype, tol(dtype, True), name)
    inp, grid = mk(1, 2, 3, 5), mk(1, 4, 2, 2, scale=1.5)
    out = leo_kernels.grid_sample(inp, grid, "reflection", True, backend="triton")
    ref = R.grid_sample(inp, grid, "reflection", True)
    w = torch.randn_like(ref)
    for a, b in zip((out, *torch.autograd.grad(out, (inp, grid), w)), (ref, *torch.autograd.grad(ref, (inp, grid), w))):
        assert_close(a, b, dtype, tol(dtype, True))
    coarse, fine = mk(1, 2, 2, 3), mk(1, 2, 4, 6)
    out, ref = leo_kernels.compose_flow(coarse, fine, backend="triton"), R.compose_flow(coarse, fine)
    w = torch.randn_like(ref)
    for a, b in zip((out, *torch.autograd.grad(out, (coarse, fine), w)), (ref, *torch.autograd.grad(ref, (coarse, fine), w))):
        assert_close(a, b, dtype, tol(dtype, True))


# --------------------------------------------------------------------------- shared sample inputs
@pytest.mark.parametrize("op", ("grid_sample", "compose_flow", "warp_inpaint"))
def test_sample_inputs_match_reference(op):
    from tests import _cases

    assert _cases.check_against_reference(op, "triton", device=DEV) > 0
