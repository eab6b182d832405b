"""leo.animator: LIA state_dict layout, checkpoints, fused == reference, inference API."""
import argparse
import pathlib

import pytest
import torch
import torch.nn.functional as F

import leo_kernels
from leo.animator import Animator, CheckpointError, SourceCache, infer_config

from _util import assert_close, rel_err

TSV = pathlib.Path(__file__).resolve().parents[2] / "shared" / "design" / "lia_state_dict_256.tsv"


def _tsv_layout():
    if not TSV.is_file():
        pytest.skip(f"design file not found: {TSV}")
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines()[1:] if line.strip()]
    return [(k, tuple(int(d) for d in s.split("x"))) for k, s in rows]


def _smooth_images(b, size, seed, cells=8):
    """Random but natural-looking images (bicubic upsampled noise) in [-1, 1].

    Pixel noise makes the fine warp levels of a random-weight model amplify float32
    rounding ~100x (the sampled features change pixel to pixel); real images do not."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, cells, cells, generator=g) * 2 - 1
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _model(size, width, seed=0, **kw):
    torch.manual_seed(seed)
    return Animator(size, width=width, **kw)


# --------------------------------------------------------------------------- layout
def test_state_dict_matches_released_layout_256():
    layout = _tsv_layout()
    assert len(layout) == 185
    with torch.device("meta"):
        m = Animator()
    sd = m.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == layout  # keys, shapes and order
    assert sum(v.numel() for v in sd.values()) == pytest.approx(45.1e6, rel=2e-3)


def test_loads_released_tensors_strictly():
    layout = _tsv_layout()
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(*s, generator=g) for k, s in layout}
    m = Animator()
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m.dec.direction.weight, sd["dec.direction.weight"])


@pytest.mark.parametrize("size,count", [(128, 158), (512, 212), (64, 131), (32, 104)])
def test_tensor_counts(size, count):
    with torch.device("meta"):
        assert len(Animator(size).state_dict()) == count


def test_width_keeps_keys():
    with torch.device("meta"):
        full = Animator(128).state_dict()
        small = Animator(128, width=0.25, style_dim=64, motion_dim=8).state_dict()
    assert list(full) == list(small)
    assert small["enc.net_app.convs.0.0.weight"].shape == (32, 3, 1, 1)
    assert small["dec.direction.weight"].shape == (64, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": 48}, "power of two"),
        ({"size": 16}, "size"),
        ({"size": 1024}, "size"),
        ({"width": 0}, "width"),
        ({"motion_dim": 600}, "motion_dim"),
        ({"kernels": "fast"}, "kernels"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        with torch.device("meta"):
            Animator(**kwargs)


def test_bad_inputs():
    m = _model(32, 0.125)
    x = _smooth_images(1, 32, 0)
    with pytest.raises(ValueError, match="img_drive"):
        m(x, torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="h_start"):
        m(x, x, torch.zeros(1, 7))
    with pytest.raises(TypeError, match="img_source"):
        m(x.to(torch.uint8), x)
    with pytest.raises(ValueError, match="cache batch"):
        m.render(m.encode(torch.cat([x, x])), torch.zeros(3, 20))


# --------------------------------------------------------------------------- numerics
def _compare_paths(m, src, drv, relative, tol):
    h_start = m.encode_motion(drv[:1]) if relative else None
    with torch.no_grad():
        m.kernels = "auto"
        fused = m(src, drv, h_start)
        m.kernels = "reference"
        ref = m(src, drv, h_start)
        m.kernels = "auto"
    assert fused.shape == ref.shape == drv.shape
    assert ref.std() > 1e-3  # a real image, not a constant
    assert_close(fused, ref, tol=tol, name=f"fused vs reference (relative={relative})")


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_matches_reference_64(batch, relative):
    m = _model(64, 0.25, seed=batch)
    _compare_paths(m, _smooth_images(batch, 64, 1), _smooth_images(batch, 64, 2), relative, 1e-4)


@pytest.mark.parametrize("relative", [False, True])
def test_fused_matches_reference_256(relative):
    # Full resolution, all six warp levels; width 0.125 keeps the CPU time small.
    m = _model(256, 0.125, seed=5)
    _compare_paths(m, _smooth_images(1, 256, 3), _smooth_images(1, 256, 4), relative, 1e-4)


def test_gradients_match_reference_64():
    # float64: in float32 a random-weight model's gradients are too ill-conditioned (bilinear
    # and leaky-ReLU kinks) for a tight bound; in float64 both paths agree to ~1e-13.
    m = _model(64, 0.125, seed=7).double()
    src, drv = _smooth_images(2, 64, 5).double(), _smooth_images(2, 64, 6).double()
    weight = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = {}
    for kernels in ("auto", "reference"):
        m.kernels = kernels
        m.zero_grad(set_to_none=True)
        s, d = src.clone().requires_grad_(), drv.clone().requires_grad_()
        h_start = torch.linspace(-1, 1, 20, dtype=torch.float64).requires_grad_()
        (m(s, d, h_start) * weight).sum().backward()
        grads[kernels] = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        grads[kernels].update(img_source=s.grad, img_drive=d.grad, h_start=h_start.grad)
    m.kernels = "auto"
    # Every parameter except the unused to_rgb1 and the noise weights gets a gradient.
    unused = {n for n, _ in m.named_parameters() if n.startswith("dec.to_rgb1") or ".noise." in n}
    assert {n for n, _ in m.named_parameters()} - set(grads["auto"]) == unused
    assert set(grads["auto"]) == set(grads["reference"])
    for n, a in grads["auto"].items():
        b = grads["reference"][n]
        assert torch.isfinite(a).all() and b.abs().max() > 0, n
        assert rel_err(a, b) < 1e-9, f"gradient of {n}: relative error {rel_err(a, b):.2e}"


def test_every_level_calls_warp_inpaint(monkeypatch):
    calls = []
    real = leo_kernels.warp_inpaint

    def spy(feat, x, logits, skip=None, align_corners=False, *, backend=None):
        calls.append((feat.shape[-1], skip is None, align_corners, backend))
        return real(feat, x, logits, skip, align_corners, backend=backend)

    monkeypatch.setattr(leo_kernels, "warp_inpaint", spy)
    m = _model(64, 0.125)
    x = _smooth_images(1, 64, 0)
    with torch.no_grad():
        m(x, x)
        m.kernels = "reference"
        m(x, x)
    assert calls == [(8, True, False, None), (16, False, False, None), (32, False, False, None), (64, False, False, None)] + [
        (8, True, False, "reference"), (16, False, False, "reference"), (32, False, False, "reference"), (64, False, False, "reference")
    ]


@pytest.mark.parametrize("relative", [False, True])
def test_encode_render_equals_forward(relative):
    m = _model(32, 0.125, seed=3)
    src, drv = _smooth_images(1, 32, 7), _smooth_images(4, 32, 8)
    with torch.no_grad():
        cache = m.encode(src)
        assert isinstance(cache, SourceCache)
        assert cache.wa.shape == (1, 512) and cache.alpha.shape == (1, 20)
        assert [f.shape[-1] for f in cache.feats] == [8, 16, 32]
        alphas = m.encode_motion(drv)
        assert alphas.shape == (4, 20)
        start = alphas[0] if relative else None
        h_start = alphas[:1] if relative else None
        rendered = m.render(cache, alphas, start_alpha=start)
        direct = m(src.expand(4, -1, -1, -1), drv, h_start)
        assert_close(rendered, direct, tol=1e-5, name="render vs forward (cache broadcast)")
        # A cache of batch T pairs frame by frame.
        cache4 = m.encode(drv.flip(0))
        paired = m.render(cache4, alphas, start_alpha=start)
        assert_close(paired, m(drv.flip(0), drv, h_start), tol=1e-5, name="render vs forward (paired)")
        # Relative mode at the start frame gives the source's own latent.
        if relative:
            assert_close(m.latent(cache.wa, alphas[:1], cache.alpha, alphas[:1]), m.latent(cache.wa, cache.alpha), tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    m = _model(32, 0.25, seed=4)
    src, drv = _smooth_images(2, 32, 9), _smooth_images(2, 32, 10)
    with torch.no_grad():
        ref = m(src, drv, torch.zeros(20))
        with torch.autocast("cpu", dtype=dtype):
            out = m(src, drv, torch.zeros(20))
            cache = m.encode(src)
            rendered = m.render(cache, m.encode_motion(drv), torch.zeros(20))
    assert torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < 5e-2
    assert rel_err(rendered.float(), ref) < 5e-2


def test_channels_last_input():
    m = _model(32, 0.25, seed=5)
    src, drv = _smooth_images(2, 32, 11), _smooth_images(2, 32, 12)
    with torch.no_grad():
        ref = m(src, drv)
        out = m(src.contiguous(memory_format=torch.channels_last), drv.contiguous(memory_format=torch.channels_last))
    assert_close(out, ref, tol=1e-5)


# --------------------------------------------------------------------------- checkpoints
def _outputs_equal(a, b, size):
    x, y = _smooth_images(1, size, 20), _smooth_images(1, size, 21)
    with torch.no_grad():
        assert torch.equal(a(x, y), b(x, y))


def test_save_load_round_trip(tmp_path):
    m = _model(32, 0.25, seed=11, style_dim=128, motion_dim=10)
    path = tmp_path / "anim.safetensors"
    m.save(path)
    back = Animator.from_checkpoint(path)
    assert back.config == m.config == {
        "size": 32, "style_dim": 128, "motion_dim": 10, "channel_multiplier": 1, "width": 0.25,
        "align_corners": False, "relative_latent": False, "relative_flow": False,
    }
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    _outputs_equal(m, back, 32)
    assert not list(tmp_path.glob(".*tmp"))


def test_save_load_keeps_the_leo_conventions(tmp_path):
    torch.manual_seed(3)
    m = Animator(size=32, style_dim=32, width=0.125, align_corners=True, relative_latent=True, relative_flow=True)
    m.save(tmp_path / "a.safetensors")
    back = Animator.from_checkpoint(tmp_path / "a.safetensors")
    assert back.align_corners and back.relative_latent and back.relative_flow
    assert all(f.align_corners for f in back.dec.to_flows)
    _outputs_equal(m, back, 32)


def test_copy_source_init_reproduces_the_source():
    torch.manual_seed(4)
    x, y = _smooth_images(3, 32, 30), _smooth_images(3, 32, 31)
    for relative in (False, True):
        m = Animator(size=32, style_dim=32, width=0.25, align_corners=True, relative_latent=relative)
        m.init_copy_source().eval()
        with torch.no_grad():
            out = m(x, y)
        assert (out - x).abs().max() < 1e-4
    # LIA's grid convention is not an identity at zero flow: the same init blurs the borders
    lia = Animator(size=32, style_dim=32, width=0.25).init_copy_source().eval()
    with torch.no_grad():
        assert (lia(x, y) - x).abs().max() > 1e-2


def test_relative_latent_takes_motion_relative_to_the_source():
    torch.manual_seed(5)
    m = Animator(size=32, style_dim=32, width=0.25, relative_latent=True).eval()
    x, y = _smooth_images(2, 32, 40), _smooth_images(2, 32, 41)
    with torch.no_grad():
        cache = m.encode(x)
        alphas = m.encode_motion(y)
        want = m.dec(cache.wa + m.dec.direction(alphas - cache.alpha), cache.feats)
        assert torch.allclose(m(x, y), want, atol=1e-5)
        assert torch.allclose(m.render(cache, alphas), want, atol=1e-5)
        # the source driving itself: zero motion, whatever the appearance code
        assert torch.allclose(m.render(cache, cache.alpha), m.dec(cache.wa, cache.feats), atol=1e-5)
        # relative mode with a start code: motion alpha_t - start
        start = alphas[:1]
        want = m.dec(cache.wa + m.dec.direction(alphas - start), cache.feats)
        assert torch.allclose(m.render(cache, alphas, start_alpha=start), want, atol=1e-5)


def _random_flow_heads(m, seed):
    """Flow heads that move a lot (the init's are zero), so flows are not trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for level in m.dec.to_flows:
            level.conv.weight.copy_(torch.randn(level.conv.weight.shape, generator=g))
            level.bias.copy_(torch.randn(level.bias.shape, generator=g))
    return m


def test_relative_flow_copies_at_zero_motion_whatever_the_source():
    torch.manual_seed(6)
    m = _random_flow_heads(Animator(size=32, style_dim=32, width=0.25, align_corners=True, relative_latent=True,
                                    relative_flow=True), seed=6).eval()
    # the same weights with the flow rows of every head zeroed: identity warps, the masks unchanged
    still = Animator(**{**m.config, "relative_flow": False})
    still.load_state_dict(m.state_dict())
    with torch.no_grad():
        for level in still.dec.to_flows:
            level.conv.weight[:, :2].zero_()
            level.bias[:, :2].zero_()
    absolute = Animator(**{**m.config, "relative_flow": False})
    absolute.load_state_dict(m.state_dict())
    x, y = _smooth_images(3, 32, 42), _smooth_images(3, 32, 43)
    with torch.no_grad():
        want = still(x, y * 0 + x)
        # forward decodes the still rows in the same batch as the motion rows; on more than one thread
        # the convolutions may round the two copies of a row differently (1e-5 here, with these
        # deliberately large flow heads), so the zero-motion flows are zero up to float32 rounding
        assert torch.allclose(m(x, x), want, atol=1e-4)
        cache = m.encode(x)
        assert cache.still_flows is not None and len(cache.still_flows) == len(m.dec.to_flows)
        assert torch.allclose(m.render(cache, cache.alpha), want, atol=1e-5)
        # without the cached references render computes them (in the same batch: rounding as above)
        bare = SourceCache(cache.wa, cache.feats, cache.alpha)
        assert torch.allclose(m.render(bare, cache.alpha), want, atol=1e-4)
        # with motion the flows are not zero, and differ from the absolute ones by the references
        moved = m(x, y)
        assert (moved - want).abs().max() > 1e-2
        assert (moved - absolute(x, y)).abs().max() > 1e-2
        refs = m.dec.still_flows(cache.wa, cache.feats)
        alphas = m.encode_motion(y)
        latent = m.latent(cache.wa, alphas, cache.alpha)
        # (forward decodes the still pass in the same batch, so its float32 rounding differs a little;
        # test_still_pass_in_the_same_batch_equals_its_own_pass checks the two in float64)
        assert torch.allclose(m.dec(latent, cache.feats, still_flows=refs), moved, atol=1e-4)
        # a batch-1 cache renders every frame against the same references
        one = m.encode(x[:1])
        assert torch.allclose(m.render(one, alphas), m(x[:1].expand(3, -1, -1, -1), y), atol=1e-4)
    # gradients reach the weights through both passes
    m.train()
    m(x, y).square().mean().backward()
    assert all(level.conv.weight.grad is not None and level.conv.weight.grad.abs().sum() > 0 for level in m.dec.to_flows)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("source_batch, batch, channels_last", [(3, 3, False), (1, 3, False), (2, 2, True), (1, 1, False)])
def test_still_pass_in_the_same_batch_equals_its_own_pass(kernels, source_batch, batch, channels_last):
    """Training decodes the zero-motion (still) pass in the same batch as the motion pass, level by
    level: the output and every gradient equal those of a separate still pass (float64)."""
    torch.manual_seed(7)
    m = _random_flow_heads(Animator(size=32, style_dim=32, motion_dim=8, width=0.125, kernels=kernels,
                                    align_corners=True, relative_latent=True, relative_flow=True), seed=7).double()
    src = _smooth_images(source_batch, 32, 50).double()
    if channels_last:
        src = src.contiguous(memory_format=torch.channels_last)
    wa, feats = m.enc.net_app(src)
    feats = [f.detach() for f in feats]
    latent = torch.randn(batch, 32, dtype=torch.float64)
    weight = torch.rand(batch, 3, 32, 32, dtype=torch.float64)
    rows = []  # the batch of every call of the first decoder conv: one pass of b + source_batch rows
    m.dec.conv1.register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    results = []
    for lockstep in (False, True):
        m.zero_grad()
        lat, still = latent.clone().requires_grad_(True), wa.detach().clone().requires_grad_(True)
        if lockstep:
            out = m.dec(lat, feats, still_latent=still)
        else:
            out = m.dec(lat, feats, still_flows=m.dec.still_flows(still, feats))
        (out * weight).sum().backward()
        grads = [p.grad.clone() for p in m.dec.parameters() if p.grad is not None]
        results.append((out.detach(), lat.grad, still.grad, grads))
    (out0, lat0, still0, g0), (out1, lat1, still1, g1) = results
    assert rows == [source_batch, batch, batch + source_batch]
    assert out1.shape == (batch, 3, 32, 32) and torch.isfinite(out1).all()
    assert rel_err(out1, out0) < 1e-10 and rel_err(lat1, lat0) < 1e-10 and rel_err(still1, still0) < 1e-10
    assert len(g0) == len(g1) and all(rel_err(a, b) < 1e-10 for a, b in zip(g1, g0))


def test_relative_flow_needs_the_relative_latent():
    with pytest.raises(ValueError, match="relative_flow needs relative_latent"):
        Animator(size=32, style_dim=32, width=0.25, relative_flow=True)


def test_load_released_format(tmp_path):
    m = _model(64, 0.125, seed=12)
    released = {
        "gen": m.state_dict(),
        "dis": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)},
        "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
        "args": argparse.Namespace(size=64, latent_dim_style=512, latent_dim_motion=20),
    }
    torch.save(released, tmp_path / "vox.pt")
    back = Animator.from_checkpoint(tmp_path / "vox.pt")
    assert back.config == m.config
    _outputs_equal(m, back, 64)
    m = _model(32, 0.125, seed=12)
    # A bare state_dict (pickle, DDP-prefixed pickle, or plain safetensors) loads too.
    torch.save(m.state_dict(), tmp_path / "bare.pt")
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "ddp.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "bare.safetensors"))
    for name in ("bare.pt", "ddp.pt", "bare.safetensors"):
        _outputs_equal(m, Animator.from_checkpoint(tmp_path / name), 32)


def test_infer_config_released_sizes():
    for size in (128, 256, 512):
        with torch.device("meta"):
            sd = Animator(size).state_dict()
        assert infer_config(sd) == {"size": size, "style_dim": 512, "motion_dim": 20, "channel_multiplier": 1, "width": 1.0}


def test_checkpoint_errors(tmp_path):
    m = _model(32, 0.125, seed=13)
    sd = m.state_dict()
    bad = dict(sd)
    del bad["dec.to_rgb1.bias"]
    bad["dec.extra.weight"] = torch.zeros(1)
    bad["dec.conv1.activate.bias"] = torch.zeros(1, 7, 1, 1)
    torch.save({"gen": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        Animator.from_checkpoint(tmp_path / "bad.pt")
    msg = str(info.value)
    assert "1 missing keys: dec.to_rgb1.bias" in msg
    assert "1 unexpected keys: dec.extra.weight" in msg
    assert "dec.conv1.activate.bias: checkpoint (1, 7, 1, 1) vs model (1, 64, 1, 1)" in msg
    (tmp_path / "junk.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        Animator.from_checkpoint(tmp_path / "junk.pt")
    torch.save({"optimizer": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither"):
        Animator.from_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        Animator.from_checkpoint(tmp_path / "missing.pt")
    from leo.checkpoint_io import save_weights

    save_weights(tmp_path / "lmdm.safetensors", {"w": torch.zeros(2)}, "lmdm", {})
    with pytest.raises(CheckpointError, match="lmdm"):
        Animator.from_checkpoint(tmp_path / "lmdm.safetensors")


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("relative_flow", [False, True])
def test_traces_into_one_graph(kernels, relative_flow):
    """torch.compile sees the whole animator as one graph (a graph break per decoder level, from
    the inference-only kernel shortcut, made compiled training slower than eager); also the
    discriminator. torch._dynamo.explain traces without compiling."""
    from leo.discriminator import Discriminator

    torch.manual_seed(0)
    G = Animator(size=32, style_dim=32, motion_dim=8, width=1 / 32, kernels=kernels, align_corners=True,
                 relative_latent=True, relative_flow=relative_flow)
    D = Discriminator(size=32, width=1 / 32, kernels=kernels)
    src, tgt = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    try:
        for mode in (torch.enable_grad, torch.inference_mode):
            with mode():
                explained = {"animator": torch._dynamo.explain(G)(src, tgt),
                             "discriminator": torch._dynamo.explain(D)(torch.cat([src, tgt]), 2)}
            for name, ex in explained.items():
                assert ex.graph_break_count == 0, (name, mode.__name__, [str(b.reason)[:200] for b in ex.break_reasons])
                assert ex.graph_count == 1, (name, mode.__name__)
    finally:
        torch._dynamo.reset()
