"""Whole-video access for the stage-2 and first-frame trainers.

Those trainers need every frame of every video once (to encode motion codes, or to pick
frames), not random pairs, so they read videos sequentially here. Which clips a data folder
holds is decided by :func:`leo.data.videos.find_clips` alone (the same clips, in the same
order, as stage 1 sees): video files through leo.media.VideoReader, frame folders in natural
order. A file that cannot be read is skipped with a warning and counted.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from typing import Iterator

import torch

from leo.data.videos import DataError, frame_files, require_clips


def list_videos(data_dir) -> list[str]:
    """The paths of :func:`leo.data.videos.find_clips`'s clips (video files and frame folders).

    FileNotFoundError when ``data_dir`` does not exist, DataError (a ValueError) when it holds no clip."""
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    return [c.path for c in require_clips(data_dir)]


def data_fingerprint(videos: list[str]) -> str:
    """Hash of the video list with sizes and modification times (changes when data changes)."""
    h = hashlib.sha256()
    for v in videos:
        paths = [v] if os.path.isfile(v) else frame_files(v)
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
        files = frame_files(video)
        for i in range(0, len(files), chunk):
            yield torch.stack([read_image(f, size) for f in files[i:i + chunk]])
    else:
        with VideoReader(video, size) as reader:
            yield from reader.chunks(chunk)


def map_videos(videos: list[str], size: int, fn, chunk: int = 64, progress: bool = True, desc: str = "reading"):
    """``[(path, fn(chunks))]`` for every readable video, where ``chunks`` iterates its frames as
    (t <= chunk, 3, S, S) tensors; a video that fails to decode is skipped with a warning and
    counted. Returns ``(results, skipped_paths)``."""
    from tqdm.auto import tqdm

    results, skipped, first_reason = [], [], None
    for v in tqdm(videos, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True):
        try:
            results.append((v, fn(iter_video_chunks(v, size, chunk))))
        except (ValueError, OSError, RuntimeError) as exc:  # MediaError is a ValueError
            warnings.warn(f"skipping unreadable video {v}: {exc}")
            skipped.append(v)
            if first_reason is None:  # the error message names one (its first line)
                first_reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if skipped:
        print(f"skipped {len(skipped)} of {len(videos)} videos that could not be read", file=sys.stderr)
    if not results:
        raise DataError(f"none of the {len(videos)} videos could be read (e.g. {skipped[0]}: {first_reason})")
    return results, skipped
