"""warp_inpaint and grid_sample: leo backends vs the baselines a user would pick, paired and interleaved.

Baselines, every one checked against leo's reference before timing:
- eager: the efficient eager form a user would write: the [1,3,3,1] upsampling of the skip flow as
  bilinear F.interpolate (of the flow zero-padded by one pixel, which makes it exact), the flow grid,
  F.grid_sample, elementwise mask and blend;
- LIA chain: one decoder level written the way LIA's decoder computes it (FIR upsampling of the skip
  flow as zero insertion + pad + grouped conv, identity grid from meshgrid, tanh, F.grid_sample,
  sigmoid mask, multiply, blend);
- compiled: torch.compile of the efficient eager form;
- copy and clone (forward only): a copy of the bytes the op must move, timed in the same pairs: its
  ratio is the fraction of the memory-traffic floor the op reaches (0.5 = within 2x of the floor).
  copy writes into a preallocated tensor (the strict floor); clone into a newly allocated one, as the
  op must. The session keeps freed memory for reuse (conftest.py), so a new tensor is memory used
  before; with LEO_BENCH_FRESH_PAGES=1 it is fresh pages from the OS, which on this kind of machine
  cost about as much as the copy itself.

Inputs: smooth flows by default, as a trained animator produces (low-frequency fields, displacements
of a few pixels); random per-pixel flows (displacements up to a third of the image, scattered
gathers) as the stated worst case, on the first shape of each device. Gradients arriving at the
outputs have the outputs' layout (what a channels_last model passes back).

    pytest benchmarks/bench_warp.py --benchmark-only

CPU: float32 (4,64,128,128) and (8,64,256,256), NCHW and channels_last (LEO_BENCH_FULL=1 adds two
shapes); with CUDA, the decoder shapes of a 256 model at batch 16 and 1, float32 and bfloat16, for
every leo GPU backend.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _timing import FULL, compare

import leo_kernels
from leo_kernels import reference

_CUDA = torch.cuda.is_available()

# (device, N, C, H, W, dtype, with skip)
if _CUDA:
    CASES = [("cuda", n, c, s, s, dtype, s > 8)
             for n in (16, 1) for dtype in (torch.float32, torch.bfloat16)
             for c, s in ((64, 256), (128, 128), (256, 64), (512, 32), (512, 16), (512, 8))]
    GS_CASES = [("cuda", n, c, s, s, dtype) for n in (16, 1) for dtype in (torch.float32, torch.bfloat16)
                for c, s in ((64, 256), (512, 32))]
else:
    CASES = [("cpu", 4, 64, 128, 128, torch.float32, True), ("cpu", 8, 64, 256, 256, torch.float32, True)]
    if FULL:
        CASES += [("cpu", 1, 64, 128, 128, torch.float32, True), ("cpu", 4, 512, 16, 16, torch.float32, True)]
    GS_CASES = [("cpu", 4, 64, 128, 128, torch.float32), ("cpu", 8, 64, 256, 256, torch.float32)]
MODES = ["forward", "forward_backward"]
ROUNDS = 20 if _CUDA else 5
LAYOUTS = ["contiguous"] if _CUDA else ["contiguous", "channels_last"]


def _params(cases):
    """Every case with a smooth flow in every layout; the cases of the first shape also with the
    random worst case."""
    out = []
    for case in cases:
        device, n, c, h, w, dtype = case[:6]
        flows = ["smooth", "random"] if case[1:5] == cases[0][1:5] else ["smooth"]
        for layout in LAYOUTS:
            for flow in flows:
                dt = str(dtype).replace("torch.", "")
                lay = "" if layout == "contiguous" else "-channels_last"
                out.append(pytest.param(case, flow, layout, id=f"{device}-{n}x{c}x{h}x{w}-{dt}{lay}-{flow}"))
    return out


def _mf(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


# --------------------------------------------------------------------------- realistic inputs
def flow_logits(n, h, w, kind, generator, pixels=3.0):
    """(n, 3, h, w) warp logits: channels 0-1 the flow (tanh of it is the displacement in normalized
    coordinates), channel 2 the occlusion-mask logit.
    smooth: low-frequency fields (bicubic upsampling of a 4x4 grid) with displacements of about
    ``pixels`` pixels, like a trained animator's; random: independent per-pixel values, displacements
    up to about a third of the image (the worst case for the gathers)."""
    if kind == "random":
        return torch.randn(n, 3, h, w, generator=generator) * 0.5
    if kind != "smooth":
        raise ValueError(f"flow kind must be 'smooth' or 'random', got {kind!r}")
    coarse = torch.randn(n, 3, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    scale = torch.tensor([pixels * 2 / w, pixels * 2 / h, 2.0]).view(1, 3, 1, 1)  # normalized units
    return field * scale


def efficient_eager(feat, x, logits, skip=None, align_corners=False):
    """One decoder level the way a user would write it with the best eager ops: the FIR [1,3,3,1]
    upsampling is bilinear 2x upsampling of the flow zero-padded by one pixel (cropped back)."""
    if skip is not None:
        up = F.interpolate(F.pad(skip, (1, 1, 1, 1)), scale_factor=2, mode="bilinear", align_corners=False)
        flow = logits + up[..., 2:-2, 2:-2]
    else:
        flow = logits
    mask = torch.sigmoid(flow[:, 2:3])
    warped = F.grid_sample(feat, reference.flow_grid(flow), mode="bilinear", padding_mode="zeros",
                           align_corners=align_corners) * mask
    return warped, warped + x * (1 - mask), flow


def _floors(nbytes, device):
    """Zero-argument copies that move nbytes (read and write half each): the memory floor, into a
    preallocated tensor and into a new one."""
    src = torch.randn(max(1, nbytes // 8), device=device)
    dst = torch.empty_like(src)
    return {"copy": lambda: dst.copy_(src), "clone": lambda: src.clone()}


def _fir_up2_weight(channels, device, dtype):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    k = k / k.sum() * 4  # upsampling by 2 in both axes: gain 4
    return k.flip(0, 1).view(1, 1, 4, 4).repeat(channels, 1, 1, 1).to(device=device, dtype=dtype)


def lia_chain(feat, x, logits, skip, fir):
    """One decoder level the way LIA computes it."""
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
# Every (shape, layout, grad mode) is its own compilation of the same function: room for all of them.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(64, getattr(torch._dynamo.config, _name)))


def _compiled(name, fn):
    """One torch.compile wrapper per function, reused by every case (each shape compiles once)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def _leo_backends(device):
    return [b for b in leo_kernels.available_backends(device) if b != "reference"]


def _close(a, b, dtype):
    tol = 2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
    assert err < tol, f"benchmarked impl disagrees with the reference: relative error {err:.2e}"


def _call(fn, inputs, grads, backward):
    """A zero-argument call: the forward under no_grad, or forward + gradients of every input."""
    if backward:
        return lambda: torch.autograd.grad(fn(*inputs), inputs, grads)

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    return forward


def _case_info(benchmark, op, shape, dtype, device, flow, mode, layout="contiguous"):
    lay = " channels_last" if layout == "channels_last" else ""
    floor = " (copy/clone rows: fraction of the memory floor)" if mode == "forward" else ""
    benchmark.extra_info.update(
        op=op, device=device, shape=list(shape), dtype=str(dtype).replace("torch.", ""), flow=flow, mode=mode,
        layout=layout,
        case=f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')}{lay}, {flow} flow, {mode}{floor}",
    )


# --------------------------------------------------------------------------- warp_inpaint
def _wi_bytes(n, c, h, w, esize, with_skip, backward):
    big, small = n * c * h * w, n * 3 * h * w
    skip = n * 3 * (h // 2) * (w // 2) if with_skip else 0
    fwd = 4 * big + 2 * small + skip  # read feat, x, logits, skip; write warped, blended, composed
    if not backward:
        return fwd * esize
    # read grad_warped, grad_blended, feat, x, composed, grad_composed; write grad_feat, grad_x,
    # grad_logits, grad_skip
    return (fwd + 6 * big + 3 * small + skip) * esize


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, flow, layout", _params(CASES))
def test_warp_inpaint(benchmark, case, flow, layout, mode):
    device, n, c, h, w, dtype, with_skip = case
    backward = mode == "forward_backward"
    g = torch.Generator().manual_seed(0)
    mf = _mf(layout)
    dev = lambda t, fmt=torch.contiguous_format: t.to(device, dtype).contiguous(memory_format=fmt).requires_grad_(backward)  # noqa: E731
    feat, x = dev(torch.randn(n, c, h, w, generator=g), mf), dev(torch.randn(n, c, h, w, generator=g), mf)
    logits = dev(flow_logits(n, h, w, flow, g))
    skip = dev(flow_logits(n, h // 2, w // 2, flow, g) * 0.5) if with_skip else None
    inputs = [t for t in (feat, x, logits, skip) if t is not None]
    grads = [torch.randn(n, k, h, w, generator=g).to(device, dtype).contiguous(memory_format=mf if k == c else
                                                                              torch.contiguous_format)
             for k in (c, c, 3)]
    fir = _fir_up2_weight(3, device, dtype)

    impls = {f"leo-{b}": (lambda b: lambda *t: leo_kernels.warp_inpaint(*t, backend=b))(b) for b in _leo_backends(device)}
    ours = list(impls)
    with_opt_skip = (lambda fn: fn) if with_skip else (lambda fn: lambda f, x_, l: fn(f, x_, l, None))
    impls["eager"] = with_opt_skip(efficient_eager)
    impls["LIA chain"] = with_opt_skip(lambda f, x_, l, s: lia_chain(f, x_, l, s, fir))
    impls["compiled"] = with_opt_skip(_compiled("warp_inpaint", efficient_eager))

    with torch.no_grad():  # every implementation computes the same function (untimed)
        ref = reference.warp_inpaint(feat, x, logits, skip)
        for fn in impls.values():
            for a, b in zip(fn(*inputs), ref):
                _close(a, b, dtype)

    _case_info(benchmark, "warp_inpaint", (n, c, h, w), dtype, device, flow, mode, layout)
    benchmark.extra_info["skip"] = with_skip
    nbytes = _wi_bytes(n, c, h, w, feat.element_size(), with_skip, backward)
    calls = {k: _call(fn, inputs, grads, backward) for k, fn in impls.items()}
    if not backward:
        calls.update(_floors(nbytes, device))
    compare(benchmark, calls, ours, rounds=ROUNDS, nbytes=nbytes)


# --------------------------------------------------------------------------- grid_sample
def _grid(n, h, w, flow, g):
    if flow == "random":
        return torch.rand(n, h, w, 2, generator=g) * 2.2 - 1.1
    return reference.flow_grid(flow_logits(n, h, w, flow, g))  # identity + a smooth few-pixel flow


def _f_grid_sample(inp, grid):
    return F.grid_sample(inp, grid, padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case, flow, layout", _params(GS_CASES))
def test_grid_sample(benchmark, case, flow, layout, mode):
    device, n, c, h, w, dtype = case
    backward = mode == "forward_backward"
    g = torch.Generator().manual_seed(1)
    mf = _mf(layout)
    inp = torch.randn(n, c, h, w, generator=g).to(device, dtype).contiguous(memory_format=mf).requires_grad_(backward)
    grid = _grid(n, h, w, flow, g).to(device, dtype).requires_grad_(backward)
    grads = [torch.randn(n, c, h, w, generator=g).to(device, dtype).contiguous(memory_format=mf)]

    impls = {f"leo-{b}": (lambda b: lambda i, gr: leo_kernels.grid_sample(i, gr, "zeros", False, backend=b))(b)
             for b in _leo_backends(device)}
    ours = list(impls)
    impls["eager"] = _f_grid_sample
    impls["compiled"] = _compiled("grid_sample", _f_grid_sample)
    with torch.no_grad():
        ref = reference.grid_sample(inp, grid)
        for fn in impls.values():
            _close(fn(inp, grid), ref, dtype)

    _case_info(benchmark, "grid_sample", (n, c, h, w), dtype, device, flow, mode, layout)
    es, big, gbytes = inp.element_size(), n * c * h * w, n * h * w * 2
    # forward: read input + grid, write output; backward adds: read grad_out, input, grid; write grad_input, grad_grid
    nbytes = (2 * big + gbytes) * es + ((3 * big + 2 * gbytes) * es if backward else 0)
    calls = {k: _call(fn, [inp, grid], grads, backward) for k, fn in impls.items()}
    if not backward:
        calls.update(_floors(nbytes, device))
    compare(benchmark, calls, ours, rounds=ROUNDS, nbytes=nbytes)
