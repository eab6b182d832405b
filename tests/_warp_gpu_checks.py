"""Shared checks of a warp-op backend (Triton module or the compiled CUDA ops) vs the reference.

`ops` is any object with grid_sample_fwd/bwd, compose_flow_fwd/bwd, warp_inpaint_fwd/bwd taking the
argument lists of the compiled ops (interfaces.md).
"""
from __future__ import annotations

import contextlib

import torch

from leo_kernels import reference as R
from tests._util import REL_TOL, assert_close, channels_last, non_contiguous

PADS = ("zeros", "border", "reflection")
HALF = (torch.float16, torch.bfloat16)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


class CompiledOps:
    """The compiled ops (torch.ops.leo_kernels._*), named like the Triton module's functions."""

    def __getattr__(self, name):
        return getattr(torch.ops.leo_kernels, "_" + name)


def poison_allocator(device):
    """Fill freed memory of the CUDA caching allocator with NaN so outputs made by at::empty start
    poisoned; an element a kernel fails to write then shows up as NaN."""
    if torch.device(device).type == "cuda":
        torch.empty(1 << 24, device=device).fill_(float("nan"))
        torch.cuda.synchronize(device)


def _poisoned(t):
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype in (torch.int64, torch.int32):
        return t.fill_(-(2**30))
    return t


@contextlib.contextmanager
def poisoned_outputs(device):
    """Every torch.empty / empty_like made inside (the Triton module's outputs and scratch) starts as
    NaN, and the CUDA caching allocator's free memory is NaN too (the compiled ops' at::empty)."""
    poison_allocator(device)
    empty, empty_like = torch.empty, torch.empty_like
    torch.empty = lambda *a, **k: _poisoned(empty(*a, **k))
    torch.empty_like = lambda *a, **k: _poisoned(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def tol(dtype, grad=False):
    if dtype == torch.float32:
        # GPU builds use --use_fast_math (expf, division within 2 ulp): a few 1e-6 at most.
        return 3e-5 if grad else 1e-5
    if dtype == torch.float64:
        return 4e-10 if grad else 1e-10
    return REL_TOL[dtype]


from tests._cases import randn  # noqa: E402,F401  (the one generator of op inputs)


def check_grid_sample(ops, inp, grid, pad, align, det_repeat=False):
    dtype, dev = inp.dtype, inp.device
    ref_in = inp.detach().clone().requires_grad_()
    ref_grid = grid.detach().clone().requires_grad_()
    ref = R.grid_sample(ref_in, ref_grid, pad, align)
    go = randn(*ref.shape, dtype=dtype, device=dev)
    ref_gi, ref_gg = torch.autograd.grad(ref, (ref_in, ref_grid), go)
    with poisoned_outputs(dev):
        out = ops.grid_sample_fwd(inp, grid, PADS.index(pad), align)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, tol(dtype), f"grid_sample out ({pad}, align={align})")
    for det in (False, True):
        with poisoned_outputs(dev):
            gi, gg = ops.grid_sample_bwd(go, inp, grid, PADS.index(pad), align, det)
        assert gi.dtype == inp.dtype and gg.dtype == grid.dtype
        assert_close(gi, ref_gi, dtype, tol(dtype, True), f"grad_input det={det} ({pad}, align={align})")
        assert_close(gg, ref_gg, dtype, tol(dtype, True), f"grad_grid det={det} ({pad}, align={align})")
        if det and det_repeat:
            gi2, gg2 = ops.grid_sample_bwd(go, inp, grid, PADS.index(pad), align, True)
            assert torch.equal(gi, gi2) and torch.equal(gg, gg2), "deterministic backward not bitwise repeatable"


def check_compose_flow(ops, coarse, fine, go):
    dtype = fine.dtype
    c = coarse.detach().clone().requires_grad_()
    f = fine.detach().clone().requires_grad_()
    ref = R.compose_flow(c, f)
    (ref_gc,) = torch.autograd.grad(ref, (c,), go)
    with poisoned_outputs(fine.device):
        out, gc = ops.compose_flow_fwd(coarse, fine), ops.compose_flow_bwd(go)
    assert_close(out, ref, dtype, tol(dtype), "compose_flow out")
    assert_close(gc, ref_gc, dtype, tol(dtype), "grad_coarse")


def check_warp_inpaint(ops, feat, x, logits, skip, align, det_repeat=False):
    dtype, dev = feat.dtype, feat.device
    ins = [t.detach().clone().requires_grad_() for t in (feat, x, logits)]
    if skip is not None:
        ins.append(skip.detach().clone().requires_grad_())
    refs = R.warp_inpaint(*ins[:3], ins[3] if skip is not None else None, align)
    grads_out = [randn(*r.shape, dtype=dtype, device=dev) for r in refs]
    with poisoned_outputs(dev):
        outs = ops.warp_inpaint_fwd(feat, x, logits, skip, align)
    for name, o, r in zip(("warped", "blended", "composed"), outs, refs):
        assert o.dtype == r.dtype
        assert_close(o, r, dtype, tol(dtype), f"{name} (align={align})")
    composed = outs[2]
    full_ref_g = torch.autograd.grad(refs, ins, grads_out, retain_graph=True)
    if dtype in HALF:
        # What the autograd glue passes for half types: the exact float32 composed logits.
        c32 = logits.float() if skip is None else R.compose_flow(skip.float(), logits.float())
        with poisoned_outputs(dev):
            g = ops.warp_inpaint_bwd(*grads_out, feat, x, c32, skip is not None, align, False)
        for name, a, b in zip(("grad_feat", "grad_x", "grad_logits", "grad_skip"), g, full_ref_g):
            assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
            assert_close(a, b, dtype, tol(dtype, True), f"{name} float32 composed (align={align})")
    if skip is not None and dtype in HALF:
        # The backward sees composed rounded to the storage dtype (interface); bilinear grid gradients
        # jump at pixel edges, so take the reference gradient at that same rounded point.
        pt = [t.detach().clone().requires_grad_() for t in (feat, x, composed)]
        ref_g = list(torch.autograd.grad(R.warp_inpaint(*pt, None, align), pt, grads_out))
        s0 = torch.zeros(skip.shape, dtype=torch.float64, device=dev, requires_grad=True)
        ref_g += torch.autograd.grad(R.up2(s0), (s0,), ref_g[2].double())
    else:
        ref_g = full_ref_g
    for det in (False, True):
        with poisoned_outputs(dev):
            g = ops.warp_inpaint_bwd(*grads_out, feat, x, composed, skip is not None, align, det)
        assert len(g) == 4
        for name, a, b in zip(("grad_feat", "grad_x", "grad_logits", "grad_skip"), g, ref_g):
            assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
            assert_close(a, b, dtype, tol(dtype, True), f"{name} det={det} (align={align})")
        if skip is None:
            assert g[3].numel() == 0
        if det and det_repeat:
            g2 = ops.warp_inpaint_bwd(*grads_out, feat, x, composed, skip is not None, align, True)
            for a, b in zip(g, g2):
                assert torch.equal(a, b), "deterministic backward not bitwise repeatable"


# --------------------------------------------------------------------------- cases from a shape
# What every backend's test file runs for its own shapes (the global RNG draws the inputs, so a
# test seeds it first). layout "channels_last" stores the image inputs channels-last.


def check_grid_sample_modes(ops, inp, grid, det_repeat=False):
    """:func:`check_grid_sample` for every padding mode and both align_corners."""
    for pad in PADS:
        for align in (False, True):
            check_grid_sample(ops, inp, grid, pad, align, det_repeat)


def grid_sample_case(ops, shape, dtype, device, layout="nchw", det_repeat=False):
    """shape (N, C, H, W, Ho, Wo): a grid mostly in range, some samples outside (every padding
    mode's edge handling)."""
    N, C, H, W, Ho, Wo = shape
    inp = randn(N, C, H, W, dtype=dtype, device=device)
    if layout == "channels_last":
        inp = channels_last(inp)
    grid = randn(N, Ho, Wo, 2, dtype=dtype, device=device, scale=1.5)
    check_grid_sample_modes(ops, inp, grid, det_repeat)


def compose_flow_case(ops, shape, dtype, device):
    """shape (N, K, H, W) of the coarse flow; contiguous, then mixed channels_last/strided inputs."""
    N, K, H, W = shape
    coarse, fine = randn(N, K, H, W, dtype=dtype, device=device), randn(N, K, 2 * H, 2 * W, dtype=dtype, device=device)
    go = randn(N, K, 2 * H, 2 * W, dtype=dtype, device=device)
    check_compose_flow(ops, coarse, fine, go)
    check_compose_flow(ops, channels_last(coarse), non_contiguous(fine), non_contiguous(go))


def warp_inpaint_case(ops, shape, dtype, device, layout="nchw", det_repeat=False):
    """shape (N, C, H, W, with skip), both align_corners."""
    N, C, H, W, has_skip = shape
    feat, x = randn(N, C, H, W, dtype=dtype, device=device), randn(N, C, H, W, dtype=dtype, device=device)
    logits = randn(N, 3, H, W, dtype=dtype, device=device, scale=0.7)
    skip = randn(N, 3, H // 2, W // 2, dtype=dtype, device=device, scale=0.7) if has_skip else None
    if layout == "channels_last":
        feat, x = channels_last(feat), channels_last(x)
    for align in (False, True):
        check_warp_inpaint(ops, feat, x, logits, skip, align, det_repeat)
