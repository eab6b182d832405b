"""`leo demo --quick` end to end, then `leo generate --unconditional` with its models."""
import pytest

from leo.cli import main as leo_main


def _count(path):
    from leo.media import VideoReader

    with VideoReader(path) as r:
        return sum(1 for _ in r)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert leo_main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_demo_quick_outputs(demo_out, capsys):
    from PIL import Image

    from leo.cli.demo import PRESETS

    q = PRESETS["quick"]
    w = q["window"]
    assert _count(demo_out / "conditional.mp4") == q["video_frames"]
    assert _count(demo_out / "unconditional.mp4") == q["video_frames"]
    # At least 4 chained chunks: more than 3 * (window - 1) + 1 frames.
    assert _count(demo_out / "long.mp4") == 4 * (w - 1) + 1 + w // 2 > 3 * (w - 1) + 1
    assert _count(demo_out / "edited.mp4") == q["frames"]  # the whole source video, re-rendered
    sheet = Image.open(demo_out / "contact_sheet.png")
    assert sheet.width > 8 * q["size"] and sheet.height > 5 * q["size"]  # 5 rows of 8 frames
    assert Image.open(demo_out / "loss_curves.png").width > 0
    for f in ("animator/animator.safetensors", "lmdm/lmdm.safetensors", "first_frame/first_frame.safetensors"):
        assert (demo_out / f).is_file(), f


def test_generate_unconditional_with_first_frame_model(demo_out, tmp_path):
    out = tmp_path / "uncond.mp4"
    assert leo_main([
        "generate", "--animator", str(demo_out / "animator/animator.safetensors"),
        "--lmdm", str(demo_out / "lmdm/lmdm.safetensors"), "--unconditional",
        "--first-frame-model", str(demo_out / "first_frame/first_frame.safetensors"),
        "--frames", "5", "--steps", "3", "--seed", "0", "--out", str(out), "--no-progress",
    ]) == 0
    assert _count(out) == 5


def test_demo_bad_arguments(tmp_path, capsys):
    assert leo_main(["demo", "--quick", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "missing")]) == 2
    assert "--data" in capsys.readouterr().err
    assert leo_main(["demo", "--quick", "--out", str(tmp_path / "o"), "--lmdm-steps", "0"]) == 2
    assert "--lmdm-steps" in capsys.readouterr().err


def test_demo_runs_again_in_the_same_folder(demo_out, capsys):
    # Same settings: the clips are kept (unchanged files), so every stage resumes and the videos are rewritten.
    capsys.readouterr()
    assert leo_main(["demo", "--quick", "--out", str(demo_out), "--device", "cpu"]) == 0
    assert "reusing the 4 synthetic videos" in capsys.readouterr().out
    # Other settings (another seed): new clips, and no stage resumes from checkpoints trained on the old ones.
    assert leo_main(["demo", "--quick", "--out", str(demo_out), "--device", "cpu", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "writing 4 synthetic videos" in printed and "starts afresh" in printed
    assert _count(demo_out / "conditional.mp4") > 0


def test_demo_retrains_an_animator_of_other_settings(tmp_path, capsys, monkeypatch):
    # An earlier demo's animator trained with another recipe (here another learning rate) must not be
    # resumed: a run resumes with its saved settings, so the new recipe would never take effect.
    from leo.cli import demo as demo_cli

    out = str(tmp_path / "out")
    assert leo_main(["demo", "--quick", "--out", out, "--device", "cpu"]) == 0
    monkeypatch.setitem(demo_cli.PRESETS, "quick", dict(demo_cli.PRESETS["quick"], animator_lr=1e-4))
    capsys.readouterr()
    assert leo_main(["demo", "--quick", "--out", out, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "reusing the 4 synthetic videos" in printed
    assert "trained with other settings: animator starts afresh" in printed
    assert "lmdm starts afresh" in printed  # new animator weights: the LMDM's codes are stale


def test_demo_streams_fresh_synthetic_clips_but_not_the_users_videos(demo_out, tmp_path):
    """On its own synthetic clips the animator trains on fresh clips of their generator (the written ones stay
    unseen); on a user's videos (--data) there is nothing to stream and it trains on the clips themselves."""
    import shutil

    from leo.train.common import load_training_checkpoint

    def recipe(out):
        return load_training_checkpoint(out / "animator" / "checkpoint.pt")["config"]

    assert recipe(demo_out)["synthetic_stream"] is True
    videos = tmp_path / "videos"
    shutil.copytree(demo_out / "data", videos)
    (videos / "synthetic.json").unlink()  # plain frame folders, as a user's would be
    out = tmp_path / "out"
    assert leo_main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--data", str(videos)]) == 0
    assert recipe(out)["synthetic_stream"] is False and _count(out / "conditional.mp4") > 0


def test_demo_stages_stop_at_their_time_budgets(tmp_path, capsys, monkeypatch):
    """Each stage's time budget ends it early with its weights written, the demo goes on, and
    metrics.json and the printed summary say how many steps each stage trained and why it ended."""
    import json

    from leo.cli import demo as demo_cli

    quick = demo_cli.PRESETS["quick"]
    monkeypatch.setitem(demo_cli.PRESETS, "quick", dict(quick, animator_steps=50, animator_minutes=1e-9,
                                                         lmdm_minutes=1e-9))
    out = tmp_path / "out"
    assert leo_main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    trained = json.loads((out / "metrics.json").read_text())["training"]
    assert trained["animator"] == {"steps": 1, "step_cap": 50, "ended_by": "max_minutes", "max_minutes": 1e-9}
    assert trained["lmdm"]["steps"] == 1 and trained["lmdm"]["ended_by"] == "max_minutes"
    assert trained["first_frame"] == {"steps": quick["ff_steps"], "step_cap": quick["ff_steps"], "ended_by": "steps",
                                      "max_minutes": None}
    assert "animator 1 of 50 steps (its 1e-09-min budget ended it)" in printed
    assert "--no-time-budget trains every stage to its cap" in printed
    assert _count(out / "conditional.mp4") == quick["video_frames"]
    # --animator-steps trains exactly that many steps: the stage's budget no longer applies
    assert leo_main(["demo", "--quick", "--out", str(tmp_path / "exact"), "--device", "cpu",
                     "--animator-steps", "3", "--no-time-budget"]) == 0
    trained = json.loads((tmp_path / "exact" / "metrics.json").read_text())["training"]
    assert [trained[k]["steps"] for k in ("animator", "lmdm")] == [3, quick["lmdm_steps"]]
    assert all(t["ended_by"] == "steps" and t["max_minutes"] is None for t in trained.values())
    assert "--no-time-budget trains every stage" not in capsys.readouterr().out


def test_demo_retrains_a_first_frame_model_of_another_kind(tmp_path, capsys, monkeypatch):
    # An earlier demo's first-frame model of another kind or latent (e.g. the pixel U-Net of older
    # versions) cannot be resumed into the preset's model: the demo starts that stage afresh.
    from leo.cli import demo as demo_cli
    from leo.first_frame import LatentFirstFrameModel, load_first_frame_model

    out = tmp_path / "out"
    assert leo_main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    monkeypatch.setitem(demo_cli.PRESETS, "quick", dict(demo_cli.PRESETS["quick"], ff_latent=8))
    capsys.readouterr()
    assert leo_main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "reusing the 4 synthetic videos" in printed
    assert "holds another kind of first-frame model: first_frame starts afresh" in printed
    model = load_first_frame_model(out / "first_frame" / "first_frame.safetensors")
    assert isinstance(model, LatentFirstFrameModel) and model.config["latent_dim"] == 8
