"""Video datasets for training: a folder of videos and/or frame folders, split by video.

:class:`VideoFolder` indexes a folder (recursively) with :func:`find_clips`, the one clip
discovery of leo (the stage-2 and first-frame trainers use it too): every video file
(mp4/m4v/mov/mkv/avi/webm/gif, leo.media's VIDEO_EXTENSIONS) and every folder of png/jpg/bmp/webp
frames is one clip. The split into train/test is by clip and
deterministic (a seeded shuffle of the sorted names); a folder with a single clip is split in time
instead. Nothing is decoded up front: clips are decoded on first use, in whichever DataLoader worker
needs them, resized (shorter side) and center-cropped to the model size, and kept in a small
per-process cache as uint8.

The datasets derive all their randomness from the sample id they are asked for (see
:class:`leo.train.common.StreamSampler`): id ``k`` always gives the same sample, so a resumed run
sees exactly the batches of an uninterrupted one, whatever the number of workers.

A clip that cannot be read (corrupt, truncated, empty, too short) is skipped with a warning and
counted in :meth:`VideoFolder.summary`; the sample falls back to another clip. A training epoch
never crashes on a bad file. Corruption is seen at indexing (headers are probed) or at first
decode; the "bad" marks live in shared memory so every worker and the main process see them.
"""
from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from leo.media import VIDEO_EXTENSIONS  # what leo.media.VideoReader reads

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class DataError(ValueError):
    """The data folder cannot give a usable dataset (missing, empty, no usable clips)."""


@dataclass(frozen=True)
class Clip:
    path: str                 # a video file or a folder of frames
    kind: str                 # "video" or "frames"
    name: str                 # path relative to the dataset root
    span: tuple = (0.0, 1.0)  # the fraction of the clip's frames this entry uses (time split)


def _natural_key(s: str):
    """'frame_2' before 'frame_10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def frame_files(folder: str) -> list[str]:
    """The frame images of a frame folder, in natural order ('2.png' before '10.png')."""
    try:
        names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
    except OSError:
        return []
    return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


_frame_files = frame_files


def find_clips(root: str | os.PathLike) -> list[Clip]:
    """Every video file and frame folder under ``root`` (recursively, hidden entries skipped),
    sorted by name; ``root`` may also be one video file. A folder of images is a clip unless it also
    holds videos (then its images are stills). Every trainer finds its clips here."""
    root = os.fspath(root)
    if os.path.isfile(root):
        if root.lower().endswith(VIDEO_EXTENSIONS):
            return [Clip(root, "video", os.path.basename(root))]
        raise DataError(f"{root} is not a video file ({', '.join(VIDEO_EXTENSIONS)}) or a folder")
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root}")
    clips = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in files:
            if f.lower().endswith(VIDEO_EXTENSIONS) and not f.startswith("."):
                p = os.path.join(folder, f)
                clips.append(Clip(p, "video", os.path.relpath(p, root)))
        has_video = any(f.lower().endswith(VIDEO_EXTENSIONS) for f in files)
        # Images next to videos are stills (e.g. source portraits beside driving clips), not a clip.
        if not has_video and any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            clips.append(Clip(folder, "frames", os.path.relpath(folder, root)))
    return sorted(clips, key=lambda c: _natural_key(c.name))


def require_clips(root: str | os.PathLike) -> list[Clip]:
    """:func:`find_clips`, with a DataError when ``root`` holds no clip (every trainer's message)."""
    clips = find_clips(root)
    if not clips:
        raise DataError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders "
                        f"({', '.join(IMAGE_EXTENSIONS)}) found in {os.fspath(root)}")
    return clips


SPLITS_BY = ("clip", "time")


def check_split_by(split_by):
    """``split_by`` if it names a way to split (SPLITS_BY): unseen clips, or the last frames of each."""
    if split_by not in SPLITS_BY:
        raise ValueError(f"split_by must be 'clip' or 'time', got {split_by!r}")
    return split_by


def split_clips(clips: list[Clip], test_fraction: float, seed: int = 0,
                by: str = "clip") -> tuple[list[Clip], list[Clip]]:
    """Deterministic train/test split. ``by="clip"``: ``ceil(n * test_fraction)`` clips of a seeded
    shuffle go to test (at least one train clip stays); a single clip is split in time instead.
    ``by="time"``: every clip is split in time, its last ``test_fraction`` of frames held out
    (unseen poses of the people trained on, for folders of very few clips)."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    check_split_by(by)
    if test_fraction == 0 or not clips:
        return list(clips), []
    if len(clips) == 1 or by == "time":
        cut = 1.0 - test_fraction
        return ([Clip(c.path, c.kind, c.name, (0.0, cut)) for c in clips],
                [Clip(c.path, c.kind, c.name, (cut, 1.0)) for c in clips])
    order = np.random.default_rng([int(seed), 7919]).permutation(len(clips))
    n_test = min(len(clips) - 1, max(1, math.ceil(len(clips) * test_fraction)))
    test_idx = set(order[:n_test].tolist())
    train = [c for i, c in enumerate(clips) if i not in test_idx]
    test = [c for i, c in enumerate(clips) if i in test_idx]
    return train, test


def _probe(clip: Clip) -> str | None:
    """A reason the clip is unusable, from its header/listing alone (cheap), or None."""
    from leo.media import MediaError, VideoReader

    if clip.kind == "frames":
        return None if len(_frame_files(clip.path)) >= 1 else "no frames"
    try:
        r = VideoReader(clip.path)
        if r.width <= 0 or r.height <= 0:
            return "no picture size in header"
    except MediaError as exc:
        return str(exc)
    return None


def _to_u8(frame: torch.Tensor) -> torch.Tensor:
    """(3, S, S) float in [-1, 1] from leo.media -> (S, S, 3) uint8; exact inverse of its mapping."""
    return frame.add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def _decode(clip: Clip, size: int, max_frames: int | None) -> torch.Tensor:
    """All frames of ``clip`` (within its span) as uint8 (T, size, size, 3). Raises MediaError.

    Decoding, resizing and cropping are leo.media's, so training sees exactly what inference sees.
    """
    from leo.media import MediaError, VideoReader, read_image

    whole = clip.span == (0.0, 1.0)
    if clip.kind == "video":
        source = VideoReader(clip.path, size)
    else:
        source = (read_image(f, size) for f in _frame_files(clip.path))
    frames = []
    for frame in source:
        frames.append(_to_u8(frame))
        if max_frames is not None and whole and len(frames) >= max_frames:
            break
    if not frames:
        raise MediaError(f"no frames in {clip.path}")
    n = len(frames)
    a, b = int(round(clip.span[0] * n)), int(round(clip.span[1] * n))
    frames = frames[a:b][:max_frames]
    if not frames:
        raise MediaError(f"no frames in the {clip.span} part of {clip.path}")
    return torch.stack(frames)


def to_float(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1] (same mapping as leo.media)."""
    return frames_u8.movedim(-1, -3).float().div_(127.5).sub_(1.0)


class VideoFolder:
    """The clips of a data folder, split into train/test by clip, decoded lazily at ``size``.

    Args:
        root: folder of videos and/or frame folders (searched recursively), or one video file.
        size: model resolution (frames are resized on the shorter side, then center-cropped).
        test_fraction: share held out for evaluation: of the clips (by clip; by time if one clip),
            or of every clip's frames with ``split_by="time"``.
        split_seed: seed of the deterministic split.
        split_by: "clip" (unseen clips) or "time" (the last frames of every clip; split_clips).
        min_frames: clips with fewer decoded frames are skipped (2 for pairs, T for windows).
        max_frames: use at most this many frames of each clip (None: all).
        cache_mb: per-process budget for decoded clips (uint8), least recently used evicted.
        probe: open every video header while indexing, so unreadable files are reported at once.
    """

    def __init__(self, root, size: int = 64, test_fraction: float = 0.1, split_seed: int = 0,
                 min_frames: int = 2, max_frames: int | None = None, cache_mb: float = 512,
                 probe: bool = True, verbose: bool = True, split_by: str = "clip"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8, got {size!r}")
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames!r}")
        self.root, self.size, self.min_frames, self.max_frames = os.fspath(root), size, min_frames, max_frames
        self.split_by, self.test_fraction = split_by, test_fraction
        self.cache_bytes = int(cache_mb * 2**20)
        self.verbose = verbose
        clips = require_clips(root)
        self.skipped_at_index: list[tuple[str, str]] = []
        if probe:
            good = []
            for c in clips:
                reason = _probe(c)
                if reason is None:
                    good.append(c)
                else:
                    self.skipped_at_index.append((c.name, reason))
                    self._warn(f"skipping unreadable clip {c.name}: {reason}")
            clips = good
        if not clips:
            raise DataError(f"none of the clips in {self.root} is readable "
                            f"({len(self.skipped_at_index)} skipped, e.g. {self.skipped_at_index[0][1]})")
        self.train, self.test = split_clips(clips, test_fraction, split_seed, by=split_by)
        self.clips = self.train + self.test
        # 0 = not decoded yet, 1 = fine, 2 = bad; shared so workers' findings reach the summary
        self._status = torch.zeros(len(self.clips), dtype=torch.uint8).share_memory_()
        self._reasons: dict[int, str] = {}
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0

    # -- state shared with workers -------------------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"], state["_cached_bytes"] = OrderedDict(), 0  # each worker decodes for itself
        return state

    def _warn(self, msg: str) -> None:
        if self.verbose:
            warnings.warn(msg, RuntimeWarning, stacklevel=3)

    def split(self, name: str) -> list[int]:
        """Indices into :attr:`clips` of the ``"train"``, ``"test"`` or ``"all"`` clips."""
        if name == "train":
            return list(range(len(self.train)))
        if name == "test":
            return list(range(len(self.train), len(self.clips)))
        if name == "all":
            return list(range(len(self.clips)))
        raise ValueError(f"split must be 'train', 'test' or 'all', got {name!r}")

    def is_bad(self, i: int) -> bool:
        return int(self._status[i]) == 2

    def frames_u8(self, i: int) -> torch.Tensor | None:
        """Clip ``i`` as uint8 (T, S, S, 3), or None when it is unusable (then marked bad)."""
        from leo.media import MediaError

        if self.is_bad(i):
            return None
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        clip = self.clips[i]
        try:
            frames = _decode(clip, self.size, self.max_frames)
            if frames.shape[0] < self.min_frames:
                raise MediaError(f"only {frames.shape[0]} frames (need {self.min_frames})")
        except (MediaError, OSError, RuntimeError, ValueError) as exc:
            self._status[i] = 2
            self._reasons[i] = " ".join(str(exc).split())
            self._warn(f"skipping clip {clip.name}: {self._reasons[i]}")
            return None
        self._status[i] = 1
        nbytes = frames.numel()
        while self._cache and self._cached_bytes + nbytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.numel()
        if nbytes <= self.cache_bytes:
            self._cache[i] = frames
            self._cached_bytes += nbytes
        return frames

    def frames(self, i: int) -> torch.Tensor | None:
        """Clip ``i`` as float32 (T, 3, S, S) in [-1, 1], or None when unusable."""
        u8 = self.frames_u8(i)
        return None if u8 is None else to_float(u8)

    def iter_clips(self, split: str = "all"):
        """Yield ``(index, name, frames (T,3,S,S))`` for every usable clip of ``split``."""
        for i in self.split(split):
            f = self.frames(i)
            if f is not None:
                yield i, self.clips[i].name, f

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_at_index) + int((self._status == 2).sum())

    def skipped(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every skipped clip known to this process (reasons found in workers
        are only named: "unreadable when decoded")."""
        out = list(self.skipped_at_index)
        for i in (self._status == 2).nonzero().flatten().tolist():
            out.append((self.clips[i].name, self._reasons.get(i, "unreadable when decoded")))
        return out

    def summary(self) -> str:
        if self.split_by == "time" and self.test:
            s = (f"{len(self.train)} clips in {self.root}, each split in time (the last {self.test_fraction:.0%} "
                 f"of its frames held out) at {self.size}x{self.size}")
        else:
            s = (f"{len(self.clips)} clips in {self.root} ({len(self.train)} train, {len(self.test)} test) "
                 f"at {self.size}x{self.size}")
        skipped = self.skipped()
        if skipped:
            s += f"; {len(skipped)} skipped: " + ", ".join(f"{n} ({r[:80]})" for n, r in skipped[:5])
            if len(skipped) > 5:
                s += f", ... ({len(skipped) - 5} more)"
        return s

    def __repr__(self):
        return f"VideoFolder({self.summary()})"


class _StreamDataset(Dataset):
    """Maps a sample id to a clip of one split: every pass over the split is a seeded permutation,
    so clips are visited evenly; an unusable clip is replaced by a seeded draw of another."""

    def __init__(self, folder: VideoFolder, split: str = "train", seed: int = 0):
        self.folder, self.split_name, self.seed = folder, split, int(seed)
        self.indices = folder.split(split)
        if not self.indices:
            raise DataError(f"the {split!r} split of {folder.root} is empty (use more clips or another test_fraction)")

    def __len__(self) -> int:
        return sys.maxsize  # an endless stream; use leo.train.common.StreamSampler

    def _rng(self, k: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(k), 1])

    def _clip_for(self, k: int, need: int):
        """(clip index, uint8 frames) for sample ``k`` with at least ``need`` frames."""
        n = len(self.indices)
        epoch, pos = divmod(int(k), n)
        first = self.indices[int(np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 2]).permutation(n)[pos])]
        rng = self._rng(k)
        tried = set()
        i = first
        for _ in range(4 * n + 8):
            tried.add(i)
            frames = self.folder.frames_u8(i)
            if frames is not None and frames.shape[0] >= need:
                return i, frames, rng
            if len(tried) == n:
                break
            i = self.indices[int(rng.integers(n))]
        # every clip was tried: nothing of this split is usable
        raise DataError(f"no usable clip with >= {need} frames in the {self.split_name!r} split of "
                        f"{self.folder.root}: {self.folder.summary()}")


def check_max_gap(max_gap):
    """``max_gap`` (the most frames apart a training pair may be) if it is a positive int or None."""
    if max_gap is not None and (isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 1):
        raise ValueError(f"max_gap must be a positive int or None, got {max_gap!r}")
    return max_gap


class FramePairDataset(_StreamDataset):
    """Stage 1: sample ``k`` -> ``{"source", "target"}`` frames (3, S, S) in [-1, 1] of one clip:
    two different frames, at most ``max_gap`` frames apart if given (None: anywhere in the clip);
    with ``flip``, both mirrored left-right in half of the pairs (drawn after the frames, so the
    same ``k`` picks the same frames either way)."""

    def __init__(self, folder: VideoFolder, split: str = "train", seed: int = 0, max_gap: int | None = None,
                 flip: bool = False):
        super().__init__(folder, split, seed)
        self.max_gap = check_max_gap(max_gap)
        self.flip = bool(flip)

    def __getitem__(self, k: int) -> dict:
        i, frames, rng = self._clip_for(k, 2)
        n = frames.shape[0]
        a = int(rng.integers(n))
        lo, hi = 0, n - 1
        if self.max_gap is not None:
            lo, hi = max(0, a - self.max_gap), min(n - 1, a + self.max_gap)
        b = int(rng.integers(lo, hi))  # one of the hi - lo frames in [lo, hi] other than a
        b += b >= a  # two different frames
        source, target = to_float(frames[a]), to_float(frames[b])
        if self.flip and rng.random() < 0.5:
            source, target = source.flip(-1), target.flip(-1)
        return {"source": source, "target": target, "clip": i, "frame_index": torch.tensor([a, b])}


class WindowDataset(_StreamDataset):
    """Stage 2: sample ``k`` -> ``{"frames": (T, 3, S, S)}``: ``T`` consecutive frames of one clip
    (every ``stride``-th frame); clips shorter than the window are skipped for these samples."""

    def __init__(self, folder: VideoFolder, window: int, split: str = "train", seed: int = 0, stride: int = 1):
        super().__init__(folder, split, seed)
        if window < 1 or stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {window!r}, {stride!r}")
        self.window, self.stride = int(window), int(stride)

    def __getitem__(self, k: int) -> dict:
        span = (self.window - 1) * self.stride + 1
        i, frames, rng = self._clip_for(k, span)
        start = int(rng.integers(frames.shape[0] - span + 1))
        return {"frames": to_float(frames[start:start + span:self.stride]), "clip": i, "start": start}


def fixed_pairs(folder: VideoFolder, n: int, split: str = "test", seed: int = 1234) -> dict:
    """``n`` deterministic (source, target) pairs of ``split`` as batched tensors, for evaluation."""
    ds = FramePairDataset(folder, split, seed)
    items = [ds[k] for k in range(n)]
    return {"source": torch.stack([it["source"] for it in items]),
            "target": torch.stack([it["target"] for it in items])}
