"""The CUDA attention core (csrc/cuda/attention_cuda.cu: forward, delta, dQ, dK/dV kernels) compiled as
host C++ and run on CPU tensors (tests/cuda_emu/leo_cuda_emulate.h), vs the eager reference.

Each block's 128 threads run as cooperating fibers that meet at __syncthreads, __syncwarp and every
warp shuffle, so the kernels' shared-memory staging, barriers and shuffle reductions run as written,
with the real grid (batch*heads, query/key blocks of 16 rows, 8 at d=128). The lengths cover one
partial 32-row tile (L=1, 7), an exact tile (32) and several tiles with a partial last one and a
partial last row block (45, 77); every head dim sees every dtype. Outputs start as NaN (poisoned
CPU allocations).
"""
import pytest
import torch

from leo_kernels import reference as R
from leo_kernels.attention import HEAD_DIMS
from tests import _cases
from tests._util import REL_TOL, assert_close, non_contiguous
from tests.cuda_emu import emulated_ops, poisoned_outputs  # noqa: F401 (autouse fixture)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LENGTHS = (1, 7, 32, 45)
# (B, H, L, d, dtype, rope): every (L, d) pair; dtype and rope cycle so every d sees every dtype.
CASES = [(1 + i % 2, 1 + j % 3, L, d, DTYPES[(i + j) % 3], (i + j) % 2 == 1)
         for i, L in enumerate(LENGTHS) for j, d in enumerate(HEAD_DIMS)]
CASES += [(1, 2, 77, 16, torch.float32, True), (2, 1, 77, 128, torch.bfloat16, False)]


@pytest.fixture(scope="module")
def ops():
    return emulated_ops("attention")


def _tol(dtype, grad=False):
    if dtype == torch.float32:
        return 2e-5 if grad else 1e-5
    return REL_TOL[dtype]


_rand = _cases.randn


def _check(ops, q, k, v, rope, what):
    dtype = q.dtype
    out, lse = ops.temporal_attention_fwd(q, k, v, rope)
    qr, kr, vr = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = R.temporal_attention(qr, kr, vr, rope)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, ref, tol=_tol(dtype), name=f"{what} out")
    # lse = logsumexp of the scaled (roped) scores, float32
    qs, ks = (R.rope_rotate(t.double()) if rope else t.double() for t in (q, k))
    want_lse = torch.logsumexp(qs @ ks.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    assert_close(lse, want_lse, tol=1e-5, name=f"{what} lse")
    g = _rand(*out.shape, dtype=dtype)
    got = ops.temporal_attention_bwd(g, q, k, v, out, lse, rope)
    want = torch.autograd.grad(ref, (qr, kr, vr), g)
    for name, a, b in zip("qkv", got, want):
        assert a.dtype == dtype
        if q.shape[2] == 1 and name != "v":  # softmax over one key: dq = dk = 0 up to rounding
            assert torch.isfinite(a).all() and a.double().norm() <= 1e-5 * want[2].double().norm(), f"{what} d{name}"
        else:
            assert_close(a, b, tol=_tol(dtype, grad=True), name=f"{what} d{name}")


@pytest.mark.parametrize("B,H,L,d,dtype,rope", CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_attention(ops, B, H, L, d, dtype, rope):
    torch.manual_seed(L * 131 + d)
    q, k, v = (_rand(B, H, L, d, dtype=dtype, scale=2.0) for _ in range(3))
    _check(ops, q, k, v, rope, f"B={B} H={H} L={L} d={d} {dtype} rope={rope}")


def test_attention_strided_inputs(ops):
    """The host code makes q, k, v contiguous; (B, L, H, d) storage and a strided view."""
    torch.manual_seed(3)
    q, k, v = (_rand(2, 40, 3, 32, dtype=torch.float32).transpose(1, 2) for _ in range(3))
    _check(ops, q, non_contiguous(k), v, True, "strided")


def test_errors_name_the_problem(ops):
    q = torch.randn(1, 1, 4, 48)
    with pytest.raises(RuntimeError, match="head dim must be 16, 32, 64 or 128"):
        ops.temporal_attention_fwd(q, q, q, False)
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        ops.temporal_attention_fwd(q, q, q, False)
