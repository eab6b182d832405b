"""upfirdn2d and bias_act: leo's fused backends vs the baselines a user would pick, at the animator's
(LIA) shapes, paired and interleaved (_timing.compare).

Baselines: eager = leo_kernels.reference (upfirdn2d: zero insertion + pad + conv2d, the StyleGAN2
reference form; bias_act: add + leaky_relu + mul), compiled = torch.compile of the same.

    pytest benchmarks/bench_stylegan.py --benchmark-only

CPU: float32 and a few cases by default (LEO_BENCH_FULL=1: every case, bfloat16 too); with CUDA every
case at batch 32, float32 and bfloat16, for every leo GPU backend.
"""
import math

import pytest
import torch
from _timing import FULL, compare

import leo_kernels
from leo_kernels import reference

_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if _CUDA else "cpu"
DTYPES = [torch.float32, torch.bfloat16] if FULL else [torch.float32]
ROUNDS = 20 if _CUDA else 5

# name -> (shape at batch B (B filled in), kernel scale, up, down, pad)
UPFIRDN_CASES = {
    "blur_512x32_pad22": ((512, 32, 32), 1, 1, 1, (2, 2)),
    "rgb_up2_3x128": ((3, 128, 128), 4, 2, 1, (2, 1)),
    "down2_64x256": ((64, 256, 256), 1, 1, 2, (1, 1)),
}
if FULL:
    UPFIRDN_CASES |= {
        "blur_512x16_pad22": ((512, 16, 16), 1, 1, 1, (2, 2)),
        "upblur_512x33_pad11": ((512, 33, 33), 4, 1, 1, (1, 1)),
        "blur_64x256_pad22": ((64, 256, 256), 1, 1, 1, (2, 2)),
    }
BIAS_ACT_CASES = {"512x32": (512, 32, 32), "linear_512": (512,)}
if FULL:
    BIAS_ACT_CASES["64x256"] = (64, 256, 256)
_DTYPE_IDS = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _batch(shape):
    if _CUDA:
        return 32
    return 1 if shape[-1] >= 256 else 2  # small batch on the 2-core CPU


def _fir(scale=1.0):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum() * scale


def _leo_backends():
    return [b for b in leo_kernels.available_backends(DEVICE) if b != "reference"]


_COMPILED = {}


def _compiled(name, fn):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def _check(impls, args, dtype):
    with torch.no_grad():
        outs = {k: fn(*args) for k, fn in impls.items()}
    ref = outs["eager"].double()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for k, out in outs.items():
        err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        assert err < tol, f"{k} disagrees with the reference: relative error {err:.2e}"


def _info(benchmark, op, case, shape, dtype, mode):
    dt = _DTYPE_IDS[dtype]
    benchmark.extra_info.update(op=op, device=DEVICE, shape=list(shape), dtype=dt, mode=mode,
                                case=f"{case} {tuple(shape)} {dt}, {mode}")


def _upfirdn_impls(up, down, pad):
    p4 = (*pad, *pad)
    impls = {f"leo-{b}": (lambda b: lambda x, k: leo_kernels.upfirdn2d(x, k, up, down, pad, backend=b))(b)
             for b in _leo_backends()}

    def eager(x, k):
        return reference.upfirdn2d(x, k, (up, up), (down, down), p4)

    impls["eager"] = eager
    compiled = _compiled("upfirdn2d", reference.upfirdn2d)
    impls["compiled"] = lambda x, k: compiled(x, k, (up, up), (down, down), p4)
    return impls


@pytest.mark.parametrize("dtype", DTYPES, ids=_DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(UPFIRDN_CASES))
def test_upfirdn2d(benchmark, case, dtype):
    shape, scale, up, down, pad = UPFIRDN_CASES[case]
    x = torch.randn(_batch(shape), *shape).to(DEVICE, dtype)
    k = _fir(scale).to(DEVICE)
    impls = _upfirdn_impls(up, down, pad)
    ours = [n for n in impls if n.startswith("leo-")]
    _check(impls, (x, k), dtype)
    _info(benchmark, "upfirdn2d", case, x.shape, dtype, "forward")
    with torch.no_grad():
        out_numel = impls["eager"](x, k).numel()
        calls = {n: (lambda fn: lambda: fn(x, k))(fn) for n, fn in impls.items()}
        compare(benchmark, calls, ours, rounds=ROUNDS, nbytes=(x.numel() + out_numel) * x.element_size())


@pytest.mark.parametrize("case", ["blur_512x32_pad22", "rgb_up2_3x128"])
def test_upfirdn2d_fwd_bwd(benchmark, case):
    shape, scale, up, down, pad = UPFIRDN_CASES[case]
    x = torch.randn(_batch(shape), *shape, device=DEVICE, requires_grad=True)
    k = _fir(scale).to(DEVICE)
    impls = _upfirdn_impls(up, down, pad)
    ours = [n for n in impls if n.startswith("leo-")]
    _check(impls, (x, k), torch.float32)
    grad = torch.ones_like(impls["eager"](x, k))
    _info(benchmark, "upfirdn2d", case, x.shape, torch.float32, "forward_backward")
    calls = {n: (lambda fn: lambda: torch.autograd.grad(fn(x, k), x, grad))(fn) for n, fn in impls.items()}
    # forward: read x, write out; backward: read grad_out, write grad_x
    compare(benchmark, calls, ours, rounds=ROUNDS, nbytes=2 * (x.numel() + grad.numel()) * x.element_size())


def _bias_act_eager(x, bias):
    return reference.bias_act(x, bias, 0.2, math.sqrt(2.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=_DTYPE_IDS.get)
@pytest.mark.parametrize("case", list(BIAS_ACT_CASES))
def test_bias_act(benchmark, case, dtype):
    shape = BIAS_ACT_CASES[case]
    b = _batch(shape) if len(shape) > 1 else 64
    x = torch.randn(b, *shape).to(DEVICE, dtype)
    bias = torch.randn(shape[0]).to(DEVICE, dtype)
    impls = {f"leo-{be}": (lambda be: lambda x, bias: leo_kernels.bias_act(x, bias, 0.2, math.sqrt(2.0), backend=be))(be)
             for be in _leo_backends()}
    ours = list(impls)
    impls["eager"] = _bias_act_eager
    impls["compiled"] = _compiled("bias_act", _bias_act_eager)
    _check(impls, (x, bias), dtype)
    _info(benchmark, "bias_act", case, x.shape, dtype, "forward")
    with torch.no_grad():
        calls = {n: (lambda fn: lambda: fn(x, bias))(fn) for n, fn in impls.items()}
        compare(benchmark, calls, ours, rounds=ROUNDS, nbytes=(2 * x.numel() + bias.numel()) * x.element_size())
