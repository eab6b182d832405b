"""Training data: synthetic videos, video/frame folders, splits, corrupt-file handling."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from leo.data import (
    DataError,
    FramePairDataset,
    VideoFolder,
    WindowDataset,
    find_clips,
    fixed_pairs,
    render_video,
    split_clips,
    write_dataset,
)
from leo.data.synthetic import _layers, _scene, iter_videos, keypoints, true_flow
from leo.media import save_image
from leo.train.common import StreamSampler


def _loader(ds, start=0, batch=4, workers=0):
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=StreamSampler(start), num_workers=workers)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_varied():
    a = render_video(seed=3, index=1, num_frames=6, size=40)
    b = render_video(seed=3, index=1, num_frames=6, size=40)
    assert a.shape == (6, 3, 40, 40) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
    assert not torch.equal(a, render_video(seed=4, index=1, num_frames=6, size=40))
    assert not torch.equal(a, render_video(seed=3, index=2, num_frames=6, size=40))
    # a prefix of a longer render is the same video: motion depends on time only
    assert torch.equal(render_video(3, 1, 9, 40)[:6], a)
    vids = list(iter_videos(2, num_frames=3, size=16, seed=3))
    assert len(vids) == 2 and torch.equal(vids[1], render_video(3, 1, 3, 16))


def test_synthetic_pair_stream_renders_fresh_clips():
    from leo.data.synthetic import SyntheticPairStream

    ds = SyntheticPairStream(seed=4, first_index=10, num_frames=12, size=24, body=0.0, moves=2)
    seen = set()
    for k in (0, 1, 7):
        item = ds[k]
        a, b = item["frame_index"].tolist()
        assert a != b and 0 <= a < 12 and 0 <= b < 12 and item["clip"] == 10 + k
        want = render_video(4, 10 + k, 12, 24, body=0.0, moves=2)
        assert torch.equal(item["source"], want[a]) and torch.equal(item["target"], want[b])
        assert torch.equal(ds[k]["source"], item["source"])  # derived from k alone
        seen.add(item["clip"])
    assert len(seen) == 3
    with pytest.raises(ValueError, match="num_frames"):
        SyntheticPairStream(0, 0, num_frames=1)
    with pytest.raises(ValueError, match="first_index"):
        SyntheticPairStream(0, -1)
    with pytest.raises(ValueError, match="moves"):
        SyntheticPairStream(0, 0, moves=99)


@pytest.mark.parametrize("kw", [{}, {"camera": 0.1}, {"body": 0.0, "moves": 3}])
def test_synthetic_frames_selects_frames_of_the_same_video(kw):
    whole = render_video(5, 2, 12, 32, **kw)
    picked = render_video(5, 2, 12, 32, frames=[7, 0, 11, 7], **kw)
    assert torch.equal(picked, whole[[7, 0, 11, 7]])
    # past num_frames: the video goes on (num_frames is ignored when frames is given)
    assert torch.equal(render_video(5, 2, 1, 32, frames=[20], **kw)[0], render_video(5, 2, 21, 32, **kw)[20])
    for bad in ([], [-1], [1.5], [[1, 2]]):
        with pytest.raises(ValueError, match="frames"):
            render_video(5, 2, 12, 32, frames=bad, **kw)


def test_synthetic_moves_smoothly():
    v = render_video(seed=0, index=0, num_frames=40, size=48)
    step = (v[1:] - v[:-1]).abs().mean(dim=(1, 2, 3))
    far = (v[20:] - v[:20]).abs().mean(dim=(1, 2, 3))
    assert step.min() > 0, "a frame repeats: the figure does not move"
    assert step.mean() < far.mean(), "consecutive frames should be closer than frames 20 apart"
    # the background is textured, not flat
    assert v[0].std(dim=(1, 2)).min() > 0.05


def test_synthetic_sway_scales_the_figure_travel():
    base = render_video(seed=2, index=1, num_frames=30, size=48)
    assert torch.equal(render_video(seed=2, index=1, num_frames=30, size=48, sway=1.0), base)
    far = [(render_video(seed=2, index=i, num_frames=30, size=48, sway=s)[-1]
            - render_video(seed=2, index=i, num_frames=30, size=48, sway=s)[0]).abs().mean() for s in (0.0, 4.0)
           for i in range(3)]
    assert sum(far[3:]) > 1.2 * sum(far[:3]), "a larger sway must move the figure further"


def test_synthetic_body_zero_gives_every_clip_one_build():
    from leo.data import synthetic

    figs = [synthetic._figure(np.random.default_rng([0, i]), body=0.0) for i in range(4)]
    assert all(f.scale == figs[0].scale and np.array_equal(f.center, figs[0].center) for f in figs)
    assert all(np.array_equal(f.angles[:, 0], figs[0].angles[:, 0]) for f in figs), "resting pose differs"
    assert len({tuple(f.colors.ravel()) for f in figs}) == 4, "colours must still differ between clips"
    spread = [synthetic._figure(np.random.default_rng([0, i])).scale for i in range(4)]
    assert len(set(spread)) == 4, "body=1 keeps the original spread of builds"


@pytest.mark.parametrize("moves", [0, 3])
def test_synthetic_moves_span_the_shared_repertoire(monkeypatch, moves):
    """With moves=k every clip's joint angles move within the span of the k shared moves; with
    moves=0 each joint moves on its own (all 10 directions)."""
    from leo.data import synthetic

    seen = []
    real = synthetic._joint_angles
    monkeypatch.setattr(synthetic, "_joint_angles", lambda fig, t: seen.append(real(fig, t)) or seen[-1])
    clips = [render_video(1, i, 40, 16, body=0.0, moves=moves) for i in range(5)]
    assert len(seen) == 5
    dev = np.concatenate([a - a.mean(0) for a in seen])  # (5 * 40, 10) angle changes over time
    s = np.linalg.svd(dev, compute_uv=False)
    rank = int((s > 1e-6 * s[0]).sum())
    assert rank == (moves or 10), s
    assert all((c[1:] - c[:1]).abs().mean() > 0.005 for c in clips), "every clip must move"


@pytest.mark.parametrize("kw", [dict(), dict(body=0.0, moves=3, sway=2.0), dict(camera=0.2)])
def test_synthetic_keypoints_are_where_the_figure_is_drawn(kw):
    # The near shin is drawn last: at 256x256 its capsule is opaque at its middle, where the pixel
    # shows the pants colour with the mid-limb shading (0.85), whatever lies behind it.
    frames, size = [0, 7, 30], 256
    video = render_video(4, 3, size=size, frames=frames, **kw)
    kp = keypoints(4, 3, frames, **kw)
    assert kp.shape == (3, 12, 2, 2) and np.isfinite(kp).all()  # limbs may leave the frame
    assert np.array_equal(kp[1:2], keypoints(4, 3, [7], **kw))  # frame k is the same frame either way
    pants = torch.from_numpy(_scene(4, 3, kw.get("sway", 1.0), kw.get("body", 1.0), kw.get("moves", 0)).fig.colors[2])
    for f in range(3):
        x, y = (kp[f, -1, 0] + kp[f, -1, 1]) / 2
        pixel = (video[f, :, int(y * size), int(x * size)] + 1) / 2
        torch.testing.assert_close(pixel, (pants * 0.85).float(), atol=0.03, rtol=0)
    assert np.abs(kp[2] - kp[0]).max() > 0.01  # the pose changes
    with pytest.raises(ValueError, match="moves"):
        keypoints(4, 3, [0], moves=99)
    with pytest.raises(ValueError, match="camera"):
        keypoints(4, 3, [0], camera=2.0)


@pytest.mark.parametrize("kw", [dict(), dict(body=0.0, moves=3, sway=2.0), dict(camera=0.2)])
def test_synthetic_true_flow_carries_the_source_onto_the_target(kw):
    src, tgt = 2, 25
    flow = true_flow(4, 3, src, tgt, size=256, **kw)
    assert flow.shape == (2, 256, 256) and flow.dtype == torch.float32 and torch.isfinite(flow).all()
    # The near shin is drawn last and opaque at its middle: that pixel came from the shin's middle.
    kp = keypoints(4, 3, [src, tgt], **kw)
    mid_s, mid_t = kp[0, -1].mean(0), kp[1, -1].mean(0)
    x, y = (mid_t * 256).astype(int)
    torch.testing.assert_close(flow[:, y, x].double(), torch.from_numpy(mid_s - mid_t), atol=2 / 256, rtol=0)
    # The background moves with the camera alone (the figure stays off the top-left corner).
    cam = _scene(4, 3, kw.get("sway", 1.0), kw.get("body", 1.0), kw.get("moves", 0)).at([src, tgt], 25.0, kw.get("camera", 0.0))[1]
    torch.testing.assert_close(flow[:, 0, 0].double(), torch.from_numpy(cam[1] - cam[0]), atol=1e-6, rtol=0)
    # Warping the source frame by the flow reproduces the target far better than copying it, and the
    # opposite flow does worse than copying (the sign and the units are right).
    size = 64
    pair = render_video(4, 3, size=size, frames=[src, tgt], **kw)
    base = torch.stack(torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="xy"), -1)
    offset = true_flow(4, 3, src, tgt, size=size, **kw).permute(1, 2, 0) * (2 * size / (size - 1))

    def warped_l1(sign):
        grid = (base + sign * offset)[None]
        out = torch.nn.functional.grid_sample(pair[:1], grid, align_corners=True, padding_mode="border")
        return float((out[0] - pair[1]).abs().mean())

    copy = float((pair[1] - pair[0]).abs().mean())
    assert warped_l1(1) < 0.75 * copy < copy < warped_l1(-1), (warped_l1(1), copy, warped_l1(-1))
    assert true_flow(4, 3, 9, 9, size=32, **kw).abs().max() < 1e-6  # a frame onto itself: no motion
    with pytest.raises(ValueError, match="size"):
        true_flow(4, 3, 0, 1, size=0)
    with pytest.raises(ValueError, match="frames"):
        true_flow(4, 3, -1, 1)


@pytest.mark.parametrize("kw", [dict(), dict(body=0.0, moves=3), dict(camera=0.2, sway=2.0)])
@pytest.mark.parametrize("size", [64, 17])
def test_render_pairs_draws_what_render_video_draws(kw, size):
    from leo.data.synthetic import render_pairs

    indices, frames = [3, 40, 41, 1000], [(0, 5), (11, 3), (7, 7), (2, 9)]
    pairs = render_pairs(5, indices, frames, 12, size, **kw)
    assert pairs.shape == (4, 2, 3, size, size) and pairs.is_contiguous()
    for row, i, f in zip(pairs, indices, frames):
        # the same float32 math per pixel; only where the vectorized loops split the longer
        # tensors differently may a value round differently (1 ulp)
        torch.testing.assert_close(row, render_video(5, i, 12, size, frames=list(f), **kw), atol=5e-7, rtol=0)
    with pytest.raises(ValueError, match="frames"):
        render_pairs(5, [1, 2], [(0, 1)], 12, size)
    with pytest.raises(ValueError, match="num_frames"):
        render_pairs(5, [1], [(0, 12)], 12, size)
    with pytest.raises(ValueError, match="size"):
        render_pairs(5, [1], [(0, 1)], 12, 0)


def test_synthetic_pair_stream_renders_a_batch_at_once():
    from leo.data.synthetic import SyntheticPairStream

    ds = SyntheticPairStream(seed=4, first_index=10, num_frames=12, size=24, body=0.0, moves=2)
    batch = next(iter(_loader(ds, start=5, batch=3)))  # the DataLoader fetches through __getitems__
    for j, k in enumerate((5, 6, 7)):
        item = ds[k]
        assert torch.equal(batch["source"][j], item["source"]) and torch.equal(batch["target"][j], item["target"])
        assert batch["clip"][j] == item["clip"] and torch.equal(batch["frame_index"][j], item["frame_index"])


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="sway"):
        render_video(0, 0, 4, 8, sway=-1)
    with pytest.raises(ValueError, match="body"):
        render_video(0, 0, 4, 8, body=1.5)
    with pytest.raises(ValueError, match="moves"):
        render_video(0, 0, 4, 8, moves=-1)
    with pytest.raises(ValueError, match="moves"):
        render_video(0, 0, 4, 8, moves=2.0)
    with pytest.raises(ValueError, match="size"):
        render_video(0, 0, 4, 0)
    with pytest.raises(ValueError, match="num_frames"):
        render_video(0, 0, -1, 8)
    with pytest.raises(ValueError, match="fmt"):
        write_dataset("/tmp/never", 1, 2, 8, fmt="gif")
    with pytest.raises(ValueError, match="limbs"):
        render_video(0, 0, 4, 8, limbs=0.2)


def test_synthetic_limbs_thicken_the_arms_and_legs_only():
    kw = dict(body=0.0, moves=3, frames=[0, 30])
    thin, thick = render_video(2, 6, size=64, **kw), render_video(2, 6, size=64, limbs=1.6, **kw)
    assert torch.equal(thin, render_video(2, 6, size=64, limbs=1.0, **kw))  # 1 is the original generator
    background = _layers(2, 6, np.array([0, 30]), 64, body=0.0, moves=3)[0] * 2 - 1
    changed = (thick - thin).abs().amax(1) > 1e-2
    drawn = (thick - background).abs().amax(1) > 1e-4  # where the thicker figure shows over the background
    assert changed.any() and not (changed & ~drawn).any()  # the figure changes, nothing else does
    assert drawn.float().mean() < 0.4  # the background far from the figure is untouched
    assert ((thick[1] - thick[0]).abs().mean() > (thin[1] - thin[0]).abs().mean())  # more pixels move
    assert np.array_equal(keypoints(2, 6, [0, 30], body=0.0, moves=3, limbs=1.6), keypoints(2, 6, [0, 30], body=0.0, moves=3))


def test_write_dataset_records_its_settings_last(tmp_path, monkeypatch):
    from leo.data import synthetic
    from leo.data.synthetic import read_manifest

    assert read_manifest(tmp_path) is None
    write_dataset(tmp_path, num_videos=2, num_frames=3, size=16, seed=5, fmt="frames", body=0.0, moves=1, limbs=1.6)
    assert read_manifest(tmp_path) == dict(seed=5, videos=2, frames=3, size=16, fmt="frames", fps=25.0, camera=0.0,
                                           body=0.0, moves=1, limbs=1.6)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "render_video", fail)  # a rewrite that dies half-way
    with pytest.raises(OSError):
        write_dataset(tmp_path, num_videos=2, num_frames=3, size=16, seed=6, fmt="frames")
    assert read_manifest(tmp_path) is None  # ... leaves no manifest claiming the old clips
    (tmp_path / "synthetic.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="synthetic.json: not a synthetic-data manifest"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------- folders and splits


def _write_lossless_video(path, frames):
    """Write (T,3,S,S) in [-1,1] with a lossless codec (ffv1 in mkv) through PyAV."""
    import av

    u8 = ((frames + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with av.open(os.fspath(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = u8.shape[2], u8.shape[1], "bgr0"
        for arr in u8:
            for pkt in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="bgr0")):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)


def test_frame_folder_and_video_give_the_same_frames(tmp_path):
    frames = render_video(seed=5, index=0, num_frames=7, size=48)
    (tmp_path / "frames").mkdir()
    for j, f in enumerate(frames):  # natural order: 2 before 10
        save_image(tmp_path / "frames" / f"f{j}.png", f)
    _write_lossless_video(tmp_path / "lossless.mkv", frames)
    write_dataset(tmp_path / "h264", num_videos=1, num_frames=7, size=48, seed=5)  # the same video, lossy
    vf = VideoFolder(tmp_path, size=32, test_fraction=0.0)  # resized 48 -> 32 on the way
    names = [c.name for c in vf.clips]
    assert names == ["frames", os.path.join("h264", "synthetic_0000.mp4"), "lossless.mkv"]
    from_folder, from_h264, from_lossless = (vf.frames(i) for i in range(3))
    assert from_folder.shape == (7, 3, 32, 32)
    assert torch.equal(from_folder, from_lossless)
    # H.264 (yuv420p, crf 18) is lossy: close, not equal
    err = (from_h264 - from_folder).abs().mean().item()
    assert 0 < err < 0.04, err
    # and the frames match the source resized once (no double resize)
    from leo.media import read_image
    assert torch.equal(from_folder[3], read_image(tmp_path / "frames" / "f3.png", 32))


def test_resize_and_center_crop_non_square(tmp_path):
    img = torch.zeros(3, 40, 80)
    img[:, :, 20:60] = 1.0  # a white square in the middle of a wide frame
    img[0] = -1.0
    (tmp_path / "clip").mkdir()
    for j in range(2):
        save_image(tmp_path / "clip" / f"{j}.png", img)
    f = VideoFolder(tmp_path, size=20, test_fraction=0).frames(0)
    assert f.shape == (2, 3, 20, 20)
    # the crop keeps the centre square (white in green/blue; resampling softens only the edge columns)
    assert f[:, 1:, :, 1:-1].min() > 0.99 and f[:, 1:].min() > 0.5 and f[:, 0].max() < -0.99


def test_split_is_by_clip_deterministic_and_disjoint(tmp_path):
    write_dataset(tmp_path, num_videos=10, num_frames=2, size=16, seed=0, fmt="frames")
    clips = find_clips(tmp_path)
    assert len(clips) == 10
    tr, te = split_clips(clips, 0.2, seed=0)
    assert len(te) == 2 and len(tr) == 8
    assert {c.name for c in tr}.isdisjoint({c.name for c in te})
    assert split_clips(clips, 0.2, seed=0) == (tr, te)
    assert split_clips(clips, 0.2, seed=1) != (tr, te)
    # a single clip is split in time
    tr1, te1 = split_clips(clips[:1], 0.25)
    assert tr1[0].span == (0.0, 0.75) and te1[0].span == (0.75, 1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_clips(clips, 1.0)


def test_single_clip_time_split_frames(tmp_path):
    frames = render_video(1, 0, 8, 16)
    (tmp_path / "c").mkdir()
    for j, f in enumerate(frames):
        save_image(tmp_path / "c" / f"{j:03d}.png", f)
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.25)
    train, test = vf.frames(vf.split("train")[0]), vf.frames(vf.split("test")[0])
    assert train.shape[0] == 6 and test.shape[0] == 2
    # png stores uint8: frames match the render to within one level
    assert torch.allclose(train, frames[:6], atol=1.01 / 127.5)
    assert torch.allclose(test, frames[6:], atol=1.01 / 127.5)



def test_split_by_time_holds_out_the_last_frames_of_every_clip(tmp_path):
    for i in range(3):
        (tmp_path / f"c{i}").mkdir()
        for j, f in enumerate(render_video(1, i, 10, 16)):
            save_image(tmp_path / f"c{i}" / f"{j:03d}.png", f)
    clips = find_clips(tmp_path)
    tr, te = split_clips(clips, 0.2, by="time")
    assert [c.name for c in tr] == [c.name for c in te] == [c.name for c in clips]
    assert {c.span for c in tr} == {(0.0, 0.8)} and {c.span for c in te} == {(0.8, 1.0)}
    with pytest.raises(ValueError, match="split_by"):
        split_clips(clips, 0.2, by="frames")
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.2, split_by="time")
    assert len(vf.split("train")) == len(vf.split("test")) == 3
    assert "each split in time" in vf.summary()
    for i, j in zip(vf.split("train"), vf.split("test")):
        whole = vf.frames(i).shape[0] + vf.frames(j).shape[0]
        assert (vf.frames(i).shape[0], vf.frames(j).shape[0], whole) == (8, 2, 10)
        # the held-out frames are the clip's last two, none of them trained on
        whole_clip = VideoFolder(vf.clips[j].path, size=16, test_fraction=0).frames(0)
        assert torch.equal(vf.frames(j), whole_clip[8:]) and torch.equal(vf.frames(i), whole_clip[:8])


def test_frame_pairs_max_gap(tmp_path):
    (tmp_path / "c").mkdir()
    for j, f in enumerate(render_video(1, 0, 30, 16)):
        save_image(tmp_path / "c" / f"{j:03d}.png", f)
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.0)
    gaps = {None: [], 3: []}
    for max_gap in gaps:
        ds = FramePairDataset(vf, "train", seed=4, max_gap=max_gap)
        for k in range(400):
            a, b = ds[k]["frame_index"].tolist()
            assert a != b and 0 <= min(a, b) and max(a, b) < 30
            gaps[max_gap].append(abs(a - b))
    # every gap up to the limit occurs (the clip's ends included), none beyond it
    assert set(gaps[3]) == {1, 2, 3}
    assert max(gaps[None]) > 20
    # no limit draws exactly what it drew before max_gap existed (runs resume on the same pairs)
    ds = FramePairDataset(vf, "train", seed=4)
    rng = ds._rng(7)
    a = int(rng.integers(30))
    b = int(rng.integers(29))
    assert ds[7]["frame_index"].tolist() == [a, b + (b >= a)]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="max_gap"):
            FramePairDataset(vf, "train", max_gap=bad)


def test_frame_pairs_flip(tmp_path):
    (tmp_path / "c").mkdir()
    for j, f in enumerate(render_video(1, 0, 30, 16)):
        save_image(tmp_path / "c" / f"{j:03d}.png", f)
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.0)
    plain = FramePairDataset(vf, "train", seed=4, max_gap=5)
    flip = FramePairDataset(vf, "train", seed=4, max_gap=5, flip=True)
    flipped = 0
    for k in range(200):
        p, f = plain[k], flip[k]
        # the same frames are drawn; both frames of a pair are mirrored together, or neither
        assert torch.equal(p["frame_index"], f["frame_index"])
        mirrored = torch.equal(f["source"], p["source"].flip(-1)) and torch.equal(f["target"], p["target"].flip(-1))
        assert mirrored or (torch.equal(f["source"], p["source"]) and torch.equal(f["target"], p["target"]))
        flipped += mirrored and not torch.equal(p["source"], p["source"].flip(-1))
    assert 70 < flipped < 130  # about half


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        VideoFolder(tmp_path / "nope")
    with pytest.raises(DataError, match="no videos"):
        VideoFolder(tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match="none of the clips"), pytest.warns(RuntimeWarning, match="a.mp4"):
        VideoFolder(tmp_path)


# --------------------------------------------------------------------------- corrupt files


def _mixed_folder(tmp_path):
    write_dataset(tmp_path, num_videos=3, num_frames=6, size=24, seed=0)
    write_dataset(tmp_path / "frames", num_videos=2, num_frames=6, size=24, seed=1, fmt="frames")
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(2000))                # header unreadable
    data = (tmp_path / "synthetic_0001.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])       # cut mid-file
    # a frame folder whose 3rd png is corrupt: passes indexing, fails when decoded (in a worker)
    bad = tmp_path / "frames" / "synthetic_0001"
    (bad / "00002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    (tmp_path / "empty_dir_with_nothing").mkdir()
    return tmp_path


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    root = _mixed_folder(tmp_path)
    with pytest.warns(RuntimeWarning, match="skipping"):
        vf = VideoFolder(root, size=16, test_fraction=0.0)
    assert vf.num_skipped == 2  # garbage + truncated are found at indexing
    ds = FramePairDataset(vf, "train", seed=0)
    seen = set()
    # two workers: the corrupt frame folder is found inside a worker, and the mark reaches us
    with _quiet():
        for j, b in enumerate(_loader(ds, batch=4, workers=2)):
            assert torch.isfinite(b["source"]).all() and b["source"].shape == (4, 3, 16, 16)
            seen.update(b["clip"].tolist())
            if j == 7:
                break
    names = {vf.clips[i].name for i in seen}
    assert os.path.join("frames", "synthetic_0001") not in names
    assert len(names) == 4  # every good clip is used
    assert vf.num_skipped == 3
    summary = vf.summary()
    assert "3 skipped" in summary and "garbage.mp4" in summary and "truncated.mp4" in summary
    assert "synthetic_0001" in summary


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *a):
        self._w.__exit__(*a)


def test_all_clips_bad_in_split_raises_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    with _quiet():
        vf = VideoFolder(tmp_path, size=16, test_fraction=0.0)
        with pytest.raises(DataError, match="no usable clip"):
            FramePairDataset(vf)[0]


# --------------------------------------------------------------------------- sampling


def test_pair_samples_depend_only_on_the_id(tmp_path):
    write_dataset(tmp_path, num_videos=4, num_frames=6, size=16, seed=2, fmt="frames")
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.25)
    ds = FramePairDataset(vf, "train", seed=11)
    it0 = iter(_loader(ds, batch=3))
    ref = [next(it0) for _ in range(4)]
    it2 = iter(_loader(ds, batch=3, workers=2))
    got = [next(it2) for _ in range(4)]
    for a, b in zip(ref, got):
        assert torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])
    # resuming the stream at sample 6 gives batch 2 onwards
    resumed = next(iter(_loader(ds, start=6, batch=3)))
    assert torch.equal(resumed["source"], ref[2]["source"])
    # pairs are two different frames of one train clip; each pass visits every clip once
    assert all(b["frame_index"][:, 0].ne(b["frame_index"][:, 1]).all() for b in ref)
    clips = torch.cat([b["clip"] for b in ref])[:3].tolist()
    assert sorted(clips) == vf.split("train")
    # another seed, another stream
    other = next(iter(_loader(FramePairDataset(vf, "train", seed=12), batch=3)))
    assert not torch.equal(other["source"], ref[0]["source"])


def test_window_dataset_gives_consecutive_frames(tmp_path):
    write_dataset(tmp_path, num_videos=2, num_frames=9, size=16, seed=3, fmt="frames")
    write_dataset(tmp_path / "short", num_videos=1, num_frames=3, size=16, seed=4, fmt="frames")
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.0)
    ds = WindowDataset(vf, window=4, stride=2)
    for k in range(6):
        s = ds[k]
        clip = vf.frames(s["clip"])
        assert clip.shape[0] == 9  # the 3-frame clip is too short for 7 frames and never used
        assert torch.equal(s["frames"], clip[s["start"]:s["start"] + 7:2])
    with pytest.raises(ValueError, match="window"):
        WindowDataset(vf, window=0)


def test_fixed_pairs_are_deterministic(tmp_path):
    write_dataset(tmp_path, num_videos=3, num_frames=5, size=16, seed=0, fmt="frames")
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.34)
    a, b = fixed_pairs(vf, 4), fixed_pairs(vf, 4)
    assert a["source"].shape == (4, 3, 16, 16)
    assert torch.equal(a["source"], b["source"]) and torch.equal(a["target"], b["target"])
    assert len(vf.split("test")) == 2  # ceil(3 * 0.34)
    held_out = torch.cat([vf.frames(i) for i in vf.split("test")])
    for s in torch.cat([a["source"], a["target"]]):
        assert any(torch.equal(s, f) for f in held_out), "evaluation pairs must come from held-out clips"


def test_iter_clips_and_cache_budget(tmp_path):
    write_dataset(tmp_path, num_videos=3, num_frames=4, size=16, seed=0, fmt="frames")
    vf = VideoFolder(tmp_path, size=16, test_fraction=0.0, cache_mb=16 * 16 * 3 * 4 * 1.5 / 2**20)
    got = list(vf.iter_clips())
    assert [n for _, n, _ in got] == ["synthetic_0000", "synthetic_0001", "synthetic_0002"]
    assert len(vf._cache) == 1  # the budget holds one clip
    assert all(f.shape == (4, 3, 16, 16) for _, _, f in got)


def test_images_beside_videos_are_stills_not_a_clip(tmp_path):
    """A folder like lia_samples/taichi: driving videos plus source portraits."""
    write_dataset(tmp_path, num_videos=2, num_frames=4, size=16, seed=1)
    for j in range(3):
        save_image(tmp_path / f"subject{j}.png", render_video(2, j, 1, 16)[0])
    assert [c.name for c in find_clips(tmp_path)] == ["synthetic_0000.mp4", "synthetic_0001.mp4"]
    (tmp_path / "frames").mkdir()  # a folder of images alone is still a clip
    save_image(tmp_path / "frames" / "0.png", render_video(2, 0, 1, 16)[0])
    assert "frames" in [c.name for c in find_clips(tmp_path)]


def test_write_dataset_frames_replaces_an_older_clip_of_the_same_name(tmp_path):
    write_dataset(tmp_path, num_videos=1, num_frames=5, size=8, fmt="frames")
    write_dataset(tmp_path, num_videos=1, num_frames=2, size=8, fmt="frames")
    assert sorted(os.listdir(tmp_path / "synthetic_0000")) == ["00000.png", "00001.png"]


def test_make_synthetic_cli_writes_the_demo_kind_of_clips(tmp_path, capsys):
    from leo.cli import main
    from leo.media import read_image

    out = tmp_path / "synth"
    assert main(["make-synthetic", "--out", str(out), "--videos", "2", "--frames", "3", "--size", "16",
                 "--body", "0", "--moves", "3", "--format", "frames"]) == 0
    frame = read_image(str(out / "synthetic_0001" / "00002.png"), 16)
    expected = render_video(0, 1, 3, 16, body=0.0, moves=3)[2]
    assert (frame - expected).abs().max() <= 1.5 / 255 * 2, "the PNG holds the rendered frame (uint8 rounding only)"
    assert main(["make-synthetic", "--out", str(out), "--videos", "1", "--moves", "99"]) == 2
    assert "moves" in capsys.readouterr().err
    for flag, value in (("--videos", "0"), ("--frames", "1"), ("--size", "4")):
        assert main(["make-synthetic", "--out", str(tmp_path / "bad"), flag, value]) == 2
        assert f"{flag} must be >=" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
