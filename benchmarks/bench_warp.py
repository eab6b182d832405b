"""warp_inpaint and grid_sample: leo backends vs the eager chain and its torch.compile.

The eager chain is one decoder level written the way LIA's decoder computes it: FIR upsampling
of the skip flow as zero insertion + pad + grouped conv, add, tanh, identity grid from linspace,
F.grid_sample, sigmoid mask, multiply, blend. Every impl is checked against leo's reference
before timing.

  pytest benchmarks/bench_warp.py --benchmark-only --benchmark-group-by=param:case,param:dtype,param:mode

CPU cases are small enough for a 2-core machine; the decoder shapes of a 256 model (batch 1/16,
float32/bfloat16) run when CUDA is present. Backends are every leo backend available on the
device, so triton/cuda appear automatically on a GPU machine.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leo_kernels
from leo_kernels import reference

_CUDA = torch.cuda.is_available()

# (device, case name, N, C, H, W, dtype, with skip)
CASES = [
    ("cpu", "1x64x128x128", 1, 64, 128, 128, torch.float32, True),
    ("cpu", "4x64x128x128", 4, 64, 128, 128, torch.float32, True),
    ("cpu", "4x512x16x16", 4, 512, 16, 16, torch.float32, True),
]
if _CUDA:
    for n in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            for c, s in ((512, 8), (512, 16), (512, 32), (256, 64), (128, 128), (64, 256)):
                CASES.append(("cuda", f"{n}x{c}x{s}x{s}", n, c, s, s, dtype, s > 8))

GS_CASES = [("cpu", "4x64x128x128", 4, 64, 128, 128, torch.float32)]
if _CUDA:
    for n in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            GS_CASES += [("cuda", "%dx64x256x256" % n, n, 64, 256, 256, dtype), ("cuda", "%dx512x32x32" % n, n, 512, 32, 32, dtype)]


def _impls(device):
    fast = [b for b in leo_kernels.available_backends(device) if b != "reference"]
    return [f"leo-{b}" for b in fast] + ["eager", "compiled"]


def _params(cases):
    out = []
    for case in cases:
        for impl in _impls(case[0]):
            dt = str(case[6]).replace("torch.", "")
            out.append(pytest.param(case, impl, id=f"{case[0]}-{case[1]}-{dt}-{impl}"))
    return out


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the eager chain
def _fir_up2_weight(channels, device, dtype):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    k = k / k.sum() * 4  # upsampling by 2 in both axes: gain 4
    return k.flip(0, 1).view(1, 1, 4, 4).repeat(channels, 1, 1, 1).to(device=device, dtype=dtype)


def eager_level(feat, x, logits, skip, fir):
    if skip is not None:
        n, c, h, w = skip.shape
        up = F.pad(skip.reshape(n, c, h, 1, w, 1), (0, 1, 0, 0, 0, 1)).reshape(n, c, 2 * h, 2 * w)
        up = F.conv2d(F.pad(up, (2, 1, 2, 1)), fir, groups=c)
        flow = logits + up
    else:
        flow = logits
    _, _, h, w = flow.shape
    gy, gx = torch.meshgrid(
        torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype),
        torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    identity = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    sampler = torch.tanh(flow[:, 0:2]).permute(0, 2, 3, 1) + identity
    mask = torch.sigmoid(flow[:, 2:3])
    warped = F.grid_sample(feat, sampler, mode="bilinear", padding_mode="zeros", align_corners=False) * mask
    blended = warped + x * (1 - mask)
    return warped, blended, flow


_COMPILED = {}


def _compiled_level():
    if "level" not in _COMPILED:
        _COMPILED["level"] = torch.compile(eager_level, dynamic=False)
    return _COMPILED["level"]


def _level_fn(impl, fir):
    if impl.startswith("leo-"):
        backend = impl[4:]
        return lambda f, x, l, s: leo_kernels.warp_inpaint(f, x, l, s, backend=backend)
    fn = eager_level if impl == "eager" else _compiled_level()
    return lambda f, x, l, s: fn(f, x, l, s, fir)


def _close(a, b, dtype):
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
    assert err < tol, f"benchmarked impl disagrees with the reference: relative error {err:.2e}"


def _wi_bytes(n, c, h, w, esize, with_skip, backward):
    big, small = n * c * h * w, n * 3 * h * w
    skip = n * 3 * (h // 2) * (w // 2) if with_skip else 0
    fwd = 4 * big + 2 * small + skip  # read feat, x, logits, skip; write warped, blended, composed
    if not backward:
        return fwd * esize
    # read grad_warped, grad_blended, feat, x, composed, grad_composed; write grad_feat, grad_x,
    # grad_logits, grad_skip
    return (fwd + 6 * big + 3 * small + skip) * esize


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("case, impl", _params(CASES))
def test_warp_inpaint(benchmark, record_throughput, case, impl, mode):
    device, name, n, c, h, w, dtype, with_skip = case
    g = torch.Generator(device=device).manual_seed(0)
    mk = lambda *s, scale=1.0: (torch.randn(*s, device=device, generator=g) * scale).to(dtype)  # noqa: E731
    feat, x = mk(n, c, h, w), mk(n, c, h, w)
    logits = mk(n, 3, h, w, scale=0.5)
    skip = mk(n, 3, h // 2, w // 2, scale=0.5) if with_skip else None
    fir = _fir_up2_weight(3, device, dtype)
    fn = _level_fn(impl, fir)
    backward = mode == "forward_backward"
    inputs = [t for t in (feat, x, logits, skip) if t is not None]
    if backward:
        for t in inputs:
            t.requires_grad_(True)
    grads = [mk(n, c, h, w), mk(n, c, h, w), mk(n, 3, h, w)]

    # Same function as the reference (checked once, untimed; also warms up / compiles).
    with torch.no_grad():
        ref = reference.warp_inpaint(feat, x, logits, skip)
        got = fn(feat, x, logits, skip)
    for a, b in zip(got, ref):
        _close(a, b, dtype)

    def run():
        if backward:
            outs = fn(feat, x, logits, skip)
            res = torch.autograd.grad(outs, inputs, grads)
        else:
            with torch.no_grad():
                res = fn(feat, x, logits, skip)
        _sync(device)
        return res

    run()
    benchmark.extra_info.update(
        case=name, shape=(n, c, h, w), skip=with_skip, dtype=str(dtype), device=device, impl=impl, mode=mode,
        torch_threads=torch.get_num_threads(),
    )
    benchmark.pedantic(run, rounds=10 if device == "cpu" else 50, iterations=1, warmup_rounds=1)
    record_throughput(benchmark, _wi_bytes(n, c, h, w, feat.element_size(), with_skip, backward))


# --------------------------------------------------------------------------- grid_sample
def _gs_fn(impl, padding):
    if impl.startswith("leo-"):
        backend = impl[4:]
        return lambda i, gr: leo_kernels.grid_sample(i, gr, padding, False, backend=backend)
    if impl == "eager":
        return lambda i, gr: F.grid_sample(i, gr, padding_mode=padding, align_corners=False)
    key = ("gs", padding)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(
            lambda i, gr: F.grid_sample(i, gr, padding_mode=padding, align_corners=False), dynamic=False
        )
    return _COMPILED[key]


@pytest.mark.parametrize("mode", ["forward", "backward"])
@pytest.mark.parametrize("case, impl", _params(GS_CASES))
def test_grid_sample(benchmark, record_throughput, case, impl, mode):
    device, name, n, c, h, w, dtype = case
    g = torch.Generator(device=device).manual_seed(1)
    inp = torch.randn(n, c, h, w, device=device, generator=g).to(dtype)
    grid = (torch.rand(n, h, w, 2, device=device, generator=g) * 2.2 - 1.1).to(dtype)
    fn = _gs_fn(impl, "zeros")
    with torch.no_grad():
        _close(fn(inp, grid), reference.grid_sample(inp, grid), dtype)
    backward = mode == "backward"
    if backward:
        inp.requires_grad_(True)
        grid.requires_grad_(True)
        out = fn(inp, grid)
        gout = torch.randn_like(out)

        def run():
            res = torch.autograd.grad(out, (inp, grid), gout, retain_graph=True)
            _sync(device)
            return res

    else:

        def run():
            with torch.no_grad():
                res = fn(inp, grid)
            _sync(device)
            return res

    run()
    benchmark.extra_info.update(
        case=name, shape=(n, c, h, w), grid=(n, h, w, 2), dtype=str(dtype), device=device, impl=impl, mode=mode,
        torch_threads=torch.get_num_threads(),
    )
    benchmark.pedantic(run, rounds=10 if device == "cpu" else 50, iterations=1, warmup_rounds=1)
    es = inp.element_size()
    big, gbytes = n * c * h * w, n * h * w * 2
    # forward: read input + grid, write output; backward: read grad_out, input, grid; write grad_input, grad_grid
    nbytes = (2 * big + gbytes) * es if not backward else (3 * big + 2 * gbytes) * es
    record_throughput(benchmark, nbytes)
