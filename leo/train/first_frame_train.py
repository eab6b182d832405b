"""`leo train-first-frame`: train the first-frame image diffusion model on dataset frames.

Frames are taken from every video of the data folder (every ``frame_stride``-th frame,
at most ``frames_per_video`` per video), held in memory as uint8 at the model's size,
and augmented with horizontal flips. ``latent_dim`` > 0 trains a
:class:`leo.first_frame.LatentFirstFrameModel` (an MLP over the frames' top principal components,
fitted here before the first step) instead of the pixel U-Net. Output folder: ``first_frame.safetensors`` (EMA
weights, loadable by :func:`leo.first_frame.load_first_frame_generator`),
``checkpoint.pt`` (resume), ``metrics.csv``, ``samples.png``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch

from leo.first_frame import FirstFrameModel, LatentFirstFrameModel
from leo.train import common, diffusion_loop, video_source

WEIGHTS_NAME = "first_frame.safetensors"


@dataclass
class FirstFrameTrainConfig(diffusion_loop.DiffusionTrainConfig):
    """First-frame settings; the loop's (lr, batch, save_every, progress, ...) are DiffusionTrainConfig's."""

    data: str
    out: str = None                      # required (the default only lets the deprecated out_dir= in)
    image_size: int = 64
    base_channels: int = 32
    channel_mults: tuple = (1, 2, 2, 4)
    attn_resolutions: tuple = (8,)
    num_res_blocks: int = 1
    objective: str = "eps"
    latent_dim: int = 0                  # > 0: a LatentFirstFrameModel over this many principal components
    latent_hidden: int = 512             # its MLP's width
    frame_stride: int = 4
    frames_per_video: int = 64
    sample_count: int = 16
    sample_steps: int = 50
    steps: int = field(default=2000, kw_only=True)


def collect_frames(data: str, size: int, frame_stride: int, frames_per_video: int, progress: bool = True):
    """uint8 tensor (N, 3, size, size) of frames picked from every readable video."""
    if frame_stride < 1 or frames_per_video < 1:
        raise ValueError("frame_stride and frames_per_video must be positive")
    videos = video_source.list_videos(data)

    def pick(chunks):
        kept, index = [], 0
        for chunk in chunks:
            for frame in chunk:
                if index % frame_stride == 0 and len(kept) < frames_per_video:
                    kept.append(((frame.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
                index += 1
            if len(kept) >= frames_per_video:
                break
        return torch.stack(kept)

    results, _ = video_source.map_videos(videos, size, pick, progress=progress, desc="collecting frames")
    return torch.cat([frames for _, frames in results]), video_source.data_fingerprint(videos)


def _to_float(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float32 in [-1, 1] (leo.media's mapping)."""
    return frames_u8.float() / 127.5 - 1


def make_sampler(frames_u8: torch.Tensor):
    """sample_batch(generator, b) -> (x0 (b,3,S,S) in [-1,1], None), random flips."""

    def sample_batch(g, b):
        idx = torch.randint(0, frames_u8.shape[0], (b,), generator=g)
        x = _to_float(frames_u8[idx])
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, None

    return sample_batch


def make_latent_sampler(latents: torch.Tensor):
    """sample_batch(generator, b) -> (rows of ``latents`` drawn at random, None)."""

    def sample_batch(g, b):
        return latents[torch.randint(0, latents.shape[0], (b,), generator=g)], None

    return sample_batch


def _images(frames_u8: torch.Tensor, chunk: int = 256):
    """The frames and their mirror images in [-1, 1], a chunk at a time."""
    for i in range(0, frames_u8.shape[0], chunk):
        x = _to_float(frames_u8[i:i + chunk])
        yield x
        yield x.flip(-1)


def train_first_frame(cfg: FirstFrameTrainConfig, frames_u8: torch.Tensor | None = None,
                      ctx: common.DistributedContext | None = None, hooks: dict | None = None) -> dict:
    """Train and return a summary (``weights`` path, ``losses``, ``step``, ``finished``...).

    Resume, SIGINT/SIGTERM and logging: :func:`leo.train.diffusion_loop.run` (``hooks`` too)."""
    with common.distributed_context(ctx, cfg.device) as ctx:
        return _train(cfg, frames_u8, ctx, hooks)


def build_model(cfg: FirstFrameTrainConfig) -> FirstFrameModel | LatentFirstFrameModel:
    """The (untrained, for a latent model unfitted) model that ``cfg`` trains."""
    if cfg.latent_dim > 0:
        return LatentFirstFrameModel(image_size=cfg.image_size, latent_dim=cfg.latent_dim, hidden=cfg.latent_hidden,
                                     objective=cfg.objective)
    return FirstFrameModel(image_size=cfg.image_size, base_channels=cfg.base_channels, channel_mults=cfg.channel_mults,
                           num_res_blocks=cfg.num_res_blocks, attn_resolutions=cfg.attn_resolutions,
                           objective=cfg.objective)


def _save_weights(model, path) -> None:
    model.save(path)


def _train(cfg: FirstFrameTrainConfig, frames_u8, ctx: common.DistributedContext, hooks) -> dict:
    common.seed_everything(cfg.seed)  # the initial weights depend on the seed alone
    model = build_model(cfg)  # before the frames: a bad model setting fails before any video is read
    data_key = None
    if frames_u8 is None:
        frames_u8, data_key = collect_frames(cfg.data, cfg.image_size, cfg.frame_stride, cfg.frames_per_video,
                                             progress=ctx.is_main and cfg.progress)
    if frames_u8.dtype != torch.uint8 or frames_u8.dim() != 4 or tuple(frames_u8.shape[1:]) != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"frames must be uint8 (N, 3, {cfg.image_size}, {cfg.image_size}), got {frames_u8.dtype} {tuple(frames_u8.shape)}")
    if cfg.latent_dim > 0:
        # fitted on every process alike (same frames, same seed); a resumed run fits again and then loads
        # the saved latent, the same one
        g = torch.Generator().manual_seed(cfg.seed)
        limit = LatentFirstFrameModel.FIT_FRAMES // 2  # with their mirror images: all the fit reads
        fit_frames = frames_u8 if len(frames_u8) <= limit else frames_u8[torch.randperm(len(frames_u8), generator=g)[:limit]]
        try:
            kept = model.fit_latent(torch.cat(list(_images(fit_frames))), generator=g)
        except ValueError as exc:
            raise ValueError(f"{cfg.data}: {exc} (the frames picked and their mirror images)") from None
        ctx.print(f"first-frame latent: {cfg.latent_dim} principal components keep {100 * kept:.1f}% of the "
                  "frames' variance", file=sys.stdout)
        with torch.no_grad():  # every frame and its mirror image encoded once: a step only draws rows
            sample_batch = make_latent_sampler(torch.cat([model.encode(x) for x in _images(frames_u8)]))
    else:
        sample_batch = make_sampler(frames_u8)
    diffusion = model.make_diffusion()
    loop = diffusion_loop.LoopConfig.of(cfg, cfg.out, desc="first-frame", model=model.config,
                                        frames=int(frames_u8.shape[0]))
    ctx.print(f"first-frame model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
              f"{frames_u8.shape[0]} training frames at {cfg.image_size}x{cfg.image_size}", file=sys.stdout)
    task = diffusion_loop.DiffusionTask(model, diffusion, sample_batch, export=_save_weights,
                                        export_name=WEIGHTS_NAME, data_key=data_key)
    summary = diffusion_loop.run(loop, task, ctx=ctx, hooks=hooks)
    if cfg.sample_count > 0 and ctx.is_main:
        from leo.media import image_grid, save_image

        imgs = summary["ema"].sample(cfg.sample_count, seed=cfg.seed, steps=cfg.sample_steps).cpu()
        path = os.path.join(cfg.out, "samples.png")
        save_image(path, image_grid(imgs, nrow=int(cfg.sample_count**0.5 + 0.999)))
        summary["samples"] = path
    return summary
