"""Synthetic human-like videos, so tests and the demo need no downloaded data.

Each video shows one articulated figure (head, torso, two-segment arms and legs drawn as soft
capsules) whose joint angles follow smooth sums of sinusoids (per joint, or through a repertoire of
whole-body moves shared by all clips), drifting slowly over a textured background (gratings +
smooth colour gradient + blobs). Everything (colours, proportions, motion, background) is drawn
from ``numpy.random.default_rng([seed, index])``, so a (seed, index) pair always renders the same
frames, at any size.
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass
class _Figure:
    colors: np.ndarray      # (6, 3) skin, shirt, pants, far-arm, far-leg, hair in [0, 1]
    scale: float            # body height as a fraction of the frame
    center: np.ndarray      # (2,) mean hip position (x, y) in [0, 1]
    drift: np.ndarray       # (2, 3) amplitude, frequency, phase of the slow hip drift for x and y
    angles: np.ndarray      # (10, 4) base, amplitude, frequency, phase for every joint angle
    harm: np.ndarray        # (10, 2) second-harmonic amplitude and phase
    moves: np.ndarray | None = None  # (K, 3) weight, frequency, phase of each shared move (None: free joints)
    limbs: float = 1.0      # thickness of the arms and legs, times the original's


# Typical swing (radians) of each joint angle (order: _figure's joints).
_JOINT_AMPLITUDE = np.array([0.15, 1.0, 1.0, 0.8, 0.8, 0.35, 0.35, 0.45, 0.45, 0.2])
# A fixed repertoire of whole-body moves (like the forms of a dance or of tai chi): each is a
# pattern of joint-angle amplitudes that every clip can perform, with its own weight and timing.
_MOVES = np.random.default_rng(20240601).uniform(-1, 1, size=(16, 10)) * _JOINT_AMPLITUDE


def _figure(rng: np.random.Generator, body: float = 1.0) -> _Figure:
    """``body`` scales how much the figure's build and place differ from the average one (scale,
    centre, resting joint angles); 0 gives every clip the same body, 1 the original spread."""
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.6, 1.1)
    shirt, pants, hair = rng.uniform(0.05, 0.95, size=(3, 3))
    colors = np.stack([skin, shirt, pants, shirt * 0.7, pants * 0.7, hair]).clip(0, 1)
    # joints: torso lean, upper arm L/R, forearm L/R (relative), thigh L/R, shin L/R (relative), head tilt
    base = np.array([0.0, 0.5, -0.5, 0.4, -0.4, 0.15, -0.15, -0.2, 0.2, 0.0])
    amp = _JOINT_AMPLITUDE * rng.uniform(0.5, 1.2, 10)
    freq = rng.uniform(0.3, 1.2, 10)  # cycles per 25 frames: smooth at any frame rate we write
    phase = rng.uniform(0, 2 * math.pi, 10)
    angles = np.stack([base + body * rng.normal(0, 0.15, 10), amp, freq, phase], axis=1)
    harm = np.stack([rng.uniform(0, 0.3, 10), rng.uniform(0, 2 * math.pi, 10)], axis=1)
    drift = np.stack([rng.uniform(0.02, 0.1, 2), rng.uniform(0.05, 0.25, 2), rng.uniform(0, 2 * math.pi, 2)], axis=1)

    def spread(value, mean):  # exact at body == 1, so existing (seed, index) videos do not change
        return value if body == 1 else mean + body * (value - mean)

    scale = spread(rng.uniform(0.55, 0.8), 0.675)
    center = spread(np.array([rng.uniform(0.4, 0.6), rng.uniform(0.55, 0.65)]), np.array([0.5, 0.6]))
    return _Figure(colors, float(scale), center, drift, angles, harm)


def _background(rng: np.random.Generator):
    """Draw a background: colour gradient + oriented gratings + soft blobs. Returns a function
    ``paint(size, offset)`` -> (3, S, S) in [0, 1], the scene seen through a camera moved by
    ``offset`` (x, y) in frame units (resolution-independent)."""
    c0, c1 = torch.from_numpy(rng.uniform(0.1, 0.9, size=(2, 3, 1, 1)))
    d = rng.uniform(0, 2 * math.pi)
    gratings = []
    for _ in range(3):
        th, f, ph = rng.uniform(0, math.pi), rng.uniform(3, 14), rng.uniform(0, 2 * math.pi)
        gratings.append((th, f, ph, torch.from_numpy(rng.uniform(-0.12, 0.12, size=(3, 1, 1)))))
    blobs = []
    for _ in range(int(rng.integers(3, 7))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.15)
        blobs.append((cx, cy, r, torch.from_numpy(rng.uniform(0, 1, size=(3, 1, 1)))))

    def paint(size: int, offset=(0.0, 0.0)) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size, dtype=torch.float64) + offset[1],
                                torch.linspace(0, 1, size, dtype=torch.float64) + offset[0], indexing="ij")
        t = (xs * math.cos(d) + ys * math.sin(d) + 1.5) / 3.0
        img = c0 * (1 - t) + c1 * t
        for th, f, ph, amp in gratings:
            img = img + amp * torch.sin(2 * math.pi * f * (xs * math.cos(th) + ys * math.sin(th)) + ph)
        for cx, cy, r, col in blobs:
            w = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r))
            img = img * (1 - 0.6 * w) + col * 0.6 * w
        return img.clamp(0, 1).float()

    return paint


def _joint_angles(fig: _Figure, t: np.ndarray) -> np.ndarray:
    """(T, 10) joint angles at times ``t`` (in units of 25 frames)."""
    b, a, f, p = (fig.angles[:, i][None] for i in range(4))
    h_amp, h_ph = fig.harm[:, 0][None], fig.harm[:, 1][None]
    tt = t[:, None]
    if fig.moves is not None:  # joints follow the shared moves
        w, fm, pm = (fig.moves[:, i][:, None] for i in range(3))  # (K, 1)
        k = len(fig.moves)
        return b + (w[None] * _MOVES[None, :k] * np.sin(2 * math.pi * fm[None] * tt[:, :, None] + pm[None])).sum(1)
    return b + a * np.sin(2 * math.pi * f * tt + p) + a * h_amp * np.sin(4 * math.pi * f * tt + h_ph)


def _segments(fig: _Figure, t: np.ndarray):
    """Capsules (start (T,2), end (T,2), radius, colour index) back to front, coordinates in [0, 1]."""
    ang = _joint_angles(fig, t)
    s = fig.scale
    dx = fig.drift[:, 0] * np.sin(2 * math.pi * fig.drift[:, 1] * t[:, None] + fig.drift[:, 2])
    hip = fig.center[None] + dx + np.array([0.0, 0.05]) * s
    hip[:, 1] += 0.02 * s * np.sin(2 * math.pi * fig.angles[7, 2] * 2 * t)  # a little bounce

    def vec(theta, length):  # theta = 0 points down the image (y grows downwards)
        return np.stack([np.sin(theta), np.cos(theta)], axis=1) * length

    lean = ang[:, 0]
    neck = hip + vec(math.pi + lean, 0.30 * s)
    head = neck + vec(math.pi + lean + ang[:, 9], 0.09 * s)
    segs = []
    limbs = []
    for side, (ua, fa, th, sh) in enumerate([(1, 3, 5, 7), (2, 4, 6, 8)]):
        sign = 1.0 if side == 0 else -1.0
        shoulder = neck + vec(math.pi + lean, -0.02 * s) + np.stack([sign * 0.07 * s * np.cos(lean), 0 * lean], 1)
        elbow = shoulder + vec(lean + ang[:, ua], 0.14 * s)
        wrist = elbow + vec(lean + ang[:, ua] + ang[:, fa], 0.13 * s)
        hip_j = hip + np.stack([sign * 0.045 * s * np.ones_like(lean), 0 * lean], 1)
        knee = hip_j + vec(ang[:, th], 0.21 * s)
        ankle = knee + vec(ang[:, th] + ang[:, sh], 0.20 * s)
        far = side == 1
        k = fig.limbs
        limbs.append(((shoulder, elbow, 0.030 * s * k, 3 if far else 1), (elbow, wrist, 0.025 * s * k, 0),
                      (hip_j, knee, 0.045 * s * k, 4 if far else 2), (knee, ankle, 0.038 * s * k, 4 if far else 2)))
    segs += list(limbs[1])  # far side first
    segs.append((hip, neck, 0.085 * s, 1))
    segs.append((neck, head, 0.028 * s, 0))
    segs.append((head, head + vec(math.pi + lean + ang[:, 9], 0.001), 0.075 * s, 0))  # head (a disc)
    segs.append((head + vec(math.pi + lean + ang[:, 9], 0.035 * s), head + vec(math.pi + lean + ang[:, 9], 0.036 * s),
                 0.06 * s, 5))  # hair cap
    segs += list(limbs[0])
    return segs


def render_video(seed: int, index: int = 0, num_frames: int = 32, size: int = 64, fps: float = 25.0,
                 camera: float = 0.0, sway: float = 1.0, body: float = 1.0,
                 moves: int = 0, frames=None, limbs: float = 1.0) -> torch.Tensor:
    """Render synthetic video ``index`` of ``seed``: (T, 3, size, size) float32 in [-1, 1].

    ``frames``: indices of the frames to render (T = len(frames)); None renders 0 .. num_frames - 1.
    Frame k is the same image either way, so a training stream can draw a pair of frames of a fresh
    clip without rendering the whole clip.

    ``camera``: amplitude (in frame units) of a smooth hand-held camera motion that moves the
    whole scene, background included (0: a static camera, the figure alone moves).
    ``sway``: scales how far the figure itself travels (its hip drift and slow pan); 1 is the
    original generator, larger values make the figure walk and sway across the frame.
    ``body``: how much the figure's build and place (scale, centre, resting pose) differ between
    clips; 1 is the original spread, 0 gives every clip the same body (colours, background and
    motion still differ).
    ``moves``: 0 moves every joint on its own sinusoids (the original generator); K > 0 drives all
    joints by the first K moves of a fixed repertoire shared by every clip, each clip with its own
    weights, frequencies and phases.
    ``limbs``: thickness of the arms and legs, times the original generator's (1). At 64x64 the
    original forearm is about 2 pixels wide; ``leo demo`` draws them 1.6x as thick.
    """
    _check_count("num_frames", num_frames)
    _check_count("size", size)
    frames = _check_frames(np.arange(num_frames) if frames is None else frames)
    return _composite(*_layers(seed, index, frames, size, fps, camera, sway, body, moves, limbs), size)


def render_pairs(seed: int, indices, frames, num_frames: int = 48, size: int = 64, **options) -> torch.Tensor:
    """Two frames of each of many clips of ``seed``: (N, 2, 3, size, size), row n holding frames
    ``frames[n]`` (two indices below ``num_frames``) of clip ``indices[n]``, the images that
    ``render_video(seed, indices[n], num_frames, size, frames=frames[n], **options)`` draws (the same
    float32 math; a value may round 1 ulp apart where vectorized loops split differently). The
    figures of all clips are drawn in one pass (one op per capsule for all N clips instead of N):
    the demo's batch of 4 pairs renders about 1.2x faster than pair by pair."""
    frames = np.asarray(frames)
    if frames.ndim != 2 or frames.shape[1] != 2 or len(frames) != len(indices) or len(frames) == 0:
        raise ValueError(f"frames must be (N, 2) frame indices, N = len(indices) > 0; got shape "
                         f"{frames.shape} for {len(indices)} indices")
    _check_count("size", size)
    if (frames >= num_frames).any():
        raise ValueError(f"frames must be below num_frames={num_frames}, got {frames.max()}")
    layers = [_layers(seed, i, _check_frames(f), size, **options) for i, f in zip(indices, frames)]
    background = torch.cat([b for b, _ in layers])
    capsules = [tuple(torch.cat(parts) for parts in zip(*(c[k] for _, c in layers))) for k in range(len(layers[0][1]))]
    return _composite(background, capsules, size).view(len(indices), 2, 3, size, size)


def _layers(seed, index, frames, size, fps=25.0, camera=0.0, sway=1.0, body=1.0, moves=0, limbs=1.0):
    """What ``render_video`` draws in ``frames``: the background (T, 3, S, S) in [0, 1] and the
    figure's capsules back to front, each (start (T, 2), end (T, 2), radius (T,), colour (T, 3)),
    float32 tensors, image coordinates in [0, 1]."""
    _check_timing(fps, camera)
    sc = _scene(seed, index, sway, body, moves, limbs)
    t, cam, shift = sc.at(frames, fps, camera)
    if camera > 0:
        background = torch.stack([sc.paint(size, tuple(c)) for c in cam])
    else:
        background = sc.paint(size)[None].expand(len(frames), -1, -1, -1)
    colors = torch.from_numpy(sc.fig.colors).float()
    # coordinates and shift are rounded to float32 before they add, as the renderer always did
    shift = torch.from_numpy(shift).float()
    capsules = [(torch.from_numpy(a).float() + shift, torch.from_numpy(b).float() + shift,
                 torch.full((len(frames),), r, dtype=torch.float32), colors[ci].expand(len(frames), 3))
                for a, b, r, ci in _segments(sc.fig, t)]
    return background, capsules


def _composite(background, capsules, size):
    """Draw the capsules of ``_layers`` (any frames of any clips, one row each) over their
    backgrounds: (M, 3, S, S) in [-1, 1]."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    px, py = coords[None, :], coords[:, None]  # (1, S) and (S, 1): broadcast to the image
    out = background.clone()
    soft = 0.6 / size  # about one pixel of anti-aliasing
    # x and y apart, each (M, S, S): a trailing axis of 2 made every op a strided one (2.7x slower)
    for a, b, r, color in capsules:
        ax, ay = a[:, 0, None, None], a[:, 1, None, None]
        abx, aby = (b[:, 0] - a[:, 0])[:, None, None], (b[:, 1] - a[:, 1])[:, None, None]
        dx, dy = px - ax, py - ay
        u = ((dx * abx + dy * aby) / (abx * abx + aby * aby).clamp_min(1e-12)).clamp(0, 1)
        ex, ey = dx - u * abx, dy - u * aby
        alpha = torch.sigmoid((r[:, None, None] - (ex * ex + ey * ey).sqrt()) / soft)[:, None]  # (M,1,S,S)
        # a little shading along the limb makes rotations visible
        shade = 0.85 + 0.15 * torch.cos(u * math.pi)[:, None]
        out = out * (1 - alpha) + (color[:, :, None, None] * shade).clamp(0, 1) * alpha
    return out.mul_(2).sub_(1).contiguous()


@dataclass
class _Scene:
    """What (seed, index) draws: the figure, the background and the figure's and camera's drift."""
    fig: _Figure
    paint: object
    pan: np.ndarray
    cam_freq: np.ndarray
    cam_phase: np.ndarray

    def at(self, frames, fps: float, camera: float):
        """Times t (T,), camera offsets (T, 2) and the figure's image shift (T, 2) of ``frames``."""
        t = np.asarray(frames).astype(np.float64) * (25.0 / fps) / 25.0
        # camera offset per frame (0 at t = 0): the scene moves by -offset in the image
        cam = camera * (np.sin(2 * math.pi * self.cam_freq[None] * t[:, None] + self.cam_phase) - np.sin(self.cam_phase))
        return t, cam, self.pan[None] * t[:, None] - cam


def _check_timing(fps: float, camera: float) -> None:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if not 0 <= camera <= 0.5:
        raise ValueError(f"camera must be in [0, 0.5] (frame units), got {camera!r}")


def _scene(seed: int, index: int, sway: float, body: float, moves: int, limbs: float = 1.0) -> _Scene:
    if not 0 <= sway <= 5:
        raise ValueError(f"sway must be in [0, 5], got {sway!r}")
    if isinstance(moves, bool) or not isinstance(moves, int) or not 0 <= moves <= len(_MOVES):
        raise ValueError(f"moves must be an int in [0, {len(_MOVES)}], got {moves!r}")
    if not 0 <= body <= 1:
        raise ValueError(f"body must be in [0, 1], got {body!r}")
    if not 0.5 <= limbs <= 3:
        raise ValueError(f"limbs must be in [0.5, 3], got {limbs!r}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
    fig = _figure(rng, body)
    fig.limbs = float(limbs)  # drawn from no random number: the clip is otherwise the same
    fig.drift[:, 0] *= sway
    paint = _background(rng)
    pan = rng.uniform(-0.03, 0.03, size=2) * sway  # slow drift of the figure, in frame units
    cam_freq, cam_phase = rng.uniform(0.2, 0.6, size=2), rng.uniform(0, 2 * math.pi, size=2)
    if moves:
        fig.moves = np.stack([rng.uniform(0.4, 1.2, moves), rng.uniform(0.3, 1.2, moves),
                              rng.uniform(0, 2 * math.pi, moves)], axis=1)
    return _Scene(fig, paint, pan, cam_freq, cam_phase)


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 1 or len(frames) == 0 or frames.dtype.kind not in "iu" or frames.min() < 0:
        raise ValueError(f"frames must be a non-empty 1-d sequence of non-negative ints, got {frames!r}")
    return frames


def keypoints(seed: int, index: int, frames, fps: float = 25.0, camera: float = 0.0, sway: float = 1.0,
              body: float = 1.0, moves: int = 0, limbs: float = 1.0) -> np.ndarray:
    """The figure's pose in the frames ``render_video`` draws with the same arguments: (T, 12, 2, 2),
    the two end points (x, y in frame units, [0, 1] across the image) of each of its 12 capsules,
    back to front. A ground truth for experiments (tools/stage1_ablation.py --pose-loss)."""
    _check_timing(fps, camera)
    sc = _scene(seed, index, sway, body, moves, limbs)
    t, _, shift = sc.at(_check_frames(frames), fps, camera)
    return np.stack([np.stack([a + shift, b + shift], axis=1) for a, b, _, _ in _segments(sc.fig, t)], axis=1)


def true_flow(seed: int, index: int, source: int, target: int, size: int = 64, fps: float = 25.0,
              camera: float = 0.0, sway: float = 1.0, body: float = 1.0, moves: int = 0,
              limbs: float = 1.0) -> torch.Tensor:
    """Where each pixel of frame ``target`` comes from in frame ``source`` (the frames that
    ``render_video`` draws with the same arguments): (2, size, size) float32, the x, y displacement
    in frame units ([0, 1] across the image). A ground truth for experiments (tools/stage1_ablation.py
    --true-flow). Each capsule of the figure moves rigidly, so its pixels map by the similarity that
    carries the capsule's end points in ``target`` onto those in ``source``; the background moves with
    the camera. Pixels mix these displacements with the renderer's own alpha compositing."""
    _check_timing(fps, camera)
    _check_count("size", size)
    sc = _scene(seed, index, sway, body, moves, limbs)
    t, cam, shift = sc.at(_check_frames([source, target]), fps, camera)
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    p = torch.complex(px, py)  # (S, S): points as complex numbers make the similarity one product
    flow = torch.full((size, size), complex(*(cam[1] - cam[0])), dtype=torch.complex128)
    soft = 0.6 / size  # the renderer's anti-aliasing, so the weights match its compositing
    for a, b, r, _ in _segments(sc.fig, t):
        a_s, a_t = (complex(*(a[i] + shift[i])) for i in (0, 1))
        b_s, b_t = (complex(*(b[i] + shift[i])) for i in (0, 1))
        ab = b_t - a_t
        u = ((p - a_t) * ab.conjugate()).real / max(abs(ab) ** 2, 1e-12)
        d = (p - a_t - u.clamp(0, 1) * ab).abs()
        alpha = torch.sigmoid((r - d) / soft)
        moved = a_s + (p - a_t) * ((b_s - a_s) / ab) - p
        flow = flow * (1 - alpha) + moved * alpha
    return torch.stack([flow.real, flow.imag]).float()


class SyntheticPairStream(torch.utils.data.Dataset):
    """Stage 1 pairs from an endless supply of fresh synthetic clips: sample ``k`` ->
    ``{"source", "target", "clip", "frame_index"}`` like :class:`leo.data.videos.FramePairDataset`,
    from two different frames of clip ``first_index + k`` of ``seed``, rendered on demand (two
    frames; a DataLoader batch is rendered in one :func:`render_pairs` call). No clip is seen
    twice, so nothing can be memorized (docs/MOTION.md, seventh round). Everything is derived
    from ``k``: resumable, any number of workers.
    ``first_index``: keep it past the clips stored for evaluation so they stay unseen."""

    def __init__(self, seed: int, first_index: int, num_frames: int = 48, size: int = 64, **options):
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
        if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
            raise ValueError(f"first_index must be a non-negative int, got {first_index!r}")
        self.seed, self.first_index, self.num_frames, self.size = int(seed), first_index, num_frames, size
        self.options = options  # render_video's camera, sway, body, moves, limbs
        render_video(seed, first_index, 1, size, frames=[0], **options)  # bad options fail here, not in a worker

    def __len__(self) -> int:
        return 2**62  # an endless stream; use leo.train.common.StreamSampler

    def __getitem__(self, k: int) -> dict:
        return self.__getitems__([k])[0]

    def __getitems__(self, ks) -> list[dict]:
        """A batch of samples rendered together (torch's DataLoader calls this with a batch's indices)."""
        frames = []
        for k in ks:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(k), 3])
            a = int(rng.integers(self.num_frames))
            b = int(rng.integers(self.num_frames - 1))
            frames.append((a, b + (b >= a)))  # two different frames
        indices = [self.first_index + int(k) for k in ks]
        pairs = render_pairs(self.seed, indices, frames, self.num_frames, self.size, **self.options)
        return [{"source": p[0], "target": p[1], "clip": i, "frame_index": torch.tensor(f)}
                for p, i, f in zip(pairs, indices, frames)]


def iter_videos(num_videos: int, num_frames: int = 32, size: int = 64, seed: int = 0,
                camera: float = 0.0, body: float = 1.0, moves: int = 0, limbs: float = 1.0) -> Iterator[torch.Tensor]:
    """Yield ``num_videos`` synthetic videos (T, 3, S, S) in [-1, 1] (options: render_video's)."""
    for i in range(num_videos):
        yield render_video(seed, i, num_frames, size, camera=camera, body=body, moves=moves, limbs=limbs)


MANIFEST = "synthetic.json"


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """What :func:`write_dataset` wrote into ``folder`` (seed, videos, frames, size, fmt, fps and
    render_video's options), or None for a folder it did not write (or did not finish)."""
    path = os.path.join(os.fspath(folder), MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable synthetic-data manifest ({exc})") from None
    if not isinstance(manifest, dict) or not {"seed", "videos", "frames", "size"} <= manifest.keys():
        raise ValueError(f"{path}: not a synthetic-data manifest (needs seed, videos, frames, size)")
    return manifest


def write_dataset(out_dir: str | os.PathLike, num_videos: int = 16, num_frames: int = 48, size: int = 64,
                  seed: int = 0, fmt: str = "mp4", fps: float = 25.0, camera: float = 0.0, body: float = 1.0,
                  moves: int = 0, limbs: float = 1.0) -> list[str]:
    """Write synthetic videos into ``out_dir`` as mp4 files (``fmt="mp4"``) or PNG frame folders
    (``fmt="frames"``); returns the written paths. Existing identical names are overwritten (a frame
    folder loses its old frames). Last, ``synthetic.json`` records the settings (:func:`read_manifest`),
    so a trainer can continue the same generator past the written clips (SyntheticPairStream).
    camera, body, moves, limbs: render_video's options."""
    from leo.checkpoint_io import atomic_write
    from leo.media import VideoWriter, save_image

    if fmt not in ("mp4", "frames"):
        raise ValueError(f"fmt must be 'mp4' or 'frames', got {fmt!r}")
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"num_videos must be a positive int, got {num_videos!r}")
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(os.fspath(out_dir), MANIFEST)
    if os.path.exists(manifest_path):  # an interrupted rewrite must not look finished
        os.remove(manifest_path)
    paths = []
    for i in range(num_videos):
        frames = render_video(seed, i, num_frames, size, fps, camera=camera, body=body, moves=moves, limbs=limbs)
        name = os.path.join(os.fspath(out_dir), f"synthetic_{i:04d}")
        if fmt == "mp4":
            path = name + ".mp4"
            with VideoWriter(path, fps=fps) as w:
                w.write(frames)
        else:
            path = name
            os.makedirs(path, exist_ok=True)
            for old in glob.glob(os.path.join(path, "[0-9][0-9][0-9][0-9][0-9].png")):
                os.remove(old)  # a longer clip written here before must not leave frames behind
            for j, f in enumerate(frames):
                save_image(os.path.join(path, f"{j:05d}.png"), f)
        paths.append(path)
    manifest = dict(seed=seed, videos=num_videos, frames=num_frames, size=size, fmt=fmt, fps=fps, camera=camera,
                    body=body, moves=moves, limbs=limbs)
    atomic_write(manifest_path, lambda tmp: _write_json(tmp, manifest))
    return paths


def _write_json(path: str, value) -> None:
    with open(path, "w") as f:
        json.dump(value, f)
