"""One source of test inputs for every leo_kernels op (the pattern of pytorch/extension-cpp's
``sample_inputs``): the op test files (test_warp_ops.py, test_stylegan_ops.py,
test_attention_ops.py) build their tensors with the generators here, and each runs
:func:`sample_inputs` of its family's ops through every backend against the reference.

A new op adds its generator and its cases to :data:`SAMPLES` (docs/INTERNALS.md, "Adding an op").
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tests._util import channels_last, non_contiguous


class SampleInput(NamedTuple):
    """Positional ``args`` and keyword ``kwargs`` of one call of an op (without ``backend``)."""

    args: tuple
    kwargs: dict
    name: str


# --------------------------------------------------------------------------- tensors
def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float32, device="cpu", g=None, scale=1.0):
    """Normal samples drawn in float64 (the same values whatever ``dtype``), then cast."""
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def layout(t, name):
    """``t`` as "contiguous", "channels_last" or "non_contiguous" (strided) storage."""
    if name == "channels_last":
        return channels_last(t)
    if name == "non_contiguous":
        return non_contiguous(t)
    return t.contiguous()


# --------------------------------------------------------------------------- warp family
def grid(n, ho, wo, dtype=torch.float32, g=None, spread=1.3, device="cpu"):
    """Normalized coords in [-spread, spread]; spread > 1 puts samples outside the image."""
    return ((torch.rand(n, ho, wo, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread).to(device=device, dtype=dtype)


def warp_inpaint_inputs(shape, dtype=torch.float32, g=None, layout_name="contiguous", flow_scale=2.0, device="cpu"):
    """(feat, x, logits, skip) for shape (N, C, H, W, with_skip), all requiring grad."""
    n, c, h, w, with_skip = shape
    feat = layout(randn(n, c, h, w, dtype=dtype, g=g, device=device), layout_name).requires_grad_()
    x = layout(randn(n, c, h, w, dtype=dtype, g=g, device=device), layout_name).requires_grad_()
    logits = randn(n, 3, h, w, dtype=dtype, g=g, scale=flow_scale, device=device).requires_grad_()
    skip = None
    if with_skip:
        skip = randn(n, 3, h // 2, w // 2, dtype=dtype, g=g, scale=flow_scale, device=device).requires_grad_()
    return feat, x, logits, skip


# --------------------------------------------------------------------------- stylegan family
def fir(k=(1.0, 3.0, 3.0, 1.0), scale=1.0, dtype=torch.float32):
    """Normalized separable FIR kernel (outer product) times ``scale``."""
    k = torch.tensor(k, dtype=dtype)
    k = torch.outer(k, k)
    return k / k.sum() * scale


# The animator's (LIA / StyleGAN2) upfirdn2d uses: name -> (kernel scale, up, down, pad)
LIA_CASES = {
    "blur_before_stride2_conv3x3": (1, 1, 1, (2, 2)),
    "blur_before_stride2_conv1x1": (1, 1, 1, (1, 1)),
    "blur_after_transposed_conv": (4, 1, 1, (1, 1)),
    "rgb_skip_upsample": (4, 2, 1, (2, 1)),
    "downsample": (1, 1, 2, (1, 1)),
}

# Random general upfirdn2d cases: x shape, kernel shape, up (x, y), down (x, y), pad (x0, x1, y0, y1)
GENERAL_CASES = [
    ((1, 3, 7, 5), (4, 4), (1, 1), (1, 1), (2, 1, 2, 1)),
    ((2, 3, 5, 6), (3, 4), (2, 3), (1, 1), (1, 2, 0, 3)),
    ((2, 2, 9, 7), (4, 3), (1, 1), (2, 3), (1, 1, 2, 0)),
    ((1, 4, 6, 8), (5, 5), (3, 2), (2, 2), (-1, 3, 2, -2)),
    ((3, 1, 4, 5), (1, 3), (2, 1), (1, 2), (0, 2, 0, 0)),
    ((1, 5, 8, 6), (2, 2), (1, 2), (3, 1), (-2, -1, 0, 1)),
]

# bias_act: x shapes (2-d to 5-d, one channel) and activations (negative_slope, gain): LIA's
# leaky ReLU, a plain ReLU, a negative slope
BIAS_SHAPES = [(3, 5), (1, 4, 7), (2, 3, 5, 6), (1, 2, 3, 4, 5), (2, 1, 3, 3)]
BIAS_ACTIVATIONS = ((0.2, math.sqrt(2.0)), (0.0, 1.0), (-0.5, 3.0))


def bias_act_inputs(shape, g):
    """(x, bias) in float64: x with out-of-range magnitudes and exact zeros on the kink."""
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 100
    x.view(-1)[::7] = 0.0
    return x, torch.randn(shape[1], generator=g, dtype=torch.float64)


def bias_act_variants(dim, bias):
    """Every ``(layout name, layout, bias, negative_slope, gain)`` checked for an x of ``dim``
    dimensions: contiguous and strided storage (and channels_last for 4-d), with ``bias`` and
    without, each of :data:`BIAS_ACTIVATIONS`."""
    layouts = [("contiguous", lambda t: t), ("strided", non_contiguous)]
    if dim == 4:
        layouts.append(("channels_last", channels_last))
    for name, fn in layouts:
        for b in (bias, None):
            for slope, gain in BIAS_ACTIVATIONS:
                yield name, fn, b, slope, gain


# --------------------------------------------------------------------------- attention family
def qkv(B, H, L, d, dtype=torch.float32, device="cpu", grad=True):
    return [randn(B, H, L, d, dtype=dtype, device=device).requires_grad_(grad) for _ in range(3)]


def block_args(B, C, L, H, d, dtype=torch.float32, device="cpu"):
    """(x, norm_weight, w_qkv, w_out, b_out) of temporal_attention_block, all requiring grad."""
    x = randn(B, C, L, dtype=dtype, device=device, scale=2.0)
    nw = (1.0 + 0.3 * torch.randn(C, dtype=torch.float64)).to(device=device, dtype=dtype)
    w_qkv = randn(3 * H * d, C, dtype=dtype, device=device, scale=C ** -0.5)
    w_out = randn(C, H * d, dtype=dtype, device=device, scale=(H * d) ** -0.5)
    b_out = randn(C, dtype=dtype, device=device, scale=0.1)
    return [t.requires_grad_() for t in (x, nw, w_qkv, w_out, b_out)]


# --------------------------------------------------------------------------- sample_inputs
def _grid_sample(device, dtype, g):
    for padding in ("zeros", "border", "reflection"):
        for align in (False, True):
            for lay in ("contiguous", "channels_last"):
                inp = layout(randn(2, 3, 5, 6, dtype=dtype, g=g, device=device), lay).requires_grad_()
                gr = grid(2, 4, 3, dtype, g, device=device).requires_grad_()
                yield SampleInput((inp, gr, padding, align), {}, f"{padding}-align{align}-{lay}")


def _compose_flow(device, dtype, g):
    for n, k, h, w in ((1, 2, 3, 2), (2, 3, 4, 5)):
        coarse = randn(n, k, h, w, dtype=dtype, g=g, device=device).requires_grad_()
        fine = randn(n, k, 2 * h, 2 * w, dtype=dtype, g=g, device=device).requires_grad_()
        yield SampleInput((coarse, fine), {}, f"{n}x{k}x{h}x{w}")


def _warp_inpaint(device, dtype, g):
    for shape in ((2, 3, 4, 6, True), (1, 5, 5, 7, False)):
        for align in (False, True):
            for lay in ("contiguous", "channels_last"):
                args = warp_inpaint_inputs(shape, dtype, g, lay, device=device)
                yield SampleInput(args, {"align_corners": align}, f"{shape}-align{align}-{lay}")


def _upfirdn2d(device, dtype, g):
    # (x shape, kernel shape, up, down, pad): LIA's blur/up/down cases and general ones.
    cases = [
        ((1, 3, 8, 8), None, 1, 1, (2, 2)),
        ((1, 3, 8, 8), None, 2, 1, (2, 1)),
        ((1, 3, 8, 8), None, 1, 2, (1, 1)),
        ((2, 3, 5, 6), (3, 4), (2, 3), (1, 1), (1, 2, 0, 3)),
        ((1, 4, 6, 8), (5, 5), (3, 2), (2, 2), (-1, 3, 2, -2)),
    ]
    for shape, ks, up, down, pad in cases:
        for lay in ("contiguous", "channels_last"):
            x = layout(randn(*shape, dtype=dtype, g=g, device=device), lay).requires_grad_()
            k = (fir() if ks is None else randn(*ks, g=g)).to(device=device, dtype=dtype)
            yield SampleInput((x, k, up, down, pad), {}, f"{shape}-up{up}-down{down}-pad{pad}-{lay}")


def _bias_act(device, dtype, g):
    for shape in ((3, 5), (2, 3, 5, 6), (1, 2, 3, 4, 5)):
        x = randn(*shape, dtype=dtype, g=g, device=device, scale=3.0).requires_grad_()
        b = randn(shape[1], dtype=dtype, g=g, device=device).requires_grad_()
        for bias in (b, None):
            yield SampleInput((x, bias), {"negative_slope": 0.2, "gain": 2 ** 0.5}, f"{shape}-bias{bias is not None}")


def _temporal_attention(device, dtype, g):
    for B, H, L, d in ((1, 1, 1, 16), (2, 3, 7, 32), (1, 2, 33, 64)):
        for rope in (False, True):
            q, k, v = (randn(B, H, L, d, dtype=dtype, g=g, device=device).requires_grad_() for _ in range(3))
            yield SampleInput((q, k, v, rope), {}, f"{B}x{H}x{L}x{d}-rope{rope}")


def _temporal_attention_block(device, dtype, g):
    for B, C, L, H, d, rope in ((1, 16, 1, 1, 16, True), (2, 24, 9, 3, 16, False)):
        yield SampleInput((*block_args(B, C, L, H, d, dtype, device), H, rope), {}, f"{B}x{C}x{L}-h{H}-rope{rope}")


SAMPLES = {
    "grid_sample": _grid_sample,
    "compose_flow": _compose_flow,
    "warp_inpaint": _warp_inpaint,
    "upfirdn2d": _upfirdn2d,
    "bias_act": _bias_act,
    "temporal_attention": _temporal_attention,
    "temporal_attention_block": _temporal_attention_block,
}

FAMILIES = {
    "warp": ("grid_sample", "compose_flow", "warp_inpaint"),
    "stylegan": ("upfirdn2d", "bias_act"),
    "attention": ("temporal_attention", "temporal_attention_block"),
}


def sample_inputs(op: str, device="cpu", dtype=torch.float32, seed=0):
    """Inputs (tensors requiring grad) of representative calls of ``op`` on ``device``."""
    yield from SAMPLES[op](device, dtype, generator(seed))


def check_against_reference(op: str, backend: str, device="cpu", dtype=torch.float32, tol=None):
    """Every sample of ``op``: outputs and input gradients of ``backend`` vs the reference backend.

    Returns the number of samples checked."""
    import leo_kernels
    from tests._util import assert_close

    fn = getattr(leo_kernels, op)
    count = 0
    for sample in sample_inputs(op, device, dtype):
        out = fn(*sample.args, **sample.kwargs, backend=backend)
        assert leo_kernels.last_backend(op) == backend
        ref = fn(*sample.args, **sample.kwargs, backend="reference")
        outs = out if isinstance(out, tuple) else (out,)
        refs = ref if isinstance(ref, tuple) else (ref,)
        for i, (o, r) in enumerate(zip(outs, refs)):
            assert o.dtype == r.dtype, f"{op} {sample.name}: output {i} dtype {o.dtype} != {r.dtype}"
            assert_close(o, r, dtype, tol=tol, name=f"{op} {sample.name} output {i}")
        inputs = [t for t in sample.args if isinstance(t, torch.Tensor) and t.requires_grad]
        g = generator(count)
        gouts = [randn(*o.shape, dtype=o.dtype, g=g, device=o.device) for o in outs]
        got = torch.autograd.grad(outs, inputs, gouts)
        want = torch.autograd.grad(refs, inputs, gouts)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, dtype, tol=tol and 2 * tol, name=f"{op} {sample.name} grad {i}")
        count += 1
    return count
