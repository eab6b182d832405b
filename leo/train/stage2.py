"""`leo train-lmdm`: stage 2 of LEO, the latent motion diffusion model.

1. Motion codes: the frozen animator encoder turns every frame of every video into its
   motion code alpha, once; the codes are cached on disk under a key made of the animator
   checkpoint's content hash and the data's fingerprint (paths, sizes, mtimes), so later
   runs (resume, other hyperparameters) reuse them without re-encoding.
2. Statistics: per-dimension mean/std of the residuals m_i = alpha_i - alpha_1 and of
   alpha_1 over all training windows, stored in the LMDM's buffers (LMDM.fit_code_stats).
3. Training: random windows of ``window`` consecutive codes; x0 = standardized residuals,
   condition = alpha_1, dropped (null condition) with probability ``p_uncond`` so one model
   samples both conditionally and unconditionally.

Output folder: ``lmdm.safetensors`` (EMA weights + statistics, for LEOPipeline / `leo
generate`), ``checkpoint.pt`` (resume), ``metrics.csv``, ``code_cache/`` (default).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from leo.train import common, diffusion_loop, video_source

WEIGHTS_NAME = "lmdm.safetensors"
CODE_CACHE_VERSION = 1


@dataclass
class Stage2Config(diffusion_loop.DiffusionTrainConfig):
    """Stage-2 settings; the loop's (lr, batch, save_every, progress, ...) are DiffusionTrainConfig's."""

    data: str
    animator: str
    out: str = None                      # required (the default only lets the deprecated out_dir= in)
    window: int = 32
    p_uncond: float = 0.1
    cache_dir: str | None = None
    encode_batch: int = 64
    channels: int | None = None  # LMDM width (None: LMDM's default)
    channel_mult: tuple | None = None
    head_dim: int | None = None
    objective: str = "v"
    steps: int = field(default=20000, kw_only=True)


# --------------------------------------------------------------------------- motion codes


def code_cache_key(animator_path: str, videos: list[str]) -> str:
    return (f"v{CODE_CACHE_VERSION}-{video_source.file_fingerprint(animator_path)}"
            f"-{video_source.data_fingerprint(videos)}")


@torch.no_grad()
def encode_videos(animator, videos: list[str], batch: int = 64, progress: bool = True):
    """``(paths, codes)``: the motion codes (T_v, motion_dim) of every readable video."""
    p = next(animator.parameters())
    size = int(animator.config["size"])

    def encode(chunks):
        return torch.cat([animator.encode_motion(c.to(p.device, p.dtype)).float().cpu() for c in chunks])

    results, _ = video_source.map_videos(videos, size, encode, chunk=batch, progress=progress,
                                         desc="encoding motion codes")
    return [v for v, _ in results], [c for _, c in results]


def load_or_extract_codes(animator_path: str, data: str, cache_dir: str, device, batch: int = 64,
                          ctx=None, progress: bool = True):
    """Motion codes of every video in ``data``, from the cache when its key matches.

    Returns ``(codes list of (T_v, D) tensors, key, cache_hit)``. Under torchrun only rank 0
    encodes; the other ranks wait and read its cache file.
    """
    videos = video_source.list_videos(data)
    key = code_cache_key(animator_path, videos)
    path = os.path.join(cache_dir, f"codes-{key}.pt")
    is_main = ctx is None or ctx.is_main
    hit = os.path.isfile(path)
    if not hit and is_main:
        from leo.animator import Animator

        animator = Animator.from_checkpoint(animator_path, map_location="cpu").to(device).eval().requires_grad_(False)
        paths, codes = encode_videos(animator, videos, batch=batch, progress=progress)
        common.save_training_checkpoint(path, {"key": key, "videos": paths, "codes": codes,
                                               "animator": os.path.abspath(animator_path)})
        print(f"encoded {sum(len(c) for c in codes)} frames of {len(codes)} videos; cached in {path}",
              file=sys.stderr)
        del animator
    if ctx is not None:
        ctx.barrier()
    payload = common.load_training_checkpoint(path)
    if payload.get("key") != key:
        raise ValueError(f"motion-code cache {path} does not match its key; delete it")
    if hit and is_main:
        print(f"using cached motion codes {path} ({len(payload['codes'])} videos)", file=sys.stderr)
    return list(payload["codes"]), key, hit


def all_windows(codes: list[torch.Tensor], window: int, stride: int | None = None) -> torch.Tensor:
    """Every ``window``-long run of codes (stride ``window // 4``) as (N, window, D)."""
    stride = stride or max(1, window // 4)
    out = [c.unfold(0, window, stride).transpose(1, 2) for c in codes if c.shape[0] >= window]
    return torch.cat(out)


def make_sampler(codes: list[torch.Tensor], window: int, res_mean, res_std):
    """sample_batch(g, b) -> (standardized residuals (b, D, window), alpha_1 (b, D)).

    Windows are drawn uniformly over all valid start positions (longer videos weigh more)."""
    usable = [c.float() for c in codes if c.shape[0] >= window]
    starts = torch.tensor([c.shape[0] - window + 1 for c in usable])
    cum = torch.cumsum(starts, 0)
    total = int(cum[-1])
    offsets = torch.arange(window)
    mean, std = res_mean.float().cpu(), res_std.float().cpu()

    def sample_batch(g, b):
        flat = torch.randint(0, total, (b,), generator=g)
        vid = torch.searchsorted(cum, flat, right=True)
        start = flat - torch.cat((torch.zeros(1, dtype=cum.dtype), cum))[vid]
        w = torch.stack([usable[int(v)][int(s) + offsets] for v, s in zip(vid, start)])  # (b, L, D)
        alpha_1 = w[:, 0]
        x = ((w - alpha_1[:, None]) - mean) / std
        return x.transpose(1, 2).contiguous(), alpha_1

    return sample_batch


# --------------------------------------------------------------------------- training


def build_lmdm(cfg: Stage2Config, motion_dim: int):
    from leo.lmdm import LMDM

    kw = dict(motion_dim=motion_dim, window=cfg.window, objective=cfg.objective)
    if cfg.channels is not None:
        kw["width"] = cfg.channels
    if cfg.channel_mult is not None:
        kw["channel_mult"] = tuple(cfg.channel_mult)
    if cfg.head_dim is not None:
        kw["head_dim"] = cfg.head_dim
    return LMDM(**kw)


def _save_weights(model, path) -> None:
    model.save(path)


class _WithLossKwargs:
    """GaussianDiffusion whose training_loss always gets the condition-dropout probability."""

    def __init__(self, diffusion, p_uncond):
        self.diffusion, self.p_uncond = diffusion, p_uncond

    def training_loss(self, model, x0, cond=None, generator=None):
        return self.diffusion.training_loss(model, x0, cond=cond, generator=generator, p_uncond=self.p_uncond)


def train_lmdm(cfg: Stage2Config, hooks: dict | None = None) -> dict:
    """Extract/cache codes, fit statistics, train; returns the loop's summary plus cache info.

    Resume, SIGINT/SIGTERM and logging: :func:`leo.train.diffusion_loop.run` (``hooks`` too)."""
    if not 0.0 <= cfg.p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {cfg.p_uncond}")
    if cfg.window < 2:
        raise ValueError(f"window must be >= 2, got {cfg.window}")
    if cfg.encode_batch < 1:  # before any video is read: else it reads as unreadable videos
        raise ValueError(f"encode_batch must be a positive int, got {cfg.encode_batch}")
    ctx = common.DistributedContext(device=cfg.device)
    try:
        cache_dir = cfg.cache_dir or os.path.join(cfg.out, "code_cache")
        codes, key, hit = load_or_extract_codes(cfg.animator, cfg.data, cache_dir, ctx.device,
                                                batch=cfg.encode_batch, ctx=ctx, progress=cfg.progress)
        lengths = [c.shape[0] for c in codes]
        if max(lengths) < cfg.window:
            raise ValueError(f"every video is shorter than the window ({max(lengths)} < {cfg.window} frames); "
                             "use a smaller --window")
        short = sum(n < cfg.window for n in lengths)
        if short:
            ctx.print(f"{short} of {len(codes)} videos are shorter than the window ({cfg.window}) and are not used")
        common.seed_everything(cfg.seed)  # the initial weights depend on the seed alone
        lmdm = build_lmdm(cfg, codes[0].shape[1])
        lmdm.fit_code_stats(all_windows(codes, cfg.window))
        diffusion = _WithLossKwargs(lmdm.make_diffusion(), cfg.p_uncond)
        sampler = make_sampler(codes, cfg.window, lmdm.res_mean, lmdm.res_std)
        loop = diffusion_loop.LoopConfig.of(cfg, cfg.out, desc="lmdm", model=lmdm.config, p_uncond=cfg.p_uncond,
                                            videos=len(codes))
        ctx.print(f"LMDM: {sum(p.numel() for p in lmdm.parameters()) / 1e6:.2f}M parameters, "
                  f"{len(codes)} videos, {sum(lengths)} frames, window {cfg.window}, p_uncond {cfg.p_uncond}")
        task = diffusion_loop.DiffusionTask(lmdm, diffusion, sampler, export=_save_weights, export_name=WEIGHTS_NAME,
                                            data_key=key)
        summary = diffusion_loop.run(loop, task, ctx=ctx, hooks=hooks)
    finally:
        ctx.close()
    summary.update(code_cache_hit=hit, code_key=key, num_videos=len(codes))
    return summary
