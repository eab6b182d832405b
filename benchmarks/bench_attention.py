"""Temporal attention benchmarks: fused block vs the eager block, attention core vs SDPA.

Eager block baseline = RMSNorm + conv1d (QKV) + SDPA + conv1d (out) + residual, from stock torch ops.
With CUDA: (B=64, C=256, L=64, heads=4, d=64) and (B=16, C=512, L=256, heads=8, d=64), float32 and
bfloat16, forward and forward+backward, for the triton and cuda backends. On CPU the same
comparisons at small sizes (leo_kernels "reference" and "cpu" backends vs the eager modules).

    .venv/bin/python -m pytest benchmarks/bench_attention.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

import leo_kernels as lk

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
if HAS_CUDA:
    SHAPES = [(64, 256, 64, 4, 64), (16, 512, 256, 8, 64)]  # (B, C, L, heads, d)
    DTYPES = [torch.float32, torch.bfloat16]
    FAST = [b for b in ("triton", "cuda") if b in lk.available_backends("cuda")]
else:
    # One thread: on a shared 2-core box, OpenMP threads spinning against other jobs dominate.
    torch.set_num_threads(1)
    SHAPES = [(8, 64, 32, 2, 32), (4, 128, 64, 4, 32)]
    DTYPES = [torch.float32]
    FAST = ["reference", "cpu"]


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def eager_block(x, norm_weight, w_qkv, w_out, b_out, heads):
    B, C, L = x.shape
    h = F.rms_norm(x.transpose(1, 2), (C,), norm_weight, eps=1e-6).transpose(1, 2)
    qkv = F.conv1d(h, w_qkv.unsqueeze(-1))
    d = w_qkv.shape[0] // (3 * heads)
    q, k, v = qkv.view(B, 3, heads, d, L).transpose(-1, -2).unbind(1)
    a = F.scaled_dot_product_attention(q, k, v)
    return x + F.conv1d(a.transpose(-1, -2).reshape(B, heads * d, L), w_out.unsqueeze(-1), b_out)


def _block_inputs(B, C, L, H, d, dtype, grad):
    g = torch.Generator().manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(DEV, dtype).requires_grad_(grad)

    return [r(B, C, L), r(C, scale=0.1).detach().add_(1.0).requires_grad_(grad), r(3 * H * d, C, scale=C ** -0.5),
            r(C, H * d, scale=(H * d) ** -0.5), r(C, scale=0.1)]


def _run(fn, args, backward):
    def step():
        out = fn(*args)
        if backward:
            out.backward(torch.ones_like(out))
            for a in args:
                a.grad = None
        _sync()

    return step


def _info(benchmark, impl, shape, dtype, mode, what):
    B, C, L, H, d = shape
    benchmark.extra_info.update(
        dict(op=what, impl=impl, B=B, C=C, L=L, heads=H, d=d, dtype=str(dtype).replace("torch.", ""),
             device=torch.cuda.get_device_name() if HAS_CUDA else "cpu", threads=torch.get_num_threads(), mode=mode))


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_C{}_L{}_h{}_d{}".format(*s))
@pytest.mark.parametrize("impl", ["eager", *FAST])
def test_block(benchmark, impl, shape, dtype, mode):
    B, C, L, H, d = shape
    args = _block_inputs(B, C, L, H, d, dtype, mode == "fwd+bwd")
    if impl == "eager":
        fn = lambda *a: eager_block(*a, H)  # noqa: E731
    else:
        fn = lambda *a: lk.temporal_attention_block(*a, H, backend=impl)  # noqa: E731
    _info(benchmark, impl, shape, dtype, mode, "temporal_attention_block")
    step = _run(fn, args, mode == "fwd+bwd")
    step()  # warm-up / compile
    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        benchmark(step)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_C{}_L{}_h{}_d{}".format(*s))
@pytest.mark.parametrize("impl", ["sdpa", *FAST])
def test_core(benchmark, impl, shape, dtype, mode):
    B, C, L, H, d = shape
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(B, H, L, d, generator=g).to(DEV, dtype).requires_grad_(mode == "fwd+bwd") for _ in range(3)]
    if impl == "sdpa":
        fn = F.scaled_dot_product_attention
    else:
        fn = lambda q, k, v: lk.temporal_attention(q, k, v, backend=impl)  # noqa: E731
    _info(benchmark, impl, shape, dtype, mode, "temporal_attention")
    step = _run(fn, args, mode == "fwd+bwd")
    step()
    with torch.no_grad() if mode == "fwd" else torch.enable_grad():
        benchmark(step)
