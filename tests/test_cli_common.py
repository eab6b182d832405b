"""The flags every `leo` command shares, `leo --version`, deprecated spellings, and checkpoint
errors that never pass on PyTorch's advice to load a pickle with weights_only=False."""
import pickle

import pytest
import torch

from leo.cli import build_parser, main
from leo.cli.common import DTYPES, resolve_device


def _err(capsys):
    return capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    import leo
    import leo_kernels

    assert f"leo {leo.__version__}" in out and f"torch {torch.__version__}" in out
    for kind in ("cpu", "cuda"):
        assert f"backends for {kind} tensors: {', '.join(leo_kernels.available_backends(kind))}" in out


def _options(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {s: a for a in sub.choices[command]._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["animate", "manipulate", "generate", "edit"])
def test_one_vocabulary(command):
    opts = _options(command)
    assert "--animator" in opts and "--checkpoint" not in opts
    assert "--no-progress" in opts and "--quiet" not in opts
    assert opts["--device"].default is None and "cuda when available" in opts["--device"].help
    assert tuple(opts["--dtype"].choices) == tuple(DTYPES) and "autocast" in opts["--dtype"].help


@pytest.mark.parametrize("command", ["selfcheck", "train-animator", "train-lmdm", "train-first-frame"])
def test_device_default_everywhere(command):
    assert _options(command)["--device"].default is None


@pytest.mark.parametrize("command", ["train-animator", "train-lmdm", "train-first-frame"])
def test_trainers_share_out_batch_and_no_progress(command):
    opts = _options(command)
    for flag in ("--out", "--batch", "--no-progress", "--steps", "--resume"):
        assert flag in opts, flag
    assert "--batch-size" not in opts and "--quiet" not in opts


@pytest.mark.parametrize("command", ["train-animator", "train-lmdm", "train-first-frame"])
def test_trainers_refuse_a_time_budget_that_is_not_positive(command, tmp_path, capsys):
    assert "--max-minutes" in _options(command)
    argv = [command, "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--max-minutes", "0"]
    if command == "train-lmdm":
        (tmp_path / "a.safetensors").write_bytes(b"")  # never read: the flags are checked first
        argv += ["--animator", str(tmp_path / "a.safetensors")]
    assert main(argv) == 2
    assert "--max-minutes" in _err(capsys)


def test_old_batch_size_flag_of_the_diffusion_trainers_still_parses(capsys):
    from leo.cli.common import rewrite_deprecated

    for command in ("train-lmdm", "train-first-frame"):
        assert rewrite_deprecated([command, "--batch-size", "4", "--batch-size=5"]) == [command, "--batch", "4",
                                                                                        "--batch=5"]
        notices = _err(capsys).splitlines()
        assert notices == [f"leo: warning: {command} --batch-size is deprecated, use --batch "
                           "(the old spelling goes in the next release)"]
        argv = [command, "--data", "d", "--out", "o", "--batch-size", "3"]
        argv += ["--animator", "a"] if command == "train-lmdm" else []
        args = build_parser().parse_args(rewrite_deprecated(argv))
        assert args.batch == 3 and args.no_progress is False
        _err(capsys)


def test_device_resolution():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == want and resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")
    from leo.cli import UserError

    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")


def test_deprecated_spellings_work_with_a_notice(tmp_path, capsys):
    ckpt = tmp_path / "a.safetensors"
    assert main(["init-animator", "--out", str(ckpt), "--size", "32", "--width", "0.125"]) == 0
    src = tmp_path / "src.png"
    from leo.media import read_image, save_image

    save_image(src, torch.rand(3, 32, 32) * 2 - 1)
    capsys.readouterr()
    sheet = tmp_path / "sheet.png"
    assert main(["manipulate", "--checkpoint", str(ckpt), "--source", str(src), "--out", str(sheet),
                 "--directions", "0", "--steps", "2", "--quiet", "--device", "cpu"]) == 0
    err = _err(capsys).splitlines()
    notices = [line for line in err if line.startswith("leo: warning:")]
    assert len(notices) == 2, err
    assert "--checkpoint is deprecated, use --animator" in notices[0]
    assert "--quiet is deprecated, use --no-progress" in notices[1]
    assert read_image(sheet).shape[0] == 3
    # The new spelling: no notice.
    assert main(["manipulate", "--animator", str(ckpt), "--source", str(src), "--out", str(sheet),
                 "--directions", "0", "--steps", "2", "--no-progress", "--device", "cpu"]) == 0
    assert "warning" not in _err(capsys)


class _Foreign:
    """Any class: a pickle of it is not a tensors-only file."""


@pytest.fixture
def bad_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"gen": {"w": torch.zeros(2)}, "obj": _Foreign()}, foreign)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"obj": _Foreign()}, protocol=4))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    zipped = tmp_path / "truncated.pt"
    zipped.write_bytes(b"PK\x03\x04 truncated zip")
    fake_st = tmp_path / "fake.safetensors"
    fake_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json!!!")
    return [foreign, plain, junk, zipped, fake_st]


def test_corrupt_checkpoint_errors_never_suggest_unsafe_loading(bad_files):
    from leo.animator import Animator, CheckpointError
    from leo.first_frame import FirstFrameModel
    from leo.lmdm import LMDM
    from leo.train.common import load_training_checkpoint

    loaders = [Animator.from_checkpoint, LMDM.from_checkpoint, FirstFrameModel.from_checkpoint,
               load_training_checkpoint]
    for path in bad_files:
        for load in loaders:
            with pytest.raises(ValueError) as e:
                load(path)
            msg = str(e.value)
            assert "weights_only=False" not in msg and "weights_only" not in msg, (load, path, msg)
            assert "\n" not in msg and "accepted:" in msg, (load, path, msg)
    with pytest.raises(CheckpointError, match="Python objects"):
        Animator.from_checkpoint(bad_files[0])


def test_corrupt_checkpoint_cli_line(bad_files, tmp_path, capsys):
    src = tmp_path / "s.png"
    from leo.media import save_image

    save_image(src, torch.zeros(3, 32, 32))
    for path in bad_files[:2]:
        assert main(["manipulate", "--animator", str(path), "--source", str(src), "--out",
                     str(tmp_path / "m.png"), "--no-progress", "--device", "cpu"]) == 2
        err = _err(capsys).strip()
        assert err.startswith("leo: error: --animator: wrong checkpoint") and "\n" not in err, err
        assert "weights_only" not in err and "accepted: a leo .safetensors file" in err, err


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_means_autocast_in_generate_and_edit(tmp_path, capsys, dtype):
    """--dtype is the autocast compute dtype in every command: generate/edit run with it (the
    LMDM samples in float32), close to the float32 result."""
    from leo.media import VideoReader, save_image

    anim, lmdm = tmp_path / "a.safetensors", tmp_path / "m.safetensors"
    assert main(["init-animator", "--out", str(anim), "--size", "32", "--width", "0.125", "--style-dim", "64"]) == 0
    assert main(["init-lmdm", "--out", str(lmdm), "--width", "16", "--window", "4"]) == 0
    img = tmp_path / "first.png"
    save_image(img, torch.rand(3, 32, 32) * 2 - 1)
    videos = {}
    for dt in ("float32", dtype):
        out = tmp_path / f"{dt}.mp4"
        assert main(["generate", "--animator", str(anim), "--lmdm", str(lmdm), "--image", str(img), "--frames", "5",
                     "--steps", "2", "--seed", "0", "--out", str(out), "--dtype", dt, "--no-progress"]) == 0
        with VideoReader(out) as r:
            videos[dt] = r.read_all()
        edited = tmp_path / f"edit_{dt}.mp4"
        assert main(["edit", "--animator", str(anim), "--video", str(out), "--first-frame", str(img),
                     "--out", str(edited), "--dtype", dt, "--no-progress"]) == 0
    assert videos[dtype].shape == videos["float32"].shape == (5, 3, 32, 32)
    assert (videos[dtype] - videos["float32"]).abs().mean() < 0.1


def test_read_image_arg_names_the_option(tmp_path):
    """Every command reads its images through read_image_arg: a missing or unreadable file is a
    UserError that names the option; a good one comes back as (3, size, size) in [-1, 1]."""
    from PIL import Image

    from leo.cli import UserError
    from leo.cli.common import read_image_arg

    with pytest.raises(UserError, match="^--image: file not found"):
        read_image_arg(tmp_path / "none.png", 32, "--image")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png" * 10)
    with pytest.raises(UserError, match="^--first-frame: cannot read image"):
        read_image_arg(junk, 32, "--first-frame")
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(good)
    img = read_image_arg(good, 32, "--source")
    assert img.shape == (3, 32, 32) and img.min() >= -1 and img.max() <= 1


@pytest.mark.parametrize("command", ["train-animator", "train-lmdm", "train-first-frame", "demo"])
def test_training_commands_check_data_the_same_way(command, tmp_path, capsys):
    """Every command that trains on --data rejects a missing path, an image file, a folder without
    clips and a folder whose only clip is unreadable with one line naming --data, before training."""
    from PIL import Image

    from leo.animator import Animator

    image = tmp_path / "still.png"
    Image.new("RGB", (16, 16)).save(image)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "clip.mp4").write_bytes(b"\x00junk" * 50)
    animator = tmp_path / "a.safetensors"
    Animator(size=32, style_dim=32, motion_dim=4, width=1 / 32).save(animator)
    extra = {"train-animator": ["--steps", "2", "--size", "32", "--no-progress"],
             "train-lmdm": ["--animator", str(animator), "--steps", "2"],
             "train-first-frame": ["--steps", "2"], "demo": ["--quick"]}[command]
    cases = [(tmp_path / "none", "data folder not found"), (image, "is not a video file"),
             (tmp_path / "empty", "no videos"), (tmp_path / "junk", "could be read" if "train-" in command
                                                  and command != "train-animator" else "is readable")]
    for i, (data, needle) in enumerate(cases):
        rc = main([command, "--data", str(data), "--out", str(tmp_path / f"out{i}")] + extra)
        err = _err(capsys).strip().splitlines()[-1]
        assert rc == 2 and err.startswith("leo: error: --data: ") and needle in err, (data, rc, err)


@pytest.mark.parametrize("argv, needle", [
    (["generate", "--eta", "nan"], "--eta must be a finite number >= 0"),
    (["generate", "--fps", "0"], "--fps must be a finite number > 0"),
    (["generate", "--fps", "inf"], "--fps must be a finite number > 0"),
    (["manipulate", "--range", "nan"], "--range must be a finite number > 0"),
    (["manipulate", "--fps", "-1"], "--fps must be a finite number > 0"),
    (["train-lmdm", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["train-first-frame", "--ema-decay", "2"], "--ema-decay must be in [0, 1)"),
    (["train-first-frame", "--ema-decay", "nan"], "--ema-decay must be in [0, 1)"),
    (["train-animator", "--lr", "inf"], "--lr must be a finite number > 0"),
    (["train-animator", "--adv-weight", "nan"], "adv_weight must be a finite number >= 0"),
    (["init-lmdm", "--init-std", "nan"], "--init-std must be a finite number >= 0"),
    (["train-lmdm", "--encode-batch", "0"], "--encode-batch must be a positive int"),
    (["train-animator", "--size", "48"], "size must be a power of two from 32 to 512"),
    (["demo", "--size", "48"], "--size must be a power of two from 32 to 512"),
])
def test_numeric_flags_refuse_nan_infinity_and_out_of_range(argv, needle, tmp_path, capsys):
    """A numeric flag out of range (NaN and infinity included) is a one-line error before any work,
    never a traceback or a silently different run (--adv-weight nan used to train without the
    discriminator, --ema-decay 2 to export a diverged average)."""
    command = argv[0]
    base = {"generate": ["--animator", "a", "--lmdm", "m", "--image", "i.png", "--frames", "3",
                         "--out", str(tmp_path / "g.mp4")],
            "manipulate": ["--animator", "a", "--source", "s.png", "--out", str(tmp_path / "m.png")],
            "train-lmdm": ["--animator", str(tmp_path / "a.safetensors"), "--data", str(tmp_path),
                           "--out", str(tmp_path / "o")],
            "train-first-frame": ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
            "train-animator": ["--synthetic", "2", "--out", str(tmp_path / "o"), "--no-progress"],
            "init-lmdm": ["--out", str(tmp_path / "o")],
            "demo": ["--quick", "--out", str(tmp_path / "o")]}[command]
    (tmp_path / "a.safetensors").write_bytes(b"")  # never read: the flags are checked first
    assert main([command] + base + argv[1:]) == 2
    err = _err(capsys).strip()
    assert err.startswith("leo: error:") and needle in err and "\n" not in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "g.mp4").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--size", "0"], "image_size=0 must be at least 4"),
    (["--channel-mults", "0"], "channel_mults must be a non-empty sequence of positive ints"),
    (["--channels", "0"], "base_channels must be positive"),
    (["--samples", "-1"], "--samples must be >= 0"),
])
def test_train_first_frame_checks_its_model_before_reading_videos(argv, needle, tmp_path, capsys):
    """A bad model setting is named before any video is read (the folder's one clip is unreadable
    here, so reading it first would report the data instead); --channel-mults 0 was a traceback."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "clip.mp4").write_bytes(b"\x00junk" * 50)
    assert main(["train-first-frame", "--data", str(tmp_path / "clips"), "--out", str(tmp_path / "o"),
                 "--steps", "1", "--no-progress"] + argv) == 2
    err = _err(capsys).strip().splitlines()[-1]
    assert err.startswith("leo: error:") and needle in err, err
