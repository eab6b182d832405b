"""Eager PyTorch references: the executable definition of every leo_kernels op.

These follow docs/OPS.md literally. Low-precision inputs are computed in float32
(coordinates, weights and reductions accumulate in float32 whatever the storage
dtype) and cast back; float64 stays float64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from leo_kernels._op import compute_dtype as _compute_dtype


# --------------------------------------------------------------------------- warp ops
def grid_sample(input, grid, padding_mode="zeros", align_corners=False):
    ct = _compute_dtype(input.dtype)
    out = F.grid_sample(
        input.to(ct), grid.to(ct), mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
    )
    return out.to(input.dtype)


def _up2_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """FIR [1,3,3,1] 2x upsampling along one axis with zero padding by one sample."""
    n = x.shape[dim]
    xp = F.pad(x.movedim(dim, -1), (1, 1)).movedim(-1, dim)
    prev, cur, nxt = xp.narrow(dim, 0, n), xp.narrow(dim, 1, n), xp.narrow(dim, 2, n)
    even = 0.25 * prev + 0.75 * cur
    odd = 0.75 * cur + 0.25 * nxt
    out = torch.stack((even, odd), dim=dim + 1)
    shape = list(x.shape)
    shape[dim] = 2 * n
    return out.reshape(shape)


def up2(x: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's FIR upsampler (kernel [1,3,3,1], factor 2) on the last two dims."""
    return _up2_axis(_up2_axis(x, x.dim() - 2), x.dim() - 1)


def compose_flow(coarse, fine):
    ct = _compute_dtype(fine.dtype)
    return (fine.to(ct) + up2(coarse.to(ct))).to(fine.dtype)


def flow_grid(composed: torch.Tensor) -> torch.Tensor:
    """The sampling grid of warp_inpaint: tanh(flow) + linspace grid (not an exact identity
    under align_corners=False; trained checkpoints depend on it)."""
    n, _, h, w = composed.shape
    gx = torch.linspace(-1.0, 1.0, w, device=composed.device, dtype=composed.dtype)
    gy = torch.linspace(-1.0, 1.0, h, device=composed.device, dtype=composed.dtype)
    fx = torch.tanh(composed[:, 0]) + gx.view(1, 1, w)
    fy = torch.tanh(composed[:, 1]) + gy.view(1, h, 1)
    return torch.stack((fx, fy), dim=-1)


def warp_inpaint(feat, x, logits, skip=None, align_corners=False):
    ct = _compute_dtype(feat.dtype)
    composed = logits.to(ct) if skip is None else logits.to(ct) + up2(skip.to(ct))
    grid = flow_grid(composed)
    mask = torch.sigmoid(composed[:, 2:3])
    warped = F.grid_sample(feat.to(ct), grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    warped = warped * mask
    blended = warped + x.to(ct) * (1.0 - mask)
    return warped.to(feat.dtype), blended.to(feat.dtype), composed.to(logits.dtype)


# --------------------------------------------------------------------------- StyleGAN2 ops
def upfirdn2d(x, kernel, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0)):
    """Upsample (zero insertion), pad (negative = crop), FIR filter (true convolution), downsample.

    ``up``/``down`` are (x, y) factors; ``pad`` is (x0, x1, y0, y1). The kernel is applied as is
    (no gain): callers scale it.
    """
    ux, uy = up
    dx, dy = down
    px0, px1, py0, py1 = pad
    ct = _compute_dtype(x.dtype)
    n, c, h, w = x.shape
    out = x.to(ct).reshape(n * c, 1, h, 1, w, 1)
    out = F.pad(out, (0, ux - 1, 0, 0, 0, uy - 1))
    out = out.reshape(n * c, 1, h * uy, w * ux)
    out = F.pad(out, (max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)))
    out = out[:, :, max(-py0, 0) : out.shape[2] - max(-py1, 0), max(-px0, 0) : out.shape[3] - max(-px1, 0)]
    w_ = torch.flip(kernel.to(ct), (0, 1)).view(1, 1, *kernel.shape)
    out = F.conv2d(out, w_)
    out = out[:, :, ::dy, ::dx]
    return out.reshape(n, c, out.shape[2], out.shape[3]).to(x.dtype)


def bias_act(x, bias=None, negative_slope=0.2, gain=math.sqrt(2.0)):
    """leaky_relu(x + bias, negative_slope) * gain, bias (C,) broadcast along dim 1."""
    ct = _compute_dtype(x.dtype)
    y = x.to(ct)
    if bias is not None:
        y = y + bias.to(ct).view(1, -1, *([1] * (x.dim() - 2)))
    y = F.leaky_relu(y, negative_slope) * gain
    return y.to(x.dtype)


# --------------------------------------------------------------------------- temporal attention
def rope_rotate(t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotary embedding (rotate-half) along the time axis of (B, heads, L, d): for i < d/2 the
    pair (t[i], t[i + d/2]) at time p is rotated by p * 10000^(-2i/d) (by minus that angle
    when ``inverse``, which is also the transpose, used for gradients). Angles in float64."""
    L, d = t.shape[-2], t.shape[-1]
    half = d // 2
    inv = 10000.0 ** (-torch.arange(half, device=t.device, dtype=torch.float64) * 2.0 / d)
    ang = torch.arange(L, device=t.device, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(t.dtype), ang.sin().to(t.dtype)
    if inverse:
        sin = -sin
    t1, t2 = t[..., :half], t[..., half:]
    return torch.cat((t1 * cos - t2 * sin, t1 * sin + t2 * cos), dim=-1)


def temporal_attention(q, k, v, rope=False):
    """softmax(q k^T / sqrt(d)) v over the time axis of (B, heads, L, d), no mask."""
    dtype, ct = q.dtype, _compute_dtype(q.dtype)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)
    if rope:
        q, k = rope_rotate(q), rope_rotate(k)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out.to(dtype)


def rms_norm_channels(x, weight, eps=1e-6):
    """RMSNorm over C of (B, C, L) at each time step."""
    ct = _compute_dtype(x.dtype)
    xf = x.to(ct)
    return xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + eps) * weight.to(ct).view(1, -1, 1)


def temporal_attention_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope=False):
    """x + w_out @ attention(split(w_qkv @ rmsnorm(x))) + b_out on (B, C, L). The rows of
    w_qkv are [q | k | v], each head-major (head h owns rows h*d .. h*d + d - 1); the
    attention output's channels are head-major too."""
    ct = _compute_dtype(x.dtype)
    B, C, L = x.shape
    h = rms_norm_channels(x, norm_weight)
    qkv = torch.einsum("oc,bcl->bol", w_qkv.to(ct), h)
    d = w_qkv.shape[0] // (3 * heads)
    q, k, v = qkv.view(B, 3, heads, d, L).permute(1, 0, 2, 4, 3).unbind(0)
    a = temporal_attention(q, k, v, rope)  # (B, heads, L, d)
    a = a.permute(0, 1, 3, 2).reshape(B, heads * d, L)
    y = x.to(ct) + torch.einsum("oc,bcl->bol", w_out.to(ct), a) + b_out.to(ct).view(1, -1, 1)
    return y.to(x.dtype)
