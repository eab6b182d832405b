"""Temporal attention ops: temporal_attention and the fused T-atten residual block (docs/OPS.md).

Backends
- "reference": eager PyTorch (leo_kernels.reference), plain autograd.
- "triton": Triton kernels (leo_kernels/triton/attention_triton.py): flash-style attention core
  (rope on load, float32 softmax statistics, logsumexp saved for the backward) and, for the block,
  fused RMSNorm+QKV and out-projection+bias+residual kernels around it.
- "cuda": the compiled CUDA attention core (csrc/cuda/attention_cuda.cu) inside an ATen composite
  (RMSNorm and the projections through ATen/cuBLAS) for the block.
- "cpu": no hand-written C++ kernel: the custom ops run an ATen composite of the same forward and
  explicit backward formulas (float64 allowed, for gradcheck). It exists so the custom-op path
  (fake impls, autograd, opcheck, torch.compile) runs on CPU too.
Every non-reference backend goes through the custom ops ``leo_kernels::temporal_attention`` /
``leo_kernels::temporal_attention_block`` (+ ``..._backward``), opaque to torch.compile.
"""
from __future__ import annotations


import torch

from leo_kernels import reference
from leo_kernels._checks import check_bool, check_same, check_tensor
from leo_kernels._op import call, compute_dtype, kernel, register_compiled_fakes

# "cpu" = an ATen composite of the reference formulas inside the custom ops (no hand-written C++
# kernel); on CPU tensors the default is the eager "reference" unless "cpu" is asked for.
SUPPORTED = ("cuda", "triton", "cpu", "reference")
_FLOAT64_BACKENDS = ("cpu", "reference")
HEAD_DIMS = (16, 32, 64, 128)
MAX_LEN = 4096
EPS = 1e-6


# --------------------------------------------------------------------------- validation
def _check_backend_dtype(op, dtype, backend):
    if dtype == torch.float64 and backend is not None and backend not in _FLOAT64_BACKENDS:
        raise TypeError(f"{op}: backend {backend!r} does not support float64 (use 'cpu' or 'reference')")


# On CPU tensors the eager reference is the default: it measured faster than the composite.
_DEFAULTS = {"cpu": ("reference",)}


def _supported(t):
    return _FLOAT64_BACKENDS if t.dtype == torch.float64 else SUPPORTED


def _check_len(op, name, L):
    if not 1 <= L <= MAX_LEN:
        raise ValueError(f"{op}: {name} has sequence length {L}; expected 1 <= L <= {MAX_LEN}")


def _check_attention_args(q, k, v, rope):
    op = "temporal_attention"
    check_tensor(op, "q", q, ndim=4)
    check_tensor(op, "k", k, ndim=4)
    check_tensor(op, "v", v, ndim=4)
    check_same(op, "q", q, k=k, v=v)
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} must have q's shape {tuple(q.shape)} (B, heads, L, d), got {tuple(t.shape)}")
    B, H, L, d = q.shape
    if B < 1 or H < 1:
        raise ValueError(f"{op}: q must have batch and heads >= 1, got shape {tuple(q.shape)}")
    _check_len(op, "q", L)
    if d not in HEAD_DIMS:
        raise ValueError(f"{op}: q's head dim (last) must be one of {HEAD_DIMS}, got {d}")
    check_bool(op, "rope", rope)


def _check_block_args(x, norm_weight, w_qkv, w_out, b_out, heads, rope):
    op = "temporal_attention_block"
    check_tensor(op, "x", x, ndim=3)
    check_tensor(op, "norm_weight", norm_weight, ndim=1)
    check_tensor(op, "w_qkv", w_qkv, ndim=2)
    check_tensor(op, "w_out", w_out, ndim=2)
    check_tensor(op, "b_out", b_out, ndim=1)
    check_same(op, "x", x, norm_weight=norm_weight, w_qkv=w_qkv, w_out=w_out, b_out=b_out)
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"{op}: heads must be an int, got {type(heads).__name__}")
    if heads < 1:
        raise ValueError(f"{op}: heads must be >= 1, got {heads}")
    check_bool(op, "rope", rope)
    B, C, L = x.shape
    if B < 1 or C < 1:
        raise ValueError(f"{op}: x must be (B, C, L) with B, C >= 1, got {tuple(x.shape)}")
    _check_len(op, "x", L)
    if norm_weight.shape[0] != C:
        raise ValueError(f"{op}: norm_weight must have shape ({C},) (C of x), got {tuple(norm_weight.shape)}")
    rows = w_qkv.shape[0]
    if rows % (3 * heads) != 0:
        raise ValueError(f"{op}: w_qkv must have 3*heads*d rows (heads={heads}), got {rows}")
    d = rows // (3 * heads)
    if d not in HEAD_DIMS:
        raise ValueError(f"{op}: head dim d = w_qkv.shape[0] / (3*heads) = {d} must be one of {HEAD_DIMS}")
    if w_qkv.shape[1] != C:
        raise ValueError(f"{op}: w_qkv must have shape ({rows}, {C}) (C of x), got {tuple(w_qkv.shape)}")
    if tuple(w_out.shape) != (C, heads * d):
        raise ValueError(f"{op}: w_out must have shape ({C}, {heads * d}) (C, heads*d), got {tuple(w_out.shape)}")
    if b_out.shape[0] != C:
        raise ValueError(f"{op}: b_out must have shape ({C},), got {tuple(b_out.shape)}")
    return d


# --------------------------------------------------------------------------- public API
def temporal_attention(q, k, v, rope=False, *, backend=None):
    """softmax(q k^T / sqrt(d)) v along time; q, k, v (B, heads, L, d) -> (B, heads, L, d).

    ``rope=True`` applies a rotate-half rotary embedding to q and k first (docs/OPS.md).
    """
    _check_attention_args(q, k, v, rope)
    _check_backend_dtype("temporal_attention", q.dtype, backend)
    return call(
        "temporal_attention", q.device, backend, _supported(q),
        lambda: reference.temporal_attention(q, k, v, rope),
        lambda chosen: torch.ops.leo_kernels.temporal_attention(q, k, v, rope, chosen)[0],
        _DEFAULTS,
    )


def temporal_attention_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope=False, *, backend=None):
    """The T-atten residual block, x (B, C, L) -> x + w_out @ attn(split(w_qkv @ rmsnorm(x))) + b_out."""
    _check_block_args(x, norm_weight, w_qkv, w_out, b_out, heads, rope)
    _check_backend_dtype("temporal_attention_block", x.dtype, backend)
    return call(
        "temporal_attention_block", x.device, backend, _supported(x),
        lambda: reference.temporal_attention_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope),
        lambda chosen: torch.ops.leo_kernels.temporal_attention_block(
            x, norm_weight, w_qkv, w_out, b_out, heads, rope, chosen)[0],
        _DEFAULTS,
    )


# --------------------------------------------------------------------------- attention core per backend
# The compute-dtype rule (leo_kernels/_op.py); lse and rstd are stored in it too.
_ct = _lse_dtype = compute_dtype


def _composite_fwd(q, k, v, rope):
    """ATen composite: (out, lse); lse float32 (float64 for float64 inputs)."""
    ct = _ct(q.dtype)
    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    if rope:
        qf, kf = reference.rope_rotate(qf), reference.rope_rotate(kf)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse.unsqueeze(-1)), vf)
    return out.to(q.dtype).contiguous(), lse.contiguous()


def _composite_bwd(grad_out, q, k, v, lse, rope):
    """Explicit backward from the saved logsumexp (same formulas as the kernels)."""
    ct = _ct(q.dtype)
    scale = q.shape[-1] ** -0.5
    qf, kf, vf, g = q.to(ct), k.to(ct), v.to(ct), grad_out.to(ct)
    if rope:
        qf, kf = reference.rope_rotate(qf), reference.rope_rotate(kf)
    p = torch.exp(torch.matmul(qf, kf.transpose(-1, -2)) * scale - lse.to(ct).unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), g)
    dp = torch.matmul(g, vf.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    if rope:
        dq, dk = reference.rope_rotate(dq, inverse=True), reference.rope_rotate(dk, inverse=True)
    return tuple(t.to(q.dtype).contiguous() for t in (dq, dk, dv))


def _core_fwd(q, k, v, rope, backend):
    # "cpu" is the ATen composite (no C++ attention kernel), "cuda" the compiled op.
    return kernel("attention", "temporal_attention_fwd", backend, triton_name="attention_fwd",
                  composite=_composite_fwd)(q, k, v, rope)


def _composite_bwd_args(grad_out, q, k, v, out, lse, rope):
    return _composite_bwd(grad_out, q, k, v, lse, rope)


def _core_bwd(grad_out, q, k, v, out, lse, rope, backend):
    fn = kernel("attention", "temporal_attention_bwd", backend, triton_name="attention_bwd",
                composite=_composite_bwd_args)
    return tuple(fn(grad_out, q, k, v, out, lse, rope))


# --------------------------------------------------------------------------- custom op: attention
@torch.library.custom_op("leo_kernels::temporal_attention", mutates_args=())
def _attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, lse); lse (B, heads, L) is the float32 row logsumexp the backward needs."""
    return _core_fwd(q, k, v, rope, backend)


def _attention_fwd_fake(q, k, v, rope):
    B, H, L, _d = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, H, L), dtype=_lse_dtype(q.dtype))


def _attention_bwd_fake(grad_out, q, k, v, out, lse, rope):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


@_attention_op.register_fake
def _(q, k, v, rope, backend):
    return _attention_fwd_fake(q, k, v, rope)


@torch.library.custom_op("leo_kernels::temporal_attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, rope: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _core_bwd(grad_out, q, k, v, out, lse, rope, backend)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, rope, backend):
    return _attention_bwd_fake(grad_out, q, k, v, out, lse, rope)


def _attention_setup(ctx, inputs, output):
    q, k, v, rope, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.rope, ctx.backend = rope, backend


def _attention_backward(ctx, grad_out, _grad_lse):
    # lse is an internal output (the public function drops it); its gradient is ignored.
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.leo_kernels.temporal_attention_backward(grad_out, q, k, v, out, lse, ctx.rope, ctx.backend)
    return dq, dk, dv, None, None


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


# --------------------------------------------------------------------------- block: forward/backward
def _mm_dtype(x, backend):
    # On GPU the projections run in the storage dtype (tensor cores, float32 accumulation);
    # the CPU composite keeps float32 (float64) throughout like the reference.
    return x.dtype if backend in ("cuda", "triton") else _ct(x.dtype)


def _rms(x):
    """rstd (B, L) in the compute dtype."""
    xf = x.to(_ct(x.dtype))
    return torch.rsqrt(xf.pow(2).mean(dim=1) + EPS)


def _block_fwd(x, norm_weight, w_qkv, w_out, b_out, heads, rope, backend):
    B, C, L = x.shape
    HD = w_qkv.shape[0] // 3
    d = HD // heads
    if backend == "triton":
        from leo_kernels.triton import attention_triton

        return attention_triton.block_fwd(
            x, norm_weight.contiguous(), w_qkv, w_out, b_out.contiguous(), heads, rope, EPS)
    ct, mm = _ct(x.dtype), _mm_dtype(x, backend)
    rstd = _rms(x)
    h = (x.to(ct) * rstd.unsqueeze(1) * norm_weight.to(ct).view(1, C, 1)).to(mm)
    qkv = torch.matmul(w_qkv.to(mm), h)  # (B, 3*HD, L)
    qkv = qkv.view(B, 3, heads, d, L).permute(1, 0, 2, 4, 3).to(x.dtype).contiguous()
    a, lse = _core_fwd(qkv[0], qkv[1], qkv[2], rope, backend)
    a2 = a.permute(0, 1, 3, 2).reshape(B, HD, L).to(mm)
    y = x.to(ct) + torch.matmul(w_out.to(mm), a2).to(ct) + b_out.to(ct).view(1, C, 1)
    return y.to(x.dtype), qkv, a, lse, rstd.to(_lse_dtype(x.dtype)).contiguous()


def _block_bwd(grad_y, x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd, heads, rope, backend):
    """Projections and RMSNorm backward through ATen (GEMMs over B*L at once, float32 sums);
    the attention core through the backend's kernel."""
    B, C, L = x.shape
    HD = w_qkv.shape[0] // 3
    d = HD // heads
    ct, mm = _ct(x.dtype), _mm_dtype(x, backend)
    dy = grad_y.to(mm)
    dy_flat = dy.permute(1, 0, 2).reshape(C, B * L)
    a_flat = a.permute(1, 3, 0, 2).reshape(HD, B * L).to(mm)  # channel = head*d + j
    db_out = grad_y.to(ct).sum(dim=(0, 2))
    dw_out = torch.matmul(dy_flat, a_flat.t())
    da = torch.matmul(w_out.to(mm).t(), dy)  # (B, HD, L)
    da = da.view(B, heads, d, L).permute(0, 1, 3, 2).to(x.dtype)
    dq, dk, dv = _core_bwd(da, qkv[0], qkv[1], qkv[2], a, lse, rope, backend)
    dqkv = torch.stack((dq, dk, dv)).permute(1, 0, 2, 4, 3).reshape(B, 3 * HD, L).to(mm)
    xf = x.to(ct)
    r = rstd.to(ct).unsqueeze(1)
    nw = norm_weight.to(ct).view(1, C, 1)
    h = (xf * r * nw).to(mm)
    dw_qkv = torch.matmul(dqkv.permute(1, 0, 2).reshape(3 * HD, B * L), h.permute(1, 0, 2).reshape(C, B * L).t())
    dh = torch.matmul(w_qkv.to(mm).t(), dqkv).to(ct)  # (B, C, L)
    g = dh * nw
    dnw = (dh * xf * r).sum(dim=(0, 2))
    dx = g * r - xf * r.pow(3) * (g * xf).mean(dim=1, keepdim=True) + grad_y.to(ct)
    dt = x.dtype
    return dx.to(dt), dnw.to(dt), dw_qkv.to(dt), dw_out.to(dt), db_out.to(dt)


@torch.library.custom_op("leo_kernels::temporal_attention_block", mutates_args=())
def _block_op(
    x: torch.Tensor, norm_weight: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
    heads: int, rope: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (y, qkv (3,B,heads,L,d), a (B,heads,L,d), lse (B,heads,L), rstd (B,L)); all but y
    are saved activations for the backward."""
    return _block_fwd(x, norm_weight, w_qkv, w_out, b_out, heads, rope, backend)


@_block_op.register_fake
def _(x, norm_weight, w_qkv, w_out, b_out, heads, rope, backend):
    B, C, L = x.shape
    d = w_qkv.shape[0] // (3 * heads)
    st = _lse_dtype(x.dtype)
    return (
        x.new_empty((B, C, L)),
        x.new_empty((3, B, heads, L, d)),
        x.new_empty((B, heads, L, d)),
        x.new_empty((B, heads, L), dtype=st),
        x.new_empty((B, L), dtype=st),
    )


@torch.library.custom_op("leo_kernels::temporal_attention_block_backward", mutates_args=())
def _block_backward_op(
    grad_y: torch.Tensor, x: torch.Tensor, norm_weight: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor,
    qkv: torch.Tensor, a: torch.Tensor, lse: torch.Tensor, rstd: torch.Tensor, heads: int, rope: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _block_bwd(grad_y, x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd, heads, rope, backend)


@_block_backward_op.register_fake
def _(grad_y, x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd, heads, rope, backend):
    return (
        x.new_empty(x.shape),
        x.new_empty(norm_weight.shape),
        x.new_empty(w_qkv.shape),
        x.new_empty(w_out.shape),
        x.new_empty(norm_weight.shape),
    )


def _block_setup(ctx, inputs, output):
    x, norm_weight, w_qkv, w_out, _b_out, heads, rope, backend = inputs
    _y, qkv, a, lse, rstd = output
    ctx.save_for_backward(x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd)
    ctx.heads, ctx.rope, ctx.backend = heads, rope, backend


def _block_backward(ctx, grad_y, *_unused):
    x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    grads = torch.ops.leo_kernels.temporal_attention_block_backward(
        grad_y, x, norm_weight, w_qkv, w_out, qkv, a, lse, rstd, ctx.heads, ctx.rope, ctx.backend)
    return (*grads, None, None, None)


_block_op.register_autograd(_block_backward, setup_context=_block_setup)


# --------------------------------------------------------------------------- compiled CUDA ops: fake impls
# Declared in csrc/cuda/attention_cuda.cu (CUDA builds only); the fakes are the custom op's.
register_compiled_fakes({
    "_temporal_attention_fwd": _attention_fwd_fake,
    "_temporal_attention_bwd": _attention_bwd_fake,
})
