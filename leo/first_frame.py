"""First-frame generator for unconditional video generation.

LEO renders every frame by warping the first frame x1, so unconditional generation needs
an image generator for x1. This module holds two small image diffusion models, both trained
with :class:`leo.diffusion.GaussianDiffusion` (same schedule, samplers and CUDA-graph sampling
as the LMDM):

- :class:`FirstFrameModel`: a 2-D U-Net denoiser ``model(x_t, t, cond=None)`` over pixels;
- :class:`LatentFirstFrameModel`: an MLP denoiser over a linear latent of the images (their
  principal components, fitted to the training frames). Far less expressive (its images stay in
  the span of the components), but it learns fast: in the one CPU minute of ``leo demo`` the
  U-Net's samples are coloured noise and this one's are recognizable frames (docs/MOTION.md).

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
        if not channel_mults or any(not isinstance(m, int) or m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {tuple(channel_mults)!r}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be a positive int, got {num_res_blocks!r}")
        if image_size < 4 or image_size % (2 ** (len(channel_mults) - 1)) != 0:
            raise ValueError(
                f"image_size={image_size} must be at least 4 and divisible by 2**(len(channel_mults)-1)="
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
        model = load_first_frame_model(path, map_location)
        if not isinstance(model, cls):
            raise CheckpointError(f"{path}: holds a {type(model).__name__}, not a {cls.__name__} "
                                  "(leo.first_frame.load_first_frame_model loads either)")
        return model

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


class LatentFirstFrameModel(nn.Module):
    """Diffusion denoiser over a linear latent of images (3, S, S) in [-1, 1].

    An image x is ``z = (x.flatten() - mean) @ basis.T / scale``: its coordinates on the top
    ``latent_dim`` principal components of the training frames (:meth:`fit_latent`), divided by
    one common scale so that the latent's mean variance is 1 (one scale for all components: the
    large ones, the background and the figure's place, dominate the loss as they dominate the
    pixels). ``forward(z_t, t)`` is a residual MLP on (B, latent_dim); :meth:`sample` decodes
    back to images. The images it can draw lie in the mean plus the span of the basis.
    """

    def __init__(self, image_size: int = 64, latent_dim: int = 128, hidden: int = 512, blocks: int = 3,
                 diffusion_steps: int = 1000, schedule: str = "cosine", objective: str = "v"):
        super().__init__()
        for name, value in (("image_size", image_size), ("latent_dim", latent_dim), ("hidden", hidden),
                            ("blocks", blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        pixels = 3 * image_size * image_size
        if latent_dim > pixels:
            raise ValueError(f"latent_dim={latent_dim} exceeds the {pixels} values of a {image_size}x{image_size} image")
        self.config = dict(backbone="linear-latent", image_size=int(image_size), latent_dim=int(latent_dim),
                           hidden=int(hidden), blocks=int(blocks), diffusion_steps=int(diffusion_steps),
                           schedule=str(schedule), objective=str(objective))
        self.register_buffer("latent_mean", torch.zeros(pixels))
        self.register_buffer("latent_basis", torch.zeros(latent_dim, pixels))
        self.register_buffer("latent_scale", torch.ones(()))
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(latent_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, latent_dim))

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    FIT_FRAMES = 2048  # fit_latent's default bound on the frames it reads

    @torch.no_grad()
    def fit_latent(self, frames: torch.Tensor, max_frames: int = FIT_FRAMES, generator: torch.Generator | None = None) -> float:
        """Set the latent from training frames (N, 3, S, S) in [-1, 1] (pass them with any
        augmentation, e.g. flips, already applied): the mean, the top ``latent_dim`` principal
        directions (of at most ``max_frames`` frames, drawn with ``generator``) and the scale.
        Returns the fraction of the frames' variance the latent keeps."""
        s, k = self.image_size, self.config["latent_dim"]
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, s, s):
            raise ValueError(f"frames must be (N, 3, {s}, {s}), got {tuple(frames.shape)}")
        if frames.shape[0] > max_frames:
            frames = frames[torch.randperm(frames.shape[0], generator=generator)[:max_frames]]
        n = frames.shape[0]
        if n <= k:
            raise ValueError(f"a latent of {k} dimensions needs more than {k} training frames, got {n}")
        x = frames.reshape(n, -1).double()
        mean = x.mean(0)
        x = x - mean
        # principal directions from the n x n Gram matrix (n <= max_frames is far below the pixel count)
        evals, evecs = torch.linalg.eigh(x @ x.T)
        evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
        top = evals[:k]
        if top[-1] <= 1e-12 * top[0].clamp_min(1e-30):
            raise ValueError(f"the training frames span fewer than latent_dim={k} directions; use a smaller latent")
        basis = (evecs[:, :k].T @ x) / top.sqrt()[:, None]  # unit rows
        self.latent_mean.copy_(mean.float())
        self.latent_basis.copy_(basis.float())
        self.latent_scale.fill_(float((top.sum() / (n * k)).sqrt()))
        return float(top.sum() / evals.sum())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, latent_dim) latents."""
        flat = images.reshape(images.shape[0], -1).to(self.latent_basis.dtype)
        return (flat - self.latent_mean) @ self.latent_basis.T / self.latent_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) latents -> (B, 3, S, S) images (not clamped)."""
        s = self.image_size
        flat = (z.to(self.latent_basis.dtype) * self.latent_scale) @ self.latent_basis + self.latent_mean
        return flat.reshape(z.shape[0], 3, s, s)

    def forward(self, z, t, cond=None, cond_mask=None):
        k = self.config["latent_dim"]
        if cond is not None:
            raise ValueError("cond was given but a LatentFirstFrameModel is unconditional")
        if z.dim() != 2 or z.shape[1] != k:
            raise ValueError(f"z must have shape (B, {k}), got {tuple(z.shape)}")
        t = t.reshape(-1).expand(z.shape[0]) if t.numel() == 1 else t
        h = self.inp(z) + self.time_mlp(timestep_embedding(t, self.config["hidden"]).to(z.dtype))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)

    def make_diffusion(self):
        from leo.diffusion import GaussianDiffusion

        c = self.config
        return GaussianDiffusion(num_steps=c["diffusion_steps"], schedule=c["schedule"], objective=c["objective"])

    def save(self, path) -> None:
        save_weights(path, self.state_dict(), KIND, self.config)

    @torch.no_grad()
    def sample(self, n: int, seed=None, steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
               cuda_graph=None, diffusion=None) -> torch.Tensor:
        """n images (n, 3, S, S) in [-1, 1]: latents sampled, decoded, clamped."""
        if int(n) < 1:
            raise ValueError(f"n must be a positive number of images, got {n}")
        diffusion = diffusion or self.make_diffusion()
        was_training = self.training
        self.eval()
        try:
            z = diffusion.sample(self, (int(n), self.config["latent_dim"]), cond=None, sampler=sampler, steps=steps,
                                 eta=eta, seed=seed, cuda_graph=cuda_graph)
        finally:
            self.train(was_training)
        return self.decode(z).clamp(-1, 1)


def load_first_frame_model(path, map_location="cpu") -> FirstFrameModel | LatentFirstFrameModel:
    """The first-frame model of a checkpoint, whichever kind its config names."""
    tensors, _, config = load_weights(path, expected_kind=KIND)
    config = dict(config)
    cls = LatentFirstFrameModel if config.pop("backbone", "unet") == "linear-latent" else FirstFrameModel
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
    model = load_first_frame_model(path, map_location=device).eval()
    diffusion = model.make_diffusion()
    # the U-Net's samples are clipped at every step; the latent model's images after decoding
    extra = dict(clip_x0=clip_x0) if isinstance(model, FirstFrameModel) else {}

    def sample(n, seed=None):
        return model.sample(n, seed=seed, steps=steps, sampler=sampler, cuda_graph=cuda_graph, diffusion=diffusion,
                            **extra)

    gen = _wrap_checked(sample, size, device)
    gen.model = model
    return gen


def as_first_frame_generator(spec, device="cpu", size: int | None = None, **kwargs) -> Callable:
    """Accept a checkpoint path, a FirstFrameModel or LatentFirstFrameModel, or any callable ``f(n, seed=None)``.

    The result always returns (n, 3, size, size) float tensors in [-1, 1] on ``device``.
    """
    if isinstance(spec, (str, os.PathLike)):
        return load_first_frame_generator(spec, device=device, size=size, **kwargs)
    if isinstance(spec, (FirstFrameModel, LatentFirstFrameModel)):
        model = spec.to(device).eval()
        return _wrap_checked(lambda n, seed=None: model.sample(n, seed=seed, **kwargs), size, device)
    if callable(spec):
        return _wrap_checked(spec, size, device)
    raise TypeError(f"first-frame generator must be a checkpoint path, a first-frame model or a callable, got {type(spec).__name__}")
