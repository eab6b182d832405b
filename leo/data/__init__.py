"""Training data: video folders / frame folders (:mod:`leo.data.videos`) and synthetic videos
(:mod:`leo.data.synthetic`)."""
from leo.data.synthetic import iter_videos, render_video, write_dataset  # noqa: F401
from leo.data.videos import (  # noqa: F401
    Clip,
    DataError,
    FramePairDataset,
    VideoFolder,
    WindowDataset,
    find_clips,
    fixed_pairs,
    split_clips,
)
