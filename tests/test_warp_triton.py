"""Triton backend of the warp ops vs the eager reference.

On a CPU-only machine these run under TRITON_INTERPRET=1 (set by conftest.py), on CPU tensors;
with CUDA they run the compiled kernels on the GPU. Shapes are tiny: the interpreter is slow.
"""
import pytest
import torch

from leo_kernels import reference as R
from leo_kernels.triton import warp_triton as T
from tests._util import REL_TOL, assert_close, channels_last, non_contiguous

DEV = "cuda" if torch.cuda.is_available() else "cpu"
PADS = ("zeros", "border", "reflection")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _poison_allocator():
    """Fill freed device memory with NaN so outputs from torch.empty start poisoned (CUDA caching
    allocator); any element a kernel fails to write then shows up as NaN."""
    if DEV == "cuda":
        torch.empty(1 << 24, device=DEV).fill_(float("nan"))


def _tol(dtype):
    return REL_TOL[dtype] if dtype != torch.float32 else 2e-6


def _randn(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(device=DEV, dtype=dtype)


# --------------------------------------------------------------------------- grid_sample
GS_SHAPES = [  # N, C, H, W, Ho, Wo
    (1, 1, 1, 1, 1, 1),
    (2, 3, 2, 2, 3, 2),
    (1, 5, 7, 6, 4, 9),
    (2, 40, 3, 5, 5, 3),  # two channel blocks
]


def _check_grid_sample(inp, grid, pad, align, dtype, det_repeat=False):
    ref_in = inp.detach().clone().requires_grad_()
    ref_grid = grid.detach().clone().requires_grad_()
    ref = R.grid_sample(ref_in, ref_grid, pad, align)
    go = _randn(*ref.shape, dtype=dtype)
    ref_gi, ref_gg = torch.autograd.grad(ref, (ref_in, ref_grid), go)
    _poison_allocator()
    out = T.grid_sample_fwd(inp, grid, PADS.index(pad), align)
    assert_close(out, ref, dtype, _tol(dtype), "grid_sample out")
    for det in (False, True):
        _poison_allocator()
        gi, gg = T.grid_sample_bwd(go, inp, grid, PADS.index(pad), align, det)
        assert gi.dtype == inp.dtype and gg.dtype == grid.dtype
        assert_close(gi, ref_gi, dtype, _tol(dtype), f"grad_input det={det}")
        assert_close(gg, ref_gg, dtype, _tol(dtype) * (1 if dtype in (torch.float16, torch.bfloat16) else 4), f"grad_grid det={det}")
        if det and det_repeat:
            gi2, gg2 = T.grid_sample_bwd(go, inp, grid, PADS.index(pad), align, True)
            assert torch.equal(gi, gi2) and torch.equal(gg, gg2), "deterministic backward not bitwise repeatable"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GS_SHAPES, ids=str)
def test_grid_sample_matches_reference(shape, dtype):
    torch.manual_seed(hash(shape) % 1000)
    N, C, H, W, Ho, Wo = shape
    inp = _randn(N, C, H, W, dtype=dtype)
    # Mostly in range, some far outside (exercises every padding mode's edge handling).
    grid = _randn(N, Ho, Wo, 2, dtype=torch.float64, scale=1.5).to(dtype)
    for pad in PADS:
        for align in (False, True):
            _check_grid_sample(inp, grid, pad, align, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "far_out_of_range"])
def test_grid_sample_layouts_and_far_samples(layout):
    torch.manual_seed(1)
    dtype = torch.float32
    inp = _randn(2, 6, 5, 7, dtype=dtype)
    grid = _randn(2, 3, 4, 2, dtype=dtype)
    if layout == "channels_last":
        inp = channels_last(inp)
    elif layout == "non_contiguous":
        inp, grid = non_contiguous(inp), non_contiguous(grid)
        assert not inp.is_contiguous() and not grid.is_contiguous()
    else:
        grid = grid * 40.0  # samples tens of images away
    for pad in PADS:
        for align in (False, True):
            _check_grid_sample(inp, grid, pad, align, dtype, det_repeat=True)


def test_grid_sample_channels_last_output_layout():
    inp = channels_last(_randn(1, 4, 3, 3, dtype=torch.float32))
    out = T.grid_sample_fwd(inp, _randn(1, 2, 2, 2, dtype=torch.float32), 0, False)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_grid_sample_deterministic_bitwise_with_collisions():
    # Many output pixels hit the same input pixels, so atomics would race; the gather path must not.
    torch.manual_seed(2)
    inp = _randn(1, 3, 2, 3, dtype=torch.float32)
    grid = (torch.rand(1, 9, 9, 2, device=DEV) * 0.2 - 0.1)
    go = _randn(1, 3, 9, 9, dtype=torch.float32)
    a = T.grid_sample_bwd(go, inp, grid, 0, False, True)
    for _ in range(2):
        b = T.grid_sample_bwd(go, inp, grid, 0, False, True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --------------------------------------------------------------------------- compose_flow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 3, 5), (1, 2, 4, 1)], ids=str)
def test_compose_flow_matches_reference(shape, dtype):
    torch.manual_seed(3)
    N, K, H, W = shape
    coarse = _randn(N, K, H, W, dtype=dtype).requires_grad_()
    fine = _randn(N, K, 2 * H, 2 * W, dtype=dtype).requires_grad_()
    ref = R.compose_flow(coarse, fine)
    go = _randn(*ref.shape, dtype=dtype)
    (ref_gc,) = torch.autograd.grad(ref, (coarse,), go)
    for c_, f_ in ((coarse, fine), (channels_last(coarse), non_contiguous(fine))):
        _poison_allocator()
        out = T.compose_flow_fwd(c_.detach(), f_.detach())
        assert_close(out, ref, dtype, _tol(dtype), "compose_flow out")
    for g_ in (go, non_contiguous(go)):
        _poison_allocator()
        assert_close(T.compose_flow_bwd(g_), ref_gc, dtype, _tol(dtype), "grad_coarse")


# --------------------------------------------------------------------------- warp_inpaint
WI_SHAPES = [  # N, C, H, W, with skip
    (1, 1, 1, 1, False),
    (1, 2, 2, 2, True),
    (2, 3, 5, 7, False),
    (2, 4, 6, 10, True),
    (1, 40, 4, 2, True),  # two channel blocks
]


def _check_warp_inpaint(feat, x, logits, skip, align, dtype, det_repeat=False):
    ins = [t.detach().clone().requires_grad_() for t in (feat, x, logits)]
    if skip is not None:
        ins.append(skip.detach().clone().requires_grad_())
    refs = R.warp_inpaint(*ins[:3], ins[3] if skip is not None else None, align)
    grads_out = [_randn(*r.shape, dtype=dtype) for r in refs]
    _poison_allocator()
    outs = T.warp_inpaint_fwd(feat, x, logits, skip, align)
    for name, o, r in zip(("warped", "blended", "composed"), outs, refs):
        assert o.dtype == r.dtype
        assert_close(o, r, dtype, _tol(dtype), name)
    composed = outs[2]
    if skip is not None and dtype in (torch.float16, torch.bfloat16):
        # The backward sees composed rounded to the storage dtype (interface); bilinear grid gradients
        # jump at pixel edges, so take the reference gradient at that same rounded point.
        pt = [t.detach().clone().requires_grad_() for t in (feat, x, composed)]
        r2 = R.warp_inpaint(*pt, None, align)
        ref_g = list(torch.autograd.grad(r2, pt, grads_out))
        s0 = torch.zeros(skip.shape, dtype=torch.float64, device=DEV, requires_grad=True)
        ref_g += torch.autograd.grad(R.up2(s0), (s0,), ref_g[2].double())
    else:
        ref_g = torch.autograd.grad(refs, ins, grads_out)
    for det in (False, True):
        _poison_allocator()
        g = T.warp_inpaint_bwd(*grads_out, feat, x, composed, skip is not None, align, det)
        assert len(g) == 4
        for name, a, b in zip(("grad_feat", "grad_x", "grad_logits", "grad_skip"), g, ref_g):
            assert_close(a, b, dtype, _tol(dtype) * (1 if dtype in (torch.float16, torch.bfloat16) else 4), f"{name} det={det}")
        if skip is None:
            assert g[3].numel() == 0
        if det and det_repeat:
            g2 = T.warp_inpaint_bwd(*grads_out, feat, x, composed, skip is not None, align, True)
            for a, b in zip(g, g2):
                assert torch.equal(a, b), "deterministic backward not bitwise repeatable"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", WI_SHAPES, ids=str)
def test_warp_inpaint_matches_reference(shape, dtype):
    torch.manual_seed(4)
    N, C, H, W, has_skip = shape
    feat = _randn(N, C, H, W, dtype=dtype)
    x = _randn(N, C, H, W, dtype=dtype)
    logits = _randn(N, 3, H, W, dtype=dtype, scale=0.7)
    skip = _randn(N, 3, H // 2, W // 2, dtype=dtype, scale=0.7) if has_skip else None
    for align in (False, True):
        _check_warp_inpaint(feat, x, logits, skip, align, dtype)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous", "far_flows"])
def test_warp_inpaint_layouts_and_far_flows(layout):
    torch.manual_seed(5)
    dtype = torch.float32
    feat, x = _randn(2, 5, 6, 4, dtype=dtype), _randn(2, 5, 6, 4, dtype=dtype)
    logits, skip = _randn(2, 3, 6, 4, dtype=dtype), _randn(2, 3, 3, 2, dtype=dtype)
    if layout == "channels_last":
        feat, x, logits, skip = map(channels_last, (feat, x, logits, skip))
    elif layout == "non_contiguous":
        feat, x, logits, skip = map(non_contiguous, (feat, x, logits, skip))
    else:
        logits = logits * 30.0  # tanh saturates: samples up to a full image away, mask at 0 / 1
    for align in (False, True):
        _check_warp_inpaint(feat, x, logits, skip, align, dtype, det_repeat=True)


def test_warp_inpaint_deterministic_bitwise_bf16():
    torch.manual_seed(6)
    dtype = torch.bfloat16
    feat, x = _randn(1, 3, 4, 6, dtype=dtype), _randn(1, 3, 4, 6, dtype=dtype)
    logits = _randn(1, 3, 4, 6, dtype=dtype, scale=0.1)  # small flows: many pixels share targets
    _, _, comp = T.warp_inpaint_fwd(feat, x, logits, None, False)
    gw, gb, gc = _randn(1, 3, 4, 6, dtype=dtype), _randn(1, 3, 4, 6, dtype=dtype), _randn(1, 3, 4, 6, dtype=dtype)
    a = T.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
    b = T.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
