"""upfirdn2d and bias_act: fused backends vs their eager forms, at the animator's (LIA) shapes.

Eager baselines are leo_kernels.reference (upfirdn2d: zero insertion + pad + conv2d; bias_act:
add + leaky_relu + mul), run in the same session. `pytest benchmarks/bench_stylegan.py --benchmark-only`
(add `--benchmark-group-by=param:case` to compare side by side).
"""
import math

import pytest
import torch

import leo_kernels
from leo_kernels import reference

_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if _CUDA else [])
# CPU runs at 1 thread (stable on a shared machine) and at torch's default thread count.
THREADS = [1, torch.get_num_threads()]


@pytest.fixture(params=THREADS, ids=lambda n: f"threads{n}")
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _fir(scale=1.0):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum() * scale


# name -> (shape at batch B (B filled in), kernel scale, up, down, pad)
UPFIRDN_CASES = {
    "blur_512x16_pad22": ((512, 16, 16), 1, 1, 1, (2, 2)),
    "blur_512x32_pad22": ((512, 32, 32), 1, 1, 1, (2, 2)),
    "upblur_512x33_pad11": ((512, 33, 33), 4, 1, 1, (1, 1)),
    "rgb_up2_3x128": ((3, 128, 128), 4, 2, 1, (2, 1)),
    "blur_64x256_pad22": ((64, 256, 256), 1, 1, 1, (2, 2)),
    "down2_64x256": ((64, 256, 256), 1, 1, 2, (1, 1)),
}
BIAS_ACT_CASES = {"512x32": (512, 32, 32), "64x256": (64, 256, 256), "linear_512": (512,)}


def _batch(device, case_shape):
    if device == "cuda":
        return 32
    return 1 if case_shape[-1] >= 256 else 2  # small batch on the 2-core CPU


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _fast_backend(device):
    return "cuda" if device == "cuda" else "cpu"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("case", list(UPFIRDN_CASES))
def test_upfirdn2d(benchmark, case, impl, dtype, device, threads):
    shape, scale, up, down, pad = UPFIRDN_CASES[case]
    b = _batch(device, shape)
    x = torch.randn(b, *shape, device=device, dtype=dtype)
    k = _fir(scale).to(device)
    p4 = (*pad, *pad)
    if impl == "fused":
        backend = _fast_backend(device)
        fn = lambda: leo_kernels.upfirdn2d(x, k, up, down, pad, backend=backend)  # noqa: E731
    else:
        backend = "reference"
        fn = lambda: reference.upfirdn2d(x, k, (up, up), (down, down), p4)  # noqa: E731
    benchmark.extra_info.update(
        op="upfirdn2d", case=case, impl=impl, backend=backend, shape=list(x.shape), dtype=str(dtype),
        device=device, up=up, down=down, pad=list(pad), threads=torch.get_num_threads(),
    )

    def run():
        out = fn()
        _sync(device)
        return out

    out = benchmark(run)
    assert out.shape[0] == b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("case", ["blur_512x32_pad22", "rgb_up2_3x128"])
def test_upfirdn2d_fwd_bwd(benchmark, case, impl, device, threads):
    shape, scale, up, down, pad = UPFIRDN_CASES[case]
    b = _batch(device, shape)
    x = torch.randn(b, *shape, device=device, requires_grad=True)
    k = _fir(scale).to(device)
    backend = _fast_backend(device) if impl == "fused" else "reference"
    benchmark.extra_info.update(
        op="upfirdn2d fwd+bwd", case=case, impl=impl, backend=backend, shape=list(x.shape), dtype="float32",
        device=device, threads=torch.get_num_threads(),
    )

    def run():
        out = leo_kernels.upfirdn2d(x, k, up, down, pad, backend=backend)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
        _sync(device)
        return g

    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("case", list(BIAS_ACT_CASES))
def test_bias_act(benchmark, case, impl, dtype, device, threads):
    shape = BIAS_ACT_CASES[case]
    b = _batch(device, shape) if len(shape) > 1 else 64
    x = torch.randn(b, *shape, device=device, dtype=dtype)
    bias = torch.randn(shape[0], device=device, dtype=dtype)
    backend = _fast_backend(device) if impl == "fused" else "reference"
    if impl == "fused":
        fn = lambda: leo_kernels.bias_act(x, bias, 0.2, math.sqrt(2.0), backend=backend)  # noqa: E731
    else:
        fn = lambda: reference.bias_act(x, bias, 0.2, math.sqrt(2.0))  # noqa: E731
    benchmark.extra_info.update(
        op="bias_act", case=case, impl=impl, backend=backend, shape=list(x.shape), dtype=str(dtype), device=device,
        threads=torch.get_num_threads(),
    )

    def run():
        out = fn()
        _sync(device)
        return out

    benchmark(run)
