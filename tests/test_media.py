"""leo.media: image/video reading and writing, errors on bad files."""
import numpy as np
import pytest
import torch

from leo.media import MediaError, VideoReader, VideoWriter, image_grid, read_image, save_image


def _synthetic_frames(t=7, h=48, w=64):
    """Smooth moving gradients (H.264-friendly) with a distinct value per frame."""
    ys = torch.linspace(-1, 1, h).view(h, 1)
    xs = torch.linspace(-1, 1, w).view(1, w)
    frames = []
    for i in range(t):
        r = torch.sin(3 * xs + 0.4 * i) * 0.8 + 0 * ys
        g = torch.cos(2 * ys - 0.3 * i) * 0.7 + 0 * xs
        b = torch.full((h, w), -0.9 + 0.25 * i)
        frames.append(torch.stack((r, g, b)))
    return torch.stack(frames)


@pytest.mark.parametrize("ext,tol", [("mp4", 0.03), ("gif", 0.03), ("mkv", 0.03)])
def test_video_round_trip(tmp_path, ext, tol):
    frames = _synthetic_frames()
    path = tmp_path / f"clip.{ext}"
    with VideoWriter(path, fps=12.5) as w:
        w.write(frames[:3])  # several writes: streamed
        w.write(frames[3])  # a single (3, H, W) frame is accepted too
        w.write(frames[4:])
    assert w.frames_written == 7
    assert not list(tmp_path.glob(".*partial*")), "temporary file left behind"
    with VideoReader(path) as r:
        assert r.fps == pytest.approx(12.5, rel=1e-3)
        assert r.num_frames == 7
        assert (r.width, r.height) == (64, 48)
        back = r.read_all()
    assert back.shape == frames.shape and back.dtype == torch.float32
    assert back.min() >= -1 and back.max() <= 1
    err = (back - frames).abs().mean().item()
    assert err < tol, f"mean abs error {err:.4f}"
    # Frames keep their order (each has its own blue level).
    assert torch.allclose(back[:, 2].mean(dim=(1, 2)), frames[:, 2].mean(dim=(1, 2)), atol=0.05)


def test_video_reader_size_and_chunks(tmp_path):
    frames = _synthetic_frames(t=7, h=48, w=64)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=30) as w:
        w.write(frames)
    r = VideoReader(path, size=32)
    chunks = list(r.chunks(3))
    assert [c.shape[0] for c in chunks] == [3, 3, 1]
    assert all(c.shape[1:] == (3, 32, 32) for c in chunks)
    single = list(r)  # iterating again decodes from the start
    assert len(single) == 7
    torch.testing.assert_close(torch.cat(chunks), torch.stack(single))
    # Center crop: the middle column of the full frame survives in the middle of the crop.
    full = VideoReader(path).read_all()
    mid_full = full[:, :, :, 32].mean()
    mid_crop = torch.cat(chunks)[:, :, :, 16].mean()
    assert abs(mid_full - mid_crop) < 0.05
    with pytest.raises(ValueError, match="chunk size"):
        next(r.chunks(0))


def test_odd_size_video(tmp_path):
    frames = _synthetic_frames(t=3, h=31, w=33)
    with VideoWriter(tmp_path / "odd.mp4", fps=10) as w:
        w.write(frames)
    back = VideoReader(tmp_path / "odd.mp4").read_all()
    assert back.shape[0] == 3 and back.shape[-2:] in ((31, 33), (32, 34))


def test_corrupt_and_missing_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 200)
    with pytest.raises(MediaError, match="bad.mp4"):
        VideoReader(bad, 64)
    with pytest.raises(MediaError, match="not found"):
        VideoReader(tmp_path / "missing.mp4", 64)
    with pytest.raises(MediaError, match="not a file"):
        VideoReader(tmp_path, 64)
    # A clip whose middle is garbled: either refused on open or a MediaError while decoding.
    frames = _synthetic_frames(t=20, h=64, w=64)
    good = tmp_path / "good.mp4"
    with VideoWriter(good, fps=10) as w:
        w.write(frames)
    data = bytearray(good.read_bytes())
    data = data[: len(data) // 2]
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(bytes(data))
    with pytest.raises(MediaError, match="trunc.mp4"):
        VideoReader(trunc, 64).read_all()


def test_writer_errors(tmp_path):
    with pytest.raises(MediaError, match="extension"):
        VideoWriter(tmp_path / "x.txt", fps=10)
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    w = VideoWriter(tmp_path / "x.mp4", fps=10)
    with pytest.raises(ValueError, match="frames"):
        w.write(torch.zeros(2, 4, 8, 8))
    w.write(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="size"):
        w.write(torch.zeros(1, 3, 16, 16))
    w.close()
    assert VideoReader(tmp_path / "x.mp4").read_all().shape == (2, 3, 8, 8)
    # An exception inside the with-block leaves no file behind.
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "y.mp4", fps=10) as w:
            w.write(torch.zeros(1, 3, 8, 8))
            raise RuntimeError("boom")
    assert not (tmp_path / "y.mp4").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_image_round_trip_resize_crop(tmp_path):
    img = torch.rand(3, 40, 60) * 2 - 1
    save_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.shape == (3, 40, 60) and back.dtype == torch.float32
    assert (back - img).abs().max() <= 1 / 127.5 + 1e-6  # only 8-bit quantization
    sq = read_image(tmp_path / "a.png", 20)
    assert sq.shape == (3, 20, 20)
    # A constant image stays constant through resize and crop.
    save_image(tmp_path / "c.jpg", torch.full((3, 30, 50), 0.2))
    c = read_image(tmp_path / "c.jpg", 16)
    assert torch.allclose(c, torch.full_like(c, 0.2), atol=0.03)
    # Greyscale and RGBA inputs become RGB.
    from PIL import Image

    Image.fromarray(np.full((10, 12), 200, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.full((10, 12, 4), 50, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "g.png", 8).shape == (3, 8, 8)
    assert read_image(tmp_path / "rgba.png", 8).shape == (3, 8, 8)


def test_image_errors(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        read_image(tmp_path / "nope.png", 64)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="bad.png"):
        read_image(tmp_path / "bad.png", 64)
    with pytest.raises(ValueError, match="size"):
        read_image(tmp_path / "bad.png", 0)
    with pytest.raises(MediaError, match="cannot write"):
        save_image(tmp_path / "x.unknownext", torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="img"):
        save_image(tmp_path / "x.png", torch.zeros(4, 4))


def test_image_grid():
    imgs = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 4, 6) / 10
    g = image_grid(imgs, nrow=2, padding=1, pad_value=-1)
    assert g.shape == (3, 3 * 5 + 1, 2 * 7 + 1)
    assert g[0, 1, 1] == 0.0 and g[0, 1, 8] == pytest.approx(0.1) and g[0, 6, 1] == pytest.approx(0.2)
    assert g[0, 11, 1] == pytest.approx(0.4) and g[0, 11, 8] == -1  # empty cell keeps pad value
    assert g[0, 0, 0] == -1
    assert image_grid(imgs, nrow=8, padding=0).shape == (3, 4, 30)
    with pytest.raises(ValueError, match="nrow"):
        image_grid(imgs, nrow=0)


def test_real_clip(lia_samples):
    path = lia_samples / "taichi" / "driving1.mp4"
    r = VideoReader(path, 64)
    assert r.fps > 0 and r.num_frames == 458
    first = next(r.chunks(8))
    assert first.shape == (8, 3, 64, 64)
    assert first.min() >= -1 and first.max() <= 1 and first.std() > 0.05
    img = read_image(lia_samples / "taichi" / "subject1.png", 64)
    assert img.shape == (3, 64, 64) and img.std() > 0.05
    ted = read_image(lia_samples / "ted" / "subject1.png", 256)  # 384x384 -> 256
    assert ted.shape == (3, 256, 256)


_FORKED_DECODE = """
import multiprocessing as mp, sys
from leo.media import VideoReader

def child(path, q):
    q.put(len(list(VideoReader(path))))

if __name__ == "__main__":
    list(VideoReader(sys.argv[1]))  # the parent decodes first (frames of another size)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(sys.argv[2], q))
    p.start()
    p.join(60)
    assert not p.is_alive(), "the forked decoder hung"
    print(q.get(timeout=5))
"""


def test_decoding_leaves_nothing_a_forked_worker_could_hang_on(tmp_path):
    """DataLoader workers are forked after the parent has decoded videos (indexing a folder). A CI run
    hung there once, in a worker rebuilding the RGB converter that PyAV caches per thread (its scaler
    threads were the parent's); the reader now converts with a converter of its own. This runs that
    scenario (parent decodes one size, a forked child another) under a timeout; it is not a
    deterministic reproduction: the old code hung rarely."""
    import subprocess
    import sys

    for name, (h, w) in (("a.mp4", (48, 64)), ("b.mp4", (32, 32))):
        with VideoWriter(tmp_path / name, fps=10) as wr:
            wr.write(_synthetic_frames(5, h, w))
    script = tmp_path / "forked_decode.py"
    script.write_text(_FORKED_DECODE)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "5"
