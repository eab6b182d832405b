"""Triton kernels of the warp ops (grid_sample, compose_flow, warp_inpaint); docs/OPS.md.

Functions match the compiled ops of interfaces.md without the leading underscore:
grid_sample_fwd/bwd, compose_flow_fwd/bwd, warp_inpaint_fwd/bwd. They run on CUDA tensors, and on
CPU tensors under TRITON_INTERPRET=1 (tests).

Design:
- 2-D tiles: a block of output pixels x a block of channels, so small and large C both fill the
  device. Any strides (NCHW, channels_last, non-contiguous) are handled by explicit stride arguments.
- Coordinates, weights and accumulations are float32 (float64 for float64 storage, interpreter only).
- warp_inpaint recomputes the composed logits (incl. the FIR [1,3,3,1] upsampling of skip), tanh,
  the linspace grid and the sigmoid mask in registers; grid and mask are never written.
- warp_inpaint_bwd takes `composed` in feat's dtype or float32 (the autograd glue keeps the exact
  float32 logits for half types); its gradients have feat's dtype.
- Backward: per-pixel reductions over channels (grid / mask gradients) go to per-channel-block fp32
  partial buffers summed in a fixed order (always deterministic). Input gradients are scattered with
  fp32 atomics (fp32 scratch for half types), or, with deterministic=True, gathered: the 4 corner
  targets of every output pixel are sorted (stable) and each input pixel sums its contributions in
  that fixed order, so results are bitwise repeatable.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from leo_kernels._op import compute_dtype, output_format

PAD_ZEROS, PAD_BORDER, PAD_REFLECTION = 0, 1, 2


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _tanh(x):
    # Stable for any |x| (exp of a non-positive number never overflows).
    t = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -r, r)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _linspace(idx, n, ACC: tl.constexpr):
    # torch.linspace(-1, 1, n) the way torch computes it (symmetric halves; n == 1 gives -1).
    nf = (n + 0 * idx).to(ACC)
    if ACC == tl.float64:
        step = 2.0 / tl.maximum(nf - 1.0, 1.0)
    else:
        step = tl.math.div_rn(nf * 0.0 + 2.0, tl.maximum(nf - 1.0, 1.0))  # IEEE division, like torch
    lo = -1.0 + step * idx.to(ACC)
    hi = 1.0 - step * (nf - 1.0 - idx.to(ACC))
    return tl.where((idx < n // 2) | (n == 1), lo, hi)


@triton.jit
def _unnormalize(coord, size, ALIGN: tl.constexpr):
    # Returns the pixel coordinate and d(pixel)/d(normalized).
    sizef = size * 1.0  # (written so a size specialized to a constant also works)
    if ALIGN:
        x = (coord + 1.0) * 0.5 * (sizef - 1.0)
        mult = (sizef - 1.0) * 0.5
    else:
        x = ((coord + 1.0) * sizef - 1.0) * 0.5
        mult = sizef * 0.5
    return x, mult


@triton.jit
def _clip(x, size):
    # clip to [0, size-1]; gradient 0 where clipped.
    hi = size * 1.0 - 1.0
    g = tl.where((x <= 0.0) | (x >= hi), 0.0, 1.0).to(x.dtype)
    return tl.minimum(tl.maximum(x, 0.0), hi), g


@triton.jit
def _reflect(x, twice_low, twice_high):
    # Reflect x into [twice_low/2, twice_high/2] like PyTorch; returns value and gradient sign.
    lo = twice_low * 0.5
    span = (twice_high - twice_low) * 0.5
    d = x - lo
    g = tl.where(d < 0, -1.0, 1.0).to(x.dtype)
    d = tl.abs(d)
    safe_span = tl.where(span > 0, span, 1.0)
    flips = tl.floor(d / safe_span)
    extra = d - flips * safe_span
    odd = (flips - 2.0 * tl.floor(flips * 0.5)) != 0.0
    r = tl.where(odd, span - extra + lo, extra + lo)
    g = tl.where(odd, -g, g)
    r = tl.where(span > 0, r, 0.0)
    g = tl.where(span > 0, g, 0.0)
    return r, g


@triton.jit
def _source_coord(coord, size, PAD: tl.constexpr, ALIGN: tl.constexpr):
    """Normalized coordinate -> pixel coordinate after padding, and its derivative."""
    x, mult = _unnormalize(coord, size, ALIGN)
    if PAD == 1:
        x, g = _clip(x, size)
        mult = mult * g
    elif PAD == 2:
        if ALIGN:
            x, g = _reflect(x, 0, 2 * (size - 1))
        else:
            x, g = _reflect(x, -1, 2 * size - 1)
        x, g2 = _clip(x, size)
        mult = mult * g * g2
    else:
        # Keep far-away samples in a range where floor/int conversion is safe (all corners stay outside).
        x = tl.minimum(tl.maximum(x, -2.0), size * 1.0 + 1.0)
    return x, mult


@triton.jit
def _pixel(p, Ho, Wo):
    """Flat output-pixel index -> (n, i, j) as int64. The division stays in p's own type: int32
    where p is, as 64-bit integer division is several times slower on GPUs."""
    rem = p % (Ho * Wo)
    return (p // (Ho * Wo)).to(tl.int64), (rem // Wo).to(tl.int64), (rem % Wo).to(tl.int64)


@triton.jit
def _tile(n, i, j, c64, s_n, s_c, s_h, s_w):
    """Offsets of a (pixels x channels) tile: pixels (n, i, j), channels c64."""
    return (n * s_n + i * s_h + j * s_w)[:, None] + (c64 * s_c)[None, :]


@triton.jit
def _flow_grid(c0, c1, i, j, H, W, ACC: tl.constexpr):
    """The sampling grid of composed flow logits (c0, c1) at pixel (i, j): tanh(flow) + identity."""
    return _tanh(c0) + _linspace(j, W, ACC), _tanh(c1) + _linspace(i, H, ACC)


@triton.jit
def _cell(ix, iy):
    """Pixel coordinates -> the top-left corner of their bilinear cell (int64) and the fractions."""
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    return x0f.to(tl.int64), y0f.to(tl.int64), ix - x0f, iy - y0f


@triton.jit
def _corner(x0, y0, tx, ty, H, W, K: tl.constexpr):
    """Corner K of the cell (x offset K % 2, y offset K // 2): position, bilinear factors, in bounds."""
    xx = x0 + K % 2
    yy = y0 + K // 2
    wx = tx if K % 2 == 1 else 1.0 - tx
    wy = ty if K // 2 == 1 else 1.0 - ty
    return xx, yy, wx, wy, (xx >= 0) & (xx < W) & (yy >= 0) & (yy < H)


# --------------------------------------------------------------------------- grid_sample
@triton.jit(do_not_specialize=["C", "H", "W", "Ho", "Wo", "P"])
def _gs_fwd_kernel(
    inp, grid, out,
    C, H, W, Ho, Wo, P,
    s_in, s_ic, s_ih, s_iw,
    s_gn, s_gh, s_gw, s_gk,
    s_on, s_oc, s_oh, s_ow,
    PAD: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = p < P
    cm = c < C
    n, i, j = _pixel(p, Ho, Wo)
    gbase = grid + n * s_gn + i * s_gh + j * s_gw
    gx = tl.load(gbase, mask=pm, other=0.0).to(ACC)
    gy = tl.load(gbase + s_gk, mask=pm, other=0.0).to(ACC)
    ix, _ = _source_coord(gx, W, PAD, ALIGN)
    iy, _ = _source_coord(gy, H, PAD, ALIGN)
    x0, y0, tx, ty = _cell(ix, iy)
    c64 = c.to(tl.int64)
    m2 = pm[:, None] & cm[None, :]
    ibase = inp + (n * s_in)[:, None] + (c64 * s_ic)[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for k in tl.static_range(4):
        xx, yy, wx, wy, ok = _corner(x0, y0, tx, ty, H, W, k)
        ok = ok & pm
        v = tl.load(ibase + (yy * s_ih + xx * s_iw)[:, None], mask=ok[:, None] & cm[None, :], other=0.0)
        acc += (wx * wy)[:, None] * v.to(ACC)
    optr = out + _tile(n, i, j, c64, s_on, s_oc, s_oh, s_ow)
    tl.store(optr, acc.to(out.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["C", "H", "W", "Ho", "Wo", "P"])
def _gs_bwd_kernel(
    go, inp, grid, gin, part,
    C, H, W, Ho, Wo, P,
    s_gon, s_goc, s_goh, s_gow,
    s_in, s_ic, s_ih, s_iw,
    s_gn, s_gh, s_gw, s_gk,
    s_an, s_ac, s_ah, s_aw,
    PAD: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = p < P
    cm = c < C
    n, i, j = _pixel(p, Ho, Wo)
    gbase = grid + n * s_gn + i * s_gh + j * s_gw
    gx = tl.load(gbase, mask=pm, other=0.0).to(ACC)
    gy = tl.load(gbase + s_gk, mask=pm, other=0.0).to(ACC)
    ix, mx = _source_coord(gx, W, PAD, ALIGN)
    iy, my = _source_coord(gy, H, PAD, ALIGN)
    x0, y0, tx, ty = _cell(ix, iy)
    c64 = c.to(tl.int64)
    m2 = pm[:, None] & cm[None, :]
    g = tl.load(go + _tile(n, i, j, c64, s_gon, s_goc, s_goh, s_gow), mask=m2, other=0.0).to(ACC)
    ibase = inp + (n * s_in)[:, None] + (c64 * s_ic)[None, :]
    abase = gin + (n * s_an)[:, None] + (c64 * s_ac)[None, :]
    dgx = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    dgy = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for k in tl.static_range(4):
        xx, yy, wx, wy, ok = _corner(x0, y0, tx, ty, H, W, k)
        ok = ok & pm
        sx = 1.0 if k % 2 == 1 else -1.0  # d wx / d ix
        sy = 1.0 if k // 2 == 1 else -1.0
        ok2 = ok[:, None] & cm[None, :]
        v = tl.load(ibase + (yy * s_ih + xx * s_iw)[:, None], mask=ok2, other=0.0).to(ACC)
        gv = g * v
        dgx += (sx * wy)[:, None] * gv
        dgy += (sy * wx)[:, None] * gv
        if ATOMIC:
            tl.atomic_add(abase + (yy * s_ah + xx * s_aw)[:, None], g * (wx * wy)[:, None], mask=ok2, sem="relaxed")
    # Per-channel-block partial sums of the grid gradient: part[pid_c, p, 0:2] (fp32, fixed-order sum later).
    px = tl.sum(dgx, axis=1) * mx
    py = tl.sum(dgy, axis=1) * my
    pbase = part + pid_c.to(tl.int64) * P * 2 + p.to(tl.int64) * 2
    tl.store(pbase, px.to(part.dtype.element_ty), mask=pm)
    tl.store(pbase + 1, py.to(part.dtype.element_ty), mask=pm)


@triton.jit(do_not_specialize=["H", "W", "Ho", "Wo", "P"])
def _gs_corners_kernel(
    grid, keys, wts,
    H, W, Ho, Wo, P,
    s_gn, s_gh, s_gw, s_gk,
    PAD: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr, INPAINT: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Deterministic backward, step 1: the 4 (target input pixel, weight) pairs of every output pixel.

    Pair id = 4*p + k. Invalid targets get key N*H*W (sorted last, never gathered).
    With INPAINT, `grid` is the composed logits (N,3,H,W strides) and the grid is recomputed.
    """
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    n, i, j = _pixel(p, Ho, Wo)
    gbase = grid + n * s_gn + i * s_gh + j * s_gw
    if INPAINT:
        c0 = tl.load(gbase, mask=pm, other=0.0).to(ACC)
        c1 = tl.load(gbase + s_gk, mask=pm, other=0.0).to(ACC)
        gx, gy = _flow_grid(c0, c1, i, j, H, W, ACC)
    else:
        gx = tl.load(gbase, mask=pm, other=0.0).to(ACC)
        gy = tl.load(gbase + s_gk, mask=pm, other=0.0).to(ACC)
    ix, _ = _source_coord(gx, W, PAD, ALIGN)
    iy, _ = _source_coord(gy, H, PAD, ALIGN)
    x0, y0, tx, ty = _cell(ix, iy)
    sentinel = (P // (Ho * Wo)).to(tl.int64) * H * W
    for k in tl.static_range(4):
        xx, yy, wx, wy, ok = _corner(x0, y0, tx, ty, H, W, k)
        key = tl.where(ok, (n * H + yy) * W + xx, sentinel)
        q = p.to(tl.int64) * 4 + k
        tl.store(keys + q, key, mask=pm)
        tl.store(wts + q, (wx * wy).to(wts.dtype.element_ty), mask=pm)


@triton.jit(do_not_specialize=["C", "H", "W", "Ho", "Wo", "T"])
def _gather_kernel(
    starts, perm, wts, go, gb, comp, gin,
    C, H, W, Ho, Wo, T,
    s_gon, s_goc, s_goh, s_gow,
    s_bn, s_bc, s_bh, s_bw,
    s_cn, s_cc, s_ch, s_cw,
    s_an, s_ac, s_ah, s_aw,
    ACC: tl.constexpr, INPAINT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Deterministic backward, step 2: every input pixel sums its contributions in sorted order.

    grid_sample: contribution = go[p, c] * w.  warp_inpaint: (gw + gb)[p, c] * sigmoid(comp[p, 2]) * w.
    """
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tm = t < T
    cm = c < C
    c64 = c.to(tl.int64)
    beg = tl.load(starts + t, mask=tm, other=0)
    end = tl.load(starts + t + 1, mask=tm, other=0)
    cnt = end - beg
    longest = tl.max(cnt, axis=0)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=ACC)
    for s in range(0, longest):
        ok = tm & (s < cnt)
        q = tl.load(perm + beg + s, mask=ok, other=0)
        w = tl.load(wts + q, mask=ok, other=0.0).to(ACC)
        n, i, j = _pixel(q // 4, Ho, Wo)
        ok2 = ok[:, None] & cm[None, :]
        g = tl.load(go + _tile(n, i, j, c64, s_gon, s_goc, s_goh, s_gow), mask=ok2, other=0.0).to(ACC)
        if INPAINT:
            g += tl.load(gb + _tile(n, i, j, c64, s_bn, s_bc, s_bh, s_bw), mask=ok2, other=0.0).to(ACC)
            c2 = tl.load(comp + n * s_cn + 2 * s_cc + i * s_ch + j * s_cw, mask=ok, other=0.0).to(ACC)
            w = w * _sigmoid(c2)
        acc += w[:, None] * g
    n, yy, xx = _pixel(t, H, W)
    aptr = gin + _tile(n, yy, xx, c64, s_an, s_ac, s_ah, s_aw)
    tl.store(aptr, acc.to(gin.dtype.element_ty), mask=tm[:, None] & cm[None, :])


# --------------------------------------------------------------------------- compose_flow
@triton.jit
def _up2_tap(src, n, k, a, b, hs, ws, s_n, s_k, s_h, s_w, mask, ACC: tl.constexpr):
    """up2(src)[n, k, a, b] for fine-resolution indices a (row) and b (col), in ACC."""
    ra = a // 2
    rb = b // 2
    # even output: 0.25*x[i-1] + 0.75*x[i]; odd output: 0.75*x[i] + 0.25*x[i+1]
    a2 = tl.where(a % 2 == 0, ra - 1, ra + 1)
    b2 = tl.where(b % 2 == 0, rb - 1, rb + 1)
    base = src + n * s_n + k * s_k
    a_ok = (a2 >= 0) & (a2 < hs)
    b_ok = (b2 >= 0) & (b2 < ws)
    v = 0.5625 * tl.load(base + ra * s_h + rb * s_w, mask=mask, other=0.0).to(ACC)
    v += 0.1875 * tl.load(base + a2 * s_h + rb * s_w, mask=mask & a_ok, other=0.0).to(ACC)
    v += 0.1875 * tl.load(base + ra * s_h + b2 * s_w, mask=mask & b_ok, other=0.0).to(ACC)
    v += 0.0625 * tl.load(base + a2 * s_h + b2 * s_w, mask=mask & a_ok & b_ok, other=0.0).to(ACC)
    return v


@triton.jit(do_not_specialize=["K", "Hc", "Wc", "Q"])
def _compose_fwd_kernel(
    coarse, fine, out, K, Hc, Wc, Q,
    s_cn, s_ck, s_ch, s_cw,
    s_fn, s_fk, s_fh, s_fw,
    s_on, s_ok, s_oh, s_ow,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = q < Q
    H = 2 * Hc
    W = 2 * Wc
    b = q % W
    a = (q // W) % H
    k = (q // (W * H)) % K
    n = q // (W * H * K)
    v = tl.load(fine + n * s_fn + k * s_fk + a * s_fh + b * s_fw, mask=m, other=0.0).to(ACC)
    v += _up2_tap(coarse, n, k, a, b, Hc, Wc, s_cn, s_ck, s_ch, s_cw, m, ACC)
    tl.store(out + n * s_on + k * s_ok + a * s_oh + b * s_ow, v.to(out.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["K", "Hc", "Wc", "Q"])
def _compose_bwd_kernel(
    g, out, K, Hc, Wc, Q,
    s_gn, s_gk, s_gh, s_gw,
    s_on, s_ok, s_oh, s_ow,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Adjoint of up2: out[r] = sum over fine rows 2r-1..2r+2 with weights .25 .75 .75 .25 (per axis)."""
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = q < Q
    H = 2 * Hc
    W = 2 * Wc
    rb = q % Wc
    ra = (q // Wc) % Hc
    k = (q // (Wc * Hc)) % K
    n = q // (Wc * Hc * K)
    base = g + n * s_gn + k * s_gk
    acc = tl.zeros((BLOCK,), dtype=ACC)
    for da in tl.static_range(4):
        a = 2 * ra - 1 + da
        wa = 0.75 if (da % 3) != 0 else 0.25
        for db in tl.static_range(4):
            b = 2 * rb - 1 + db
            wb = 0.75 if (db % 3) != 0 else 0.25
            ok = m & (a >= 0) & (a < H) & (b >= 0) & (b < W)
            acc += (wa * wb) * tl.load(base + a * s_gh + b * s_gw, mask=ok, other=0.0).to(ACC)
    tl.store(out + n * s_on + k * s_ok + ra * s_oh + rb * s_ow, acc.to(out.dtype.element_ty), mask=m)


# --------------------------------------------------------------------------- warp_inpaint
@triton.jit(do_not_specialize=["C", "H", "W", "P"])
def _wi_fwd_kernel(
    feat, x, logits, skip, warped, blended, composed,
    C, H, W, P,
    s_fn, s_fc, s_fh, s_fw,
    s_xn, s_xc, s_xh, s_xw,
    s_ln, s_lc, s_lh, s_lw,
    s_sn, s_sc, s_sh, s_sw,
    s_wn, s_wc, s_wh, s_ww,
    s_bn, s_bc, s_bh, s_bw,
    s_on, s_oc, s_oh, s_ow,
    HAS_SKIP: tl.constexpr, ALIGN: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = p < P
    cm = c < C
    n, i, j = _pixel(p, H, W)
    lbase = logits + n * s_ln + i * s_lh + j * s_lw
    c0 = tl.load(lbase, mask=pm, other=0.0).to(ACC)
    c1 = tl.load(lbase + s_lc, mask=pm, other=0.0).to(ACC)
    c2 = tl.load(lbase + 2 * s_lc, mask=pm, other=0.0).to(ACC)
    if HAS_SKIP:
        c0 += _up2_tap(skip, n, 0, i, j, H // 2, W // 2, s_sn, s_sc, s_sh, s_sw, pm, ACC)
        c1 += _up2_tap(skip, n, 1, i, j, H // 2, W // 2, s_sn, s_sc, s_sh, s_sw, pm, ACC)
        c2 += _up2_tap(skip, n, 2, i, j, H // 2, W // 2, s_sn, s_sc, s_sh, s_sw, pm, ACC)
    if pid_c == 0:
        obase = composed + n * s_on + i * s_oh + j * s_ow
        ct = composed.dtype.element_ty
        tl.store(obase, c0.to(ct), mask=pm)
        tl.store(obase + s_oc, c1.to(ct), mask=pm)
        tl.store(obase + 2 * s_oc, c2.to(ct), mask=pm)
    gx, gy = _flow_grid(c0, c1, i, j, H, W, ACC)
    msk = _sigmoid(c2)
    ix, _ = _source_coord(gx, W, 0, ALIGN)
    iy, _ = _source_coord(gy, H, 0, ALIGN)
    x0, y0, tx, ty = _cell(ix, iy)
    c64 = c.to(tl.int64)
    m2 = pm[:, None] & cm[None, :]
    fbase = feat + (n * s_fn)[:, None] + (c64 * s_fc)[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for k in tl.static_range(4):
        xx, yy, wx, wy, ok = _corner(x0, y0, tx, ty, H, W, k)
        ok = ok & pm
        v = tl.load(fbase + (yy * s_fh + xx * s_fw)[:, None], mask=ok[:, None] & cm[None, :], other=0.0)
        acc += (wx * wy)[:, None] * v.to(ACC)
    wv = acc * msk[:, None]
    xv = tl.load(x + _tile(n, i, j, c64, s_xn, s_xc, s_xh, s_xw), mask=m2, other=0.0).to(ACC)
    bv = wv + xv * (1.0 - msk)[:, None]
    tl.store(warped + _tile(n, i, j, c64, s_wn, s_wc, s_wh, s_ww), wv.to(warped.dtype.element_ty), mask=m2)
    tl.store(blended + _tile(n, i, j, c64, s_bn, s_bc, s_bh, s_bw), bv.to(blended.dtype.element_ty), mask=m2)


@triton.jit(do_not_specialize=["C", "H", "W", "P"])
def _wi_bwd_kernel(
    gw, gb, feat, x, comp, gfeat, gx_out, part,
    C, H, W, P,
    s_gwn, s_gwc, s_gwh, s_gww,
    s_gbn, s_gbc, s_gbh, s_gbw,
    s_fn, s_fc, s_fh, s_fw,
    s_xn, s_xc, s_xh, s_xw,
    s_cn, s_cc, s_ch, s_cw,
    s_an, s_ac, s_ah, s_aw,
    s_dn, s_dc, s_dh, s_dw,
    ALIGN: tl.constexpr, ACC: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = p < P
    cm = c < C
    n, i, j = _pixel(p, H, W)
    cbase = comp + n * s_cn + i * s_ch + j * s_cw
    c0 = tl.load(cbase, mask=pm, other=0.0).to(ACC)
    c1 = tl.load(cbase + s_cc, mask=pm, other=0.0).to(ACC)
    c2 = tl.load(cbase + 2 * s_cc, mask=pm, other=0.0).to(ACC)
    gxn, gyn = _flow_grid(c0, c1, i, j, H, W, ACC)
    msk = _sigmoid(c2)
    ix, mx = _source_coord(gxn, W, 0, ALIGN)
    iy, my = _source_coord(gyn, H, 0, ALIGN)
    x0, y0, tx, ty = _cell(ix, iy)
    c64 = c.to(tl.int64)
    m2 = pm[:, None] & cm[None, :]
    gwv = tl.load(gw + _tile(n, i, j, c64, s_gwn, s_gwc, s_gwh, s_gww), mask=m2, other=0.0).to(ACC)
    gbv = tl.load(gb + _tile(n, i, j, c64, s_gbn, s_gbc, s_gbh, s_gbw), mask=m2, other=0.0).to(ACC)
    xv = tl.load(x + _tile(n, i, j, c64, s_xn, s_xc, s_xh, s_xw), mask=m2, other=0.0).to(ACC)
    tl.store(gx_out + _tile(n, i, j, c64, s_dn, s_dc, s_dh, s_dw),
             (gbv * (1.0 - msk)[:, None]).to(gx_out.dtype.element_ty), mask=m2)
    gsum = gwv + gbv
    gs = gsum * msk[:, None]  # gradient of the sampled value
    fbase = feat + (n * s_fn)[:, None] + (c64 * s_fc)[None, :]
    abase = gfeat + (n * s_an)[:, None] + (c64 * s_ac)[None, :]
    samp = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    dgx = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    dgy = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for k in tl.static_range(4):
        xx, yy, wx, wy, ok = _corner(x0, y0, tx, ty, H, W, k)
        ok = ok & pm
        sx = 1.0 if k % 2 == 1 else -1.0  # d wx / d ix
        sy = 1.0 if k // 2 == 1 else -1.0
        ok2 = ok[:, None] & cm[None, :]
        v = tl.load(fbase + (yy * s_fh + xx * s_fw)[:, None], mask=ok2, other=0.0).to(ACC)
        samp += (wx * wy)[:, None] * v
        dgx += (sx * wy)[:, None] * v
        dgy += (sy * wx)[:, None] * v
        if ATOMIC:
            tl.atomic_add(abase + (yy * s_ah + xx * s_aw)[:, None], gs * (wx * wy)[:, None], mask=ok2, sem="relaxed")
    dm = tl.sum(gsum * samp - gbv * xv, axis=1)
    px = tl.sum(gs * dgx, axis=1) * mx
    py = tl.sum(gs * dgy, axis=1) * my
    pbase = part + pid_c.to(tl.int64) * P * 3 + p.to(tl.int64) * 3
    tl.store(pbase, px, mask=pm)
    tl.store(pbase + 1, py, mask=pm)
    tl.store(pbase + 2, dm, mask=pm)


@triton.jit(do_not_specialize=["H", "W", "P", "NCB"])
def _wi_logits_grad_kernel(
    part, comp, gcomp, out, H, W, P, NCB,
    s_cn, s_cc, s_ch, s_cw,
    s_gn, s_gc, s_gh, s_gw,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Sum channel-block partials in fixed order; chain through tanh / sigmoid; add grad_composed.

    out is a contiguous (N, 3, H, W) buffer in ACC precision.
    """
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < P
    p64 = p.to(tl.int64)
    n, i, j = _pixel(p, H, W)
    px = tl.zeros((BLOCK,), dtype=ACC)
    py = tl.zeros((BLOCK,), dtype=ACC)
    dm = tl.zeros((BLOCK,), dtype=ACC)
    for cb in range(0, NCB):
        b = part + cb * P * 3 + p64 * 3
        px += tl.load(b, mask=pm, other=0.0).to(ACC)
        py += tl.load(b + 1, mask=pm, other=0.0).to(ACC)
        dm += tl.load(b + 2, mask=pm, other=0.0).to(ACC)
    cbase = comp + n * s_cn + i * s_ch + j * s_cw
    gbase = gcomp + n * s_gn + i * s_gh + j * s_gw
    t0 = _tanh(tl.load(cbase, mask=pm, other=0.0).to(ACC))
    t1 = _tanh(tl.load(cbase + s_cc, mask=pm, other=0.0).to(ACC))
    m = _sigmoid(tl.load(cbase + 2 * s_cc, mask=pm, other=0.0).to(ACC))
    g0 = px * (1.0 - t0 * t0) + tl.load(gbase, mask=pm, other=0.0).to(ACC)
    g1 = py * (1.0 - t1 * t1) + tl.load(gbase + s_gc, mask=pm, other=0.0).to(ACC)
    g2 = dm * m * (1.0 - m) + tl.load(gbase + 2 * s_gc, mask=pm, other=0.0).to(ACC)
    obase = out + n * 3 * H * W + i * W + j
    tl.store(obase, g0, mask=pm)
    tl.store(obase + H * W, g1, mask=pm)
    tl.store(obase + 2 * H * W, g2, mask=pm)


# --------------------------------------------------------------------------- host side
def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# The dtype and layout rules shared with the compiled kernels (leo_kernels/_op.py).
_acc_torch = compute_dtype
_fmt = output_format


def _blocks(C: int):
    block_c = min(triton.next_power_of_2(max(C, 1)), 32)
    block_p = 64 if block_c >= 16 else 128
    return block_p, block_c


def _grid_order(s):
    """(n, c, h, w) strides of the composed logits in the (n, h, w, k) order of grid strides."""
    return (s[0], s[2], s[3], s[1])


def _check_pad(padding_mode: int):
    if padding_mode not in (PAD_ZEROS, PAD_BORDER, PAD_REFLECTION):
        raise ValueError(f"grid_sample: padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), got {padding_mode!r}")


def grid_sample_fwd(input: torch.Tensor, grid: torch.Tensor, padding_mode: int, align_corners: bool) -> torch.Tensor:
    _check_pad(padding_mode)
    N, C, H, W = input.shape
    Ho, Wo = grid.shape[1], grid.shape[2]
    out = torch.empty((N, C, Ho, Wo), device=input.device, dtype=input.dtype, memory_format=_fmt(input))
    P = N * Ho * Wo
    if P == 0 or C == 0:
        return out
    if H == 0 or W == 0:
        return out.zero_()
    bp, bc = _blocks(C)
    _gs_fwd_kernel[(triton.cdiv(P, bp), triton.cdiv(C, bc))](
        input, grid, out, C, H, W, Ho, Wo, P,
        *input.stride(), *grid.stride(), *out.stride(),
        PAD=padding_mode, ALIGN=bool(align_corners), ACC=_acc(input.dtype), BLOCK_P=bp, BLOCK_C=bc,
    )
    return out


def _deterministic_grad_input(
    coords, coord_strides, go, go_strides, gb, gb_strides, comp, comp_strides,
    shape_in, Ho, Wo, padding_mode, align_corners, inpaint, out_dtype, out_fmt, acc,
):
    """Sort-then-gather scatter-free input gradient (bitwise repeatable)."""
    N, C, H, W = shape_in
    dev = go.device
    P = N * Ho * Wo
    keys = torch.empty(P * 4, device=dev, dtype=torch.int64)
    wts = torch.empty(P * 4, device=dev, dtype=_acc_torch(out_dtype))
    bp = 128
    _gs_corners_kernel[(triton.cdiv(P, bp),)](
        coords, keys, wts, H, W, Ho, Wo, P, *coord_strides,
        PAD=padding_mode, ALIGN=bool(align_corners), ACC=acc, INPAINT=inpaint, BLOCK_P=bp,
    )
    sorted_keys, perm = torch.sort(keys, stable=True)
    T = N * H * W
    starts = torch.searchsorted(sorted_keys, torch.arange(T + 1, device=dev, dtype=torch.int64))
    gin = torch.empty((N, C, H, W), device=dev, dtype=out_dtype, memory_format=out_fmt)
    bt, bc = _blocks(C)
    _gather_kernel[(triton.cdiv(T, bt), triton.cdiv(C, bc))](
        starts, perm, wts, go, gb, comp, gin, C, H, W, Ho, Wo, T,
        *go_strides, *gb_strides, *comp_strides, *gin.stride(),
        ACC=acc, INPAINT=inpaint, BLOCK_T=bt, BLOCK_C=bc,
    )
    return gin


def grid_sample_bwd(grad_out, input, grid, padding_mode: int, align_corners: bool, deterministic: bool):
    _check_pad(padding_mode)
    N, C, H, W = input.shape
    Ho, Wo = grid.shape[1], grid.shape[2]
    P = N * Ho * Wo
    acc_t = _acc_torch(input.dtype)
    fmt = _fmt(input)
    if P == 0 or C == 0 or H == 0 or W == 0:
        return torch.zeros_like(input, memory_format=fmt), torch.zeros_like(grid)
    bp, bc = _blocks(C)
    ncb = triton.cdiv(C, bc)
    part = torch.empty((ncb, P, 2), device=input.device, dtype=acc_t)
    atomic = not deterministic
    if atomic:
        # fp32 (fp64) accumulation buffer; the input dtype's when they coincide.
        gin = torch.empty((N, C, H, W), device=input.device, dtype=acc_t, memory_format=fmt).zero_()
    else:
        gin = part  # unused placeholder pointer
    _gs_bwd_kernel[(triton.cdiv(P, bp), ncb)](
        grad_out, input, grid, gin, part, C, H, W, Ho, Wo, P,
        *grad_out.stride(), *input.stride(), *grid.stride(),
        *(gin.stride() if atomic else (0, 0, 0, 0)),
        PAD=padding_mode, ALIGN=bool(align_corners), ACC=_acc(input.dtype), ATOMIC=atomic,
        BLOCK_P=bp, BLOCK_C=bc,
    )
    # Fixed-order sum over channel blocks (deterministic).
    grad_grid = (part[0] if ncb == 1 else part.sum(0)).view(N, Ho, Wo, 2).to(grid.dtype)
    if atomic:
        grad_input = gin if gin.dtype == input.dtype else gin.to(input.dtype)
    else:
        grad_input = _deterministic_grad_input(
            grid, grid.stride(), grad_out, grad_out.stride(), grad_out, grad_out.stride(), grid, (0, 0, 0, 0),
            (N, C, H, W), Ho, Wo, padding_mode, align_corners, False, input.dtype, fmt, _acc(input.dtype),
        )
    return grad_input, grad_grid


def compose_flow_fwd(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    N, K, Hc, Wc = coarse.shape
    out = torch.empty(fine.shape, device=fine.device, dtype=fine.dtype, memory_format=_fmt(fine))
    Q = out.numel()
    if Q == 0:
        return out
    block = 256
    _compose_fwd_kernel[(triton.cdiv(Q, block),)](
        coarse, fine, out, K, Hc, Wc, Q, *coarse.stride(), *fine.stride(), *out.stride(),
        ACC=_acc(fine.dtype), BLOCK=block,
    )
    return out


def _compose_bwd_into(g: torch.Tensor, out: torch.Tensor, acc):
    N, K, Hc, Wc = out.shape
    Q = out.numel()
    if Q == 0:
        return out
    block = 256
    _compose_bwd_kernel[(triton.cdiv(Q, block),)](
        g, out, K, Hc, Wc, Q, *g.stride(), *out.stride(), ACC=acc, BLOCK=block,
    )
    return out


def compose_flow_bwd(grad_out: torch.Tensor) -> torch.Tensor:
    N, K, H, W = grad_out.shape
    out = torch.empty((N, K, H // 2, W // 2), device=grad_out.device, dtype=grad_out.dtype)
    return _compose_bwd_into(grad_out, out, _acc(grad_out.dtype))


def warp_inpaint_fwd(feat, x, logits, skip, align_corners: bool):
    N, C, H, W = feat.shape
    fmt = _fmt(feat)
    warped = torch.empty((N, C, H, W), device=feat.device, dtype=feat.dtype, memory_format=fmt)
    blended = torch.empty_like(warped)
    composed = torch.empty((N, 3, H, W), device=logits.device, dtype=logits.dtype)
    P = N * H * W
    if P == 0:
        return warped, blended, composed
    has_skip = skip is not None
    sk = skip if has_skip else logits
    bp, bc = _blocks(C)
    _wi_fwd_kernel[(triton.cdiv(P, bp), max(triton.cdiv(C, bc), 1))](
        feat, x, logits, sk, warped, blended, composed, C, H, W, P,
        *feat.stride(), *x.stride(), *logits.stride(), *sk.stride(),
        *warped.stride(), *blended.stride(), *composed.stride(),
        HAS_SKIP=has_skip, ALIGN=bool(align_corners), ACC=_acc(feat.dtype), BLOCK_P=bp, BLOCK_C=bc,
    )
    return warped, blended, composed


def warp_inpaint_bwd(grad_warped, grad_blended, grad_composed, feat, x, composed,
                     has_skip: bool, align_corners: bool, deterministic: bool):
    N, C, H, W = feat.shape
    dev = feat.device
    acc = _acc(feat.dtype)
    acc_t = _acc_torch(feat.dtype)
    fmt = _fmt(feat)
    P = N * H * W
    grad_x = torch.empty((N, C, H, W), device=dev, dtype=x.dtype, memory_format=_fmt(x))
    gl = torch.empty((N, 3, H, W), device=dev, dtype=_acc_torch(composed.dtype))
    if P == 0:
        gfeat = torch.zeros_like(feat, memory_format=fmt)
        gskip = feat.new_zeros((N, 3, H // 2, W // 2)) if has_skip else feat.new_empty((0,))
        return gfeat, grad_x, feat.new_zeros((N, 3, H, W)), gskip
    bp, bc = _blocks(C)
    ncb = max(triton.cdiv(C, bc), 1)
    part = torch.empty((ncb, P, 3), device=dev, dtype=acc_t)
    atomic = not deterministic
    gfeat = torch.empty((N, C, H, W), device=dev, dtype=acc_t, memory_format=fmt).zero_() if atomic else part
    _wi_bwd_kernel[(triton.cdiv(P, bp), ncb)](
        grad_warped, grad_blended, feat, x, composed, gfeat, grad_x, part, C, H, W, P,
        *grad_warped.stride(), *grad_blended.stride(), *feat.stride(), *x.stride(), *composed.stride(),
        *(gfeat.stride() if atomic else (0, 0, 0, 0)), *grad_x.stride(),
        ALIGN=bool(align_corners), ACC=acc, ATOMIC=atomic, BLOCK_P=bp, BLOCK_C=bc,
    )
    bl = 128
    _wi_logits_grad_kernel[(triton.cdiv(P, bl),)](
        part, composed, grad_composed, gl, H, W, P, ncb,
        *composed.stride(), *grad_composed.stride(), ACC=_acc(composed.dtype), BLOCK=bl,
    )
    if atomic:
        grad_feat = gfeat if gfeat.dtype == feat.dtype else gfeat.to(feat.dtype)
    else:
        grad_feat = _deterministic_grad_input(
            composed, _grid_order(composed.stride()), grad_warped, grad_warped.stride(), grad_blended, grad_blended.stride(),
            composed, composed.stride(), (N, C, H, W), H, W, PAD_ZEROS, align_corners, True, feat.dtype, fmt, acc,
        )
    if has_skip:
        gskip = torch.empty((N, 3, H // 2, W // 2), device=dev, dtype=feat.dtype)
        _compose_bwd_into(gl, gskip, acc)  # from the float32 logits gradient
    else:
        gskip = feat.new_empty((0,))
    grad_logits = gl if gl.dtype == feat.dtype else gl.to(feat.dtype)
    return grad_feat, grad_x, grad_logits, gskip
