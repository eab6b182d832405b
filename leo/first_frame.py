"""First-frame generator for unconditional video generation.

LEO renders every frame by warping the first frame x1, so unconditional generation needs
an image generator for x1. This module holds a small image diffusion model: a 2-D U-Net
denoiser ``model(x_t, t, cond=None)`` trained with :class:`leo.diffusion.GaussianDiffusion`
(same schedule, samplers and CUDA-graph sampling as the LMDM).

:func:`load_first_frame_generator` turns a checkpoint into ``generator(n, seed=None) ->
(n, 3, S, S)`` in [-1, 1]; :func:`as_first_frame_generator` also accepts any user-supplied
callable with that signature (a GAN, an image bank, ...) and checks its output.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from leo.checkpoint_io import CheckpointError, load_weights, save_weights
from leo.diffusion import timestep_embedding  # noqa: F401  (one embedding for every denoiser; kept importable here)

KIND = "first_frame"


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time(+cond) embedding as a scale-shift."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as identity: stable early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a (low-resolution) feature map."""

    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class FirstFrameModel(nn.Module):
    """2-D U-Net denoiser for images (3, S, S) in [-1, 1].

    ``forward(x_t, t, cond=None)``: x_t (B,3,S,S), t (B,) diffusion timesteps; cond is an
    optional (B, cond_dim) vector (only when built with cond_dim > 0; None means the learned
    null condition). The diffusion settings travel with the checkpoint so a generator can be
    rebuilt from the file alone.
    """

    def __init__(
        self,
        image_size: int = 64,
        base_channels: int = 32,
        channel_mults=(1, 2, 2, 4),
        num_res_blocks: int = 1,
        attn_resolutions=(8,),
        cond_dim: int = 0,
        dropout: float = 0.0,
        diffusion_steps: int = 1000,
        schedule: str = "cosine",
        objective: str = "eps",
    ):
        super().__init__()
        if image_size < 4 or image_size % (2 ** (len(channel_mults) - 1)) != 0:
            raise ValueError(
                f"image_size={image_size} must be divisible by 2**(len(channel_mults)-1)="
                f"{2 ** (len(channel_mults) - 1)}"
            )
        if base_channels < 1:
            raise ValueError(f"base_channels must be positive, got {base_channels}")
        self.config = dict(
            image_size=int(image_size),
            base_channels=int(base_channels),
            channel_mults=[int(m) for m in channel_mults],
            num_res_blocks=int(num_res_blocks),
            attn_resolutions=[int(r) for r in attn_resolutions],
            cond_dim=int(cond_dim),
            dropout=float(dropout),
            diffusion_steps=int(diffusion_steps),
            schedule=str(schedule),
            objective=str(objective),
        )
        ch = base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_mlp = nn.Linear(cond_dim, emb_dim) if cond_dim > 0 else None
        self.null_cond = nn.Parameter(torch.zeros(emb_dim)) if cond_dim > 0 else None
        self.inp = nn.Conv2d(3, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur, res = ch, image_size
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                blocks = [ResBlock(cur, ch * mult, emb_dim, dropout)]
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(SelfAttention(cur))
                self.down.append(nn.ModuleList(blocks))
                skips.append(cur)
            if level != len(channel_mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, dropout), SelfAttention(cur), ResBlock(cur, cur, emb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                blocks = [ResBlock(cur + skips.pop(), ch * mult, emb_dim, dropout)]
                cur = ch * mult
                if res in attn_resolutions:
                    blocks.append(SelfAttention(cur))
                self.up.append(nn.ModuleList(blocks))
            if level != 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)]))
                res *= 2
        self.out_norm = nn.GroupNorm(_groups(cur), cur)
        self.out = nn.Conv2d(cur, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    def _embedding(self, t, cond, batch, cond_mask=None):
        emb = self.time_mlp(timestep_embedding(t.reshape(-1).expand(batch) if t.numel() == 1 else t, self.config["base_channels"]))
        if self.cond_mlp is None:
            if cond is not None:
                raise ValueError("cond was given but this FirstFrameModel was built with cond_dim=0")
            return emb
        if cond is None:
            return emb + self.null_cond
        if cond.shape != (batch, self.config["cond_dim"]):
            raise ValueError(f"cond must have shape ({batch}, {self.config['cond_dim']}), got {tuple(cond.shape)}")
        c = self.cond_mlp(cond.to(emb.dtype))
        if cond_mask is not None:  # classifier-free training: dropped samples get the null condition
            c = torch.where(cond_mask.reshape(-1, 1), c, self.null_cond.expand_as(c))
        return emb + c

    def forward(self, x, t, cond=None, cond_mask=None):
        s = self.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise ValueError(f"x must have shape (B, 3, {s}, {s}), got {tuple(x.shape)}")
        emb = self._embedding(t, cond, x.shape[0], cond_mask)
        h = self.inp(x)
        hs = [h]
        for blocks in self.down:
            for m in blocks:
                h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            for m in blocks:
                h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        return self.out(F.silu(self.out_norm(h)))

    def make_diffusion(self):
        from leo.diffusion import GaussianDiffusion

        c = self.config
        return GaussianDiffusion(num_steps=c["diffusion_steps"], schedule=c["schedule"], objective=c["objective"])

    def save(self, path) -> None:
        save_weights(path, self.state_dict(), KIND, self.config)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu") -> "FirstFrameModel":
        tensors, _, config = load_weights(path, expected_kind=KIND)
        try:
            model = cls(**config)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad first-frame model config ({exc})") from None
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: first-frame weights do not match its config "
                             f"({str(exc).strip().splitlines()[-1].strip()})") from None
        return model.to(map_location)

    @torch.no_grad()
    def sample(self, n: int, seed=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
               cuda_graph=None, diffusion=None, clip_x0: float | None = 1.0) -> torch.Tensor:
        """n images (n, 3, S, S) in [-1, 1].

        ``clip_x0`` (default 1: images live in [-1, 1]) clamps the predicted x0 at every step.
        Without it an eps-prediction model is unusable unless nearly perfect: at the first step
        (t = T - 1, where the cosine schedule's abar is ~1e-9) x0 = (x_t - sqrt(1 - abar) eps) /
        sqrt(abar) turns an eps error of 0.01 into an x0 error of ~200, and DDIM carries it into
        the next state as saturated colour noise.
        """
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        diffusion = diffusion or self.make_diffusion()
        s = self.image_size
        was_training = self.training
        self.eval()
        try:
            x = diffusion.sample(self, (int(n), 3, s, s), cond=None, sampler=sampler, steps=steps, eta=eta,
                                 seed=seed, cuda_graph=cuda_graph, clip_x0=clip_x0)
        finally:
            self.train(was_training)
        return x.clamp(-1, 1)


def _wrap_checked(fn: Callable, size: int | None, device) -> Callable:
    """Wrap a user generator: check its output and bring it to (n, 3, size, size) in [-1, 1]."""

    def generator(n: int, seed=None) -> torch.Tensor:
        try:
            out = fn(n, seed=seed)
        except TypeError:
            out = fn(n)  # a generator without a seed argument
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != 3 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"first-frame generator must return a (n={n}, 3, H, W) tensor, got {shape}")
        if not torch.isfinite(out).all():
            raise ValueError("first-frame generator returned non-finite values")
        out = out.float()
        if size is not None and (out.shape[-2] != size or out.shape[-1] != size):
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if device is not None:
            out = out.to(device)
        return out.clamp(-1, 1)

    return generator


def load_first_frame_generator(path, device="cpu", size: int | None = None, steps: int = 50,
                               sampler: str = "ddim", cuda_graph=None, clip_x0: float | None = 1.0) -> Callable:
    """Generator ``g(n, seed=None) -> (n, 3, S, S)`` in [-1, 1] from a first-frame checkpoint.

    ``size`` resizes the samples (e.g. to the animator's size when the image model is smaller).
    """
    model = FirstFrameModel.from_checkpoint(path, map_location=device).eval()
    diffusion = model.make_diffusion()

    def sample(n, seed=None):
        return model.sample(n, seed=seed, steps=steps, sampler=sampler, cuda_graph=cuda_graph, diffusion=diffusion,
                            clip_x0=clip_x0)

    gen = _wrap_checked(sample, size, device)
    gen.model = model
    return gen


def as_first_frame_generator(spec, device="cpu", size: int | None = None, **kwargs) -> Callable:
    """Accept a checkpoint path, a FirstFrameModel or any callable ``f(n, seed=None)``.

    The result always returns (n, 3, size, size) float tensors in [-1, 1] on ``device``.
    """
    if isinstance(spec, (str, os.PathLike)):
        return load_first_frame_generator(spec, device=device, size=size, **kwargs)
    if isinstance(spec, FirstFrameModel):
        model = spec.to(device).eval()
        return _wrap_checked(lambda n, seed=None: model.sample(n, seed=seed, **kwargs), size, device)
    if callable(spec):
        return _wrap_checked(spec, size, device)
    raise TypeError(f"first-frame generator must be a checkpoint path, a FirstFrameModel or a callable, got {type(spec).__name__}")
