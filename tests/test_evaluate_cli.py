"""`leo evaluate reconstruction|generation` end to end on synthetic data (small random models, a
small random-weight I3D as a TorchScript file) and on the real sample clips when present; bad
input gives one-line errors naming the argument."""
import json

import pytest
import torch

from leo.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from leo.animator import Animator
    from leo.data.synthetic import write_dataset
    from leo.evaluate import InceptionI3d, random_i3d_state_dict
    from leo.lmdm import LMDM

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("evaluate")
    write_dataset(d / "real", num_videos=8, num_frames=20, size=32, seed=0)
    write_dataset(d / "fake", num_videos=6, num_frames=18, size=32, seed=1)
    torch.manual_seed(0)
    Animator(size=32, style_dim=64, width=1 / 8).save(d / "a.safetensors")
    LMDM(width=16, channel_mult=(1,), head_dim=16, window=16).save(d / "l.safetensors")
    m = InceptionI3d(resize_to=32)  # a small protocol size keeps the test cheap; files at 224 are tested elsewhere
    m.load_state_dict(random_i3d_state_dict(0, motion_stem=True))
    torch.jit.script(m.eval()).save(str(d / "i3d_torchscript.pt"))
    yield d
    torch.set_num_threads(n)


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_reconstruction_end_to_end(env, capsys):
    rc, out, err = _run(capsys, "evaluate", "reconstruction", "--animator", env / "a.safetensors", "--data",
                        env / "real", "--pairs", 8, "--out", env / "rec", "--no-progress")
    assert rc == 0, err
    m = json.loads((env / "rec" / "metrics.json").read_text())
    assert m["split"] == "test" and m["clips"] == 1  # ceil(8 * 0.1) held-out clips, as the trainers
    for k in ("l1", "copy_l1", "psnr", "copy_psnr", "ssim", "copy_ssim", "gain", "motion_ratio"):
        assert k in m and m[k] == m[k], k
    assert m["gain"] == pytest.approx(1 - m["l1"] / m["copy_l1"])
    assert "copy-source baseline" in out and "motion ratio" in out


def test_generation_from_folders_with_i3d(env, capsys):
    rc, out, err = _run(capsys, "evaluate", "generation", "--real", env / "real", "--fake", env / "fake",
                        "--animator", env / "a.safetensors", "--i3d", env / "i3d_torchscript.pt",
                        "--out", env / "gen", "--batch", 4)
    assert rc == 0, err
    m = json.loads((env / "gen" / "metrics.json").read_text())
    assert m["clips_real"] == 8 and m["clips_fake"] == 6
    assert "all available; --clips 2048 asked" in out
    assert [k for k in m if k.startswith("fvd")] and [k for k in m if k.startswith("kvd")]
    assert m["fvd"] > 0 and m["fmd"] >= 0 and m["fmd_still"] > 0 and m["motion_vs_real"] > 0
    assert "TorchScript" in m["i3d"] and "protocol: FVD/KVD on 8 real and 6 generated clips" in out
    assert "evaluating clips" in err  # progress


def test_generation_with_models_weight_free(env, capsys):
    rc, out, err = _run(capsys, "evaluate", "generation", "--real", env / "real", "--animator", env / "a.safetensors",
                        "--lmdm", env / "l.safetensors", "--steps", 2, "--clips", 3, "--out", env / "gen2",
                        "--no-progress")
    assert rc == 0, err
    m = json.loads((env / "gen2" / "metrics.json").read_text())
    assert m["clips_real"] == m["clips_fake"] == 3 and "fvd" not in m
    assert {"fmd", "fmd_real_halves", "fmd_still", "residuals_fake_vs_train", "residuals_sampled_vs_train",
            "residuals_real_vs_train"} <= set(m)
    assert "not computed (no --i3d" in out


@pytest.mark.parametrize("extra, message", [
    (["--i3d", "missing.pt"], "--i3d: file not found"),
    (["--i3d", "CORRUPT"], "--i3d: "),
    (["--frames", "128"], "--real: video synthetic_0000.mp4 has 20 frames, fewer than --frames 128"),
    (["--clips", "0"], "--clips must be >= 1"),
])
def test_generation_bad_input_is_one_line(env, capsys, extra, message):
    corrupt = env / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    extra = [str(corrupt) if e == "CORRUPT" else e for e in extra]
    rc, out, err = _run(capsys, "evaluate", "generation", "--real", env / "real", "--fake", env / "fake",
                        "--out", env / "bad", "--no-progress", *extra)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generation_needs_fake_or_models(env, capsys):
    rc, _, err = _run(capsys, "evaluate", "generation", "--real", env / "real")
    assert rc == 2 and "--fake DIR" in err


def test_generation_on_sample_clips(env, capsys, lia_samples):
    """The real TaichiHD/TED clips against the synthetic ones (weight-free metrics): 3 videos, 2
    windows each; the source portraits beside the videos are stills, not clips (leo.data.find_clips)."""
    rc, out, err = _run(capsys, "evaluate", "generation", "--real", lia_samples, "--fake", env / "fake",
                        "--animator", env / "a.safetensors", "--clips-per-video", 2, "--skip-short",
                        "--out", env / "lia", "--no-progress")
    assert rc == 0, err
    m = json.loads((env / "lia" / "metrics.json").read_text())
    assert m["clips_real"] == 6 and "skipped" not in out
    assert m["motion_real"] > 0 and m["fmd"] >= 0


def test_reconstruction_on_sample_clips(env, capsys, lia_samples):
    rc, out, err = _run(capsys, "evaluate", "reconstruction", "--animator", env / "a.safetensors", "--data",
                        lia_samples, "--pairs", 4, "--max-frames", 16, "--out", env / "lia_rec", "--no-progress")
    assert rc == 0, err
    m = json.loads((env / "lia_rec" / "metrics.json").read_text())
    assert m["clips"] >= 1 and m["copy_l1"] > 0 and m["pairs"] >= 4


def test_generation_unconditional(env, capsys):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_first_frame import TINY

    from leo.first_frame import FirstFrameModel

    torch.manual_seed(0)
    FirstFrameModel(**TINY).save(env / "ff.safetensors")
    rc, out, err = _run(capsys, "evaluate", "generation", "--real", env / "real", "--animator", env / "a.safetensors",
                        "--lmdm", env / "l.safetensors", "--first-frame-model", env / "ff.safetensors",
                        "--steps", 2, "--clips", 2, "--out", env / "unc", "--no-progress")
    assert rc == 0, err
    assert "from generated first frames (unconditional)" in out
    m = json.loads((env / "unc" / "metrics.json").read_text())
    assert m["clips_fake"] == 2 and m["fmd_real_halves"] is None  # fewer than 4 clips: no halves baseline
