"""Generated videos against real ones: FVD/KVD with a user-supplied I3D, and the weight-free
metrics (FMD in the animator's motion-code space, motion and jitter relative to real, motion-code
residual statistics). :func:`generation_metrics` is the one entry point (``leo evaluate
generation`` and ``leo demo`` call it).

Every score comes with a baseline computed on the same data:
- ``*_real_halves``: the distance between the even and the odd real clips (the noise floor of
  the estimate at half the sample size: a generator cannot be told apart from real below it);
- ``fmd_still``: the FMD of still videos (the first frame repeated: zero motion), what a
  generator that does not move scores;
- motion and jitter are ratios to the real clips' (1 = as much as real);
- residual statistics of the generated codes are given next to the real clips' (against the
  LMDM's training statistics when an LMDM is given).

Motion and jitter are leo.metrics.video_motion / video_jitter; residual statistics are
leo.metrics.residual_stats (one implementation).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from leo.evaluate.distances import FeatureStats, frechet_from_features, kernel_distance
from leo.metrics import residual_stats, video_jitter, video_motion

__all__ = ["generation_metrics", "windows", "code_features", "fvd_protocol", "FMD_POOLING", "FMD_STEPS"]

FMD_STEPS = 15
FMD_POOLING = (f"each window's codes taken relative to its first code (residuals r_t = a_t - a_0, t = 1..T-1), "
               f"mean-pooled in time to at most {FMD_STEPS} equal segments (none for 16 frames), flattened "
               f"({FMD_STEPS} x motion_dim values)")


def fvd_protocol(n_real: int, n_fake: int, frames: int, detector_kind: str | None) -> str:
    """The FVD/KVD protocol in words, printed with every result."""
    return (f"FVD/KVD on {n_real} real and {n_fake} generated clips of {frames} consecutive frames; "
            f"frames as uint8 (B, 3, T, H, W), I3D called as StyleGAN-V calls it: rescale to [-1, 1], resize to "
            f"224x224 (bilinear), features = the 400 logits before the softmax; I3D: {detector_kind}; "
            f"FVD = Frechet distance of the two Gaussians (means, covariances divided by N, float64); "
            f"KVD = unbiased MMD^2 with the kernel (x.y/400 + 1)^3 over all clips")


def windows(videos: Iterable[torch.Tensor], frames: int = 16):
    """Every non-overlapping ``frames``-frame window of each video (T, 3, S, S), from frame 0: turns
    a few long videos (e.g. the demo's) into clips for :func:`generation_metrics`."""
    for v in videos:
        for start in range(0, v.shape[0] - frames + 1, frames):
            yield v[start:start + frames]


def code_features(codes: torch.Tensor) -> torch.Tensor:
    """FMD features of code windows (N, T, D) -> (N, min(T-1, 15) * D); see FMD_POOLING."""
    if codes.dim() != 3 or codes.shape[1] < 2:
        raise ValueError(f"codes must be (N, T>=2, D), got {tuple(codes.shape)}")
    res = (codes[:, 1:] - codes[:, :1]).double()  # (N, T-1, D)
    steps = min(res.shape[1], FMD_STEPS)
    if steps < res.shape[1]:
        res = F.adaptive_avg_pool1d(res.transpose(1, 2), steps).transpose(1, 2)
    return res.flatten(1)


def _to_u8(videos: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) in [-1, 1] -> uint8 (B, 3, T, H, W) (leo's image mapping)."""
    return ((videos.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4)


class _Side:
    """Everything kept of one set of clips: I3D features, code windows (small), motion sums."""

    def __init__(self, name: str):
        self.name, self.n = name, 0
        self.i3d = FeatureStats(keep=True)
        self.codes: list[torch.Tensor] = []
        self.sampled: list[torch.Tensor] = []
        self.motion = self.jitter = 0.0

    def add(self, videos: list[torch.Tensor], sampled, animator, detector, batch: int) -> None:
        for v in videos:
            self.motion += video_motion(v)
            self.jitter += video_jitter(v)
        stacked = torch.stack(videos)
        if detector is not None:
            self.i3d.add(detector.features(_to_u8(stacked)))
        if animator is not None:
            dev = next(animator.parameters()).device
            dt = next(animator.parameters()).dtype
            with torch.no_grad():
                for v in videos:
                    self.codes.append(torch.cat([animator.encode_motion(c.to(dev, dt)).float().cpu()
                                                 for c in v.split(batch)]))
        self.sampled += [s.float().cpu() for s in sampled if s is not None]
        self.n += len(videos)


def _clip(v, frames: int, name: str, i: int) -> torch.Tensor:
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[1] != 3:
        raise ValueError(f"{name} clip {i} must be a (T, 3, H, W) tensor, got "
                         f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    if v.shape[0] < frames:
        raise ValueError(f"{name} clip {i} has {v.shape[0]} frames, fewer than frames={frames}")
    return v[:frames].float().cpu()


def _consume(items: Iterable, side: _Side, frames, animator, detector, batch, max_clips, bar) -> None:
    vids, sampled = [], []
    for i, item in enumerate(items):
        if max_clips is not None and side.n + len(vids) >= max_clips:
            break
        video, codes = item if isinstance(item, tuple) else (item, None)
        vids.append(_clip(video, frames, side.name, i))
        sampled.append(None if codes is None else codes[:frames])
        if len(vids) == batch:
            side.add(vids, sampled, animator, detector, batch)
            vids, sampled = [], []
            if bar is not None:
                bar.update(batch)
    if vids:
        side.add(vids, sampled, animator, detector, batch)
        if bar is not None:
            bar.update(len(vids))


def _halves(x: np.ndarray, fn):
    return fn(x[0::2], x[1::2]) if x.shape[0] >= 4 else None


def _res_compare(stats: dict, ref_mean, ref_std) -> dict:
    """Per-dimension residual mean/std of a set against reference ones: ``mean_gap`` = mean over
    dimensions of |mean - ref_mean| / ref_std (0: same centre), ``std_ratio`` = mean of std / ref_std
    (1: same spread)."""
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    ref_mean, ref_std = np.asarray(ref_mean, dtype=np.float64), np.maximum(np.asarray(ref_std, dtype=np.float64), 1e-8)
    return {"mean_gap": float(np.mean(np.abs(mean - ref_mean) / ref_std)), "std_ratio": float(np.mean(std / ref_std))}


def generation_metrics(real_videos: Iterable, fake_videos: Iterable, animator=None, *, detector=None, lmdm=None,
                       frames: int = 16, max_clips: int | None = None, batch: int = 8,
                       progress: bool = False) -> dict:
    """Compare generated clips with real ones; returns a flat dict (JSON-ready).

    real_videos / fake_videos: iterables of (T, 3, S, S) float tensors in [-1, 1] (T >= frames;
    the first ``frames`` are used), consumed once in batches of ``batch`` (memory holds one batch
    of videos; per clip only its I3D features and motion codes are kept). A fake item may also be
    a tuple (video, sampled_codes (T, D)) when the codes the LMDM sampled are known.
    animator: gives the motion codes for FMD and the residual statistics (None: skipped).
    detector: a leo.evaluate.i3d.I3DDetector for FVD/KVD (None: skipped).
    lmdm: its training residual statistics (res_mean/res_std) become a reference too.
    max_clips: at most this many clips of each set.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="evaluating clips", unit="clip")
    real, fake = _Side("real"), _Side("generated")
    try:
        _consume(real_videos, real, frames, animator, detector, batch, max_clips, bar)
        _consume(fake_videos, fake, frames, animator, detector, batch, max_clips, bar)
    finally:
        if bar is not None:
            bar.close()
    for side in (real, fake):
        if side.n < 2:
            raise ValueError(f"need at least 2 {side.name} clips of {frames} frames, got {side.n}")

    out: dict = {"clips_real": real.n, "clips_fake": fake.n, "frames": frames}
    mr, mf = real.motion / real.n, fake.motion / fake.n
    jr, jf = real.jitter / real.n, fake.jitter / fake.n
    out.update(motion_real=mr, motion_fake=mf, motion_vs_real=mf / mr if mr > 0 else float("nan"),
               jitter_real=jr, jitter_fake=jf, jitter_vs_real=jf / jr if jr > 0 else float("nan"))

    if detector is not None:
        xr, xf = real.i3d.features, fake.i3d.features
        out["fvd"] = frechet_from_features(xr, xf)
        out["fvd_real_halves"] = _halves(xr, frechet_from_features)
        out["kvd"] = kernel_distance(xr, xf)
        out["kvd_real_halves"] = _halves(xr, kernel_distance)
        out["i3d"] = detector.kind
        out["fvd_protocol"] = fvd_protocol(real.n, fake.n, frames, detector.kind)

    if animator is not None:
        cr, cf = torch.stack(real.codes), torch.stack(fake.codes)
        fr, ff = code_features(cr).numpy(), code_features(cf).numpy()
        out["fmd"] = frechet_from_features(fr, ff)
        out["fmd_real_halves"] = _halves(fr, frechet_from_features)
        out["fmd_still"] = frechet_from_features(fr, np.zeros_like(fr))
        out["fmd_pooling"] = FMD_POOLING
        window = min(frames, lmdm.window) if lmdm is not None else frames
        rs, fs = residual_stats(cr[:, :window]), residual_stats(cf[:, :window])
        out["residual_window"] = window
        out["residuals_fake_vs_real"] = _res_compare(fs, rs["mean"], rs["std"])
        if fake.sampled:
            ss = residual_stats(torch.stack(fake.sampled)[:, :window])
            out["residuals_sampled_vs_real"] = _res_compare(ss, rs["mean"], rs["std"])
        if lmdm is not None:
            tm, ts = lmdm.res_mean.double().cpu().numpy(), lmdm.res_std.double().cpu().numpy()
            out["residuals_real_vs_train"] = _res_compare(rs, tm, ts)
            out["residuals_fake_vs_train"] = _res_compare(fs, tm, ts)
            if fake.sampled:
                out["residuals_sampled_vs_train"] = _res_compare(ss, tm, ts)
    return out
