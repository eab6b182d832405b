"""StyleGAN2 ops: upfirdn2d (FIR up/down-sampling) and bias_act (fused bias + leaky ReLU).

Both are ``torch.library`` custom ops (``leo_kernels::upfirdn2d``, ``leo_kernels::bias_act``) with fake
impls and autograd formulas whose backward passes are themselves differentiable custom ops, so they
can be differentiated twice (the R1 penalty of a discriminator), compiled with
``torch.compile(fullgraph=True)`` and captured in CUDA graphs.

- upfirdn2d's backward w.r.t. x is upfirdn2d of the gradient with the flipped kernel, up and down
  swapped and matching pads. The kernel is a constant filter on the fused backends: asking for its
  gradient raises a ValueError (the reference backend differentiates it).
- bias_act's backward is a gated multiply ``grad * gain * (x + b > 0 ? 1 : slope)`` (custom op
  ``leo_kernels::bias_act_backward``), itself linear in ``grad``; the bias gradient is its sum.
"""
from __future__ import annotations

import math

import torch

from leo_kernels import reference
from leo_kernels._checks import check_tensor
from leo_kernels._op import (
    call,
    compute_dtype as _compute_dtype,
    dense as _dense,
    empty_out as _empty_out,
    kernel as _op_kernel,
    register_compiled_fakes,
)

_SUPPORTED = ("cuda", "triton", "cpu", "reference")


# --------------------------------------------------------------------------- argument handling
def _factor(op: str, name: str, v) -> tuple[int, int]:
    """An up/down factor: int or (x, y), each >= 1."""
    vals = (v, v) if isinstance(v, int) and not isinstance(v, bool) else v
    try:
        vals = tuple(vals)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair (x, y) of ints, got {v!r}") from None
    if len(vals) != 2 or not all(isinstance(a, int) and not isinstance(a, bool) for a in vals):
        raise TypeError(f"{op}: {name} must be an int or a pair (x, y) of ints, got {v!r}")
    if min(vals) < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {v!r}")
    return vals


def _pad4(op: str, pad) -> tuple[int, int, int, int]:
    """pad: int, (p0, p1) for both axes (rosinality/LIA style) or (x0, x1, y0, y1)."""
    vals = (pad,) if isinstance(pad, int) and not isinstance(pad, bool) else pad
    try:
        vals = tuple(vals)
    except TypeError:
        raise TypeError(f"{op}: pad must be an int or a sequence of 2 or 4 ints, got {pad!r}") from None
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in vals):
        raise TypeError(f"{op}: pad must contain ints, got {pad!r}")
    if len(vals) == 1:
        return vals * 4
    if len(vals) == 2:
        return vals * 2
    if len(vals) == 4:
        return vals
    raise ValueError(f"{op}: pad must have 1, 2 or 4 entries (x0, x1, y0, y1), got {len(vals)}: {pad!r}")


def _out_size(in_size, up, down, p0, p1, k):
    return (in_size * up + p0 + p1 - k) // down + 1


def _out_shape(x_shape, kernel_shape, ux, uy, dx, dy, px0, px1, py0, py1):
    """(N, C, Ho, Wo) of upfirdn2d (works on SymInts: used by the fake impls)."""
    n, c, h, w = x_shape
    kh, kw = kernel_shape
    return (n, c, _out_size(h, uy, dy, py0, py1, kh), _out_size(w, ux, dx, px0, px1, kw))


def _kernel(name: str, backend: str):
    return _op_kernel("stylegan", name, backend)


# --------------------------------------------------------------------------- fake impls
# One fake per kernel with the compiled op's arguments: the custom ops' fakes call them and
# register_compiled_fakes (end of file) registers them for the compiled ops.
def _upfirdn2d_fwd_fake(x, kernel, upx, upy, downx, downy, padx0, padx1, pady0, pady1):
    return _empty_out(x, _out_shape(x.shape, kernel.shape, upx, upy, downx, downy, padx0, padx1, pady0, pady1))


def _bias_act_fwd_fake(x, bias, negative_slope, gain):
    return _empty_out(x, x.shape)


def _bias_act_bwd_fake(grad_out, x, bias, negative_slope, gain):
    return _empty_out(x, x.shape)


# --------------------------------------------------------------------------- upfirdn2d
def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), *, backend=None):
    """2-D FIR resampling: upsample by zero insertion, pad (negative crops), convolve, downsample.

    x (N, C, H, W); kernel (kh, kw), applied as a true convolution with no gain (scale it by up**2 to
    keep the mean when upsampling); up/down int or (x, y); pad int, (p0, p1) for both axes or
    (x0, x1, y0, y1). Output (N, C, (H*uy + py0 + py1 - kh)//dy + 1, (W*ux + px0 + px1 - kw)//dx + 1).
    """
    op = "upfirdn2d"
    check_tensor(op, "x", x, ndim=4)
    check_tensor(op, "kernel", kernel, ndim=2)
    if kernel.device != x.device:
        raise ValueError(f"{op}: kernel is on {kernel.device} but x is on {x.device}")
    if kernel.numel() == 0:
        raise ValueError(f"{op}: kernel must not be empty, got shape {tuple(kernel.shape)}")
    ux, uy = _factor(op, "up", up)
    dx, dy = _factor(op, "down", down)
    px0, px1, py0, py1 = _pad4(op, pad)
    kh, kw = kernel.shape
    for axis, size, u, p0, p1, k in (("x", x.shape[3], ux, px0, px1, kw), ("y", x.shape[2], uy, py0, py1, kh)):
        if size * u + p0 + p1 < k:
            raise ValueError(
                f"{op}: pad {pad!r} leaves {size * u + p0 + p1} samples along {axis} (size {size} * up {u}), "
                f"fewer than the kernel's {k}"
            )
    def custom(chosen):
        if kernel.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{op}: kernel requires grad, but the {chosen!r} backend treats the FIR kernel as a constant "
                "filter; pass kernel.detach() (or a buffer), or use backend='reference' to learn it"
            )
        k = kernel.to(_compute_dtype(x.dtype)).contiguous()
        return torch.ops.leo_kernels.upfirdn2d(_dense(x), k, [ux, uy], [dx, dy], [px0, px1, py0, py1], chosen)

    return call(
        op, x.device, backend, _SUPPORTED,
        lambda: reference.upfirdn2d(x, kernel, (ux, uy), (dx, dy), (px0, px1, py0, py1)),
        custom,
    )


@torch.library.custom_op(
    "leo_kernels::upfirdn2d",
    mutates_args=(),
    schema="(Tensor x, Tensor kernel, int[] up, int[] down, SymInt[] pad, str backend) -> Tensor",
)
def _upfirdn2d_op(x, kernel, up, down, pad, backend):
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    return _kernel("upfirdn2d_fwd", backend)(_dense(x), kernel, ux, uy, dx, dy, px0, px1, py0, py1)


@_upfirdn2d_op.register_fake
def _(x, kernel, up, down, pad, backend):
    return _upfirdn2d_fwd_fake(x, kernel, *up, *down, *pad)


def _upfirdn2d_setup(ctx, inputs, output):
    x, kernel, up, down, pad, backend = inputs
    ctx.save_for_backward(kernel)
    ctx.args = (x.shape[2], x.shape[3], tuple(up), tuple(down), tuple(pad), backend)


def _upfirdn2d_backward(ctx, grad):
    (kernel,) = ctx.saved_tensors
    h, w, (ux, uy), (dx, dy), (px0, px1, py0, py1), backend = ctx.args
    kh, kw = kernel.shape
    ho, wo = grad.shape[2], grad.shape[3]
    # Transposed resampling: flipped kernel, up <-> down, pads chosen so the result is (H, W).
    pad = [
        kw - px0 - 1,
        w * ux - wo * dx + px0 - ux + 1,
        kh - py0 - 1,
        h * uy - ho * dy + py0 - uy + 1,
    ]
    gx = torch.ops.leo_kernels.upfirdn2d(grad, kernel.flip((0, 1)), [dx, dy], [ux, uy], pad, backend)
    return gx, None, None, None, None, None


torch.library.register_autograd("leo_kernels::upfirdn2d", _upfirdn2d_backward, setup_context=_upfirdn2d_setup)


# --------------------------------------------------------------------------- bias_act
def bias_act(x, bias=None, negative_slope=0.2, gain=math.sqrt(2.0), *, backend=None):
    """``leaky_relu(x + bias, negative_slope) * gain`` with bias (C,) broadcast along dim 1.

    Twice differentiable in x and bias. A float bias of another dtype than x (e.g. a float32
    parameter under bf16 autocast) is used in float32, like the reference.
    """
    op = "bias_act"
    check_tensor(op, "x", x)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least 1 dim, got a 0-d tensor")
    if bias is not None:
        check_tensor(op, "bias", bias, ndim=1)
        if x.dim() < 2:
            raise ValueError(f"{op}: x must have a channel dim 1 when bias is given, got shape {tuple(x.shape)}")
        if bias.shape[0] != x.shape[1]:
            raise ValueError(
                f"{op}: bias must have shape ({x.shape[1]},) to match the {x.shape[1]} channels of x "
                f"(dim 1), got {tuple(bias.shape)}"
            )
        if bias.device != x.device:
            raise ValueError(f"{op}: bias is on {bias.device} but x is on {x.device}")
    for name, v in (("negative_slope", negative_slope), ("gain", gain)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{op}: {name} must be a number, got {type(v).__name__}")
    def custom(chosen):
        b = None if bias is None else bias.to(_compute_dtype(x.dtype))
        return torch.ops.leo_kernels.bias_act(_dense(x), b, float(negative_slope), float(gain), chosen)

    return call(op, x.device, backend, _SUPPORTED, lambda: reference.bias_act(x, bias, negative_slope, gain), custom)


@torch.library.custom_op("leo_kernels::bias_act", mutates_args=())
def _bias_act_op(
    x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float, gain: float, backend: str
) -> torch.Tensor:
    return _kernel("bias_act_fwd", backend)(_dense(x), bias, negative_slope, gain)


@_bias_act_op.register_fake
def _(x, bias, negative_slope, gain, backend):
    return _bias_act_fwd_fake(x, bias, negative_slope, gain)


@torch.library.custom_op("leo_kernels::bias_act_backward", mutates_args=())
def _bias_act_backward_op(
    grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float, gain: float, backend: str
) -> torch.Tensor:
    """grad * gain * (x + bias > 0 ? 1 : negative_slope), laid out like x."""
    return _kernel("bias_act_bwd", backend)(grad, _dense(x), bias, negative_slope, gain)


@_bias_act_backward_op.register_fake
def _(grad, x, bias, negative_slope, gain, backend):
    return _bias_act_bwd_fake(grad, x, bias, negative_slope, gain)


def _bias_grad(gx, bias):
    if bias is None:
        return None
    dims = [d for d in range(gx.dim()) if d != 1]
    return gx.sum(dim=dims, dtype=bias.dtype) if dims else gx.to(bias.dtype)


def _bias_act_setup(ctx, inputs, output):
    x, bias, negative_slope, gain, backend = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (negative_slope, gain, backend)


def _bias_act_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    gx = torch.ops.leo_kernels.bias_act_backward(grad, x, bias, *ctx.args)
    return gx, _bias_grad(gx, bias), None, None, None


torch.library.register_autograd("leo_kernels::bias_act", _bias_act_backward, setup_context=_bias_act_setup)


def _bias_act_backward_setup(ctx, inputs, output):
    grad, x, bias, negative_slope, gain, backend = inputs
    ctx.save_for_backward(x, bias)
    ctx.args = (negative_slope, gain, backend)


def _bias_act_backward_backward(ctx, gg):
    # Linear in grad with a piecewise-constant gate: d/dgrad is the same gated multiply and
    # d/dx, d/dbias are zero almost everywhere.
    x, bias = ctx.saved_tensors
    ggrad = torch.ops.leo_kernels.bias_act_backward(gg, x, bias, *ctx.args)
    return ggrad, None, None, None, None, None


torch.library.register_autograd(
    "leo_kernels::bias_act_backward", _bias_act_backward_backward, setup_context=_bias_act_backward_setup
)


# Fake impls of the compiled ops (declared in csrc/cpu/stylegan_cpu.cpp), when the extension loaded.
register_compiled_fakes({
    "_upfirdn2d_fwd": _upfirdn2d_fwd_fake,
    "_bias_act_fwd": _bias_act_fwd_fake,
    "_bias_act_bwd": _bias_act_bwd_fake,
})
