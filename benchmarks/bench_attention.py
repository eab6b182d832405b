"""Temporal attention: leo's block and core vs the baselines a user would pick, paired and interleaved.

- block: eager = RMSNorm + conv1d (QKV) + SDPA + conv1d (out) + residual from stock torch ops (the
  efficient eager form), compiled = torch.compile of it;
- core: eager = F.scaled_dot_product_attention (compiling a lone SDPA call changes nothing).

    pytest benchmarks/bench_attention.py --benchmark-only

With CUDA: (B=64, C=256, L=64, heads=4, d=64) and (B=16, C=512, L=256, heads=8, d=64), float32 and
bfloat16, forward and forward+backward, every leo GPU backend. CPU: the same comparisons at small
sizes for the `cpu` backend (on CPU tensors leo's default is the eager reference).
"""
import pytest
import torch
import torch.nn.functional as F
from _timing import FULL, compare

import leo_kernels as lk

_CUDA = torch.cuda.is_available()
DEV = "cuda" if _CUDA else "cpu"
if _CUDA:
    SHAPES = [(64, 256, 64, 4, 64), (16, 512, 256, 8, 64)]  # (B, C, L, heads, d)
    DTYPES = [torch.float32, torch.bfloat16]
else:
    SHAPES = [(4, 128, 64, 4, 32)] + ([(8, 64, 32, 2, 32)] if FULL else [])
    DTYPES = [torch.float32]
BACKENDS = [b for b in lk.available_backends(DEV) if b != "reference"]
ROUNDS = 20 if _CUDA else 10
MODES = ["forward", "forward_backward"]


def eager_block(x, norm_weight, w_qkv, w_out, b_out, heads):
    B, C, L = x.shape
    h = F.rms_norm(x.transpose(1, 2), (C,), norm_weight, eps=1e-6).transpose(1, 2)
    qkv = F.conv1d(h, w_qkv.unsqueeze(-1))
    d = w_qkv.shape[0] // (3 * heads)
    q, k, v = qkv.view(B, 3, heads, d, L).transpose(-1, -2).unbind(1)
    a = F.scaled_dot_product_attention(q, k, v)
    return x + F.conv1d(a.transpose(-1, -2).reshape(B, heads * d, L), w_out.unsqueeze(-1), b_out)


_COMPILED = {}


def _compiled_block():
    if "block" not in _COMPILED:
        _COMPILED["block"] = torch.compile(eager_block, dynamic=False)
    return _COMPILED["block"]


def _block_inputs(B, C, L, H, d, dtype, grad):
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=1.0, offset=0.0):
        return (torch.randn(*s, generator=g) * scale + offset).to(DEV, dtype).requires_grad_(grad)

    return [r(B, C, L), r(C, scale=0.1, offset=1.0), r(3 * H * d, C, scale=C ** -0.5),
            r(C, H * d, scale=(H * d) ** -0.5), r(C, scale=0.1)]


def _calls(impls, args, backward):
    """Zero-argument calls: forward under no_grad, or forward + gradients of every input."""
    def make(fn):
        def forward():
            with torch.no_grad():
                return fn(*args)

        def forward_backward():
            out = fn(*args)
            return torch.autograd.grad(out, args, torch.ones_like(out))

        return forward_backward if backward else forward

    return {name: make(fn) for name, fn in impls.items()}


def _check(impls, args, dtype):
    with torch.no_grad():
        outs = {k: fn(*args).double() for k, fn in impls.items()}
    ref = outs["eager"]
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-3
    for k, out in outs.items():
        err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert err < tol, f"{k} disagrees with the eager baseline: relative error {err:.2e}"


def _info(benchmark, op, shape, dtype, mode):
    B, C, L, H, d = shape
    dt = str(dtype).replace("torch.", "")
    benchmark.extra_info.update(op=op, B=B, C=C, L=L, heads=H, d=d, dtype=dt, mode=mode, device=DEV,
                                case=f"B={B} C={C} L={L} heads={H} d={d} {dt}, {mode}")


def _ids(s):
    return "B{}_C{}_L{}_h{}_d{}".format(*s)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_block(benchmark, shape, dtype, mode):
    B, C, L, H, d = shape
    backward = mode == "forward_backward"
    args = _block_inputs(B, C, L, H, d, dtype, backward)
    impls = {f"leo-{b}": (lambda b: lambda *a: lk.temporal_attention_block(*a, H, backend=b))(b) for b in BACKENDS}
    impls["eager"] = lambda *a: eager_block(*a, H)
    compiled = _compiled_block()
    impls["compiled"] = lambda *a: compiled(*a, H)
    _check(impls, args, dtype)
    _info(benchmark, "temporal_attention_block", shape, dtype, mode)
    es = args[0].element_size()
    # forward: read x and the weights, write y; backward: read grad_y, x, weights; write every gradient
    io = 2 * B * C * L + sum(a.numel() for a in args[1:])
    compare(benchmark, _calls(impls, args, backward), [f"leo-{b}" for b in BACKENDS], rounds=ROUNDS,
            nbytes=io * es * (3 if backward else 1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_core(benchmark, shape, dtype, mode):
    B, C, L, H, d = shape
    backward = mode == "forward_backward"
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(B, H, L, d, generator=g).to(DEV, dtype).requires_grad_(backward) for _ in range(3)]
    impls = {f"leo-{b}": (lambda b: lambda q, k, v: lk.temporal_attention(q, k, v, backend=b))(b) for b in BACKENDS}
    impls["eager"] = F.scaled_dot_product_attention
    _check(impls, args, dtype)
    _info(benchmark, "temporal_attention", shape, dtype, mode)
    # forward: read q, k, v, write out; backward: read q, k, v, out, grad_out, write dq, dk, dv
    nbytes = 4 * B * H * L * d * args[0].element_size() * (3 if backward else 1)
    compare(benchmark, _calls(impls, args, backward), [f"leo-{b}" for b in BACKENDS], rounds=ROUNDS, nbytes=nbytes)
