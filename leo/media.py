"""Image and video I/O for leo: frames as float tensors in [-1, 1].

Images go through Pillow (any format it reads); videos through PyAV (FFmpeg), decoded
lazily so a long driving video never sits in memory. Every failure a user can cause
(missing file, unreadable or corrupt data) raises :class:`MediaError` with a one-line
message naming the file.

Frames are resized so the shorter side equals ``size`` and center-cropped to a square,
the same for images and video frames.
"""
from __future__ import annotations

import math
import os
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch

__all__ = ["MediaError", "read_image", "VideoReader", "VideoWriter", "save_image", "image_grid"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".gif")
WRITE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".gif")


class MediaError(ValueError):
    """A missing, unreadable or corrupt image/video file (message names the file)."""


# --------------------------------------------------------------------------- conversions
def _check_size(size, name="size"):
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{name} must be a positive int or None, got {size!r}")
    return size


def _square(arr: np.ndarray, size: int | None) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3): shorter side resized to ``size``, center crop."""
    if size is None:
        return arr
    h, w = arr.shape[:2]
    if h == size and w == size:
        return arr
    from PIL import Image

    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    img = Image.fromarray(arr)
    if (nh, nw) != (h, w):
        # Pillow's bilinear filter is antialiased when shrinking.
        img = img.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    if not arr.flags.writeable:  # Pillow/PyAV may hand out read-only buffers
        arr = arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    return t.div_(127.5).sub_(1.0)


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] (any dtype/device) -> (..., H, W, 3) uint8."""
    x = frames.detach().to("cpu", torch.float32)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


def _check_image_tensor(img, name, rank):
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(img).__name__}")
    if img.dim() != rank or img.shape[-3] != 3:
        want = "(3, H, W)" if rank == 3 else "(N, 3, H, W)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(img.shape)}")
    if not img.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor in [-1, 1], got {img.dtype}")


def _check_readable(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MediaError(f"file not found: {path}")
    if not os.path.isfile(path):
        raise MediaError(f"not a file: {path}")
    return path


# --------------------------------------------------------------------------- images
def read_image(path, size: int | None = None) -> torch.Tensor:
    """Read an image as (3, size, size) float32 in [-1, 1] (``size=None``: native size)."""
    from PIL import Image, UnidentifiedImageError

    size = _check_size(size)
    path = _check_readable(path)
    try:
        with Image.open(path) as img:
            img.load()
            # Palette/alpha/greyscale images all become plain RGB (alpha is dropped).
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot read image {path}: {exc}") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise MediaError(f"image {path} is empty")
    return _to_tensor(_square(arr, size))


def save_image(path, img: torch.Tensor) -> None:
    """Write one (3, H, W) image in [-1, 1]; the format follows the extension (png, jpg, ...)."""
    from PIL import Image

    _check_image_tensor(img, "img", 3)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        Image.fromarray(_to_uint8(img)).save(path)
    except (ValueError, KeyError) as exc:  # unknown extension
        raise MediaError(f"cannot write image {path}: {exc}") from None
    except OSError as exc:
        raise MediaError(f"cannot write image {path}: {exc}") from None


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile (N, 3, H, W) images into one (3, H', W') image, ``nrow`` images per row."""
    _check_image_tensor(images, "images", 4)
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images must hold at least one image")
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    H, W = rows * (h + padding) + padding, cols * (w + padding) + padding
    grid = images.new_full((c, H, W), pad_value)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, y : y + h, x : x + w] = images[i]
    return grid


# --------------------------------------------------------------------------- video reading
def _av():
    import av

    return av


def _media_exc_types():
    av = _av()
    return (av.error.FFmpegError, OSError, ValueError, EOFError)


class VideoReader:
    """Lazily decoded video: iterate frames (3, S, S) in [-1, 1], or ``.chunks(n)``.

    ``fps`` is the stream's average frame rate; ``num_frames`` comes from the container
    header and may be an estimate (duration x fps) when the header lacks a count. Each
    iteration decodes the file from the start; only one frame is held at a time.
    """

    def __init__(self, path, size: int | None = None):
        self.path = _check_readable(path)
        self.size = _check_size(size)
        self._open: list = []
        av = _av()
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise MediaError(f"no video stream in {self.path}")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate or stream.base_rate
                self.fps = float(rate) if rate else 25.0
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                frames = int(stream.frames or 0)
                if frames <= 0:
                    if stream.duration and stream.time_base:
                        seconds = float(stream.duration * stream.time_base)
                    elif container.duration:
                        seconds = container.duration / 1_000_000
                    else:
                        seconds = 0.0
                    frames = int(round(seconds * self.fps))
                self.num_frames = frames
        except MediaError:
            raise
        except _media_exc_types() as exc:
            raise MediaError(f"cannot read video {self.path}: {_short(exc)}") from None
        if not self.fps or not math.isfinite(self.fps) or self.fps <= 0:
            self.fps = 25.0

    def __len__(self) -> int:
        return self.num_frames

    def _frames_uint8(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            container = av.open(self.path)
        except _media_exc_types() as exc:
            raise MediaError(f"cannot read video {self.path}: {_short(exc)}") from None
        self._open.append(container)
        count = 0
        # Our own RGB converter for this pass: frame.to_ndarray(format=...) would use PyAV's per-thread
        # cached one, whose scaler threads a forked DataLoader worker inherits as dead handles and can
        # wait on forever when it rebuilds the scaler for another frame size (seen as a hung CI run).
        from av.video.reformatter import VideoReformatter

        to_rgb = VideoReformatter()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except _media_exc_types() as exc:
                    raise MediaError(f"corrupt video {self.path} (after {count} frames): {_short(exc)}") from None
                count += 1
                yield to_rgb.reformat(frame, format="rgb24").to_ndarray()
            if count == 0:
                raise MediaError(f"no frames could be decoded from {self.path}")
        finally:
            container.close()
            if container in self._open:
                self._open.remove(container)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for arr in self._frames_uint8():
            yield _to_tensor(_square(arr, self.size))

    def chunks(self, n: int) -> Iterator[torch.Tensor]:
        """Yield (t <= n, 3, S, S) batches of consecutive frames."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"chunk size n must be a positive int, got {n!r}")
        buf = []
        for frame in self:
            buf.append(frame)
            if len(buf) == n:
                yield torch.stack(buf)
                buf = []
        if buf:
            yield torch.stack(buf)

    def read_all(self, max_frames: int | None = None) -> torch.Tensor:
        """All frames (or the first ``max_frames``) as one (T, 3, S, S) tensor."""
        out = []
        for frame in self:
            out.append(frame)
            if max_frames is not None and len(out) >= max_frames:
                break
        return torch.stack(out)

    def close(self) -> None:
        for container in list(self._open):
            container.close()
        self._open.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"VideoReader({self.path!r}, size={self.size}, fps={self.fps:g}, num_frames~{self.num_frames})"


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------- video writing
def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Stream frames to an H.264 mp4 (libx264, yuv420p, crf 18) or an animated GIF.

    The container follows the extension: .mp4/.m4v/.mov/.mkv get H.264, .gif a GIF with
    a per-frame adaptive palette. Frames are (T, 3, H, W) in [-1, 1]; the size is fixed by
    the first write (odd sizes are padded by one edge pixel for yuv420p). The output is
    written to a temporary name and renamed on a clean close.
    """

    def __init__(self, path, fps: float, crf: int = 18):
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in WRITE_EXTENSIONS:
            raise MediaError(f"cannot write video {path}: extension must be one of {', '.join(WRITE_EXTENSIONS)}")
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"fps must be a positive number, got {fps!r}") from None
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.path, self.fps, self.crf, self.gif = path, fps, crf, ext == ".gif"
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        base = os.path.basename(path)
        self._tmp = os.path.join(folder, f".{base}.{os.getpid()}.partial{ext}")
        self._container = None
        self._stream = None
        self._shape = None
        self.frames_written = 0

    def _start(self, h: int, w: int) -> None:
        av = _av()
        fmt = "gif" if self.gif else ("matroska" if self.path.lower().endswith(".mkv") else "mp4")
        try:
            self._container = av.open(self._tmp, mode="w", format=fmt)
            if self.gif:
                stream = self._container.add_stream("gif", rate=_fps_fraction(self.fps))
                stream.pix_fmt = "pal8"
            else:
                stream = self._container.add_stream("libx264", rate=_fps_fraction(self.fps))
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(self.crf), "preset": "medium"}
        except _media_exc_types() as exc:
            self._abort()
            raise MediaError(f"cannot write video {self.path}: {_short(exc)}") from None
        self._enc_h, self._enc_w = (h, w) if self.gif else (h + h % 2, w + w % 2)
        stream.width, stream.height = self._enc_w, self._enc_h
        self._stream = stream
        self._shape = (h, w)

    def write(self, frames: torch.Tensor) -> None:
        """Append (T, 3, H, W) frames (or a single (3, H, W) frame) in [-1, 1]."""
        if isinstance(frames, torch.Tensor) and frames.dim() == 3:
            frames = frames.unsqueeze(0)
        _check_image_tensor(frames, "frames", 4)
        h, w = frames.shape[-2:]
        if self._container is None:
            self._start(h, w)
        elif (h, w) != self._shape:
            raise ValueError(f"frames must keep the size {self._shape} of the first write, got {(h, w)}")
        av = _av()
        arrays = _to_uint8(frames)
        try:
            for arr in arrays:
                if (self._enc_h, self._enc_w) != (h, w):
                    arr = np.pad(arr, ((0, self._enc_h - h), (0, self._enc_w - w), (0, 0)), mode="edge")
                if self.gif:
                    frame = av.VideoFrame.from_ndarray(_palettize(arr), format="pal8")
                else:
                    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1
        except _media_exc_types() as exc:
            self._abort()
            raise MediaError(f"cannot write video {self.path}: {_short(exc)}") from None

    def close(self) -> None:
        """Flush the encoder and move the finished file into place."""
        if self._container is None:
            raise MediaError(f"no frames were written to {self.path}")
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except _media_exc_types() as exc:
            self._abort()
            raise MediaError(f"cannot write video {self.path}: {_short(exc)}") from None
        self._container = None
        os.replace(self._tmp, self.path)

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # already failing: keep the first error
                pass
            self._container = None
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._abort()
        return False


def _palettize(arr: np.ndarray):
    """(H, W, 3) uint8 -> (indices (H, W) uint8, palette (256, 4) ARGB) for a GIF frame."""
    from PIL import Image

    img = Image.fromarray(arr).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = np.asarray(img, dtype=np.uint8)
    pal = np.zeros((256, 4), dtype=np.uint8)
    rgb = np.frombuffer(bytes(img.getpalette()[: 256 * 3]), dtype=np.uint8).reshape(-1, 3)
    pal[: len(rgb), 0] = 255
    pal[: len(rgb), 1:] = rgb
    return idx, pal
