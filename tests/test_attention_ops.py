"""temporal_attention and temporal_attention_block: every backend vs the eager reference.

The reference itself is checked against docs/OPS.md written out literally (loops, float64) and
against the eager block built from torch modules. On a CPU-only machine Triton runs under
TRITON_INTERPRET=1 (conftest.py) on a representative subset of small shapes; with CUDA the full
shape matrix runs for the triton and cuda backends.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import leo_kernels as lk
from leo_kernels import _backend
from leo_kernels import reference as R
from leo_kernels.attention import HEAD_DIMS
from tests import _cases
from tests._cases import block_args as _block_args, qkv as _qkv
from tests._util import REL_TOL, assert_close, non_contiguous

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none visible)")
HAS_TRITON = _backend.triton_importable() and (HAS_CUDA or _backend.triton_interpret())
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not importable (or no CUDA and no interpreter)")
LOW = (torch.float16, torch.bfloat16)


_rand = _cases.randn


def _tol(dtype, grad=False):
    # float32 backends accumulate in a different order than ATen: far under 1e-3 still.
    if dtype == torch.float32:
        return 2e-5 if grad else 1e-5
    return REL_TOL[dtype]


def _check_attention(backend, B, H, L, d, dtype, rope, device="cpu", layout=None):
    q, k, v = _qkv(B, H, L, d, dtype, device)
    if layout == "noncontig":
        q, k, v = (non_contiguous(t.detach()).requires_grad_() for t in (q, k, v))
    elif layout == "transposed":  # (B, L, H, d) storage viewed as (B, H, L, d)
        q, k, v = (t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v))
    out = lk.temporal_attention(q, k, v, rope, backend=backend)
    assert lk.last_backend("temporal_attention") == backend
    ref = R.temporal_attention(q, k, v, rope)
    assert out.dtype == dtype
    assert_close(out, ref, tol=_tol(dtype), name=f"{backend} out")
    g = _rand(*out.shape, dtype=dtype, device=device)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for name, a, b in zip("qkv", got, want):
        assert a.dtype == dtype
        assert_close(a, b, tol=_tol(dtype, grad=True), name=f"{backend} d{name}")


def _check_block(backend, B, C, L, H, d, dtype, rope, device="cpu", noncontig=False):
    args = _block_args(B, C, L, H, d, dtype, device)
    if noncontig:
        args[0] = non_contiguous(args[0].detach()).requires_grad_()
        args[2] = args[2].detach().t().contiguous().t().requires_grad_()  # column-major w_qkv
    y = lk.temporal_attention_block(*args, H, rope, backend=backend)
    assert lk.last_backend("temporal_attention_block") == backend
    ref = R.temporal_attention_block(*args, H, rope)
    assert_close(y, ref, tol=_tol(dtype), name=f"{backend} y")
    g = _rand(*y.shape, dtype=dtype, device=device)
    got = torch.autograd.grad(y, args, g)
    want = torch.autograd.grad(ref, args, g)
    for name, a, b in zip(("x", "norm_weight", "w_qkv", "w_out", "b_out"), got, want):
        assert_close(a, b, tol=_tol(dtype, grad=True), name=f"{backend} d{name}")


# (B, H, L, d, dtype, rope): every L and every d of the issue, heads 1..8, batch 1..64, all dtypes.
ALL_LENGTHS = (1, 2, 7, 64, 333, 1024)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _matrix(dtypes=DTYPES, big=True):
    cases = []
    for i, L in enumerate(ALL_LENGTHS):
        for j, d in enumerate(HEAD_DIMS):
            dtype = dtypes[(i + j) % len(dtypes)]
            H = 1 + (3 * i + j) % 8
            B = 64 if (big and L <= 7 and j == 0) else 1 + (i + 2 * j) % 3
            if L >= 333:
                B, H = 1, 1 + j % 2
            cases.append((B, H, L, d, dtype, (i + j) % 2 == 1))
    return cases


# --------------------------------------------------------------------------- the reference vs OPS.md
def _ops_md_attention(q, k, v, rope):
    """OPS.md literally, float64 loops over pairs (slow; small shapes only)."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, L, d = q.shape
    if rope:
        def rot(t):
            out = t.clone()
            for p in range(L):
                for i in range(d // 2):
                    ang = p * 10000.0 ** (-2.0 * i / d)
                    c, s = math.cos(ang), math.sin(ang)
                    a, b = t[..., p, i], t[..., p, i + d // 2]
                    out[..., p, i] = a * c - b * s
                    out[..., p, i + d // 2] = a * s + b * c
            return out

        q, k = rot(q), rot(k)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    w = torch.exp(s - s.amax(-1, keepdim=True))
    return torch.einsum("bhij,bhjd->bhid", w / w.sum(-1, keepdim=True), v)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("L,d", [(1, 16), (5, 16), (9, 32)])
def test_reference_attention_is_ops_md(L, d, rope):
    q, k, v = _qkv(2, 3, L, d, torch.float64, grad=False)
    assert_close(R.temporal_attention(q, k, v, rope), _ops_md_attention(q, k, v, rope), tol=1e-12)
    if not rope:
        assert_close(R.temporal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v), tol=1e-12)


def test_reference_rope_inverse_is_transpose():
    t = _rand(2, 3, 17, 32, dtype=torch.float64)
    assert_close(R.rope_rotate(R.rope_rotate(t), inverse=True), t, tol=1e-13)
    u = _rand(2, 3, 17, 32, dtype=torch.float64)
    # <R t, u> == <t, R^T u>
    lhs = (R.rope_rotate(t) * u).sum()
    rhs = (t * R.rope_rotate(u, inverse=True)).sum()
    assert abs(lhs.item() - rhs.item()) < 1e-9 * abs(lhs.item()) + 1e-9


def eager_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope=False):
    """The block from stock modules (RMSNorm + conv1d + SDPA + conv1d + residual): also the
    benchmark baseline."""
    B, C, L = x.shape
    h = F.rms_norm(x.transpose(1, 2), (C,), norm_weight, eps=1e-6).transpose(1, 2)
    qkv = F.conv1d(h, w_qkv.unsqueeze(-1))
    d = w_qkv.shape[0] // (3 * heads)
    q, k, v = qkv.view(B, 3, heads, d, L).transpose(-1, -2).unbind(1)
    if rope:
        q, k = R.rope_rotate(q), R.rope_rotate(k)
    a = F.scaled_dot_product_attention(q, k, v)
    return x + F.conv1d(a.transpose(-1, -2).reshape(B, heads * d, L), w_out.unsqueeze(-1), b_out)


@pytest.mark.parametrize("rope", [False, True])
def test_reference_block_is_eager_modules(rope):
    args = _block_args(3, 24, 11, 2, 16, torch.float64)
    assert_close(R.temporal_attention_block(*args, 2, rope), eager_block(*args, 2, rope), tol=1e-12)


def test_reference_gradcheck_float64():
    q, k, v = _qkv(1, 2, 5, 16, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: R.temporal_attention(a, b, c, True), (q, k, v), fast_mode=True)
    args = _block_args(2, 5, 3, 1, 16, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: R.temporal_attention_block(*a, 1, True), args, fast_mode=True)


# --------------------------------------------------------------------------- cpu backend (ATen composite custom op)
@pytest.mark.parametrize("B,H,L,d,dtype,rope", _matrix())
def test_cpu_backend_attention_matrix(B, H, L, d, dtype, rope):
    torch.manual_seed(L * 131 + d)
    _check_attention("cpu", B, H, L, d, dtype, rope)


@pytest.mark.parametrize("layout", ["noncontig", "transposed"])
def test_cpu_backend_attention_strided(layout):
    _check_attention("cpu", 2, 3, 10, 32, torch.float32, True, layout=layout)


@pytest.mark.parametrize("dtype", [torch.float64, *DTYPES])
@pytest.mark.parametrize("B,C,L,H,d,rope", [(1, 16, 1, 1, 16, True), (3, 40, 13, 2, 32, False), (64, 32, 7, 4, 16, True)])
def test_cpu_backend_block(B, C, L, H, d, rope, dtype):
    _check_block("cpu", B, C, L, H, d, dtype, rope)


def test_cpu_backend_block_noncontiguous():
    _check_block("cpu", 2, 24, 9, 3, 16, torch.float32, True, noncontig=True)


def test_cpu_backend_gradcheck_float64():
    q, k, v = _qkv(2, 1, 6, 16, torch.float64)
    fn = lambda a, b, c: lk.temporal_attention(a, b, c, True, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)
    args = _block_args(2, 5, 3, 1, 16, torch.float64)
    fn = lambda *a: lk.temporal_attention_block(*a, 1, True, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)


def test_default_backend_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    q, k, v = _qkv(1, 1, 3, 16, torch.float32, grad=False)
    lk.temporal_attention(q, k, v)
    assert lk.last_backend("temporal_attention") == "reference"
    lk.temporal_attention(q.double(), k.double(), v.double())
    assert lk.last_backend("temporal_attention") == "reference"
    lk.temporal_attention_block(*(t.detach() for t in _block_args(1, 8, 3, 1, 16, torch.float32)), 1)
    assert lk.last_backend("temporal_attention_block") == "reference"
    monkeypatch.setenv(_backend.ENV_VAR, "cpu")  # the environment variable still selects "cpu"
    lk.temporal_attention(q, k, v)
    assert lk.last_backend("temporal_attention") == "cpu"


# --------------------------------------------------------------------------- opcheck / torch.compile
def _opcheck_backends():
    out = ["cpu"]
    if HAS_TRITON:
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _opcheck_backends())
def test_opcheck_attention_ops(backend):
    dev = "cuda" if backend == "triton" and HAS_CUDA else "cpu"
    q, k, v = _qkv(1, 2, 5, 16, torch.float32, dev)
    torch.library.opcheck(torch.ops.leo_kernels.temporal_attention.default, (q, k, v, True, backend))
    out, lse = torch.ops.leo_kernels.temporal_attention(q, k, v, True, backend)
    g = _rand(*out.shape, device=dev)
    torch.library.opcheck(torch.ops.leo_kernels.temporal_attention_backward.default,
                          (g, q.detach(), k.detach(), v.detach(), out.detach(), lse.detach(), True, backend))


@pytest.mark.parametrize("backend", _opcheck_backends())
def test_opcheck_block_ops(backend):
    dev = "cuda" if backend == "triton" and HAS_CUDA else "cpu"
    args = _block_args(2, 8, 3, 1, 16, torch.float32, dev)
    torch.library.opcheck(torch.ops.leo_kernels.temporal_attention_block.default, (*args, 1, True, backend))
    y, qkv, a, lse, rstd = torch.ops.leo_kernels.temporal_attention_block(*args, 1, True, backend)
    det = [t.detach() for t in args]
    torch.library.opcheck(torch.ops.leo_kernels.temporal_attention_block_backward.default,
                          (torch.randn_like(y), det[0], det[1], det[2], det[3], qkv.detach(), a.detach(),
                           lse.detach(), rstd.detach(), 1, True, backend))


def test_torch_compile_fullgraph():
    q, k, v = _qkv(2, 2, 6, 16, torch.float32)
    args = _block_args(2, 12, 6, 2, 16, torch.float32)

    def f(q, k, v, x, nw, wq, wo, bo):
        a = lk.temporal_attention(q, k, v, True, backend="cpu")
        y = lk.temporal_attention_block(x, nw, wq, wo, bo, 2, True, backend="cpu")
        return a.sum() + y.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = compiled(q, k, v, *args)
    want = f(q, k, v, *args)
    assert torch.allclose(got, want, rtol=1e-5)
    grads = torch.autograd.grad(got, [q, k, v, *args])
    ref_grads = torch.autograd.grad(want, [q, k, v, *args])
    for a, b in zip(grads, ref_grads):
        assert_close(a, b, tol=1e-5)


# --------------------------------------------------------------------------- triton
@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the Triton wrappers allocate starts as NaN."""
    from leo_kernels.triton import attention_triton as T

    def nan_empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(T, "_empty", nan_empty)
    return T


_DEV = "cuda" if HAS_CUDA else "cpu"
# Interpreter subset: every d, L in {1, 2, 7, 64, 333}, each dtype, rope on and off, several batch/heads.
TRITON_SMALL = [
    (1, 1, 1, 16, torch.float32, True),
    (3, 2, 2, 32, torch.bfloat16, False),
    (2, 3, 7, 64, torch.float16, True),
    (1, 2, 64, 16, torch.bfloat16, True),
    (2, 1, 33, 128, torch.float32, True),
    (1, 1, 333, 16, torch.float32, False),
    (1, 1, 80, 64, torch.float32, False),  # float32 backward takes 64-row tiles here (A100 shared memory)
]


@requires_triton
@pytest.mark.parametrize("B,H,L,d,dtype,rope", TRITON_SMALL if not HAS_CUDA else _matrix())
def test_triton_attention(poisoned, B, H, L, d, dtype, rope):
    torch.manual_seed(L * 7 + d)
    _check_attention("triton", B, H, L, d, dtype, rope, device=_DEV)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_attention_tiled_path(poisoned, monkeypatch, dtype):
    # Force small tiles so the online-softmax loop runs several blocks (odd L: ragged last tile).
    monkeypatch.setattr(poisoned, "BLOCK_OVERRIDE", (16, 32))
    _check_attention("triton", 1, 2, 75, 32, dtype, True, device=_DEV)


@requires_triton
@pytest.mark.parametrize("layout", ["noncontig", "transposed"])
def test_triton_attention_strided(poisoned, layout):
    _check_attention("triton", 1, 2, 9, 16, torch.float32, True, device=_DEV, layout=layout)


TRITON_BLOCK_SMALL = [
    (1, 16, 1, 1, 16, torch.float32, True),
    (2, 40, 9, 2, 16, torch.bfloat16, True),
    (2, 36, 20, 3, 32, torch.float16, False),
]
TRITON_BLOCK_CUDA = [
    (B, C, L, H, d, dt, rope)
    for (B, C, L, H, d) in [(64, 256, 64, 4, 64), (16, 512, 256, 8, 64), (3, 40, 333, 2, 16), (1, 96, 7, 1, 128), (5, 64, 1024, 2, 32)]
    for dt in DTYPES
    for rope in (False, True)
]


@requires_triton
@pytest.mark.parametrize("B,C,L,H,d,dtype,rope", TRITON_BLOCK_SMALL if not HAS_CUDA else TRITON_BLOCK_CUDA)
def test_triton_block(poisoned, B, C, L, H, d, dtype, rope):
    torch.manual_seed(C + L)
    _check_block("triton", B, C, L, H, d, dtype, rope, device=_DEV)


@requires_triton
def test_triton_block_noncontiguous(poisoned):
    _check_block("triton", 2, 24, 5, 2, 16, torch.float32, True, device=_DEV, noncontig=True)


# --------------------------------------------------------------------------- cuda
def _cuda_ready():
    return HAS_CUDA and "cuda" in lk.available_backends("cuda")


@requires_cuda
@pytest.mark.parametrize("B,H,L,d,dtype,rope", _matrix())
def test_cuda_attention(B, H, L, d, dtype, rope):
    if not _cuda_ready():
        pytest.skip("leo_kernels._C was built without CUDA")
    torch.manual_seed(L * 3 + d)
    torch.empty(1 << 24, device="cuda").fill_(float("nan"))  # poison the caching allocator
    _check_attention("cuda", B, H, L, d, dtype, rope, device="cuda")


@requires_cuda
@pytest.mark.parametrize("layout", ["noncontig", "transposed"])
def test_cuda_attention_strided(layout):
    if not _cuda_ready():
        pytest.skip("leo_kernels._C was built without CUDA")
    _check_attention("cuda", 2, 3, 70, 64, torch.float32, True, device="cuda", layout=layout)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_block(dtype):
    if not _cuda_ready():
        pytest.skip("leo_kernels._C was built without CUDA")
    _check_block("cuda", 16, 128, 64, 4, 32, dtype, True, device="cuda")


@requires_cuda
def test_cuda_opcheck():
    if not _cuda_ready():
        pytest.skip("leo_kernels._C was built without CUDA")
    q, k, v = _qkv(2, 2, 37, 32, torch.float32, "cuda")
    torch.library.opcheck(torch.ops.leo_kernels.temporal_attention.default, (q, k, v, True, "cuda"))
    torch.library.opcheck(torch.ops.leo_kernels._temporal_attention_fwd.default, (q.detach(), k.detach(), v.detach(), True))


# --------------------------------------------------------------------------- bad input
def test_bad_attention_input_names_argument():
    q, k, v = _qkv(1, 2, 4, 16, torch.float32, grad=False)
    with pytest.raises(ValueError, match="q must be 4-D"):
        lk.temporal_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k must have q's shape"):
        lk.temporal_attention(q, k[:, :, :3], v)
    with pytest.raises(ValueError, match="v must have q's shape"):
        lk.temporal_attention(q, k, v[:1, :1])
    with pytest.raises(ValueError, match="head dim"):
        lk.temporal_attention(*(torch.zeros(1, 1, 4, 24) for _ in range(3)))
    with pytest.raises(ValueError, match="sequence length"):
        lk.temporal_attention(*(torch.zeros(1, 1, 0, 16) for _ in range(3)))
    with pytest.raises(TypeError, match="v has dtype"):
        lk.temporal_attention(q, k, v.double())
    with pytest.raises(TypeError, match="rope must be a bool"):
        lk.temporal_attention(q, k, v, rope=1)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        lk.temporal_attention(q, "k", v)
    with pytest.raises(ValueError, match="backend"):
        lk.temporal_attention(q, k, v, backend="tpu")
    with pytest.raises(TypeError, match="float64"):
        lk.temporal_attention(q.double(), k.double(), v.double(), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        lk.temporal_attention(*(torch.zeros(1, 1, 4, 16, dtype=torch.int32) for _ in range(3)))


def test_bad_block_input_names_argument():
    x, nw, wq, wo, bo = (t.detach() for t in _block_args(2, 8, 5, 2, 16, torch.float32))
    with pytest.raises(ValueError, match="x must be 3-D"):
        lk.temporal_attention_block(x[0], nw, wq, wo, bo, 2)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        lk.temporal_attention_block(x, nw[:3], wq, wo, bo, 2)
    with pytest.raises(ValueError, match="w_qkv must have 3\\*heads\\*d rows"):
        lk.temporal_attention_block(x, nw, wq, wo, bo, 5)
    with pytest.raises(ValueError, match="head dim"):
        lk.temporal_attention_block(x, nw, wq, wo, bo, 4)  # d = 8
    with pytest.raises(ValueError, match="w_qkv must have shape"):
        lk.temporal_attention_block(x, nw, wq[:, :4], wo, bo, 2)
    with pytest.raises(ValueError, match="w_out must have shape"):
        lk.temporal_attention_block(x, nw, wq, wo[:, :8], bo, 2)
    with pytest.raises(ValueError, match="b_out must have shape"):
        lk.temporal_attention_block(x, nw, wq, wo, bo[:2], 2)
    with pytest.raises(TypeError, match="heads must be an int"):
        lk.temporal_attention_block(x, nw, wq, wo, bo, 2.0)
    with pytest.raises(ValueError, match="heads must be >= 1"):
        lk.temporal_attention_block(x, nw, wq, wo, bo, 0)
    with pytest.raises(TypeError, match="w_out has dtype"):
        lk.temporal_attention_block(x, nw, wq, wo.half(), bo, 2)
    with pytest.raises(ValueError, match="backend"):
        lk.temporal_attention_block(x, nw, wq, wo, bo, 2, backend="gpu")


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_capture_and_inductor(backend):
    if backend not in lk.available_backends("cuda"):
        pytest.skip(f"backend {backend} not available on this CUDA machine")
    args = [t.detach() for t in _block_args(4, 64, 48, 2, 32, torch.bfloat16, "cuda")]
    ref = R.temporal_attention_block(*args, 2, True)
    fn = lambda: lk.temporal_attention_block(*args, 2, True, backend=backend)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()  # warm-up (Triton compiles, rope tables cached) off the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()
    graph.replay()
    torch.cuda.synchronize()
    assert_close(static_out, ref, tol=REL_TOL[torch.bfloat16])
    compiled = torch.compile(lambda *a: lk.temporal_attention_block(*a, 2, True, backend=backend) * 2, fullgraph=True)
    assert_close(compiled(*args), 2 * ref, tol=REL_TOL[torch.bfloat16])


# --------------------------------------------------------------------------- shared sample inputs
@pytest.mark.parametrize("op", _cases.FAMILIES["attention"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_sample_inputs_match_reference_cpu(op, dtype):
    assert _cases.check_against_reference(op, "cpu", dtype=dtype, tol=2e-5 if dtype == torch.float32 else None) > 0


@requires_triton
@pytest.mark.parametrize("op", _cases.FAMILIES["attention"])
def test_sample_inputs_match_reference_triton(op):
    assert _cases.check_against_reference(op, "triton", device=_DEV, tol=2e-5) > 0
