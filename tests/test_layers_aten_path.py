"""The CPU ATen fast path of leo.layers (backend None on CPU) against the reference path
(backend "reference": leo_kernels' eager references, per-sample grouped modulated convs):
outputs, input gradients and parameter gradients, float64, fresh random inputs and weights
(biases too, so the folded bias/gain is exercised), NCHW and channels_last, several shapes."""
import math

import pytest
import torch

from leo import layers as L
from leo.animator import Animator
from leo.discriminator import Discriminator


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _run(module, backend, inputs, extra=()):
    L.set_backend(module, backend)
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    for p in module.parameters():
        p.grad = None
    out = module(*xs, *extra)
    g = torch.Generator().manual_seed(123)
    out.backward(torch.randn(out.shape, generator=g, dtype=out.dtype))
    grads = [x.grad for x in xs] + [p.grad for p in module.parameters() if p.grad is not None]
    return out.detach(), grads


def _check(module, inputs, extra=(), tol=1e-10):
    ref, ref_grads = _run(module, "reference", inputs, extra)
    out, grads = _run(module, None, inputs, extra)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=tol, atol=tol), (out - ref).abs().max()
    assert len(grads) == len(ref_grads)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()


def _image(shape, seed, fmt):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).contiguous(memory_format=fmt)


FORMATS = [torch.contiguous_format, torch.channels_last]
SHAPES = [(1, 8, 8), (3, 16, 16), (2, 12, 20)]


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("b,h,w", SHAPES)
@pytest.mark.parametrize("kind", ["conv3", "conv1", "down3", "skip1", "conv3_noact"])
def test_conv_layers(kind, b, h, w, fmt):
    cin, cout = 5, 6
    for seed, make in enumerate([L.ConvLayer, L.EqualConvAct]):
        args = {"conv3": (cin, cout, 3), "conv1": (cin, cout, 1), "down3": (cin, cout, 3, True),
                "skip1": (cin, cout, 1, True, False, False), "conv3_noact": (cin, cout, 3, False, True, False)}[kind]
        if make is L.ConvLayer and kind == "conv3_noact":
            continue  # the animator has no conv + bias without activation
        m = _randomize(make(*args), seed).double()
        _check(m, [_image((b, cin, h, w), seed + 10, fmt)])
        for gain in (1.0, 1 / math.sqrt(2)):
            L.set_backend(m, None)
            x = _image((b, cin, h, w), seed + 20, fmt)
            with torch.no_grad():
                fast = m(x, gain=gain)
                L.set_backend(m, "reference")
                assert torch.allclose(fast, m(x) * gain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("b,h,w", SHAPES)
def test_res_blocks(b, h, w, fmt):
    for seed, conv in enumerate([L.ConvLayer, L.EqualConvAct]):
        m = _randomize(L.ResBlock(4, 7, conv=conv), seed).double()
        _check(m, [_image((b, 4, h, w), seed, fmt)])


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("b,h,w", SHAPES)
@pytest.mark.parametrize("upsample", [False, True])
def test_styled_conv(upsample, b, h, w, fmt):
    m = _randomize(L.StyledConv(5, 6, 3, style_dim=9, upsample=upsample), 3).double()
    style = torch.randn(b, 9, dtype=torch.float64)
    _check(m, [_image((b, 5, h, w), 4, fmt), style])


@pytest.mark.parametrize("fmt", FORMATS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("b,h,w", SHAPES)
def test_to_rgb_upsample_blur(b, h, w, fmt):
    m = _randomize(L.ToRGB(5), 5).double()
    _check(m, [_image((b, 5, 2 * h, 2 * w), 6, fmt), _image((b, 3, h, w), 7, fmt)])
    _check(L.Upsample().double(), [_image((b, 4, h, w), 8, fmt)])
    _check(L.Downsample().double(), [_image((b, 4, h, w), 9, fmt)])
    for blur in (L.Blur.before_downsample(3), L.Blur.before_downsample(1), L.Blur.after_upsample(3), L.Blur((2, 1))):
        _check(blur.double(), [_image((b, 4, h, w), 10, fmt)])
    _check(L.Blur.before_downsample(1).double(), [_image((b, 4, h, w), 11, fmt)], extra=(2,))


@pytest.mark.parametrize("b", [1, 5])
def test_linear_and_bias_act(b):
    m = _randomize(L.EqualLinear(7, 9, lr_mul=0.01, activate=True), 1).double()
    _check(m, [torch.randn(b, 7, dtype=torch.float64)])
    for fmt in FORMATS:
        _check(_randomize(L.BiasAct(6), 2).double(), [_image((b, 6, 5, 7), 3, fmt)])


@pytest.mark.parametrize("size,batch", [(32, 2), (64, 3)])
def test_animator_and_discriminator_end_to_end(size, batch):
    torch.manual_seed(size)
    g = Animator(size=size, style_dim=32, motion_dim=8, width=0.125, align_corners=True,
                 relative_latent=True).double()
    _randomize(g, 1)
    d = _randomize(Discriminator(size=size, width=0.125), 2).double()
    src, drv = _image((batch, 3, size, size), 3, torch.contiguous_format), _image((batch, 3, size, size), 4, torch.contiguous_format)

    def both(model, backend, fn):
        model.kernels = "auto" if backend is None else "reference"
        for p in model.parameters():
            p.grad = None
        out = fn()
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for model, fn in ((g, lambda: g(src, drv)), (d, lambda: d(torch.cat([src, drv]), batch))):
        ref, ref_grads = both(model, "reference", fn)
        out, grads = both(model, None, fn)
        scale = ref.abs().max().clamp_min(1)
        assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9 * scale)
        assert len(grads) == len(ref_grads)
        for a, r in zip(grads, ref_grads):
            assert torch.allclose(a, r, rtol=1e-8, atol=1e-8 * r.abs().max().clamp_min(1))


def test_env_backend_turns_the_aten_path_off(monkeypatch):
    x = torch.randn(1, 2, 4, 4)
    assert L.aten_path(None, x)
    assert not L.aten_path("reference", x)
    monkeypatch.setenv("LEO_KERNELS_BACKEND", "cpu")
    assert not L.aten_path(None, x)


def test_r1_double_backward_through_the_aten_path():
    d = _randomize(Discriminator(size=16, width=0.0625), 0).double()
    x = _image((4, 3, 16, 16), 1, torch.contiguous_format)
    grads = {}
    for kernels in ("reference", "auto"):
        d.kernels = kernels
        real = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(real).sum(), real, create_graph=True)
        d.zero_grad()
        g.square().sum().backward()
        grads[kernels] = [p.grad.clone() for p in d.parameters() if p.grad is not None]
    for a, b in zip(grads["auto"], grads["reference"]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("size,batch", [(32, 1), (64, 3)])
def test_inference_mode_warp_matches_the_custom_op(size, batch):
    """Under inference_mode the animator calls the compiled warp kernel directly: same frames."""
    torch.manual_seed(size)
    m = _randomize(Animator(size=size, style_dim=32, motion_dim=8, width=0.125), 5).eval()
    with torch.no_grad():  # scale the random flows down to a few pixels
        for to_flow in m.dec.to_flows:
            to_flow.conv.weight.mul_(0.05)
    src = torch.rand(1, 3, size, size) * 2 - 1
    drv = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        cache = m.encode(src)
        ref = m.render(cache, m.encode_motion(drv), torch.zeros(8))
    with torch.inference_mode():
        cache = m.encode(src)
        out = m.render(cache, m.encode_motion(drv), torch.zeros(8))
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_cpu_autocast_keeps_blurs_and_warp_in_float32():
    """Under CPU bf16 autocast the ATen path runs the depthwise blurs and the warp kernel in float32 (oneDNN's
    bf16 depthwise conv is slow, the warp kernel's fast paths are float32), and a training step of the
    animator stays within bf16 error of float32."""
    x = torch.randn(2, 5, 12, 12).bfloat16()
    k = L.make_kernel()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert L.cpu_autocast(x) and not L.cpu_autocast(x.to("meta"))
        down, up = L.fir_down(x, k, (1, 1), 2), L.fir_up2(x, L.make_kernel(gain=4))
    assert down.dtype == up.dtype == torch.float32
    assert torch.equal(down, L.fir_down(x.float(), k, (1, 1), 2)) and torch.equal(up, L.fir_up2(x.float(), L.make_kernel(gain=4)))
    assert not L.cpu_autocast(x)

    torch.manual_seed(0)
    g = Animator(size=32, style_dim=32, motion_dim=8, width=0.125, align_corners=True, relative_latent=True,
                 relative_flow=True).init_copy_source(motion_gain=10.0)
    with torch.no_grad():  # flows of a few pixels, so the warp is exercised
        for to_flow in g.dec.to_flows:
            to_flow.conv.weight.normal_(0, 0.05)
    src, drv = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    warp_dtypes = []
    hook = g.dec.to_flows[-1].register_forward_hook(lambda m, args, out: warp_dtypes.append(out[1].dtype))

    def step(amp):
        g.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = g(src, drv)
        (out.float() - drv).abs().mean().backward()
        return out.detach().float(), torch.cat([p.grad.flatten() for p in g.parameters() if p.grad is not None])

    ref, ref_grad = step(False)
    out, grad = step(True)
    hook.remove()
    assert warp_dtypes == [torch.float32, torch.float32]
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert (out - ref).norm() / ref.norm() < 5e-2
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.95
