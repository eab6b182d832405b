"""Triton kernels of the StyleGAN2 ops (upfirdn2d, bias_act); same arguments as the compiled ops.

Called by the custom ops in leo_kernels/stylegan.py with dense (NCHW- or channels_last-contiguous)
inputs; outputs follow the same memory-format rule as the C++/CUDA kernels. Accumulation is in the
kernel/bias dtype: float32, or float64 for float64 inputs (CPU interpreter only).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The layout rule shared with the compiled kernels (leo_kernels/_op.py).
from leo_kernels._op import dense as _dense, empty_out as _empty_out, is_channels_last as _channels_last, output_format

_BLOCK = 256




@triton.jit
def _upfirdn2d_kernel(
    x_ptr, k_ptr, out_ptr, total, C, H, W, HO, WO,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    UPX, UPY, DOWNX, DOWNY, PADX0, PADY0,
    KH: tl.constexpr, KW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    # One lane per output element (n, c, oy, ox); taps that land on inserted zeros or padding are
    # masked. out[oy, ox] = sum K[KH-1-ty, KW-1-tx] * xup[oy*DOWNY + ty - PADY0, ox*DOWNX + tx - PADX0].
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    if CHANNELS_LAST:  # lanes follow the output's storage order (coalesced stores)
        c = offs % C
        t = offs // C
        ox = t % WO
        t = t // WO
        oy = t % HO
        n = t // HO
    else:
        ox = offs % WO
        t = offs // WO
        oy = t % HO
        t = t // HO
        c = t % C
        n = t // C
    base = n * sxn + c * sxc
    acc = tl.zeros([BLOCK], dtype=k_ptr.dtype.element_ty)
    for ty in tl.static_range(KH):
        uy = oy * DOWNY + ty - PADY0
        vy = (uy >= 0) & (uy < H * UPY) & (uy % UPY == 0)
        iy = tl.where(vy, uy, 0) // UPY
        for tx in tl.static_range(KW):
            ux = ox * DOWNX + tx - PADX0
            vx = (ux >= 0) & (ux < W * UPX) & (ux % UPX == 0)
            ix = tl.where(vx, ux, 0) // UPX
            w = tl.load(k_ptr + (KH - 1 - ty) * KW + (KW - 1 - tx))
            v = tl.load(x_ptr + base + iy * sxh + ix * sxw, mask=mask & vy & vx, other=0.0)
            acc += w * v.to(acc.dtype)
    out_off = n * son + c * soc + oy * soh + ox * sow
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


def upfirdn2d_fwd(x, kernel, upx, upy, downx, downy, padx0, padx1, pady0, pady1):
    x = _dense(x)
    kernel = kernel.contiguous()
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    ho = (h * upy + pady0 + pady1 - kh) // downy + 1
    wo = (w * upx + padx0 + padx1 - kw) // downx + 1
    if ho < 1 or wo < 1:
        raise ValueError("upfirdn2d: the upsampled and padded input is smaller than the kernel")
    out = _empty_out(x, (n, c, ho, wo))
    total = out.numel()
    if total == 0:
        return out
    grid = (triton.cdiv(total, _BLOCK),)
    _upfirdn2d_kernel[grid](
        x, kernel, out, total, c, h, w, ho, wo,
        *x.stride(), *out.stride(),
        upx, upy, downx, downy, padx0, pady0,
        KH=kh, KW=kw, CHANNELS_LAST=_channels_last(x), BLOCK=_BLOCK,
    )
    return out


@triton.jit
def _bias_act_kernel(
    x_ptr, b_ptr, g_ptr, out_ptr, prm_ptr, total, C, INNER, slope, gain,
    HAS_BIAS: tl.constexpr, BACKWARD: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
):
    # Storage-order lanes over a dense tensor: the channel of element i is (i // INNER) % C.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    if F64:  # float64 math end to end (scalar arguments would be rounded to float32)
        slope_v = tl.load(prm_ptr)
        gain_v = tl.load(prm_ptr + 1)
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float64)
    else:
        slope_v = slope
        gain_v = gain
        v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(b_ptr + (offs // INNER) % C, mask=mask, other=0.0).to(v.dtype)
    s = tl.where(v > 0, gain_v, gain_v * slope_v)
    if BACKWARD:
        res = tl.load(g_ptr + offs, mask=mask, other=0.0).to(v.dtype) * s
    else:
        res = v * s
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)


def _bias_act(x, bias, grad, negative_slope, gain):
    x = _dense(x)
    fmt = output_format(x)
    out = _empty_out(x, x.shape)
    total = x.numel()
    if total == 0:
        return out
    c, inner = 1, 1
    if bias is not None:
        if x.dim() < 2 or bias.shape != (x.shape[1],):
            raise ValueError(f"bias_act: bias must have shape (C,) = ({x.shape[1:2]},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
        c = x.shape[1]
        inner = 1 if fmt == torch.channels_last else max(1, x[0, 0].numel())
    if grad is not None:
        grad = grad.contiguous(memory_format=fmt)
    f64 = x.dtype == torch.float64
    prm = torch.tensor([negative_slope, gain], dtype=torch.float64, device=x.device) if f64 else x
    grid = (triton.cdiv(total, _BLOCK),)
    _bias_act_kernel[grid](
        x, bias if bias is not None else x, grad if grad is not None else x, out, prm, total, c, inner,
        float(negative_slope), float(gain),
        HAS_BIAS=bias is not None, BACKWARD=grad is not None, F64=f64, BLOCK=_BLOCK,
    )
    return out


def bias_act_fwd(x, bias, negative_slope, gain):
    return _bias_act(x, bias, None, negative_slope, gain)


def bias_act_bwd(grad_out, x, bias, negative_slope, gain):
    if grad_out.shape != x.shape:
        raise ValueError(f"bias_act backward: grad_out shape {tuple(grad_out.shape)} != x shape {tuple(x.shape)}")
    return _bias_act(x, bias, grad_out, negative_slope, gain)
