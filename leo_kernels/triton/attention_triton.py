"""Triton kernels for temporal attention and the fused T-atten block (docs/OPS.md).

Attention core (q, k, v of shape (B, heads, L, d), any strides):
- Forward: one program per (query tile, batch*head). For short sequences (the common case for motion
  codes) the query tile covers the whole sequence, so there is one program per (batch, head) and a
  single pass over K/V held on chip; longer sequences stream K/V tiles with an online softmax
  (flash-style). Scores and softmax statistics are float32 whatever the storage dtype; the
  log-sum-exp of every query row is saved (float32) for the backward.
- Rotary embedding (rotate-half) is applied while q/k tiles are loaded: the tile and its
  half-swapped twin are both read (same cache lines) and combined with cos/sin tables computed in
  float64 and stored as float32, so no roped copy of q/k is ever written.
- Backward: for short sequences one program per (batch, head) computes delta = rowsum(dO * O), P and
  dS once and produces dQ, dK, dV together; longer ones use three launches: delta, one kernel per
  key tile accumulating dK, dV over query tiles, one per query tile accumulating dQ over key tiles
  (no atomics anywhere: deterministic). Gradients of roped q/k
  are rotated back in registers (the half swap is a tiny permutation matmul).

Block forward (x (B, C, L) -> y): three launches.
1. norm_qkv: y-tile of w_qkv @ (x * norm_weight), with sum(x^2) accumulated from the same x tiles
   and the RMS factor applied in the epilogue; writes q, k, v straight into (3, B, heads, L, d)
   (no normalized h, no permute copies) and the per-column rstd for the backward.
2. the attention core above (rope applied on load), writing a (B, heads, L, d) and lse.
3. out_proj: w_out @ a read through strides, + b_out + x in the epilogue, writes y.
So x is read twice, q/k/v and a each cross memory once in each direction, y is written once.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Tests set this to (BLOCK_M, BLOCK_N) to force the tiled (multi-block) path at small L.
BLOCK_OVERRIDE: tuple[int, int] | None = None


@triton.jit
def _mm(a, b, DOT: tl.constexpr):
    # DOT 0: native (tensor cores, fp32 accumulate); 1: exact fp32 products (float32 unless the
    # user allowed TF32 in torch); 2: upcast first (the CPU interpreter mis-handles bf16 dots).
    if DOT == 2:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif DOT == 1:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _cast(x, dt: tl.constexpr, DOT: tl.constexpr):
    """float32 -> storage dtype. DOT 2 (interpreter, bf16): the interpreter truncates on
    float32 -> bf16, the GPU rounds to nearest even; round explicitly so both agree."""
    if DOT == 2:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(dt)
    else:
        return x.to(dt)


@triton.jit
def _mm32(a, b, DOT: tl.constexpr):
    # Products whose left operand is a float32 softmax quantity (P or dS) stay in float32 (TF32
    # tensor cores on GPU, exact under DOT 1): rounding P/dS to bf16 before the sums (dS rows
    # cancel: they sum to zero) cost up to 1% relative error in O, dV, dQ, dK in our tests.
    if DOT == 0:
        return tl.dot(a, b.to(tl.float32), input_precision="tf32")
    else:
        return tl.dot(a, b.to(tl.float32), input_precision="ieee")


@triton.jit
def _load_tile(base, offs_l, offs_d, s_l, s_d, mask_l):
    """Rows offs_l, columns offs_d of a (L, D) slice with strides (s_l, s_d), in its own dtype
    (zeros in the masked rows)."""
    return tl.load(base + offs_l[:, None] * s_l + offs_d[None, :] * s_d, mask=mask_l[:, None], other=0.0)


@triton.jit
def _load_lse2(LSE, bh, L, offs, mask):
    """The forward's log-sum-exp of rows offs, in log2 units (the kernels exponentiate with exp2)."""
    return tl.load(LSE + bh * L + offs, mask=mask, other=0.0) * 1.4426950408889634


@triton.jit
def _load_rows(base, offs_l, offs_d, s_l, s_d, mask_l, COS, SIN, D: tl.constexpr, ROPE: tl.constexpr):
    """A (rows, D) tile as float32, rotary-embedded at positions offs_l when ROPE."""
    m = mask_l[:, None]
    t = _load_tile(base, offs_l, offs_d, s_l, s_d, mask_l).to(tl.float32)
    if ROPE:
        HALF: tl.constexpr = D // 2
        sw = (offs_d + HALF) % D
        ts = _load_tile(base, offs_l, sw, s_l, s_d, mask_l).to(tl.float32)
        j = offs_d % HALF
        c = tl.load(COS + offs_l[:, None] * HALF + j[None, :], mask=m, other=0.0)
        s = tl.load(SIN + offs_l[:, None] * HALF + j[None, :], mask=m, other=0.0)
        sign = tl.where(offs_d < HALF, -1.0, 1.0)
        t = t * c + ts * s * sign[None, :]
    return t


@triton.jit
def _unrope(g, offs_l, offs_d, mask_l, COS, SIN, D: tl.constexpr):
    """Gradient w.r.t. the un-rotated tile: R^T g, row by row (g float32 (rows, D))."""
    HALF: tl.constexpr = D // 2
    # swap halves of g's columns with a permutation matmul (exact: one 1.0 per column)
    perm = (offs_d[:, None] == ((offs_d[None, :] + HALF) % D)).to(tl.float32)
    gs = tl.dot(g, perm, input_precision="ieee")
    j = offs_d % HALF
    m = mask_l[:, None]
    c = tl.load(COS + offs_l[:, None] * HALF + j[None, :], mask=m, other=0.0)
    s = tl.load(SIN + offs_l[:, None] * HALF + j[None, :], mask=m, other=0.0)
    sign = tl.where(offs_d < HALF, 1.0, -1.0)
    return g * c + gs * s * sign[None, :]


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, COS, SIN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
    H, L, scale_log2e,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = O.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mask_m = offs_m < L
    q = _cast(_load_rows(Q + b * sqb + h * sqh, offs_m, offs_d, sql, sqd, mask_m, COS, SIN, D, ROPE), dt, DOT)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        k = _cast(_load_rows(K + b * skb + h * skh, offs_n, offs_d, skl, skd, mask_n, COS, SIN, D, ROPE), dt, DOT)
        v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svl, svd, mask_n)
        s = _mm(q, tl.trans(k), DOT) * scale_log2e  # log2 units
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm32(p, v, DOT)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + bh * L * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_ptrs, _cast(acc, dt, DOT), mask=mask_m[:, None])
    tl.store(LSE + bh * L + offs_m, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=mask_m)


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, sdb, sdh, sdl, sdd, H, L, D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mask = offs_m < L
    o = _load_tile(O + bh * L * D, offs_m, offs_d, D, 1, mask)
    do = _load_tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdl, sdd, mask)
    tl.store(DELTA + bh * L + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1), mask=mask)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, COS, SIN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sdb, sdh, sdl, sdd,
    H, L, scale, scale_log2e,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = DK.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    mask_n = offs_n < L
    k = _cast(_load_rows(K + b * skb + h * skh, offs_n, offs_d, skl, skd, mask_n, COS, SIN, D, ROPE), dt, DOT)
    v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svl, svd, mask_n)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for m0 in range(0, L, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        q = _cast(_load_rows(Q + b * sqb + h * sqh, offs_m, offs_d, sql, sqd, mask_m, COS, SIN, D, ROPE), dt, DOT)
        do = _load_tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdl, sdd, mask_m)
        lse = _load_lse2(LSE, bh, L, offs_m, mask_m)
        delta = tl.load(DELTA + bh * L + offs_m, mask=mask_m, other=0.0)
        s_t = _mm(k, tl.trans(q), DOT) * scale_log2e  # (BLOCK_N, BLOCK_M)
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(mask_m[None, :], p_t, 0.0)
        dv += _mm32(p_t, do, DOT)
        dp_t = _mm(v, tl.trans(do), DOT)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _mm32(ds_t, q, DOT)
    dk = dk * scale
    if ROPE:
        dk = _unrope(dk, offs_n, offs_d, mask_n, COS, SIN, D)
    out = bh * L * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out, _cast(dk, dt, DOT), mask=mask_n[:, None])
    tl.store(DV + out, _cast(dv, dt, DOT), mask=mask_n[:, None])


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, COS, SIN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sdb, sdh, sdl, sdd,
    H, L, scale, scale_log2e,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    dt = DQ.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mask_m = offs_m < L
    q = _cast(_load_rows(Q + b * sqb + h * sqh, offs_m, offs_d, sql, sqd, mask_m, COS, SIN, D, ROPE), dt, DOT)
    do = _load_tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdl, sdd, mask_m)
    lse = _load_lse2(LSE, bh, L, offs_m, mask_m)
    delta = tl.load(DELTA + bh * L + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for n0 in range(0, L, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < L
        k = _cast(_load_rows(K + b * skb + h * skh, offs_n, offs_d, skl, skd, mask_n, COS, SIN, D, ROPE), dt, DOT)
        v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svl, svd, mask_n)
        s = _mm(q, tl.trans(k), DOT) * scale_log2e
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_n[None, :], p, 0.0)
        dp = _mm(do, tl.trans(v), DOT)
        ds = p * (dp - delta[:, None])
        dq += _mm32(ds, k, DOT)
    dq = dq * scale
    if ROPE:
        dq = _unrope(dq, offs_m, offs_d, mask_m, COS, SIN, D)
    tl.store(DQ + bh * L * D + offs_m[:, None] * D + offs_d[None, :], _cast(dq, dt, DOT), mask=mask_m[:, None])


@triton.jit
def _attn_bwd_single_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, COS, SIN,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sdb, sdh, sdl, sdd,
    H, L, scale, scale_log2e,
    D: tl.constexpr, BLOCK: tl.constexpr, ROPE: tl.constexpr, DOT: tl.constexpr,
):
    """Short sequences (L <= BLOCK): one program per (batch, head) holds the whole sequence and
    computes delta, P, dS once for dQ, dK and dV together (one launch instead of three)."""
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    dt = DQ.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D)
    mask = offs < L
    q = _cast(_load_rows(Q + b * sqb + h * sqh, offs, offs_d, sql, sqd, mask, COS, SIN, D, ROPE), dt, DOT)
    k = _cast(_load_rows(K + b * skb + h * skh, offs, offs_d, skl, skd, mask, COS, SIN, D, ROPE), dt, DOT)
    v = _load_tile(V + b * svb + h * svh, offs, offs_d, svl, svd, mask)
    do = _load_tile(DO + b * sdb + h * sdh, offs, offs_d, sdl, sdd, mask)
    o = _load_tile(O + bh * L * D, offs, offs_d, D, 1, mask)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lse = _load_lse2(LSE, bh, L, offs, mask)
    s = _mm(q, tl.trans(k), DOT) * scale_log2e
    p = tl.exp2(s - lse[:, None])
    p = tl.where(mask[None, :], p, 0.0)
    dp = _mm(do, tl.trans(v), DOT)
    ds = p * (dp - delta[:, None])
    dv = _mm32(tl.trans(p), do, DOT)
    dk = _mm32(tl.trans(ds), q, DOT) * scale
    dq = _mm32(ds, k, DOT) * scale
    if ROPE:
        dq = _unrope(dq, offs, offs_d, mask, COS, SIN, D)
        dk = _unrope(dk, offs, offs_d, mask, COS, SIN, D)
    out = bh * L * D + offs[:, None] * D + offs_d[None, :]
    tl.store(DQ + out, _cast(dq, dt, DOT), mask=mask[:, None])
    tl.store(DK + out, _cast(dk, dt, DOT), mask=mask[:, None])
    tl.store(DV + out, _cast(dv, dt, DOT), mask=mask[:, None])


# --------------------------------------------------------------------------- fused block kernels
@triton.jit
def _norm_qkv_kernel(
    X, NW, W, QKV, RSTD,
    sxb, sxc, sxl, swo, swc,
    C, L, HD, H, qkv_stride, eps,
    D: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, DOT: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_l = tl.program_id(1)
    b = tl.program_id(2)
    dt = QKV.dtype.element_ty
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_o = offs_o < 3 * HD
    mask_l = offs_l < L
    acc = tl.zeros([BLOCK_O, BLOCK_L], tl.float32)
    ss = tl.zeros([BLOCK_L], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        xt = tl.load(X + b * sxb + offs_c[:, None] * sxc + offs_l[None, :] * sxl,
                     mask=mask_c[:, None] & mask_l[None, :], other=0.0).to(tl.float32)
        ss += tl.sum(xt * xt, 0)
        nw = tl.load(NW + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        w = tl.load(W + offs_o[:, None] * swo + offs_c[None, :] * swc,
                    mask=mask_o[:, None] & mask_c[None, :], other=0.0)
        acc += _mm(w, _cast(xt * nw[:, None], dt, DOT), DOT)
    # RMSNorm is a per-column scale, so it commutes with the projection: apply it once here.
    rstd = tl.rsqrt(ss / C + eps)
    acc = acc * rstd[None, :]
    which = offs_o // HD
    rem = offs_o % HD
    head = rem // D
    j = rem % D
    # destination (which, b, head, l, j) of a contiguous (3, B, H, L, D) buffer
    row = which * qkv_stride + (b * H + head) * L * D + j
    tl.store(QKV + row[:, None] + offs_l[None, :] * D, _cast(acc, dt, DOT), mask=mask_o[:, None] & mask_l[None, :])
    if pid_o == 0:
        tl.store(RSTD + b * L + offs_l, rstd, mask=mask_l)


@triton.jit
def _out_proj_kernel(
    A, W, BIAS, X, Y,
    sab, sah, sal, sad, swo, swk, sxb, sxc, sxl,
    C, L, HD,
    D: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
):
    pid_o = tl.program_id(0)
    pid_l = tl.program_id(1)
    b = tl.program_id(2)
    dt = Y.dtype.element_ty
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_o = offs_o < C
    mask_l = offs_l < L
    acc = tl.zeros([BLOCK_O, BLOCK_L], tl.float32)
    for k0 in range(0, HD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < HD
        w = tl.load(W + offs_o[:, None] * swo + offs_k[None, :] * swk,
                    mask=mask_o[:, None] & mask_k[None, :], other=0.0)
        # a is (B, heads, L, d): channel k = head * d + j, read transposed as (k, l)
        a_ptr = A + b * sab + (offs_k // D)[:, None] * sah + (offs_k % D)[:, None] * sad + offs_l[None, :] * sal
        at = tl.load(a_ptr, mask=mask_k[:, None] & mask_l[None, :], other=0.0)
        acc += _mm(w, at, DOT)
    m = mask_o[:, None] & mask_l[None, :]
    bias = tl.load(BIAS + offs_o, mask=mask_o, other=0.0).to(tl.float32)
    xr = tl.load(X + b * sxb + offs_o[:, None] * sxc + offs_l[None, :] * sxl, mask=m, other=0.0).to(tl.float32)
    y = acc + bias[:, None] + xr
    tl.store(Y + b * C * L + offs_o[:, None] * L + offs_l[None, :], _cast(y, dt, DOT), mask=m)


# --------------------------------------------------------------------------- host wrappers
def _rope_tables_uncached(L: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    half = d // 2
    inv = 10000.0 ** (-torch.arange(half, device=device, dtype=torch.float64) * 2.0 / d)
    ang = torch.arange(L, device=device, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float().contiguous(), ang.sin().float().contiguous()


@functools.lru_cache(maxsize=64)
def _rope_tables_cached(L, d, device):
    return _rope_tables_uncached(L, d, device)


def rope_tables(L: int, d: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape (L, d/2), float32, angles computed in float64 like the reference."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _rope_tables_uncached(L, d, device)  # never cache graph-pool memory
    return _rope_tables_cached(L, d, device)


def _dot_mode(dtype) -> int:
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return 2
    return int(dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32)


def _blocks(L: int, d: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps). Short sequences: one tile covers all of L (one program
    per batch*head, no online rescaling in practice); longer ones: 64-row tiles."""
    if BLOCK_OVERRIDE is not None:
        return BLOCK_OVERRIDE[0], BLOCK_OVERRIDE[1], 4
    p2 = max(16, triton.next_power_of_2(L))
    single = 128 if d <= 64 else 64
    if p2 <= single:
        return p2, p2, 4 if p2 * d <= 64 * 64 else 8
    return 64, (64 if d <= 64 else 32), 4


def _empty(*args, **kwargs):
    # Every output buffer comes from here; tests swap in a NaN-filling allocator (poisoning).
    return torch.empty(*args, **kwargs)


def _dummy(t):
    return t.new_empty(1, dtype=torch.float32)


def attention_fwd(q, k, v, rope: bool):
    """(out (B,H,L,d) contiguous, lse (B,H,L) float32)."""
    B, H, L, d = q.shape
    out = _empty((B, H, L, d), device=q.device, dtype=q.dtype)
    lse = _empty((B, H, L), device=q.device, dtype=torch.float32)
    cos, sin = rope_tables(L, d, q.device) if rope else (_dummy(q), _dummy(q))
    bm, bn, nw = _blocks(L, d)
    grid = (triton.cdiv(L, bm), B * H)
    # num_stages=1: the rope twin loads and cos/sin tiles would otherwise be multi-buffered in
    # shared memory (over 227 KB for float32 at d=128 on sm_90, checked with triton.compile).
    _attn_fwd_kernel[grid](
        q, k, v, out, lse, cos, sin,
        *q.stride(), *k.stride(), *v.stride(),
        H, L, (d ** -0.5) * LOG2E,
        D=d, BLOCK_M=bm, BLOCK_N=bn, ROPE=rope, DOT=_dot_mode(q.dtype), num_warps=nw, num_stages=1,
    )
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, rope: bool):
    """(dq, dk, dv), contiguous, in q's dtype."""
    B, H, L, d = q.shape
    out = out.contiguous()
    lse = lse.contiguous()
    cos, sin = rope_tables(L, d, q.device) if rope else (_dummy(q), _dummy(q))
    bm, bn, nw = _blocks(L, d)
    if q.dtype == torch.float32 and bm * d > 64 * 64 and BLOCK_OVERRIDE is None:
        # float32 backward tiles this large need more shared memory than an A100 block has (164-192 KB
        # of 163 KB; tools/compile_triton.py): take the tiled backward's 64-row tiles instead.
        bm, bn, nw = 64, (64 if d <= 64 else 32), 4
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    scale = d ** -0.5
    mode = _dot_mode(q.dtype)
    dq = _empty((B, H, L, d), device=q.device, dtype=q.dtype)
    dk = _empty(dq.shape, device=q.device, dtype=q.dtype)
    dv = _empty(dq.shape, device=q.device, dtype=q.dtype)
    if bm >= L and bn >= L and bm == bn and bm <= 64:  # larger: P, dP, dS tiles would spill
        _attn_bwd_single_kernel[(B * H,)](
            q, k, v, out, grad_out, lse, dq, dk, dv, cos, sin, *strides, H, L, scale, scale * LOG2E,
            D=d, BLOCK=bm, ROPE=rope, DOT=mode, num_warps=nw, num_stages=1)
        return dq, dk, dv
    delta = _empty((B, H, L), device=q.device, dtype=torch.float32)
    _attn_bwd_delta_kernel[(triton.cdiv(L, bm), B * H)](
        out, grad_out, delta, *grad_out.stride(), H, L, D=d, BLOCK_M=bm)
    _attn_bwd_dkdv_kernel[(triton.cdiv(L, bn), B * H)](
        q, k, v, grad_out, lse, delta, dk, dv, cos, sin, *strides, H, L, scale, scale * LOG2E,
        D=d, BLOCK_M=bm, BLOCK_N=bn, ROPE=rope, DOT=mode, num_warps=nw, num_stages=1)
    _attn_bwd_dq_kernel[(triton.cdiv(L, bm), B * H)](
        q, k, v, grad_out, lse, delta, dq, cos, sin, *strides, H, L, scale, scale * LOG2E,
        D=d, BLOCK_M=bm, BLOCK_N=bn, ROPE=rope, DOT=mode, num_warps=nw, num_stages=1)
    return dq, dk, dv


def _pow2_block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def block_fwd(x, norm_weight, w_qkv, w_out, b_out, heads: int, rope: bool, eps: float = 1e-6):
    """Fused T-atten block forward. Returns (y, qkv (3,B,H,L,d), a (B,H,L,d), lse (B,H,L), rstd (B,L))."""
    B, C, L = x.shape
    HD = w_qkv.shape[0] // 3
    d = HD // heads
    mode = _dot_mode(x.dtype)
    qkv = _empty((3, B, heads, L, d), device=x.device, dtype=x.dtype)
    rstd = _empty((B, L), device=x.device, dtype=torch.float32)
    bo, bl, bc = 64, _pow2_block(L, 16, 64), _pow2_block(C, 16, 32)
    _norm_qkv_kernel[(triton.cdiv(3 * HD, bo), triton.cdiv(L, bl), B)](
        x, norm_weight, w_qkv, qkv, rstd, *x.stride(), *w_qkv.stride(),
        C, L, HD, heads, qkv.stride(0), eps,
        D=d, BLOCK_O=bo, BLOCK_L=bl, BLOCK_C=bc, DOT=mode)
    a, lse = attention_fwd(qkv[0], qkv[1], qkv[2], rope)
    y = _empty((B, C, L), device=x.device, dtype=x.dtype)
    bo2, bk = _pow2_block(C, 16, 64), min(d, 32)
    _out_proj_kernel[(triton.cdiv(C, bo2), triton.cdiv(L, bl), B)](
        a, w_out, b_out, x, y, *a.stride(), *w_out.stride(), *x.stride(),
        C, L, HD, D=d, BLOCK_O=bo2, BLOCK_L=bl, BLOCK_K=bk, DOT=mode)
    return y, qkv, a, lse, rstd


__all__ = ["attention_fwd", "attention_bwd", "block_fwd", "rope_tables", "BLOCK_OVERRIDE"]
