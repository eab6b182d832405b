"""grid_sample, compose_flow, warp_inpaint: every CPU-runnable backend against the eager reference.

The Triton backend (interpreter) is tested in tests/test_warp_triton.py; CUDA where present.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leo_kernels
from leo_kernels import reference
from tests import _cases
from tests._cases import grid as _grid, layout as _layout, randn as _randn, warp_inpaint_inputs as _wi_inputs
from tests._util import REL_TOL, assert_close, channels_last, non_contiguous, rel_err

FAST = [b for b in ("cpu",) if b in leo_kernels.available_backends("cpu")]
BACKENDS = FAST + ["reference"]
PADDINGS = ("zeros", "border", "reflection")
LOW = (torch.float16, torch.bfloat16)

# Gradient tolerances: gradients sum many products, so low precision gets a little more room.
GRAD_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def _fresh(seed):
    return torch.Generator().manual_seed(seed)


def _poison_heap(*shapes, dtype):
    """Allocate and free NaN-filled blocks of the output sizes, so that memory the kernels get
    back from the allocator likely holds NaN: an element a kernel forgets to write shows up."""
    blocks = [torch.full(s, float("nan"), dtype=dtype) for s in shapes for _ in range(2)]
    del blocks


def _grads(outs, inputs, gouts):
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return torch.autograd.grad(outs, inputs, gouts, allow_unused=False)


# --------------------------------------------------------------------------- grid_sample
GS_SHAPES = [
    # (N, C, H, W, Ho, Wo)
    (1, 1, 1, 1, 1, 1),
    (1, 2, 2, 2, 3, 2),
    (2, 3, 7, 5, 6, 9),
    (3, 16, 9, 13, 8, 7),
    (2, 64, 5, 6, 4, 4),
]


def _check_grid_sample(backend, shape, padding, align, dtype, layout="contiguous", spread=1.3, seed=0):
    g = _fresh(seed)
    n, c, h, w, ho, wo = shape
    inp = _layout(_randn(n, c, h, w, dtype=dtype, g=g), layout).requires_grad_()
    grid = _layout(_grid(n, ho, wo, dtype, g, spread), layout if layout == "non_contiguous" else "contiguous")
    grid.requires_grad_()
    _poison_heap((n, c, ho, wo), (n, c, h, w), dtype=dtype)
    out = leo_kernels.grid_sample(inp, grid, padding, align, backend=backend)
    assert leo_kernels.last_backend("grid_sample") == backend
    assert out.data_ptr() != inp.data_ptr()
    ref = reference.grid_sample(inp, grid, padding, align)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, name="out")
    gout = _randn(*out.shape, dtype=dtype, g=g)
    gi, gg = _grads(out, (inp, grid), gout)
    ri, rg = _grads(ref, (inp, grid), gout)
    assert_close(gi, ri, tol=GRAD_TOL[dtype], name="grad_input")
    assert_close(gg, rg, tol=GRAD_TOL[dtype], name="grad_grid")
    if layout == "channels_last" and backend != "reference" and c > 1 and h * w > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", GS_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_matches_reference(backend, shape, padding, align):
    for i, dtype in enumerate((torch.float32, torch.float64)):
        _check_grid_sample(backend, shape, padding, align, dtype, seed=i)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_layouts(backend, layout, padding):
    _check_grid_sample(backend, (2, 8, 6, 7, 5, 4), padding, False, torch.float32, layout)
    _check_grid_sample(backend, (1, 3, 5, 4, 3, 6), padding, True, torch.float64, layout)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_grid_sample_low_precision(backend, dtype, layout):
    for padding in PADDINGS:
        _check_grid_sample(backend, (2, 16, 9, 8, 7, 10), padding, False, dtype, layout)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_far_outside(backend, padding):
    # Samples up to 40 image widths away, and a few huge coordinates.
    _check_grid_sample(backend, (2, 5, 6, 7, 8, 9), padding, False, torch.float64, spread=80.0)
    g = _fresh(3)
    inp = _randn(1, 4, 5, 6, g=g)
    # (torch's own reflection of coordinates beyond int range is undefined, so stay inside it.)
    big = 1e30 if padding != "reflection" else 1e5
    grid = torch.tensor([[[[big, -big], [-3e4, 2e4], [0.5, -0.25]]]])
    out = leo_kernels.grid_sample(inp, grid, padding, True, backend=backend)
    assert_close(out, F.grid_sample(inp, grid, padding_mode=padding, align_corners=True), name="out")


@pytest.mark.parametrize("backend", FAST)
def test_grid_sample_big_channels(backend):
    _check_grid_sample(backend, (1, 512, 5, 4, 3, 5), "zeros", False, torch.float32)
    _check_grid_sample(backend, (2, 512, 3, 3, 2, 2), "border", True, torch.float32, "channels_last")


def test_reference_grid_sample_is_f_grid_sample():
    g = _fresh(4)
    inp, grid = _randn(2, 3, 5, 6, g=g), _grid(2, 4, 3, torch.float32, g)
    for padding in PADDINGS:
        for align in (False, True):
            want = F.grid_sample(inp, grid, mode="bilinear", padding_mode=padding, align_corners=align)
            assert torch.equal(leo_kernels.grid_sample(inp, grid, padding, align, backend="reference"), want)


# --------------------------------------------------------------------------- compose_flow
CF_SHAPES = [(1, 1, 1, 1), (2, 2, 3, 5), (1, 3, 8, 8), (3, 2, 5, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", CF_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_compose_flow_matches_reference(backend, shape, dtype):
    g = _fresh(5)
    n, k, h, w = shape
    coarse = _randn(n, k, h, w, dtype=dtype, g=g).requires_grad_()
    fine = _randn(n, k, 2 * h, 2 * w, dtype=dtype, g=g).requires_grad_()
    _poison_heap((n, k, 2 * h, 2 * w), (n, k, h, w), dtype=dtype)
    out = leo_kernels.compose_flow(coarse, fine, backend=backend)
    assert leo_kernels.last_backend("compose_flow") == backend
    ref = reference.compose_flow(coarse, fine)
    assert_close(out, ref, dtype, name="out")
    gout = _randn(*out.shape, dtype=dtype, g=g)
    for got, want, name in zip(_grads(out, (coarse, fine), gout), _grads(ref, (coarse, fine), gout), ("coarse", "fine")):
        assert_close(got, want, tol=GRAD_TOL[dtype], name=f"grad_{name}")


@pytest.mark.parametrize("backend", FAST)
def test_compose_flow_strided_inputs(backend):
    g = _fresh(6)
    coarse = non_contiguous(_randn(2, 2, 4, 3, g=g))
    fine = channels_last(_randn(2, 2, 8, 6, g=g))
    assert_close(leo_kernels.compose_flow(coarse, fine, backend=backend), reference.compose_flow(coarse, fine))


def test_up2_is_fir_1331_upsampling():
    # OPS.md: up2 is StyleGAN2's [1,3,3,1] FIR upsampler (x2, gain 4) = zero insertion + pad + conv.
    g = _fresh(7)
    x = _randn(2, 3, 5, 4, dtype=torch.float64, g=g)
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    k = torch.outer(k1, k1) / k1.sum() ** 2 * 4
    z = torch.zeros(2, 3, 10, 8, dtype=torch.float64)
    z[:, :, ::2, ::2] = x
    z = F.pad(z, (2, 1, 2, 1))
    want = F.conv2d(z.view(6, 1, 13, 11), k.flip(0, 1).view(1, 1, 4, 4)).view(2, 3, 10, 8)
    assert_close(reference.up2(x), want)
    fine = torch.zeros_like(want)
    for backend in FAST:
        assert_close(leo_kernels.compose_flow(x, fine, backend=backend), want)


# --------------------------------------------------------------------------- warp_inpaint
WI_SHAPES = [
    # (N, C, H, W, with skip)
    (1, 1, 1, 1, False),
    (1, 1, 2, 2, True),
    (2, 3, 6, 10, True),
    (1, 5, 7, 9, False),
    (3, 16, 8, 6, True),
    (2, 64, 4, 4, True),
]


def _check_warp_inpaint(backend, shape, align, dtype, layout="contiguous", flow_scale=2.0, seed=0):
    g = _fresh(seed)
    feat, x, logits, skip = _wi_inputs(shape, dtype, g, layout, flow_scale)
    inputs = [t for t in (feat, x, logits, skip) if t is not None]
    _poison_heap(tuple(feat.shape), tuple(logits.shape), dtype=dtype)
    outs = leo_kernels.warp_inpaint(feat, x, logits, skip, align, backend=backend)
    assert leo_kernels.last_backend("warp_inpaint") == backend
    refs = reference.warp_inpaint(feat, x, logits, skip, align)
    for got, want, name in zip(outs, refs, ("warped", "blended", "composed")):
        assert got.dtype == dtype
        assert_close(got, want, dtype, name=name)
    gouts = [_randn(*o.shape, dtype=dtype, g=g) for o in outs]
    names = ("feat", "x", "logits", "skip")
    for got, want, name in zip(_grads(outs, inputs, gouts), _grads(refs, inputs, gouts), names):
        assert_close(got, want, tol=GRAD_TOL[dtype], name=f"grad_{name}")
    if layout == "channels_last" and backend != "reference" and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert outs[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", WI_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("align", [False, True])
def test_warp_inpaint_matches_reference(backend, shape, align):
    for i, dtype in enumerate((torch.float32, torch.float64)):
        _check_warp_inpaint(backend, shape, align, dtype, seed=i)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_warp_inpaint_layouts(backend, layout):
    _check_warp_inpaint(backend, (2, 8, 6, 8, True), False, torch.float32, layout)
    _check_warp_inpaint(backend, (1, 3, 5, 7, False), True, torch.float64, layout)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_warp_inpaint_low_precision(backend, dtype, layout):
    _check_warp_inpaint(backend, (2, 16, 16, 24, True), False, dtype, layout)
    _check_warp_inpaint(backend, (1, 8, 9, 7, False), True, dtype, layout)


@pytest.mark.parametrize("backend", FAST)
def test_warp_inpaint_saturated_flow_and_mask(backend):
    # tanh and sigmoid saturate: samples land up to a full image away, masks at 0 and 1.
    _check_warp_inpaint(backend, (2, 4, 8, 8, True), False, torch.float64, flow_scale=30.0)


@pytest.mark.parametrize("backend", FAST)
def test_warp_inpaint_big_channels(backend):
    _check_warp_inpaint(backend, (1, 512, 4, 6, True), False, torch.float32)


@pytest.mark.parametrize("backend", FAST)
def test_warp_inpaint_unused_outputs(backend):
    # Only `blended` reaches the loss; the other output grads arrive as None/zeros.
    g = _fresh(8)
    feat, x, logits, skip = _wi_inputs((2, 4, 6, 6, True), torch.float32, g)
    _, blended, _ = leo_kernels.warp_inpaint(feat, x, logits, skip, backend=backend)
    _, rblended, _ = reference.warp_inpaint(feat, x, logits, skip)
    inputs = (feat, x, logits, skip)
    for got, want in zip(torch.autograd.grad(blended.sum(), inputs), torch.autograd.grad(rblended.sum(), inputs)):
        assert_close(got, want)


# --------------------------------------------------------------------------- gradcheck, opcheck, compile
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    g = _fresh(9)
    inp = _randn(2, 3, 4, 5, dtype=torch.float64, g=g).requires_grad_()
    for padding in PADDINGS:
        for align in (False, True):
            grid = _grid(2, 3, 2, torch.float64, g, 1.2).requires_grad_()
            assert torch.autograd.gradcheck(
                lambda a, b: leo_kernels.grid_sample(a, b, padding, align, backend=backend), (inp, grid)
            )
    coarse = _randn(1, 2, 3, 2, dtype=torch.float64, g=g).requires_grad_()
    fine = _randn(1, 2, 6, 4, dtype=torch.float64, g=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: leo_kernels.compose_flow(a, b, backend=backend), (coarse, fine))
    for align in (False, True):
        feat, x, logits, skip = _wi_inputs((1, 2, 4, 6, True), torch.float64, g)
        assert torch.autograd.gradcheck(
            lambda *a: leo_kernels.warp_inpaint(*a, align_corners=align, backend=backend), (feat, x, logits, skip)
        )


@pytest.mark.parametrize("backend", FAST)
def test_opcheck(backend):
    g = _fresh(10)
    inp = _randn(2, 3, 4, 5, g=g).requires_grad_()
    grid = _grid(2, 3, 2, torch.float32, g).requires_grad_()
    ops = torch.ops.leo_kernels
    torch.library.opcheck(ops.grid_sample.default, (inp, grid, 2, False, False, backend))
    torch.library.opcheck(ops.grid_sample.default, (channels_last(inp.detach()).requires_grad_(), grid, 0, True, True, backend))
    go = _randn(2, 3, 3, 2, g=g)
    torch.library.opcheck(ops.grid_sample_backward.default, (go, inp.detach(), grid.detach(), 1, True, False, backend))
    coarse = _randn(1, 2, 3, 2, g=g).requires_grad_()
    fine = _randn(1, 2, 6, 4, g=g).requires_grad_()
    torch.library.opcheck(ops.compose_flow.default, (coarse, fine, backend))
    torch.library.opcheck(ops.compose_flow_backward.default, (fine.detach(), backend))
    for dtype in (torch.float32, torch.bfloat16):
        feat, x, logits, skip = _wi_inputs((2, 3, 4, 6, True), dtype, g)
        torch.library.opcheck(ops.warp_inpaint.default, (feat, x, logits, skip, False, False, backend))
        torch.library.opcheck(ops.warp_inpaint.default, (feat, x, logits, None, True, False, backend))
        d = [t.detach() for t in (feat, x, logits)]
        gws = [_randn(*feat.shape, dtype=dtype, g=g) for _ in range(2)]
        torch.library.opcheck(
            ops.warp_inpaint_backward.default, (*gws, d[2], d[0], d[1], d[2], True, False, False, backend)
        )
    # The compiled ops themselves (schemas declared in csrc/cpu/warp_cpu.cpp).
    torch.library.opcheck(ops._grid_sample_fwd.default, (inp.detach(), grid.detach(), 0, False))
    torch.library.opcheck(ops._compose_flow_fwd.default, (coarse.detach(), fine.detach()))
    torch.library.opcheck(ops._warp_inpaint_fwd.default, (d[0], d[1], d[2], None, False))


@pytest.mark.parametrize("backend", FAST)
def test_torch_compile_fullgraph_matches_eager(backend):
    def level(feat, x, logits, skip, grid):
        warped, blended, composed = leo_kernels.warp_inpaint(feat, x, logits, skip, backend=backend)
        resampled = leo_kernels.grid_sample(blended, grid, "border", backend=backend)
        flow = leo_kernels.compose_flow(composed, torch.zeros_like(logits).repeat(1, 1, 2, 2), backend=backend)
        return (resampled.square().sum() + warped.sum() + flow.square().sum())

    g = _fresh(11)
    feat, x, logits, skip = _wi_inputs((2, 4, 6, 8, True), torch.float32, g)
    grid = _grid(2, 5, 3, torch.float32, g).requires_grad_()
    inputs = (feat, x, logits, skip, grid)
    torch._dynamo.reset()
    compiled = torch.compile(level, fullgraph=True)
    got = compiled(*inputs)
    want = level(*inputs)
    assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        assert_close(a, b)


# --------------------------------------------------------------------------- determinism, backend choice
@pytest.mark.parametrize("backend", FAST)
def test_deterministic_backward_is_bitwise_repeatable(backend):
    g = _fresh(12)
    feat, x, logits, skip = _wi_inputs((2, 16, 12, 10, True), torch.float32, g)
    # Many samples land on the same input pixels (a squeezed grid), so scatter order matters.
    grid = (_grid(2, 20, 20, torch.float32, g) * 0.2).requires_grad_()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            outs = leo_kernels.warp_inpaint(feat, x, logits, skip, backend=backend)
            loss = sum((o * o).sum() for o in outs) + leo_kernels.grid_sample(feat, grid, backend=backend).sum()
            runs.append(torch.autograd.grad(loss, (feat, x, logits, skip, grid)))
    finally:
        torch.use_deterministic_algorithms(prev)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


def test_last_backend_reports_what_ran():
    g = _fresh(13)
    inp, grid = _randn(1, 2, 3, 3, g=g), _grid(1, 2, 2, torch.float32, g)
    for backend in BACKENDS:
        leo_kernels.grid_sample(inp, grid, backend=backend)
        assert leo_kernels.last_backend("grid_sample") == backend
    leo_kernels.grid_sample(inp, grid)
    assert leo_kernels.last_backend("grid_sample") == BACKENDS[0]


def test_env_var_forces_backend(monkeypatch):
    g = _fresh(14)
    inp, grid = _randn(1, 2, 3, 3, g=g), _grid(1, 2, 2, torch.float32, g)
    monkeypatch.setenv("LEO_KERNELS_BACKEND", "reference")
    leo_kernels.grid_sample(inp, grid)
    assert leo_kernels.last_backend("grid_sample") == "reference"


# --------------------------------------------------------------------------- bad input
def _gs_args():
    return torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 3, 2)


def _wi_args(skip=True):
    return torch.zeros(2, 4, 6, 8), torch.zeros(2, 4, 6, 8), torch.zeros(2, 3, 6, 8), torch.zeros(2, 3, 3, 4)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(input=torch.zeros(3, 4, 5)), ValueError, "input"),
        (dict(grid=torch.zeros(2, 3, 3)), ValueError, "grid"),
        (dict(grid=torch.zeros(2, 3, 3, 3)), ValueError, "grid"),
        (dict(grid=torch.zeros(1, 3, 3, 2)), ValueError, "grid"),
        (dict(grid=torch.zeros(2, 3, 3, 2, dtype=torch.float64)), TypeError, "grid"),
        (dict(grid=torch.zeros(2, 3, 3, 2, device="meta")), ValueError, "grid"),
        (dict(input=torch.zeros(2, 3, 4, 5, dtype=torch.int32)), TypeError, "input"),
        (dict(input=[[1.0]]), TypeError, "input"),
        (dict(input=torch.zeros(2, 3, 0, 5)), ValueError, "input"),
        (dict(padding_mode="mirror"), ValueError, "padding_mode"),
        (dict(align_corners=1), TypeError, "align_corners"),
        (dict(backend="tpu"), ValueError, "backend"),
    ],
)
def test_grid_sample_bad_input(kwargs, exc, match):
    inp, grid = _gs_args()
    args = dict(input=inp, grid=grid, padding_mode="zeros", align_corners=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        leo_kernels.grid_sample(**args)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(feat=torch.zeros(4, 6, 8)), ValueError, "feat"),
        (dict(x=torch.zeros(2, 4, 6, 7)), ValueError, "x"),
        (dict(x=torch.zeros(2, 5, 6, 8)), ValueError, "x"),
        (dict(logits=torch.zeros(2, 2, 6, 8)), ValueError, "logits"),
        (dict(logits=torch.zeros(2, 4, 6, 8)), ValueError, "logits.*3 channels"),
        (dict(logits=torch.zeros(1, 3, 6, 8)), ValueError, "logits"),
        (dict(logits=torch.zeros(2, 3, 6, 4)), ValueError, "logits"),
        (dict(skip=torch.zeros(2, 3, 6, 8)), ValueError, "skip"),
        (dict(skip=torch.zeros(1, 3, 3, 4)), ValueError, "skip"),
        (dict(skip=torch.zeros(2, 2, 3, 4)), ValueError, "skip"),
        (dict(skip=torch.zeros(2, 3, 3, 4, dtype=torch.float16)), TypeError, "skip"),
        (dict(x=torch.zeros(2, 4, 6, 8, device="meta")), ValueError, "x"),
        (dict(logits=torch.zeros(2, 3, 6, 8, dtype=torch.float64)), TypeError, "logits"),
        (dict(align_corners="yes"), TypeError, "align_corners"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_warp_inpaint_bad_input(kwargs, exc, match):
    feat, x, logits, skip = _wi_args()
    args = dict(feat=feat, x=x, logits=logits, skip=skip, align_corners=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        leo_kernels.warp_inpaint(**args)


def test_warp_inpaint_skip_needs_even_size():
    feat = torch.zeros(1, 2, 5, 6)
    with pytest.raises(ValueError, match="skip"):
        leo_kernels.warp_inpaint(feat, feat, torch.zeros(1, 3, 5, 6), torch.zeros(1, 3, 2, 3))


@pytest.mark.parametrize(
    "coarse, fine, exc, match",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 8, 8), ValueError, "coarse"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 8, 7), ValueError, "fine"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 8, 8), ValueError, "fine"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.float16), torch.zeros(2, 3, 8, 8), TypeError, "coarse"),
        (torch.zeros(2, 3, 4, 4, device="meta"), torch.zeros(2, 3, 8, 8), ValueError, "coarse"),
    ],
)
def test_compose_flow_bad_input(coarse, fine, exc, match):
    with pytest.raises(exc, match=match):
        leo_kernels.compose_flow(coarse, fine)


def test_unavailable_backend_is_clear():
    inp, grid = _gs_args()
    with pytest.raises(RuntimeError, match="cuda"):
        leo_kernels.grid_sample(inp, grid, backend="cuda")


def test_tolerances_are_meaningful():
    # A one-pixel shift of the grid must fail the float32 tolerance (the comparison can fail).
    g = _fresh(15)
    inp, grid = _randn(1, 4, 8, 8, g=g), _grid(1, 6, 6, torch.float32, g, 0.8)
    a = leo_kernels.grid_sample(inp, grid, backend=BACKENDS[0])
    b = reference.grid_sample(inp, grid + 2.0 / 8)
    with pytest.raises(AssertionError):
        assert_close(a, b)
    with pytest.raises(AssertionError):
        assert_close(torch.full_like(a, float("nan")), a)
    assert REL_TOL[torch.float32] < 1e-3


# --------------------------------------------------------------------------- non-finite features
# A NaN/Inf in the features must reach exactly the outputs (and gradients) where F.grid_sample
# puts it: wherever the pixel is an in-image corner of a sample (even with weight 0, as 0 * NaN
# is NaN there too), and nowhere else. Outside corners read zeros: a kernel that "reads" them as
# weight 0 times the value at offset 0 leaks pixel (0, 0) of the plane into every sample that
# leaves the image.
NONFINITE_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _plant_nonfinite(t):
    """NaN/Inf at (0, 0) and the other border corners, a different pattern per (n, c); every
    fifth plane stays clean. Returns a new tensor in t's layout."""
    t = t.detach().clone()
    _, c, h, w = t.shape
    nan, inf = float("nan"), float("inf")
    patterns = [
        [((0, 0), nan)],
        [((0, 0), inf)],
        [((0, w - 1), nan), ((h - 1, 0), -inf)],
        [((h - 1, w - 1), nan), ((0, 0), -inf), ((0, w - 1), inf)],
        [],
    ]
    for n in range(t.shape[0]):
        for ch in range(c):
            for (i, j), v in patterns[(n + ch) % len(patterns)]:
                t[n, ch, i, j] = v
    return t


def _outside_grid(n, ho, wo, dtype, g):
    """Random samples, many outside the image, plus the 25 points {-1.3, -1, 0, 1, 1.3}^2 (exact
    image edges for align_corners=True, beyond every edge and corner) at the start of each image."""
    grid = torch.rand(n, ho, wo, 2, generator=g, dtype=torch.float64) * 3.2 - 1.6
    vals = torch.tensor([-1.3, -1.0, 0.0, 1.0, 1.3], dtype=torch.float64)
    special = torch.cartesian_prod(vals, vals)
    assert ho * wo >= len(special)
    grid.view(n, ho * wo, 2)[:, : len(special)] = special
    return grid.to(dtype)


def _assert_same_nonfinite(got, want, tol, name):
    """Same NaN, +Inf and -Inf positions; the finite values close (relative error <= tol)."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.detach().double(), want.detach().double()
    for what, fn in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        a, b = fn(got), fn(want)
        bad = (a != b).nonzero()
        assert bad.numel() == 0, (
            f"{name}: {what} mismatch at {bad.shape[0]} positions, first {bad[:4].tolist()} "
            f"(cpu has {int(a.sum())}, reference {int(b.sum())})"
        )
    fin = torch.isfinite(want)
    err = rel_err(got[fin], want[fin])
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} on the finite values"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", NONFINITE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align", [False, True])
def test_grid_sample_nonfinite_features(backend, dtype, layout, padding, align):
    g = _fresh(16)
    # C = 5: channel groups of 4 plus a remainder; Wo = 13: 8-wide vector loop plus a tail.
    n, c, h, w, ho, wo = 2, 5, 6, 7, 4, 13
    inp = _layout(_plant_nonfinite(_randn(n, c, h, w, dtype=dtype, g=g)), layout).requires_grad_()
    grid = _outside_grid(n, ho, wo, dtype, g).requires_grad_()
    out = leo_kernels.grid_sample(inp, grid, padding, align, backend=backend)
    assert leo_kernels.last_backend("grid_sample") == backend
    ref = reference.grid_sample(inp, grid, padding, align)
    # The test means something: the reference has NaNs, and finite outputs in planes with NaN/Inf.
    assert ref.isnan().any() and ref[:, 0].isfinite().any() and ref[:, 1].isfinite().any()
    _assert_same_nonfinite(out, ref, REL_TOL[dtype], "out")
    gout = _randn(*out.shape, dtype=dtype, g=g)
    for got, want, name in zip(_grads(out, (inp, grid), gout), _grads(ref, (inp, grid), gout), ("input", "grid")):
        _assert_same_nonfinite(got, want, GRAD_TOL[dtype], f"grad_{name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", NONFINITE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_grid_sample_nan_at_origin_does_not_leak_outside(backend, dtype, layout):
    # The reported case: NaN at pixel (0, 0), every sample's corners outside the image (zeros
    # padding) -> exact zeros, as F.grid_sample gives; gradients for the grid are zeros too.
    inp = torch.ones(1, 6, 4, 5, dtype=dtype)
    inp[:, :, 0, 0] = float("nan")
    inp = _layout(inp, layout).requires_grad_()
    pts = [(-2.2, -2.2), (2.2, 2.2), (-2.2, 0.0), (0.0, -2.2), (2.2, -2.2), (-2.2, 2.2), (3.0, 0.5), (0.2, 2.5), (-9.0, -9.0)]
    grid = torch.tensor(pts, dtype=torch.float64).view(1, 1, len(pts), 2).repeat(1, 2, 1, 1).to(dtype).requires_grad_()
    for align in (False, True):
        out = leo_kernels.grid_sample(inp, grid, "zeros", align, backend=backend)
        ref = reference.grid_sample(inp, grid, "zeros", align)
        assert torch.equal(ref, torch.zeros_like(ref))
        assert torch.equal(out, torch.zeros_like(out)), "NaN/garbage leaked into samples outside the image"
        gi, gg = _grads(out, (inp, grid), torch.ones_like(out))
        assert torch.equal(gg, torch.zeros_like(gg)) and torch.equal(gi, torch.zeros_like(gi))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", NONFINITE_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("align", [False, True])
def test_warp_inpaint_nonfinite_features(backend, dtype, layout, align):
    # Small flows (samples near their pixel: the border pixels are hit, and samples leave the
    # image across every edge) and saturated ones (samples up to a full image away).
    cases = (((2, 5, 6, 10, True), 0.5), ((1, 5, 7, 9, False), 0.5), ((2, 5, 6, 10, True), 3.0))
    for seed, (shape, flow_scale) in enumerate(cases):
        g = _fresh(17 + seed)
        feat, x, logits, skip = _wi_inputs(shape, dtype, g, layout, flow_scale=flow_scale)
        feat = _layout(_plant_nonfinite(feat), layout).requires_grad_()
        inputs = [t for t in (feat, x, logits, skip) if t is not None]
        outs = leo_kernels.warp_inpaint(feat, x, logits, skip, align, backend=backend)
        assert leo_kernels.last_backend("warp_inpaint") == backend
        refs = reference.warp_inpaint(feat, x, logits, skip, align)
        if flow_scale < 1:
            assert refs[0].isnan().any() and refs[0][:, 0].isfinite().any()
        for got, want, name in zip(outs, refs, ("warped", "blended", "composed")):
            _assert_same_nonfinite(got, want, REL_TOL[dtype], name)
        gouts = [_randn(*o.shape, dtype=dtype, g=g) for o in outs]
        names = ("feat", "x", "logits", "skip")
        for got, want, name in zip(_grads(outs, inputs, gouts), _grads(refs, inputs, gouts), names):
            _assert_same_nonfinite(got, want, GRAD_TOL[dtype], f"grad_{name}")


# --------------------------------------------------------------------------- shared sample inputs
@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("op", _cases.FAMILIES["warp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sample_inputs_match_reference(backend, op, dtype):
    assert _cases.check_against_reference(op, backend, dtype=dtype) > 0


# --------------------------------------------------------------------------- CPU fast paths
# The float32 CPU kernels have paths the small shapes above do not reach: NCHW work in tiles of
# rows (~4k pixels each, so images bigger than that span several tiles, the last one partial),
# groups of 8 pixels sampled through a window of the plane when their corners are close together
# (smooth flows; groups across row ends, near the border or with scattered corners take the
# per-pixel path), and channels_last channel loops in vectors of 8 plus a tail. Every path is
# checked against the reference with smooth and random flows, forward and backward, and again in
# a subprocess with the AVX-512 and AVX2 kernels turned off (LEO_WARP_CPU_ISA).
FAST_PATH_SHAPES = [
    # (N, C, H, W, with_skip): several tiles, W not a multiple of 8, a last partial tile
    (2, 5, 70, 62, True),
    (1, 11, 96, 48, True),
    (3, 3, 37, 130, False),
    (1, 24, 18, 29, False),  # whole 8 x 8 blocks of the NHWC staging (channels and pixels) plus tails
    (1, 40, 43, 201, False),  # staging: several 512-pixel chunks and row tiles, a partial last one
]
# The float32 NCHW forwards of warp_inpaint and grid_sample can stage through NHWC (scattered flows,
# batches of small images; csrc/cpu/warp_cpu.cpp): LEO_WARP_CPU_STAGED forces it ("1") or the tile
# kernels ("0").
STAGED = ["0", "1"]


def _smooth_logits(n, h, w, g, pixels=3.0, dtype=torch.float32):
    """Low-frequency flow logits with displacements of about `pixels` pixels (a trained animator's)."""
    coarse = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    scale = torch.tensor([pixels * 2 / w, pixels * 2 / h, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    return (field * scale).to(dtype)


def _fast_path_inputs(shape, flow, layout, g, dtype=torch.float32):
    n, c, h, w, with_skip = shape
    feat = _layout(_randn(n, c, h, w, dtype=dtype, g=g), layout).requires_grad_()
    x = _layout(_randn(n, c, h, w, dtype=dtype, g=g), layout).requires_grad_()
    if flow == "smooth":
        logits = _smooth_logits(n, h, w, g, dtype=dtype)
        skip = _smooth_logits(n, h // 2, w // 2, g, pixels=1.0, dtype=dtype) if with_skip else None
    else:
        logits = _randn(n, 3, h, w, dtype=dtype, g=g, scale=0.5)
        skip = _randn(n, 3, h // 2, w // 2, dtype=dtype, g=g, scale=0.5) if with_skip else None
    return feat, x, logits.requires_grad_(), (skip.requires_grad_() if skip is not None else None)


def _check_fast_path_warp(shape, flow, layout, align, seed):
    g = _fresh(seed)
    feat, x, logits, skip = _fast_path_inputs(shape, flow, layout, g)
    inputs = [t for t in (feat, x, logits, skip) if t is not None]
    _poison_heap(tuple(feat.shape), dtype=torch.float32)
    outs = leo_kernels.warp_inpaint(feat, x, logits, skip, align, backend="cpu")
    refs = reference.warp_inpaint(feat, x, logits, skip, align)
    for got, want, name in zip(outs, refs, ("warped", "blended", "composed")):
        assert_close(got, want, torch.float32, name=name)
    gouts = [_layout(_randn(*o.shape, g=g), layout if o.shape[1] != 3 else "contiguous") for o in outs]
    names = ("feat", "x", "logits", "skip")
    for got, want, name in zip(_grads(outs, inputs, gouts), _grads(refs, inputs, gouts), names):
        assert_close(got, want, tol=GRAD_TOL[torch.float32], name=f"grad_{name}")


def _check_fast_path_grid_sample(shape, flow, layout, padding, align, seed):
    g = _fresh(seed)
    n, c, h, w, _ = shape
    ho, wo = h + 3, w - 5  # output size differs from the input's
    inp = _layout(_randn(n, c, h, w, g=g), layout).requires_grad_()
    if flow == "smooth":
        gx = torch.linspace(-1.05, 1.05, wo).view(1, 1, wo)
        gy = torch.linspace(-1.05, 1.05, ho).view(1, ho, 1)
        d = torch.tanh(_smooth_logits(n, ho, wo, g, pixels=2.0))
        grid = torch.stack((d[:, 0] + gx, d[:, 1] + gy), dim=-1)
    else:
        grid = _grid(n, ho, wo, torch.float32, g, 1.2)
    grid.requires_grad_()
    out = leo_kernels.grid_sample(inp, grid, padding, align, backend="cpu")
    ref = reference.grid_sample(inp, grid, padding, align)
    assert_close(out, ref, torch.float32, name="out")
    gout = _layout(_randn(*out.shape, g=g), layout)
    for got, want, name in zip(_grads(out, (inp, grid), gout), _grads(ref, (inp, grid), gout), ("input", "grid")):
        assert_close(got, want, tol=GRAD_TOL[torch.float32], name=f"grad_{name}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", FAST_PATH_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("flow", ["smooth", "random"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("staged", STAGED, ids=lambda v: f"staged={v}")
def test_warp_inpaint_fast_paths(backend, shape, flow, layout, staged, monkeypatch):
    monkeypatch.setenv("LEO_WARP_CPU_STAGED", staged)
    for seed, align in enumerate((False, True)):
        _check_fast_path_warp(shape, flow, layout, align, seed)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", FAST_PATH_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("flow", ["smooth", "random"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("staged", STAGED, ids=lambda v: f"staged={v}")
def test_grid_sample_fast_paths(backend, shape, flow, layout, staged, monkeypatch):
    monkeypatch.setenv("LEO_WARP_CPU_STAGED", staged)
    for seed, (padding, align) in enumerate(zip(PADDINGS, (False, True, False))):
        _check_fast_path_grid_sample(shape, flow, layout, padding, align, seed)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("flow", ["smooth", "random"])
@pytest.mark.parametrize("staged", STAGED, ids=lambda v: f"staged={v}")
def test_fast_paths_nonfinite_features(backend, layout, flow, staged, monkeypatch):
    monkeypatch.setenv("LEO_WARP_CPU_STAGED", staged)
    # Over several tiles, NaN/Inf pixels on the border and inside: next to window groups (smooth
    # flows), and under scattered groups whose pairs of corners start or end outside (random flows).
    g = _fresh(31)
    shape = (2, 6, 70, 62, True)
    feat, x, logits, skip = _fast_path_inputs(shape, flow, layout, g)
    planted = _plant_nonfinite(feat)
    planted[:, :3, 30, 20] = float("nan")
    planted[:, 3:, 41, 33] = float("inf")
    # next to the right and left borders: read, but not a corner, by pairs clamped into the row
    planted[:, ::2, 5:9, -2] = float("nan")
    planted[:, 1::2, 50:53, 1] = float("-inf")
    feat = _layout(planted, layout).requires_grad_()
    inputs = (feat, x, logits, skip)
    outs = leo_kernels.warp_inpaint(*inputs, backend=backend)
    refs = reference.warp_inpaint(*inputs)
    assert refs[0].isnan().any() and refs[0].isfinite().any()
    for got, want, name in zip(outs, refs, ("warped", "blended", "composed")):
        _assert_same_nonfinite(got, want, REL_TOL[torch.float32], name)
    gouts = [_randn(*o.shape, g=g) for o in outs]
    for got, want, name in zip(_grads(outs, inputs, gouts), _grads(refs, inputs, gouts), ("feat", "x", "logits", "skip")):
        _assert_same_nonfinite(got, want, GRAD_TOL[torch.float32], f"grad_{name}")
    grid = reference.flow_grid(logits.detach())
    inp = feat.detach().requires_grad_()
    grid.requires_grad_()
    out, ref = leo_kernels.grid_sample(inp, grid, backend=backend), reference.grid_sample(inp, grid)
    _assert_same_nonfinite(out, ref, REL_TOL[torch.float32], "grid_sample")
    gout = _randn(*out.shape, g=g)
    for got, want, name in zip(_grads(out, (inp, grid), gout), _grads(ref, (inp, grid), gout), ("input", "grid")):
        _assert_same_nonfinite(got, want, GRAD_TOL[torch.float32], f"grid_sample grad_{name}")


# Streaming stores (csrc: stream_outputs): the staged NCHW and the channels_last forwards write
# outputs of 16 MB or more with non-temporal stores where a run is aligned and plain stores
# elsewhere. LEO_WARP_CPU_STREAM=1 turns them on for small outputs too: planes of H * W not a
# multiple of 8 (unaligned runs), tiles of P pixels not a multiple of 16 (the 8-pixel and scalar
# tails), channels_last pixels of C not a multiple of 8.
STREAM_SHAPES = [
    (2, 16, 64, 64, True),   # aligned planes, whole 16-pixel runs
    (2, 5, 70, 62, True),    # unaligned planes, channels tail
    (1, 24, 18, 29, False),  # P = 18 * 29 rows: every tail
    (3, 9, 33, 40, False),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", STREAM_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("flow", ["smooth", "random"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forwards_with_streaming_stores(backend, shape, flow, layout, monkeypatch):
    monkeypatch.setenv("LEO_WARP_CPU_STAGED", "1")
    monkeypatch.setenv("LEO_WARP_CPU_STREAM", "1")
    for seed, align in enumerate((False, True)):
        _check_fast_path_warp(shape, flow, layout, align, 50 + seed)
    _check_fast_path_grid_sample(shape, flow, layout, "zeros", True, 52)


@pytest.mark.parametrize("backend", FAST)
def test_staged_image_beyond_the_kept_buffer(backend, monkeypatch):
    # An image of more than 64 MB is staged in a buffer of its own for the call (csrc: staging_buffer).
    monkeypatch.setenv("LEO_WARP_CPU_STAGED", "1")
    g = _fresh(43)
    inp = _randn(1, 257, 256, 256, g=g)
    grid = _grid(1, 64, 96, torch.float32, g, 1.1)
    assert_close(leo_kernels.grid_sample(inp, grid, backend=backend), reference.grid_sample(inp, grid), torch.float32,
                 name="out")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("align", [False, True])
def test_nonfinite_coordinates_read_nothing(backend, align):
    # docs/OPS.md: on the cpu backend a NaN or infinite sampling coordinate reads no corner (0),
    # where F.grid_sample gives NaN; the vectorized (AVX-512) and scalar coordinate code agree.
    g = _fresh(41)
    inp = _randn(2, 5, 20, 37, g=g)
    grid = _grid(2, 20, 37, torch.float32, g, 1.2)
    bad = [(0, 3, 5, 0, float("nan")), (0, 4, 6, 1, float("inf")), (1, 5, 7, 0, -float("inf")), (1, 6, 20, 1, float("nan"))]
    for n, i, j, k, v in bad:
        grid[n, i, j, k] = v
    out = leo_kernels.grid_sample(inp, grid, align_corners=align, backend=backend)
    ref = reference.grid_sample(inp, grid, align_corners=align)
    hit = torch.zeros(2, 20, 37, dtype=torch.bool)
    for n, i, j, _, _ in bad:
        hit[n, i, j] = True
    assert torch.equal(out.permute(0, 2, 3, 1)[hit], torch.zeros(len(bad), 5))
    assert_close(out.permute(0, 2, 3, 1)[~hit], ref.permute(0, 2, 3, 1)[~hit], torch.float32, name="finite pixels")
    # warp_inpaint: a NaN flow logit samples nothing (warped 0); a NaN mask logit makes the pixel NaN
    feat, x = _randn(2, 5, 20, 38, g=g), _randn(2, 5, 20, 38, g=g)
    logits = _randn(2, 3, 20, 38, g=g)
    logits[0, 0, 3, 5] = float("nan")
    logits[1, 1, 9, 30] = float("nan")
    logits[1, 2, 5, 7] = float("nan")
    warped, blended, _ = leo_kernels.warp_inpaint(feat, x, logits, align_corners=align, backend=backend)
    rw, rb, _ = reference.warp_inpaint(feat, x, logits, align_corners=align)
    assert torch.equal(warped[0, :, 3, 5], torch.zeros(5)) and torch.equal(warped[1, :, 9, 30], torch.zeros(5))
    assert warped[1, :, 5, 7].isnan().all() and blended[1, :, 5, 7].isnan().all()
    keep = torch.ones(2, 20, 38, dtype=torch.bool)
    keep[0, 3, 5] = keep[1, 9, 30] = keep[1, 5, 7] = False
    for got, want, name in ((warped, rw, "warped"), (blended, rb, "blended")):
        assert_close(got.permute(0, 2, 3, 1)[keep], want.permute(0, 2, 3, 1)[keep], torch.float32, name=name)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_fast_paths_without_avx512(backend, isa):
    # This machine's widest kernels ran above; the AVX2-only and scalar ones (other CPUs) run here.
    import os
    import subprocess
    import sys

    env = dict(os.environ, LEO_WARP_CPU_ISA=isa)
    tests = [f"{__file__}::{name}" for name in ("test_warp_inpaint_fast_paths", "test_grid_sample_fast_paths",
                                                  "test_fast_paths_nonfinite_features",
                                                  "test_nonfinite_coordinates_read_nothing",
                                                  "test_warp_inpaint_nonfinite_features")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], env=env,
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
