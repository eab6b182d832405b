"""Flow-warp ops: grid_sample, compose_flow, warp_inpaint (docs/OPS.md).

Each public function validates its arguments, picks a backend and either runs the eager
reference (plain autograd) or the custom op ``torch.ops.leo_kernels.<op>``. The custom ops
dispatch on their ``backend`` argument to the Triton module (``leo_kernels.triton.warp_triton``,
imported lazily) or to the compiled ops ``torch.ops.leo_kernels._<op>_fwd/_bwd`` (the dispatcher
routes those to the C++ CPU or CUDA kernel by device). Backward passes are custom ops too, so
both directions are opaque to torch.compile and capturable in CUDA graphs.

Layout contract (shared with csrc/cpu/warp_cpu.cpp and the CUDA/Triton kernels): the C-channel
outputs and gradients are channels_last when the feature input is channels_last (and not also
plain contiguous), else contiguous NCHW; grid, flow and logits tensors are contiguous.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from leo_kernels import reference
from leo_kernels._backend import deterministic_requested
from leo_kernels._checks import FLOAT_DTYPES, check_bool, check_choice, check_same, check_tensor
from leo_kernels._op import call, empty as _empty, kernel, output_format, register_compiled_fakes

_SUPPORTED = ("cuda", "triton", "cpu", "reference")
PADDING_MODES = {"zeros": 0, "border": 1, "reflection": 2}

__all__ = ["grid_sample", "compose_flow", "warp_inpaint", "PADDING_MODES"]


# The layout rule (leo_kernels/_op.py); kept under its old name.
feature_format = output_format


def _kernel(name: str, backend: str):
    return kernel("warp", name, backend)


# --------------------------------------------------------------------------- fake impls
# One fake per kernel, with the compiled op's arguments; the custom ops' fakes call them and
# register_compiled_fakes (end of file) registers them for the compiled ops.
def _grid_sample_fwd_fake(input, grid, padding_mode, align_corners):
    shape = (input.shape[0], input.shape[1], grid.shape[1], grid.shape[2])
    return _empty(shape, input, feature_format(input))


def _grid_sample_bwd_fake(grad_out, input, grid, padding_mode, align_corners, deterministic):
    return _empty(input.shape, input, feature_format(input)), _empty(grid.shape, grid)


def _compose_flow_fwd_fake(coarse, fine):
    return _empty(fine.shape, fine)


def _compose_flow_bwd_fake(grad_out):
    n, k, h, w = grad_out.shape
    return _empty((n, k, h // 2, w // 2), grad_out)


def _warp_inpaint_fwd_fake(feat, x, logits, skip, align_corners):
    fmt = feature_format(feat)
    return _empty(feat.shape, feat, fmt), _empty(feat.shape, feat, fmt), _empty(logits.shape, logits)


def _warp_inpaint_bwd_fake(grad_warped, grad_blended, grad_composed, feat, x, composed, has_skip, align_corners,
                           deterministic):
    fmt = feature_format(feat)
    n, _, h, w = composed.shape
    gs = _empty((n, 3, h // 2, w // 2), feat) if has_skip else _empty((0,), feat)
    return _empty(feat.shape, feat, fmt), _empty(feat.shape, feat, fmt), _empty(composed.shape, feat), gs


# =========================================================================== grid_sample
@torch.library.custom_op("leo_kernels::grid_sample", mutates_args=())
def _grid_sample_op(
    input: Tensor, grid: Tensor, padding_mode: int, align_corners: bool, deterministic: bool, backend: str
) -> Tensor:
    out = _kernel("grid_sample_fwd", backend)(input, grid, padding_mode, align_corners)
    return out.contiguous(memory_format=feature_format(input))


@_grid_sample_op.register_fake
def _(input, grid, padding_mode, align_corners, deterministic, backend):
    return _grid_sample_fwd_fake(input, grid, padding_mode, align_corners)


@torch.library.custom_op("leo_kernels::grid_sample_backward", mutates_args=())
def _grid_sample_backward_op(
    grad_out: Tensor,
    input: Tensor,
    grid: Tensor,
    padding_mode: int,
    align_corners: bool,
    deterministic: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    gi, gg = _kernel("grid_sample_bwd", backend)(grad_out, input, grid, padding_mode, align_corners, deterministic)
    return gi.contiguous(memory_format=feature_format(input)), gg.contiguous()


@_grid_sample_backward_op.register_fake
def _(grad_out, input, grid, padding_mode, align_corners, deterministic, backend):
    return _grid_sample_bwd_fake(grad_out, input, grid, padding_mode, align_corners, deterministic)


def _grid_sample_setup(ctx, inputs, output):
    input, grid, padding_mode, align_corners, deterministic, backend = inputs
    ctx.save_for_backward(input, grid)
    ctx.args = (padding_mode, align_corners, deterministic, backend)


def _grid_sample_grad(ctx, grad_out):
    input, grid = ctx.saved_tensors
    gi, gg = torch.ops.leo_kernels.grid_sample_backward(grad_out, input, grid, *ctx.args)
    return gi, gg, None, None, None, None


torch.library.register_autograd("leo_kernels::grid_sample", _grid_sample_grad, setup_context=_grid_sample_setup)


def grid_sample(input, grid, padding_mode="zeros", align_corners=False, *, backend=None):
    """Bilinear 2-D ``F.grid_sample``: input (N, C, H, W), grid (N, Ho, Wo, 2) -> (N, C, Ho, Wo)."""
    op = "grid_sample"
    check_tensor(op, "input", input, 4, FLOAT_DTYPES)
    check_tensor(op, "grid", grid, 4, FLOAT_DTYPES)
    check_same(op, "input", input, grid=grid)
    if grid.shape[-1] != 2:
        raise ValueError(f"{op}: grid must be (N, Ho, Wo, 2), got last dim {grid.shape[-1]} in {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"{op}: grid batch {grid.shape[0]} != input batch {input.shape[0]}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"{op}: input must have non-empty H and W, got shape {tuple(input.shape)}")
    check_choice(op, "padding_mode", padding_mode, PADDING_MODES)
    check_bool(op, "align_corners", align_corners)
    return call(
        op, input.device, backend, _SUPPORTED,
        lambda: reference.grid_sample(input, grid, padding_mode, align_corners),
        lambda chosen: torch.ops.leo_kernels.grid_sample(
            input, grid, PADDING_MODES[padding_mode], align_corners, deterministic_requested(), chosen
        ),
    )


# =========================================================================== compose_flow
@torch.library.custom_op("leo_kernels::compose_flow", mutates_args=())
def _compose_flow_op(coarse: Tensor, fine: Tensor, backend: str) -> Tensor:
    return _kernel("compose_flow_fwd", backend)(coarse, fine).contiguous()


@_compose_flow_op.register_fake
def _(coarse, fine, backend):
    return _compose_flow_fwd_fake(coarse, fine)


@torch.library.custom_op("leo_kernels::compose_flow_backward", mutates_args=())
def _compose_flow_backward_op(grad_out: Tensor, backend: str) -> Tensor:
    return _kernel("compose_flow_bwd", backend)(grad_out).contiguous()


@_compose_flow_backward_op.register_fake
def _(grad_out, backend):
    return _compose_flow_bwd_fake(grad_out)


def _compose_flow_setup(ctx, inputs, output):
    ctx.backend = inputs[2]


def _compose_flow_grad(ctx, grad_out):
    return torch.ops.leo_kernels.compose_flow_backward(grad_out, ctx.backend), grad_out, None


torch.library.register_autograd("leo_kernels::compose_flow", _compose_flow_grad, setup_context=_compose_flow_setup)


def compose_flow(coarse, fine, *, backend=None):
    """``fine + up2(coarse)``: coarse (N, K, H, W), fine (N, K, 2H, 2W); up2 = FIR [1,3,3,1] 2x upsampling."""
    op = "compose_flow"
    check_tensor(op, "coarse", coarse, 4, FLOAT_DTYPES)
    check_tensor(op, "fine", fine, 4, FLOAT_DTYPES)
    check_same(op, "fine", fine, coarse=coarse)
    n, k, h, w = coarse.shape
    if tuple(fine.shape) != (n, k, 2 * h, 2 * w):
        raise ValueError(
            f"{op}: fine must be (N, K, 2H, 2W) = {(n, k, 2 * h, 2 * w)} for coarse {tuple(coarse.shape)}, "
            f"got {tuple(fine.shape)}"
        )
    return call(
        op, fine.device, backend, _SUPPORTED,
        lambda: reference.compose_flow(coarse, fine),
        lambda chosen: torch.ops.leo_kernels.compose_flow(coarse, fine, chosen),
    )


# =========================================================================== warp_inpaint
@torch.library.custom_op("leo_kernels::warp_inpaint", mutates_args=())
def _warp_inpaint_op(
    feat: Tensor,
    x: Tensor,
    logits: Tensor,
    skip: Optional[Tensor],
    align_corners: bool,
    deterministic: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    warped, blended, composed = _kernel("warp_inpaint_fwd", backend)(feat, x, logits, skip, align_corners)
    fmt = feature_format(feat)
    return warped.contiguous(memory_format=fmt), blended.contiguous(memory_format=fmt), composed.contiguous()


@_warp_inpaint_op.register_fake
def _(feat, x, logits, skip, align_corners, deterministic, backend):
    return _warp_inpaint_fwd_fake(feat, x, logits, skip, align_corners)


# composed may be float32 for half/bfloat16 feat (see _warp_inpaint_setup); the gradients
# always have feat's dtype.
@torch.library.custom_op("leo_kernels::warp_inpaint_backward", mutates_args=())
def _warp_inpaint_backward_op(
    grad_warped: Tensor,
    grad_blended: Tensor,
    grad_composed: Tensor,
    feat: Tensor,
    x: Tensor,
    composed: Tensor,
    has_skip: bool,
    align_corners: bool,
    deterministic: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (grad_warped, grad_blended, grad_composed, feat, x, composed, has_skip, align_corners, deterministic)
    gf, gx, gl, gs = _kernel("warp_inpaint_bwd", backend)(*args)
    fmt = feature_format(feat)
    if not has_skip:
        gs = feat.new_empty(0)
    gl, gs = gl.to(feat.dtype).contiguous(), gs.to(feat.dtype).contiguous()
    return gf.contiguous(memory_format=fmt), gx.contiguous(memory_format=fmt), gl, gs


@_warp_inpaint_backward_op.register_fake
def _(grad_warped, grad_blended, grad_composed, feat, x, composed, has_skip, align_corners, deterministic, backend):
    return _warp_inpaint_bwd_fake(
        grad_warped, grad_blended, grad_composed, feat, x, composed, has_skip, align_corners, deterministic
    )


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _warp_inpaint_setup(ctx, inputs, output):
    feat, x, logits, skip, align_corners, deterministic, backend = inputs
    if feat.dtype in _LOW_PRECISION:
        # The forward sampled at the float32 composed logits; the stored half/bf16 copy would
        # shift the samples by up to ~W/2 * 2^-8 pixels, so keep the inputs and recompute it.
        ctx.save_for_backward(feat, x, logits, skip)
    else:
        ctx.save_for_backward(feat, x, output[2], None)
    ctx.args = (skip is not None, align_corners, deterministic, backend)


def _warp_inpaint_grad(ctx, grad_warped, grad_blended, grad_composed):
    feat, x, composed, skip = ctx.saved_tensors
    if feat.dtype in _LOW_PRECISION:
        logits = composed
        composed = logits.float()
        if skip is not None:
            composed = torch.ops.leo_kernels.compose_flow(skip.float(), composed, ctx.args[3])
    # Outputs that did not reach the loss may arrive as None.
    fmt = feature_format(feat)
    if grad_warped is None:
        grad_warped = torch.zeros_like(feat, memory_format=fmt)
    if grad_blended is None:
        grad_blended = torch.zeros_like(feat, memory_format=fmt)
    if grad_composed is None:
        grad_composed = torch.zeros_like(composed, dtype=feat.dtype)
    gf, gx, gl, gs = torch.ops.leo_kernels.warp_inpaint_backward(
        grad_warped, grad_blended, grad_composed, feat, x, composed, *ctx.args
    )
    return gf, gx, gl, (gs if ctx.args[0] else None), None, None, None


torch.library.register_autograd("leo_kernels::warp_inpaint", _warp_inpaint_grad, setup_context=_warp_inpaint_setup)


def warp_inpaint(feat, x, logits, skip=None, align_corners=False, *, backend=None):
    """One fused decoder level of the flow-based animator (docs/OPS.md).

    feat, x (N, C, H, W); logits (N, 3, H, W); skip (N, 3, H/2, W/2) or None.
    Returns (warped, blended, composed).
    """
    op = "warp_inpaint"
    check_tensor(op, "feat", feat, 4, FLOAT_DTYPES)
    check_tensor(op, "x", x, 4, FLOAT_DTYPES)
    check_tensor(op, "logits", logits, 4, FLOAT_DTYPES)
    if skip is not None:
        check_tensor(op, "skip", skip, 4, FLOAT_DTYPES)
    check_same(op, "feat", feat, x=x, logits=logits, skip=skip)
    n, c, h, w = feat.shape
    if h == 0 or w == 0:
        raise ValueError(f"{op}: feat must have non-empty H and W, got shape {tuple(feat.shape)}")
    if x.shape != feat.shape:
        raise ValueError(f"{op}: x must have feat's shape {tuple(feat.shape)}, got {tuple(x.shape)}")
    if logits.shape[1] != 3:
        raise ValueError(f"{op}: logits must have 3 channels (flow x, flow y, mask), got shape {tuple(logits.shape)}")
    if tuple(logits.shape) != (n, 3, h, w):
        raise ValueError(f"{op}: logits must be (N, 3, H, W) = {(n, 3, h, w)}, got {tuple(logits.shape)}")
    if skip is not None:
        if h % 2 or w % 2:
            raise ValueError(f"{op}: skip needs even H and W in feat, got {tuple(feat.shape)}")
        if tuple(skip.shape) != (n, 3, h // 2, w // 2):
            raise ValueError(f"{op}: skip must be (N, 3, H/2, W/2) = {(n, 3, h // 2, w // 2)}, got {tuple(skip.shape)}")
    check_bool(op, "align_corners", align_corners)
    return call(
        op, feat.device, backend, _SUPPORTED,
        lambda: reference.warp_inpaint(feat, x, logits, skip, align_corners),
        lambda chosen: torch.ops.leo_kernels.warp_inpaint(
            feat, x, logits, skip, align_corners, deterministic_requested(), chosen
        ),
    )


# =========================================================================== compiled-op fakes
# The compiled ops are declared in csrc/cpu/warp_cpu.cpp; their fakes are the ones above.
register_compiled_fakes({
    "_grid_sample_fwd": _grid_sample_fwd_fake,
    "_grid_sample_bwd": _grid_sample_bwd_fake,
    "_compose_flow_fwd": _compose_flow_fwd_fake,
    "_compose_flow_bwd": _compose_flow_bwd_fake,
    "_warp_inpaint_fwd": _warp_inpaint_fwd_fake,
    "_warp_inpaint_bwd": _warp_inpaint_bwd_fake,
})
