"""Motion-aware quality metrics, the one implementation used by the trainers, ``leo demo``,
``leo evaluate`` and the tests.

Images are in [-1, 1]; videos are (T, 3, H, W). Every reconstruction number comes with the
trivial baseline it must beat:

- **copy L1**: mean |target - source|, what copying the source frame scores;
- **animator L1**: mean |animator(source, target) - target|;
- **gain** = 1 - animator L1 / copy L1 (0: no better than copying, < 0: worse, 1: perfect);
- **motion ratio**: mean |render_t - render_0| / mean |real_t - real_0|, where ``render`` drives
  frame 0 with the clip's own motion codes in relative mode (1: moves as much as the clip, 0: a still);
- **motion** of a video: mean |f_t - f_0| over t >= 1; **jitter**: mean |f_t - f_{t-1}|. Generated
  videos report both relative to the real clips'.

Where the gain is won or lost, reconstruction reports split the pixels: **moving** pixels are those
where source and target differ (mean over channels > ``MOVING_THRESHOLD``, dilated by 2 pixels),
the rest are **still**. ``moving_gain`` is the gain over copying on moving pixels only;
``still_l1`` is the animator's error on still pixels, where copying is (nearly) exact.

Pairs are (frame 0, frame t) of the same clip; callers pass held-out clips.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F

MOVING_THRESHOLD = 0.04  # about 5/255 of the [-1, 1] range

__all__ = [
    "video_motion",
    "video_jitter",
    "seam_jitter",
    "pair_frames",
    "moving_mask",
    "reconstruction_report",
    "motion_report",
    "residual_stats",
    "animator_report",
    "generated_report",
]


def _check_video(frames: torch.Tensor, name: str = "frames") -> torch.Tensor:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
    if frames.dim() != 4:
        raise ValueError(f"{name} must have shape (T, C, H, W), got {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ValueError(f"{name} must hold at least 2 frames, got {frames.shape[0]}")
    return frames.float()


def video_motion(frames: torch.Tensor) -> float:
    """Mean |f_t - f_0| over t >= 1 (0 for a still video)."""
    f = _check_video(frames)
    return (f[1:] - f[:1]).abs().mean().item()


def video_jitter(frames: torch.Tensor) -> float:
    """Mean |f_t - f_{t-1}| (frame-to-frame change)."""
    f = _check_video(frames)
    return (f[1:] - f[:-1]).abs().mean().item()


def seam_jitter(frames: torch.Tensor, seams: Iterable[int]) -> dict[str, float]:
    """Frame-to-frame change at the given seams (index s: the step from frame s-1 to frame s)
    against the mean step elsewhere; ``ratio`` <= 2 means no visible jump."""
    f = _check_video(frames)
    steps = (f[1:] - f[:-1]).abs().flatten(1).mean(1)  # steps[s-1]: f[s] - f[s-1]
    seams = sorted({int(s) for s in seams if 1 <= int(s) < f.shape[0]})
    if not seams:
        raise ValueError("seams must name at least one frame index in [1, T)")
    at = torch.tensor([s - 1 for s in seams])
    inside = torch.ones(steps.shape[0], dtype=torch.bool)
    inside[at] = False
    seam = steps[at].mean().item()
    within = steps[inside].mean().item() if inside.any() else float("nan")
    return {"seam": seam, "within": within, "ratio": seam / within if within > 0 else float("inf")}


def pair_frames(clips: Iterable[torch.Tensor], pairs_per_clip: int | None = None) -> dict[str, torch.Tensor]:
    """(frame 0, frame t) pairs of every clip: ``pairs_per_clip`` targets evenly spread over each
    clip from frame 1 to the last (one pair: the middle frame, not frame 1, whose motion is the
    smallest; None: every frame t >= 1). -> {"source", "target"} (N, 3, H, W)."""
    src, tgt = [], []
    for clip in clips:
        clip = _check_video(clip, "clip")
        n = clip.shape[0] - 1
        if pairs_per_clip is None or pairs_per_clip >= n:
            idx = torch.arange(1, n + 1)
        elif pairs_per_clip == 1:
            idx = torch.tensor([(n + 1) // 2])
        else:
            idx = torch.linspace(1, n, pairs_per_clip).round().long().unique()
        tgt.append(clip[idx])
        src.append(clip[:1].expand(len(idx), -1, -1, -1))
    if not src:
        raise ValueError("clips is empty")
    return {"source": torch.cat(src), "target": torch.cat(tgt)}


def moving_mask(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 1 where a (source, target) pair differs (mean over channels > MOVING_THRESHOLD,
    dilated by 2 pixels), 0 on still pixels."""
    diff = (source - target).abs().mean(1, keepdim=True)
    return F.max_pool2d((diff > MOVING_THRESHOLD).float(), 5, stride=1, padding=2)


def _batches(n: int, batch: int):
    for i in range(0, n, batch):
        yield slice(i, min(n, i + batch))


@torch.no_grad()
def reconstruction_report(animator, pairs: dict, batch: int = 16, autocast=contextlib.nullcontext) -> dict[str, float]:
    """L1, PSNR, SSIM of ``animator(source, target)`` on (source, target) pairs, next to the
    copy-source baseline, and the gain over it."""
    from leo.train.losses import psnr, ssim

    device = next(animator.parameters()).device
    was_training = animator.training
    animator.eval()
    sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0, "copy_l1": 0.0, "copy_psnr": 0.0, "copy_ssim": 0.0}
    region = {"moving": 0.0, "copy_moving": 0.0, "still": 0.0, "n_moving": 0.0, "n_still": 0.0}
    n = pairs["source"].shape[0]
    try:
        for sl in _batches(n, batch):
            s, t = pairs["source"][sl].float(), pairs["target"][sl].float()
            with autocast():
                pred = animator(s.to(device), t.to(device))
            pred = pred.float().cpu().clamp(-1, 1)
            sums["l1"] += (pred - t).abs().flatten(1).mean(1).sum().item()
            sums["psnr"] += psnr(pred, t).sum().item()
            sums["ssim"] += ssim(pred, t).sum().item()
            sums["copy_l1"] += (s - t).abs().flatten(1).mean(1).sum().item()
            sums["copy_psnr"] += psnr(s, t).sum().item()
            sums["copy_ssim"] += ssim(s, t).sum().item()
            copy_err = (s - t).abs().mean(1, keepdim=True)
            moving = moving_mask(s, t)
            err = (pred - t).abs().mean(1, keepdim=True)
            region["moving"] += (err * moving).sum().item()
            region["copy_moving"] += (copy_err * moving).sum().item()
            region["still"] += (err * (1 - moving)).sum().item()
            region["n_moving"] += moving.sum().item()
            region["n_still"] += (1 - moving).sum().item()
    finally:
        animator.train(was_training)
    out = {k: v / n for k, v in sums.items()}
    out["gain"] = 1.0 - out["l1"] / out["copy_l1"] if out["copy_l1"] > 0 else 0.0
    out["moving_fraction"] = region["n_moving"] / max(1.0, region["n_moving"] + region["n_still"])
    out["moving_gain"] = 1.0 - region["moving"] / region["copy_moving"] if region["copy_moving"] > 0 else 0.0
    out["still_l1"] = region["still"] / region["n_still"] if region["n_still"] > 0 else 0.0
    out["pairs"] = n
    return out


@torch.no_grad()
def motion_report(animator, clips: Iterable[torch.Tensor], batch: int = 16, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Drive frame 0 of each clip with the clip's own motion codes (relative mode) and compare
    the rendered motion with the clip's: ``motion_ratio`` (render over real) and the code spread."""
    device = next(animator.parameters()).device
    was_training = animator.training
    animator.eval()
    rendered, real, stds = 0.0, 0.0, []
    try:
        for clip in clips:
            clip = _check_video(clip, "clip")
            with autocast():
                cache = animator.encode(clip[:1].to(device))
                alphas = torch.cat([animator.encode_motion(clip[sl].to(device)) for sl in _batches(clip.shape[0], batch)])
                frames = torch.cat([animator.render(cache, alphas[sl], start_alpha=alphas[:1]).float().cpu()
                                    for sl in _batches(clip.shape[0], batch)])
            frames = frames.clamp(-1, 1)
            rendered += video_motion(frames)
            real += video_motion(clip)
            stds.append(alphas.float().std(0).mean().item())
    finally:
        animator.train(was_training)
    if not stds:
        raise ValueError("clips is empty")
    return {"motion_ratio": rendered / real if real > 0 else float("nan"), "render_motion": rendered / len(stds),
            "real_motion": real / len(stds), "code_std": sum(stds) / len(stds)}


def animator_report(animator, clips: list[torch.Tensor], pairs_per_clip: int | None = 8, batch: int = 16,
                    autocast=contextlib.nullcontext) -> dict[str, float]:
    """Reconstruction (with copy baseline and gain) and motion ratio on held-out ``clips``."""
    out = reconstruction_report(animator, pair_frames(clips, pairs_per_clip), batch=batch, autocast=autocast)
    out.update(motion_report(animator, clips, batch=batch, autocast=autocast))
    return out


def generated_report(videos: dict[str, torch.Tensor], real: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Motion and jitter of each generated video relative to the real clips' (mean over clips,
    each clip cut to the generated video's length where longer)."""
    out = {}
    for name, video in videos.items():
        f = _check_video(video, name)
        n = f.shape[0]
        real_motion = [video_motion(c[:n]) for c in real]
        real_jitter = [video_jitter(c[:n]) for c in real]
        rm, rj = sum(real_motion) / len(real_motion), sum(real_jitter) / len(real_jitter)
        m, j = video_motion(f), video_jitter(f)
        out[name] = {"motion": m, "jitter": j, "motion_vs_real": m / rm if rm > 0 else float("nan"),
                     "jitter_vs_real": j / rj if rj > 0 else float("nan")}
    return out


def residual_stats(codes: torch.Tensor) -> dict[str, list[float]]:
    """Per-dimension mean and std of motion-code residuals m_t = alpha_t - alpha_0 of (N, T, D)
    sequences (or one (T, D) sequence)."""
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3 or codes.shape[1] < 2:
        raise ValueError(f"codes must have shape (N, T>=2, D), got {tuple(codes.shape)}")
    res = (codes[:, 1:] - codes[:, :1]).float().flatten(0, 1)
    return {"mean": res.mean(0).tolist(), "std": res.std(0).tolist()}
