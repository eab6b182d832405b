"""Whole-video access for the stage-2 and first-frame trainers.

Those trainers need every frame of every video once (to encode motion codes, or to pick
frames), not random pairs, so they read videos sequentially here: video files
(mp4/mov/avi/webm/mkv/gif, through leo.media.VideoReader) and frame folders (png/jpg,
sorted by name). A file that cannot be read is skipped with a warning and counted.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from typing import Iterator

import torch

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _is_frame_folder(path: str) -> bool:
    try:
        return any(f.lower().endswith(IMAGE_EXTS) for f in os.listdir(path))
    except OSError:
        return False


def list_videos(data_dir) -> list[str]:
    """Sorted video files and frame folders under ``data_dir`` (recursively)."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    found = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.lower().endswith(VIDEO_EXTS) and not f.startswith("."):
                found.append(os.path.join(root, f))
        if root != data_dir and any(f.lower().endswith(IMAGE_EXTS) for f in files):
            found.append(root)
    found = sorted(set(found))
    if not found:
        raise ValueError(f"no videos (mp4/mov/avi/webm) or frame folders (png/jpg) found in {data_dir}")
    return found


def data_fingerprint(videos: list[str]) -> str:
    """Hash of the video list with sizes and modification times (changes when data changes)."""
    h = hashlib.sha256()
    for v in videos:
        paths = [v] if os.path.isfile(v) else sorted(os.path.join(v, f) for f in os.listdir(v))
        for p in paths:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def file_fingerprint(path) -> str:
    """Content hash of a file (model checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def iter_video_chunks(video: str, size: int, chunk: int = 64) -> Iterator[torch.Tensor]:
    """(t <= chunk, 3, size, size) frames in [-1, 1], in order."""
    from leo.media import VideoReader, read_image

    if os.path.isdir(video):
        names = sorted(f for f in os.listdir(video) if f.lower().endswith(IMAGE_EXTS))
        for i in range(0, len(names), chunk):
            yield torch.stack([read_image(os.path.join(video, n), size) for n in names[i:i + chunk]])
    else:
        with VideoReader(video, size) as reader:
            yield from reader.chunks(chunk)


def map_videos(videos: list[str], size: int, fn, chunk: int = 64, progress: bool = True, desc: str = "reading"):
    """``[(path, fn(chunks))]`` for every readable video, where ``chunks`` iterates its frames as
    (t <= chunk, 3, S, S) tensors; a video that fails to decode is skipped with a warning and
    counted. Returns ``(results, skipped_paths)``."""
    from tqdm.auto import tqdm

    results, skipped = [], []
    for v in tqdm(videos, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        try:
            results.append((v, fn(iter_video_chunks(v, size, chunk))))
        except (ValueError, OSError, RuntimeError) as exc:  # MediaError is a ValueError
            warnings.warn(f"skipping unreadable video {v}: {exc}")
            skipped.append(v)
    if skipped:
        print(f"skipped {len(skipped)} of {len(videos)} videos that could not be read", file=sys.stderr)
    if not results:
        raise ValueError(f"none of the {len(videos)} videos could be read")
    return results, skipped
