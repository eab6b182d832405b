"""`leo animate`, `leo manipulate`, `leo init-animator` end to end (small random checkpoint)."""
import pytest
import torch

from leo.cli import main
from leo.media import VideoReader, VideoWriter, read_image, save_image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    assert main(["init-animator", "--out", str(path), "--size", "32", "--width", "0.125", "--seed", "1"]) == 0
    return path


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("leo: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.mark.parametrize("mode,ext", [("relative", "mp4"), ("absolute", "gif")])
def test_animate_real_clip(lia_samples, ckpt, tmp_path, mode, ext, capsys):
    driving = lia_samples / "taichi" / "driving1.mp4"
    out = tmp_path / f"out.{ext}"
    args = ["animate", "--animator", str(ckpt), "--source", str(lia_samples / "taichi" / "subject1.png"),
            "--driving", str(driving), "--out", str(out), "--mode", mode, "--batch", "4", "--max-frames", "6", "--no-progress"]
    assert main(args) == 0
    assert f"6 frames, 32x32" in capsys.readouterr().out
    src_fps = VideoReader(driving).fps
    with VideoReader(out) as r:
        assert r.fps == pytest.approx(src_fps, rel=1e-2)
        frames = r.read_all()
    assert frames.shape == (6, 3, 32, 32)
    assert frames.std() > 0.01  # rendered content, not a blank video


def test_animate_matches_api(ckpt, tmp_path):
    """The command renders what encode/encode_motion/render give (up to video coding)."""
    from leo.animator import Animator

    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g) * 2 - 1, size=(32, 32), mode="bicubic")
    driving = torch.cat([torch.roll(base, shifts=i, dims=3) for i in range(5)]).clamp(-1, 1)
    with VideoWriter(tmp_path / "drv.mkv", fps=7) as w:
        w.write(driving)
    save_image(tmp_path / "src.png", base[0].clamp(-1, 1))
    assert main(["animate", "--animator", str(ckpt), "--source", str(tmp_path / "src.png"), "--driving",
                 str(tmp_path / "drv.mkv"), "--out", str(tmp_path / "o.mp4"), "--batch", "2", "--no-progress"]) == 0
    m = Animator.from_checkpoint(ckpt)
    with torch.no_grad():
        drv = VideoReader(tmp_path / "drv.mkv", 32).read_all()
        alphas = m.encode_motion(drv)
        want = m.render(m.encode(read_image(tmp_path / "src.png", 32)[None]), alphas, alphas[0]).clamp(-1, 1)
    with VideoReader(tmp_path / "o.mp4") as r:
        assert r.fps == pytest.approx(7)
        got = r.read_all()
    assert got.shape == want.shape
    assert (got - want).abs().mean() < 0.05  # H.264 at crf 18


def test_manipulate_sheet_and_video(lia_samples, ckpt, tmp_path, capsys):
    src = str(lia_samples / "taichi" / "subject2.png")
    sheet = tmp_path / "sheet.png"
    assert main(["manipulate", "--animator", str(ckpt), "--source", src, "--out", str(sheet),
                 "--directions", "0,3", "--steps", "3", "--no-progress"]) == 0
    img = read_image(sheet)
    assert img.shape == (3, 2 * 34 + 2, 3 * 34 + 2)  # 2 rows x 3 columns of 32 px with 2 px padding
    video = tmp_path / "sweep.mp4"
    assert main(["manipulate", "--animator", str(ckpt), "--source", src, "--out", str(video),
                 "--directions", "1", "--steps", "4", "--fps", "5", "--no-progress"]) == 0
    with VideoReader(video) as r:
        assert r.fps == pytest.approx(5) and r.read_all().shape == (4, 3, 32, 32)
    assert "1 directions x 4 values" in capsys.readouterr().out


def test_bad_inputs(ckpt, tmp_path, capsys):
    img = tmp_path / "src.png"
    save_image(img, torch.zeros(3, 32, 32))
    vid = tmp_path / "drv.mp4"
    with VideoWriter(vid, fps=5) as w:
        w.write(torch.zeros(2, 3, 32, 32))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01junk" * 100)
    junk_ckpt = tmp_path / "junk.pt"
    junk_ckpt.write_bytes(b"not a checkpoint")
    base = ["animate", "--animator", str(ckpt), "--source", str(img), "--driving", str(vid), "--out", str(tmp_path / "o.mp4"), "--no-progress"]

    def run(args, expect):
        assert main(args) == 2
        line = _error_line(capsys)
        assert expect in line, line

    def with_(**kw):
        args = list(base)
        for k, v in kw.items():
            flag = "--" + k.replace("_", "-")
            if flag in args:
                args[args.index(flag) + 1] = v
            else:
                args += [flag, v]
        return args

    run(with_(animator=str(tmp_path / "missing.pt")), "checkpoint not found")
    run(with_(animator=str(junk_ckpt)), "wrong checkpoint")
    run(with_(source=str(tmp_path / "nope.png")), "--source: file not found")
    run(with_(source=str(corrupt)), "--source: cannot read image")
    run(with_(driving=str(corrupt)), "--driving: cannot read video")
    run(with_(driving=str(tmp_path / "none.mp4")), "--driving: file not found")
    run(with_(out=str(tmp_path / "o.txt")), "--out")
    run(with_(batch="0"), "--batch")
    run(with_(size="64"), "--size 64")
    run(["manipulate", "--animator", str(ckpt), "--source", str(img), "--out", str(tmp_path / "m.png"), "--directions", "25"], "--directions")
    run(["manipulate", "--animator", str(ckpt), "--source", str(img), "--out", str(tmp_path / "m.png"), "--range", "-1"], "--range")
    run(["init-animator", "--out", str(tmp_path / "x.safetensors"), "--size", "48"], "power of two")
    assert not (tmp_path / "o.mp4").exists()
