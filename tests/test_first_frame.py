"""First-frame generator: the U-Net denoiser, its checkpoint format, the generator interface
and `leo train-first-frame` (loss goes down, exact resume, atomic checkpoints)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from leo.cli import main as leo_main
from leo.checkpoint_io import CheckpointError
from leo.first_frame import (FirstFrameModel, LatentFirstFrameModel, as_first_frame_generator, load_first_frame_generator,
                             load_first_frame_model)
from leo.train import common
from tests._util import assert_states_equal

TINY = dict(image_size=16, base_channels=8, channel_mults=(1, 2), attn_resolutions=(8,))


def _blob_videos(root, n_videos=3, frames=12, size=24, seed=0):
    """Frame folders of a bright disc moving over a two-tone background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for v in range(n_videos):
        d = root / f"clip{v}"
        d.mkdir(parents=True)
        bg = rng.uniform(0, 120, 3)
        col = rng.uniform(150, 255, 3)
        cx, cy = rng.uniform(6, size - 6, 2)
        vx, vy = rng.uniform(-1, 1, 2)
        for t in range(frames):
            img = np.empty((size, size, 3))
            img[:] = bg
            img[: size // 2] *= 0.6
            mask = (xx - (cx + vx * t)) ** 2 + (yy - (cy + vy * t)) ** 2 < 16
            img[mask] = col
            Image.fromarray(img.astype(np.uint8)).save(d / f"{t:04d}.png")
    return root


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    return _blob_videos(tmp_path_factory.mktemp("blobs"))


def test_model_shapes_and_conditioning():
    torch.manual_seed(0)
    m = FirstFrameModel(**TINY)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 500, 999])
    assert m(x, t).shape == x.shape
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(2, 3, 8, 8), t[:2])
    with pytest.raises(ValueError, match="cond"):
        m(x, t, cond=torch.randn(3, 4))
    with pytest.raises(ValueError, match="image_size"):
        FirstFrameModel(image_size=18, channel_mults=(1, 2, 2))
    # A conditional variant: null condition for dropped samples equals cond=None.
    mc = FirstFrameModel(**TINY, cond_dim=4)
    for p in mc.parameters():  # zero-initialised output layers would hide the condition
        torch.nn.init.normal_(p, std=0.1)
    c = torch.randn(3, 4)
    keep = torch.tensor([True, False, True])
    out = mc(x, t, c, cond_mask=keep)
    assert torch.allclose(out[1], mc(x, t, None)[1], atol=1e-5)
    assert not torch.allclose(out[0], mc(x, t, None)[0], atol=1e-3)
    assert torch.allclose(out[0], mc(x, t, c)[0], atol=1e-5)


def test_checkpoint_roundtrip_and_generator(tmp_path):
    torch.manual_seed(1)
    m = FirstFrameModel(**TINY)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "ff.safetensors"
    m.save(path)
    m2 = FirstFrameModel.from_checkpoint(path)
    assert m2.config == m.config
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    assert torch.equal(m(x, t), m2(x, t))

    gen = load_first_frame_generator(path, device="cpu", steps=4)
    a, b = gen(3, seed=5), gen(3, seed=5)
    assert a.shape == (3, 3, 16, 16) and a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, gen(3, seed=6))
    big = load_first_frame_generator(path, device="cpu", size=32, steps=4)(2, seed=5)
    assert big.shape == (2, 3, 32, 32)

    from leo.checkpoint_io import save_weights

    save_weights(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, "animator", {})
    with pytest.raises(ValueError, match="expected 'first_frame'"):
        FirstFrameModel.from_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        load_first_frame_generator(tmp_path / "missing.safetensors")


class _NearOracle(FirstFrameModel):
    """The exact eps (or v) for a data set of one image, plus a small constant error, for inputs
    in the range a trained network has seen (|x_t| <= 4; beyond it, like a network, it does not
    extrapolate): what a decent but imperfect trained model predicts."""

    def __init__(self, target, error, **kw):
        super().__init__(**kw)
        self.target, self.error = target, error
        self.abar = self.make_diffusion().alphas_cumprod.float()

    def forward(self, x, t, cond=None, cond_mask=None):
        a = self.abar[t].view(-1, 1, 1, 1)
        x = x.clamp(-4, 4)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        pred = eps if self.config["objective"] == "eps" else a.sqrt() * eps - (1 - a).sqrt() * self.target
        return pred + self.error


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_sampling_tolerates_small_prediction_errors(objective):
    # The demo's unconditional video started from colourful noise: at the first DDIM step
    # (abar ~ 1e-9) an eps error of 0.01 became an x0 error of ~200. Sampling clips x0 to the
    # image range, so a nearly right model gives nearly the right image.
    target = torch.linspace(-0.6, 0.6, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    m = _NearOracle(target, 0.01, **TINY, objective=objective)
    for steps in (4, 25):
        out = m.sample(2, seed=0, steps=steps)
        assert (out - target).abs().max() < 0.05, (objective, steps, (out - target).abs().max().item())
        gen = as_first_frame_generator(m, steps=steps)
        assert (gen(1, seed=1) - target).abs().max() < 0.05


def test_user_supplied_generator():
    calls = []

    def my_gen(n, seed=None):
        calls.append(seed)
        g = torch.Generator().manual_seed(seed or 0)
        return torch.rand(n, 3, 40, 40, generator=g) * 4 - 2  # out of range on purpose

    gen = as_first_frame_generator(my_gen, size=16)
    out = gen(2, seed=3)
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert calls == [3]
    # A generator without a seed argument is accepted too.
    assert as_first_frame_generator(lambda n: torch.zeros(n, 3, 16, 16))(4).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="first-frame generator must return"):
        as_first_frame_generator(lambda n, seed=None: torch.zeros(n, 16, 16))(2)
    with pytest.raises(ValueError, match="non-finite"):
        as_first_frame_generator(lambda n, seed=None: torch.full((n, 3, 4, 4), float("nan")))(1)
    with pytest.raises(TypeError, match="first-frame generator"):
        as_first_frame_generator(42)


def _train_args(data, out, steps, extra=()):
    return ["train-first-frame", "--data", str(data), "--out", str(out), "--size", "16", "--channels", "8",
            "--channel-mults", "1,2", "--attn-res", "8", "--frame-stride", "2", "--batch", "8",
            "--steps", str(steps), "--save-every", "4", "--log-every", "2", "--lr", "2e-3", "--seed", "3",
            "--device", "cpu", "--samples", "0", *extra]


def test_train_first_frame_reduces_loss(blob_data, tmp_path):
    from leo.train.first_frame_train import collect_frames, make_sampler

    out = tmp_path / "run"
    assert leo_main(_train_args(blob_data, out, 40, ["--samples", "2"])) == 0
    for name in ("first_frame.safetensors", "checkpoint.pt", "metrics.csv", "samples.png", "loss.png"):
        assert (out / name).is_file(), name
    # Held-out style check: a fixed batch, fixed timesteps and noise, before vs after.
    frames, _ = collect_frames(str(blob_data), 16, 1, 100, progress=False)
    x0, _ = make_sampler(frames)(torch.Generator().manual_seed(9), 64)
    payload = common.load_training_checkpoint(out / "checkpoint.pt")
    assert payload["step"] == 40
    trained = FirstFrameModel(**TINY)
    trained.load_state_dict(payload["model"])
    torch.manual_seed(3)
    init = FirstFrameModel(**TINY)
    d = trained.make_diffusion()

    def loss(m):
        with torch.no_grad():
            return d.training_loss(m, x0, generator=torch.Generator().manual_seed(0)).item()

    l0, l1 = loss(init), loss(trained)
    assert l1 < 0.8 * l0, (l0, l1)
    # The EMA weights (what gets exported and sampled) have followed the training, too.
    ema = FirstFrameModel(**TINY)
    ema.load_state_dict(payload["ema"])
    assert loss(ema) < 0.8 * l0, (l0, loss(ema))
    # The exported EMA weights load as a generator that produces images.
    gen = load_first_frame_generator(out / "first_frame.safetensors", steps=3)
    assert gen(2, seed=0).shape == (2, 3, 16, 16)


def test_train_first_frame_resume_is_exact(blob_data, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert leo_main(_train_args(blob_data, straight, 8)) == 0
    assert leo_main(_train_args(blob_data, resumed, 4)) == 0
    assert common.load_training_checkpoint(resumed / "checkpoint.pt")["step"] == 4
    assert leo_main(_train_args(blob_data, resumed, 8, ["--resume"])) == 0
    a = common.load_training_checkpoint(straight / "checkpoint.pt")
    b = common.load_training_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for key in ("model", "ema"):
        assert_states_equal(a[key], b[key], key)
    # The CSV keeps one consistent history across the resume.
    steps = [int(line.split(",")[0]) for line in (resumed / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8]


def test_interrupted_checkpoint_write_keeps_previous(blob_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert leo_main(_train_args(blob_data, out, 4)) == 0
    before = common.load_training_checkpoint(out / "checkpoint.pt")

    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # the write is cut short, then the process "dies"
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    assert leo_main(_train_args(blob_data, out, 8, ["--resume"])) == 130
    monkeypatch.setattr(torch, "save", real_save)
    after = common.load_training_checkpoint(out / "checkpoint.pt")
    assert after["step"] == before["step"] == 4
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_without_matplotlib_the_run_finishes_with_a_notice_and_no_plot(blob_data, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    monkeypatch.setattr(common, "_PLOT_NOTICE_SHOWN", False)
    out = tmp_path / "run"
    assert leo_main(_train_args(blob_data, out, 2)) == 0
    assert (out / "first_frame.safetensors").is_file() and (out / "metrics.csv").is_file()
    assert not (out / "loss.png").exists()
    err = capsys.readouterr().err
    assert err.count("matplotlib is not installed") == 1, err


def test_cli_errors(tmp_path, capsys):
    assert leo_main(["train-first-frame", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert leo_main(["train-first-frame", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no videos" in capsys.readouterr().err


# ---------------------------------------------------------------- the linear-latent model

def test_latent_fit_encodes_and_decodes_frames_in_its_span():
    g = torch.Generator().manual_seed(0)
    bases = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    weights = torch.randn(40, 3, generator=g)
    frames = 0.2 + 0.3 * torch.einsum("nk,kchw->nchw", weights, bases)  # a mean plus 3 directions
    model = LatentFirstFrameModel(image_size=8, latent_dim=3, hidden=16, blocks=1)
    kept = model.fit_latent(frames)
    assert kept == pytest.approx(1.0, abs=1e-6)
    z = model.encode(frames)
    assert z.shape == (40, 3)
    assert torch.allclose(model.decode(z), frames, atol=1e-4)
    assert z.pow(2).mean().item() == pytest.approx(1.0, rel=1e-3)  # one common scale: mean variance 1
    rows = model.latent_basis
    assert torch.allclose(rows @ rows.T, torch.eye(3), atol=1e-4)  # orthonormal directions
    # A frame off the span keeps only its projection: decode(encode(x)) is the nearest point of the span.
    off = frames[:1] + 0.5 * torch.randn(1, 3, 8, 8, generator=g)
    proj = model.decode(model.encode(off))
    assert (proj - off).abs().mean() > 0.1
    assert torch.allclose(model.decode(model.encode(proj)), proj, atol=1e-4)


def test_latent_fit_errors():
    model = LatentFirstFrameModel(image_size=8, latent_dim=4, hidden=16, blocks=1)
    with pytest.raises(ValueError, match="more than 4 training frames"):
        model.fit_latent(torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match="fewer than latent_dim=4"):
        model.fit_latent(torch.rand(2, 3, 8, 8).repeat(5, 1, 1, 1))  # 2 distinct frames: 1 direction
    with pytest.raises(ValueError, match=r"frames must be \(N, 3, 8, 8\)"):
        model.fit_latent(torch.rand(10, 3, 16, 16))
    with pytest.raises(ValueError, match="latent_dim=200 exceeds"):
        LatentFirstFrameModel(image_size=4, latent_dim=200)
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        LatentFirstFrameModel(image_size=8, latent_dim=4, hidden=0)
    with pytest.raises(ValueError, match="z must have shape"):
        model(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), cond=torch.zeros(2, 3))


def test_latent_checkpoint_roundtrip_and_generator(tmp_path):
    torch.manual_seed(0)
    model = LatentFirstFrameModel(image_size=8, latent_dim=3, hidden=16, blocks=2)
    model.fit_latent(torch.rand(20, 3, 8, 8) * 2 - 1)
    path = tmp_path / "ff.safetensors"
    model.save(path)
    back = load_first_frame_model(path)
    assert isinstance(back, LatentFirstFrameModel)
    assert_states_equal(model.state_dict(), back.state_dict(), "latent model")
    with pytest.raises(CheckpointError, match="LatentFirstFrameModel, not a FirstFrameModel"):
        FirstFrameModel.from_checkpoint(path)
    gen = load_first_frame_generator(path, size=12, steps=3)
    a, b = gen(2, seed=5), gen(2, seed=5)
    assert a.shape == (2, 3, 12, 12) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, b)
    direct = as_first_frame_generator(model, steps=3)(2, seed=5)
    assert direct.shape == (2, 3, 8, 8)
    # The U-Net's files still load through the same function.
    unet = FirstFrameModel(**TINY)
    unet.save(tmp_path / "unet.safetensors")
    assert isinstance(load_first_frame_model(tmp_path / "unet.safetensors"), FirstFrameModel)


def _three_image_videos(root, size=16):
    """Three clips of still frames, each its own image (all left-right symmetric, so flips keep them)."""
    images = np.zeros((3, size, size, 3), np.uint8)
    images[0, : size // 2] = (230, 40, 40)  # red top, dark bottom
    images[0, size // 2:] = (20, 20, 60)
    images[1] = (40, 200, 90)  # green with a dark band in the middle
    images[1, size // 2 - 3: size // 2 + 3] = (10, 10, 10)
    images[2] = (200, 200, 240)  # pale with a blue centre column
    images[2, :, size // 2 - 2: size // 2 + 2] = (30, 30, 220)
    for v in range(3):
        d = root / f"clip{v}"
        d.mkdir(parents=True)
        for t in range(6):
            Image.fromarray(images[v]).save(d / f"{t:04d}.png")
    return root, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_train_latent_first_frame_draws_the_training_images_not_blends(tmp_path):
    data, images = _three_image_videos(tmp_path / "data")
    out = tmp_path / "run"
    args = ["train-first-frame", "--data", str(data), "--out", str(out), "--size", "16", "--latent-dim", "2",
            "--latent-width", "64", "--frame-stride", "1", "--batch", "32", "--steps", "1500", "--save-every", "1500",
            "--log-every", "100", "--lr", "2e-3", "--seed", "0", "--device", "cpu", "--samples", "4"]
    assert leo_main(args) == 0
    assert (out / "samples.png").is_file()
    samples = load_first_frame_generator(out / "first_frame.safetensors", steps=20)(16, seed=1)
    # every sample near one of the images; a model that learned nothing draws blends around their mean
    dist = (samples[:, None] - images[None]).abs().mean(dim=(2, 3, 4))  # (16, 3)
    gap = min((images[i] - images[j]).abs().mean().item() for i, j in ((0, 1), (0, 2), (1, 2)))
    assert dist.min(1).values.max() < 0.15 * gap, (dist, gap)
    assert len(set(dist.argmin(1).tolist())) >= 2  # not one image only


def test_resume_with_another_kind_of_model_is_refused(blob_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert leo_main(_train_args(blob_data, out, 2)) == 0
    assert leo_main(_train_args(blob_data, out, 4, ["--resume", "--latent-dim", "4"])) == 2
    assert "holds another model" in capsys.readouterr().err


def test_latent_cli_errors(blob_data, tmp_path, capsys):
    assert leo_main(_train_args(blob_data, tmp_path / "o", 2, ["--latent-dim", "-1"])) == 2
    assert "--latent-dim must be >= 0" in capsys.readouterr().err
    assert leo_main(_train_args(blob_data, tmp_path / "o", 2, ["--latent-dim", "5000"])) == 2
    assert "latent_dim=5000 exceeds the 768 values of a 16x16 image" in capsys.readouterr().err
    assert leo_main(_train_args(blob_data, tmp_path / "o", 2, ["--latent-dim", "500"])) == 2  # 18 frames, 36 with flips
    assert "a latent of 500 dimensions needs more than 500 training frames, got 36" in capsys.readouterr().err
