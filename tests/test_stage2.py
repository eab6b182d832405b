"""`leo train-lmdm`: motion codes cached and reused, the loss goes down, resume is exact."""
import pytest
import torch

from leo.cli import main as leo_main
from leo.train import common, stage2
from tests._util import assert_states_equal


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from leo.animator import Animator
    from leo.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("stage2")
    write_dataset(root / "data", num_videos=3, num_frames=16, size=32, seed=0)
    torch.manual_seed(0)
    Animator(size=32, style_dim=32, width=1 / 32).save(root / "animator.safetensors")
    return root


def _args(root, out, steps, extra=()):
    return ["train-lmdm", "--data", str(root / "data"), "--animator", str(root / "animator.safetensors"),
            "--out", str(out), "--cache-dir", str(root / "cache"), "--window", "8", "--channels", "16", "--channel-mult", "1,2", "--head-dim", "16",
            "--steps", str(steps), "--batch", "8", "--lr", "2e-3", "--save-every", "4", "--log-every", "2",
            "--seed", "1", "--device", "cpu", *extra]


def _fixed_loss(state, root, lmdm_config):
    from leo.lmdm import LMDM

    m = LMDM(**lmdm_config)
    m.load_state_dict(state)
    codes, _, _ = stage2.load_or_extract_codes(str(root / "animator.safetensors"), str(root / "data"),
                                               str(root / "cache"), "cpu", progress=False)
    x0, a1 = stage2.make_sampler(codes, 8, m.res_mean, m.res_std)(torch.Generator().manual_seed(5), 64)
    with torch.no_grad():
        return m.make_diffusion().training_loss(m, x0, a1, generator=torch.Generator().manual_seed(0)).item()


def test_train_lmdm_loss_cache_and_resume(setup, tmp_path, monkeypatch):
    root = setup
    # First run encodes the codes and caches them.
    straight = tmp_path / "straight"
    assert leo_main(_args(root, straight, 24)) == 0
    assert len(list((root / "cache").glob("codes-*.pt"))) == 1
    assert (straight / "lmdm.safetensors").is_file() and (straight / "metrics.csv").is_file()
    assert (straight / "loss.png").is_file()  # every trainer plots its losses at the end

    # Later runs must not re-encode: the encoder is poisoned.
    def no_encoding(*a, **k):
        raise AssertionError("motion codes were re-encoded although cached")

    monkeypatch.setattr(stage2, "encode_videos", no_encoding)
    resumed = tmp_path / "resumed"
    assert leo_main(_args(root, resumed, 12)) == 0
    assert leo_main(_args(root, resumed, 24, ["--resume"])) == 0
    a = common.load_training_checkpoint(straight / "checkpoint.pt")
    b = common.load_training_checkpoint(resumed / "checkpoint.pt")
    assert a["step"] == b["step"] == 24
    assert_states_equal(a["model"], b["model"], "model")

    # The loss on a fixed batch (fixed timesteps and noise) is clearly below the initial one.
    from leo.lmdm import LMDM

    cfg = a["config"]["extra"]["model"]
    torch.manual_seed(1)
    init = LMDM(**cfg)
    init.load_state_dict({k: v for k, v in a["model"].items() if "mean" in k or "std" in k}, strict=False)
    l0 = _fixed_loss(init.state_dict(), root, cfg)
    l1 = _fixed_loss(a["model"], root, cfg)
    assert l1 < 0.85 * l0, (l0, l1)

    # The exported model samples conditionally and unconditionally.
    m = LMDM.from_checkpoint(straight / "lmdm.safetensors")
    d = m.make_diffusion()
    x = d.sample(m, (2, m.motion_dim, 8), cond=torch.randn(2, m.motion_dim), steps=3, seed=0)
    y = d.sample(m, (2, m.motion_dim, 8), cond=None, steps=3, seed=0)
    assert torch.isfinite(x).all() and torch.isfinite(y).all() and not torch.equal(x, y)


def test_code_cache_key_changes_with_animator(setup, tmp_path):
    from leo.animator import Animator

    root = setup
    videos = stage2.video_source.list_videos(root / "data")
    k1 = stage2.code_cache_key(str(root / "animator.safetensors"), videos)
    torch.manual_seed(7)
    Animator(size=32, style_dim=32, width=1 / 32).save(tmp_path / "other.safetensors")
    assert stage2.code_cache_key(str(tmp_path / "other.safetensors"), videos) != k1
    assert stage2.code_cache_key(str(root / "animator.safetensors"), videos[:-1]) != k1


def test_cli_errors(setup, tmp_path, capsys):
    root = setup
    args = _args(root, tmp_path / "o", 2)
    bad = list(args)
    bad[bad.index("--animator") + 1] = str(tmp_path / "missing.safetensors")
    assert leo_main(bad) == 2
    assert "--animator" in capsys.readouterr().err
    bad = list(args) + ["--p-uncond", "1.5"]
    assert leo_main(bad) == 2
    assert "--p-uncond" in capsys.readouterr().err
    bad = list(args)
    bad[bad.index("--window") + 1] = "64"
    assert leo_main(bad) == 2
    assert "shorter than the window" in capsys.readouterr().err
