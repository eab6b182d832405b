"""Stage 1 of LEO: the flow-based image animator (LIA architecture) on leo_kernels.

``Animator`` reproduces the released LIA generator (same state_dict keys and shapes at the
default settings, same function; contract: ../shared/design/ANIMATOR.md) and adds an
inference API that does each piece of work once:

    cache = model.encode(source)                 # appearance code, features, motion code
    alphas = model.encode_motion(driving_frames) # (T, motion_dim)
    frames = model.render(cache, alphas, start_alpha=alphas[0])   # relative mode

``forward(img_source, img_drive, h_start=None)`` is the generator's training/demo call.
Every decoder level runs ``leo_kernels.warp_inpaint``; ``kernels="reference"`` switches
every op to its eager reference (and modulated convs to the per-sample grouped form).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

# LIA checkpoint parsing lives with the checkpoint I/O; these names stay importable from here.
from leo.checkpoint_io import (  # noqa: F401
    ACCEPTED_FORMATS,
    ANIMATOR_KIND,
    ANIMATOR_SIZES,
    CheckpointError,
    infer_animator_config as infer_config,
    read_animator_checkpoint as read_checkpoint,
)
from leo_kernels._op import is_channels_last
from leo.layers import (
    ConstantInput,
    ConvLayer,
    Direction,
    EqualConv2d,
    EqualLinear,
    FlowWarpLevel,
    ResBlock,
    StyledConv,
    ToRGB,
    channel_table,
    _backend_of,
    aten_path,
    full,
    set_backend,
)

__all__ = ["Animator", "SourceCache", "CheckpointError", "channel_table", "infer_config"]

KIND = ANIMATOR_KIND
MIN_SIZE, MAX_SIZE = ANIMATOR_SIZES


@dataclass
class SourceCache:
    """What the decoder needs from the source image, computed once by :meth:`Animator.encode`.

    wa (B, style_dim) appearance code; feats encoder features coarse (8x8) to fine (size);
    alpha (B, motion_dim) the source's own motion code (used by relative mode).
    still_flows: per decoder level, the flow logits at zero motion (``Synthesis.still_flows``), for
    an animator with ``relative_flow``; None otherwise (render computes them if missing).
    """

    wa: torch.Tensor
    feats: list = field(default_factory=list)
    alpha: torch.Tensor | None = None
    still_flows: list | None = None

    @property
    def batch(self) -> int:
        return self.wa.shape[0]

    def to(self, *args, **kwargs) -> "SourceCache":
        return SourceCache(
            self.wa.to(*args, **kwargs),
            [f.to(*args, **kwargs) for f in self.feats],
            None if self.alpha is None else self.alpha.to(*args, **kwargs),
            None if self.still_flows is None else [r.to(*args, **kwargs) for r in self.still_flows],
        )


# --------------------------------------------------------------------------- encoder
class EncoderApp(nn.Module):
    """Appearance encoder: 1x1 conv, residual downsampling blocks to 4x4, 4x4 conv to ``wa``."""

    def __init__(self, size: int, style_dim: int, channels: dict[int, int]):
        super().__init__()
        log_size = int(math.log2(size))
        self.convs = nn.ModuleList([ConvLayer(3, channels[size], 1)])
        in_ch = channels[size]
        for i in range(log_size, 2, -1):
            out_ch = channels[2 ** (i - 1)]
            self.convs.append(ResBlock(in_ch, out_ch))
            in_ch = out_ch
        self.convs.append(EqualConv2d(in_ch, style_dim, 4, padding=0, bias=False))

    def forward(self, x, with_feats: bool = True):
        """-> (wa (B, style_dim), features at 8..size coarse to fine, or [] if not asked)."""
        feats = []
        n = len(self.convs)
        if aten_path(_backend_of(self.convs[0]), x):
            # NHWC on the CPU fast path: oneDNN convolves channels_last without reordering each
            # call (the features, and with them the decoder, stay NHWC)
            x = x.contiguous(memory_format=torch.channels_last)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if with_feats and i < n - 2:  # drop the 4x4 block output and the final code
                feats.append(x)
        return x.flatten(1), feats[::-1]


class Encoder(nn.Module):
    def __init__(self, size: int, style_dim: int, motion_dim: int, channels: dict[int, int]):
        super().__init__()
        self.net_app = EncoderApp(size, style_dim, channels)
        # Five equalized linear layers, no activation in between: wa -> motion magnitudes.
        self.fc = nn.Sequential(*[EqualLinear(style_dim, style_dim) for _ in range(4)], EqualLinear(style_dim, motion_dim))


# --------------------------------------------------------------------------- decoder
class Synthesis(nn.Module):
    """StyleGAN2-style decoder with one flow-warp/inpaint level per resolution 8..size."""

    def __init__(self, size: int, style_dim: int, motion_dim: int, channels: dict[int, int]):
        super().__init__()
        self.direction = Direction(style_dim, motion_dim)
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], 3, style_dim)
        self.to_rgb1 = ToRGB(channels[4], upsample=False)  # in the checkpoints, never used
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.to_flows = nn.ModuleList()
        in_ch = channels[4]
        for i in range(3, int(math.log2(size)) + 1):
            out_ch = channels[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch))
            self.to_flows.append(FlowWarpLevel(out_ch, style_dim))
            in_ch = out_ch

    def forward(self, latent: torch.Tensor, feats: list, return_flow: bool = False, still_latent=None,
                still_flows=None):
        """Render images from latents (B, style_dim) and encoder features (batch B or 1).
        ``return_flow``: also return the finest level's composed logits (B, 3, S, S): flow x, y
        (the sampling grid is tanh(flow) + the linspace grid) and the mask logit.
        ``still_latent`` (B or 1, style_dim), for source-relative flows: every level's flow logits
        minus those decoded at ``still_latent`` with identity warps (:meth:`still_flows`), or
        minus ``still_flows`` if given (computed once per source)."""
        if still_flows is None and still_latent is not None:
            return self._decode(latent, feats, still_latent=still_latent, return_flow=return_flow)
        return self._decode(latent, feats, refs=still_flows, return_flow=return_flow)

    def still_flows(self, still_latent: torch.Tensor, feats: list) -> list:
        """Per level, the flow logits (mask channel 0) decoded at ``still_latent`` when every
        level warps by the identity. Subtracted from another latent's, they make that latent's
        flows relative: at latent == still_latent the flows are exactly zero, whatever the
        source looks like (docs/MOTION.md, sixth round)."""
        refs = []
        self._decode(still_latent, feats, record=refs)
        return refs

    def _decode(self, latent, feats, refs=None, record=None, return_flow=False, still_latent=None):
        """The decoder pass. ``refs``: per level, logits to subtract (cached still flows);
        ``record``: be the still pass (keep each level's flow logits, warp by the identity);
        ``still_latent``: run the still pass in the same batch as this one, level by level (rows
        b: of every tensor), instead of as a pass of its own: one call per op on twice the rows,
        which small CPU convolutions spread over the threads better (the same math per row)."""
        b = latent.shape[0]
        if still_latent is not None:
            latent = torch.cat([latent, still_latent])
        n = latent.shape[0]
        out = self.input(n)
        nhwc = bool(feats) and is_channels_last(feats[0])
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        if nhwc:
            out = out.contiguous(memory_format=fmt)  # run the decoder NHWC too
        out = self.conv1(out, latent)
        rgb = flow = None
        last = len(self.to_flows) - 1
        for k, (to_flow, to_rgb) in enumerate(zip(self.to_flows, self.to_rgbs)):
            out = self.convs[2 * k](out, latent)
            out = self.convs[2 * k + 1](out, latent)
            feat = feats[k]
            if still_latent is not None and k < last:
                # a broadcast or concatenated feature is neither layout: the warp kernels would make
                # it (and the rest of the decoder) NCHW; materialize it in the decoder's layout
                feat = torch.cat([feat.expand(b, -1, -1, -1), feat]).contiguous(memory_format=fmt)
            elif feat.shape[0] != b:
                feat = feat.expand(b, -1, -1, -1).contiguous(memory_format=fmt) if nhwc else feat.expand(b, -1, -1, -1)
            logits = None
            if still_latent is not None:
                logits = to_flow.logits(out, latent)
                still = logits[b:]
                own = torch.cat([still[:, :2], torch.zeros_like(still[:, 2:])], 1)
                if k == last:  # the still rows' finest warp and to-RGB would only make an unused image
                    out, latent, flow = _Head.apply(out, b), latent[:b], _Head.apply(flow, b)
                    logits = logits[:b] - own
                else:
                    logits = logits - torch.cat([own.expand(b, -1, -1, -1), own])
            elif record is not None or refs is not None:
                logits = to_flow.logits(out, latent)
                if record is not None:  # keep the flow channels, warp by the identity
                    own = torch.cat([logits[:, :2], torch.zeros_like(logits[:, 2:])], 1)
                    record.append(own)
                    if k == last:
                        break  # the finest warp and to-RGB would only make an unused image
                    logits = logits - own
                else:
                    logits = logits - refs[k]
            warped, out, flow = to_flow(out, latent, feat, flow, logits=logits)
            rgb = to_rgb(warped if warped.shape[0] == b else _Head.apply(warped, b), rgb)
        return (rgb, flow) if return_flow else rgb


# --------------------------------------------------------------------------- the animator
class Animator(nn.Module):
    """LIA-compatible animator; see the module docstring.

    size: any power of two from 32 to 512; width scales every channel count (small
    experiments); the defaults build the released LIA generator's exact layout.
    kernels: "auto" (fastest leo_kernels backends) or "reference" (eager everything).
    """

    def __init__(
        self,
        size: int = 256,
        style_dim: int = 512,
        motion_dim: int = 20,
        channel_multiplier: int = 1,
        width: float = 1.0,
        kernels: str = "auto",
        align_corners: bool = False,
        relative_latent: bool = False,
        relative_flow: bool = False,
    ):
        super().__init__()
        check_animator_args(size, style_dim, motion_dim, channel_multiplier, width)
        self.size, self.style_dim, self.motion_dim = size, style_dim, motion_dim
        self.channel_multiplier, self.width = channel_multiplier, float(width)
        self.channels = channel_table(size, channel_multiplier, width)
        self.enc = Encoder(size, style_dim, motion_dim, self.channels)
        self.dec = Synthesis(size, style_dim, motion_dim, self.channels)
        self.kernels = kernels
        # Sampling convention of every warp level. LIA's (False) adds its linspace grid to tanh(flow)
        # and samples with align_corners=False, so zero flow shrinks the image by half a pixel at
        # the borders; True makes zero flow the exact identity (leo-trained models use it).
        self.align_corners = bool(align_corners)
        for to_flow in self.dec.to_flows:
            to_flow.align_corners = self.align_corners
        # Latent of the training call: LIA's wa_s + Q alpha_t (False) or wa_s + Q (alpha_t - alpha_s)
        # (True), where the appearance part of the codes cancels and only the motion remains.
        self.relative_latent = bool(relative_latent)
        # Source-relative flows: every level's flow logits minus those the decoder gives the source's
        # own latent (with identity warps), so zero motion copies the source whatever it looks like.
        # Not LIA's (the released weights load with False); the state_dict is the same either way.
        if relative_flow and not self.relative_latent:
            raise ValueError("relative_flow needs relative_latent=True (the zero-motion latent is then the source's wa)")
        self.relative_flow = bool(relative_flow)

    # ----------------------------------------------------------------- configuration
    @property
    def config(self) -> dict:
        return {
            "size": self.size,
            "style_dim": self.style_dim,
            "motion_dim": self.motion_dim,
            "channel_multiplier": self.channel_multiplier,
            "width": self.width,
            "align_corners": self.align_corners,
            "relative_latent": self.relative_latent,
            "relative_flow": self.relative_flow,
        }

    @property
    def kernels(self) -> str:
        return self._kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        if value not in ("auto", "reference"):
            raise ValueError(f"kernels must be 'auto' or 'reference', got {value!r}")
        self._kernels = value
        set_backend(self, None if value == "auto" else "reference")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items()) + f", kernels={self.kernels!r}"

    # ----------------------------------------------------------------- initialization
    @torch.no_grad()
    def init_copy_source(self, mask_logit: float = 5.0, motion_gain: float = 1.0) -> "Animator":
        """Start from an animator that copies the source: training then begins at gain 0 over
        copying (not far below it) and only has to learn the motion.

        - Six channels of the encoder's first layer carry the image: +x and -x through the
          leaky ReLU, so x = (f+ - f-) / (sqrt(2) * 1.2) is recoverable from the finest feature.
        - The finest to-RGB inverts that (its leaky ReLU kept in the linear range by a bias that
          the to-RGB's second bias removes); every coarser to-RGB starts at zero.
        - Every flow head starts at zero (zero flow); the finest mask logit starts at
          ``mask_logit``, so the warped source passes, and the to-RGB divides the mask out.
        With ``align_corners=True`` the output then equals the source exactly. All other weights
        keep their random initialization.

        ``motion_gain`` scales the last motion layer: a random encoder's codes barely vary between
        frames of a clip (std ~0.01), so nothing reaches the motion path; scaled up, they differ
        by frame from the first step. Only with ``relative_latent``, where the appearance part of
        the codes (amplified too) cancels. Returns self.
        """
        if motion_gain != 1.0 and not self.relative_latent:
            raise ValueError("motion_gain != 1 needs relative_latent=True (the absolute latent would carry the "
                             "amplified appearance part of the codes)")
        if not motion_gain > 0:
            raise ValueError(f"motion_gain must be positive, got {motion_gain!r}")
        self.enc.fc[-1].weight.mul_(motion_gain)
        slope = 0.2
        first = self.enc.net_app.convs[0]  # ConvLayer(3, C, 1): [EqualConv2d, BiasAct]
        conv, act = first[0], first[1]
        if conv.weight.shape[0] < 6:
            raise ValueError(f"init_copy_source needs >= 6 channels at full resolution, got {conv.weight.shape[0]}")
        eye = torch.eye(3, device=conv.weight.device, dtype=conv.weight.dtype)
        conv.weight[:6, :, 0, 0] = torch.cat([eye, -eye]) / conv.scale
        act.bias[:, :6] = 0
        mask = torch.sigmoid(torch.tensor(mask_logit, dtype=torch.float64)).item()
        shift = 2.0  # |x| <= 1 in [-1, 1] images: keeps the to-RGB pre-activation positive
        for i, to_rgb in enumerate(self.dec.to_rgbs):
            rgb_conv, rgb_act = to_rgb.conv[0], to_rgb.conv[1]
            rgb_conv.weight.zero_()
            rgb_act.bias.zero_()
            to_rgb.bias.zero_()
            if i == len(self.dec.to_rgbs) - 1:
                w = 1.0 / (2.0 * (1.0 + slope) * mask) / rgb_conv.scale
                rgb_conv.weight[:3, :3, 0, 0] = w * eye
                rgb_conv.weight[:3, 3:6, 0, 0] = -w * eye
                rgb_act.bias.fill_(shift)
                to_rgb.bias.fill_(-shift * math.sqrt(2.0))
        for i, to_flow in enumerate(self.dec.to_flows):
            to_flow.conv.weight.zero_()
            to_flow.bias.zero_()
            if i == len(self.dec.to_flows) - 1:
                to_flow.bias[0, 2] = mask_logit
        return self

    # ----------------------------------------------------------------- checks
    def _check_images(self, x, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise ValueError(f"{name} must have shape (B, 3, {self.size}, {self.size}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor in [-1, 1], got {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} must hold at least one image")

    def _check_alpha(self, a, name, rows=None):
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
        if a.dim() == 1:
            a = a.unsqueeze(0)
        if a.dim() != 2 or a.shape[1] != self.motion_dim:
            raise ValueError(f"{name} must have shape (N, {self.motion_dim}), got {tuple(a.shape)}")
        if rows is not None and a.shape[0] not in (1, rows):
            raise ValueError(f"{name} must have 1 or {rows} rows, got {a.shape[0]}")
        return a

    # ----------------------------------------------------------------- pieces
    def motion_basis(self) -> torch.Tensor:
        """Q (style_dim, motion_dim) with orthonormal columns: QR(W + 1e-8).Q, in float32."""
        with _no_autocast(self.dec.direction.weight.device):
            return self.dec.direction.basis()

    def latent(self, wa, alpha, alpha_source=None, start_alpha=None, q=None) -> torch.Tensor:
        """The decoder's latent, in float32.

        LIA (``relative_latent=False``): absolute wa + Q alpha; relative (``start_alpha`` given)
        wa + (Q alpha - Q start_alpha) + Q alpha_source, in that order as the released code.
        ``relative_latent=True``: wa + Q (alpha - start_alpha), with start_alpha defaulting to the
        source's own code ``alpha_source`` (required then).
        """
        with _no_autocast(wa.device):
            q = self.motion_basis() if q is None else q
            d = self.dec.direction
            wa = full(wa)
            if self.relative_latent:
                ref = start_alpha if start_alpha is not None else alpha_source
                if ref is None:
                    raise ValueError("relative_latent: the source's motion code (alpha_source) is required")
                return wa + d(full(alpha) - full(ref), q)
            if start_alpha is None:
                return wa + d(alpha, q)
            return wa + (d(alpha, q) - d(start_alpha, q)) + d(alpha_source, q)

    def _still_latent(self, wa):
        """The zero-motion latent (the source's wa) that relative flows are taken from, or None."""
        if not self.relative_flow:
            return None
        with _no_autocast(wa.device):
            return full(wa)

    def _motion_codes(self, wa):
        with _no_autocast(wa.device):
            return self.enc.fc(full(wa))

    # ----------------------------------------------------------------- training / demo call
    def forward(self, img_source, img_drive, h_start=None):
        """The released generator's call: source and driving images (B, 3, S, S) in [-1, 1];
        ``h_start`` (B or 1, motion_dim): the first driving frame's motion code, which
        selects relative mode. Returns (B, 3, S, S)."""
        self._check_images(img_source, "img_source")
        self._check_images(img_drive, "img_drive")
        b = img_drive.shape[0]
        if img_source.shape[0] not in (1, b):
            raise ValueError(f"img_source must have batch 1 or {b} (img_drive's), got {img_source.shape[0]}")
        if h_start is not None:
            h_start = self._check_alpha(h_start, "h_start", rows=b)
        bs = img_source.shape[0]
        if img_source.dtype == img_drive.dtype:
            # One encoder pass over source and driving images together (per-sample math).
            wa_all, feats = self.enc.net_app(torch.cat((img_source, img_drive)))
            wa, wa_t = wa_all[:bs], wa_all[bs:]
            feats = [_Head.apply(f, bs) for f in feats]
        else:
            wa, feats = self.enc.net_app(img_source)
            wa_t, _ = self.enc.net_app(img_drive, with_feats=False)
        alpha_t = self._motion_codes(wa_t)
        if h_start is None and not self.relative_latent:
            latent = self.latent(wa.expand(b, -1), alpha_t)
        else:
            alpha_src = self._motion_codes(wa).expand(b, -1)
            latent = self.latent(wa.expand(b, -1), alpha_t, alpha_src, None if h_start is None else h_start.expand(b, -1))
        return self.dec(latent, feats, still_latent=self._still_latent(wa))

    # ----------------------------------------------------------------- inference API
    def encode(self, source) -> SourceCache:
        """Encode source images (B, 3, S, S) once: appearance code, features, motion code."""
        self._check_images(source, "source")
        wa, feats = self.enc.net_app(source)
        still = self._still_latent(wa)
        return SourceCache(wa=wa, feats=feats, alpha=self._motion_codes(wa),
                           still_flows=None if still is None else self.dec.still_flows(still, feats))

    def encode_motion(self, frames) -> torch.Tensor:
        """Motion codes (T, motion_dim) of frames (T, 3, S, S)."""
        self._check_images(frames, "frames")
        wa, _ = self.enc.net_app(frames, with_feats=False)
        return self._motion_codes(wa)

    def render(self, cache: SourceCache, alphas, start_alpha=None) -> torch.Tensor:
        """Render frames (T, 3, S, S) from motion codes ``alphas`` (T, motion_dim).

        Absolute mode: latent = wa + Q alpha_t. Relative mode (``start_alpha``, the first
        driving frame's code): wa + Q alpha_t - Q start_alpha + Q cache.alpha. With
        ``relative_latent`` the motion is always taken relative: wa + Q (alpha_t - start_alpha),
        start_alpha defaulting to the source's own code. A cache of batch 1 is shared by all
        frames; a cache of batch T pairs with the frames one by one.
        """
        if not isinstance(cache, SourceCache):
            raise TypeError(f"cache must be a SourceCache from encode(), got {type(cache).__name__}")
        alphas = self._check_alpha(alphas, "alphas")
        t = alphas.shape[0]
        if cache.batch not in (1, t):
            raise ValueError(f"cache batch must be 1 or len(alphas)={t}, got {cache.batch}")
        wa = cache.wa.expand(t, -1)
        if start_alpha is None:
            latent = self.latent(wa, alphas, None if cache.alpha is None else cache.alpha.expand(t, -1))
        else:
            start_alpha = self._check_alpha(start_alpha, "start_alpha", rows=1)
            latent = self.latent(wa, alphas, cache.alpha.expand(t, -1), start_alpha.expand(t, -1))
        return self.dec(latent, cache.feats, still_latent=self._still_latent(cache.wa), still_flows=cache.still_flows)

    # ----------------------------------------------------------------- checkpoints
    def save(self, path) -> None:
        """Write our format (safetensors + JSON config, kind "animator"), atomically."""
        from leo.checkpoint_io import save_weights

        save_weights(path, self.state_dict(), KIND, self.config)

    def load_weights_strict(self, state_dict: dict, source: str = "state_dict") -> None:
        """Load ``state_dict`` exactly (all keys and shapes must match) or raise a
        CheckpointError listing missing keys, unexpected keys and shape conflicts."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        conflicts = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or conflicts:
            parts = []
            for name, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape conflicts", conflicts)):
                if items:
                    shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                    parts.append(f"{len(items)} {name}: {shown}")
            raise CheckpointError(f"{source} does not fit Animator({self.config}): " + "; ".join(parts))
        self.load_state_dict(state_dict, strict=True)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", kernels: str = "auto") -> "Animator":
        """Load a released LIA file ({'gen': state_dict, ...} torch pickle), a bare
        state_dict (pickle or safetensors), or our own format. The architecture comes from
        our config or is inferred from the tensors."""
        state_dict, config = read_checkpoint(path)
        if config is None:
            config = infer_config(state_dict, source=os.fspath(path))
        try:
            model = cls(**config, kernels=kernels)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{os.fspath(path)}: bad animator config {config}: {exc}") from None
        model.load_weights_strict(state_dict, source=os.fspath(path))
        return model.to(map_location).eval()


# --------------------------------------------------------------------------- small helpers
class _Head(torch.autograd.Function):
    """``t[:n]`` whose gradient keeps ``t``'s memory format (slicing's backward allocates a
    contiguous zero tensor, which then mixes NCHW into an NHWC encoder's backward)."""

    @staticmethod
    def forward(ctx, t, n):
        ctx.n, ctx.shape = n, t.shape
        ctx.fmt = torch.channels_last if is_channels_last(t) else torch.contiguous_format
        return t[:n]

    @staticmethod
    def backward(ctx, g):
        out = torch.empty(ctx.shape, dtype=g.dtype, device=g.device, memory_format=ctx.fmt)
        out[: ctx.n] = g
        out[ctx.n :].zero_()
        return out, None


def check_animator_args(size=256, style_dim=512, motion_dim=20, channel_multiplier=1, width=1.0) -> None:
    """The architecture arguments of :class:`Animator` (ValueError naming the bad one); trainers call it
    before they prepare any data."""
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    if size & (size - 1):
        raise ValueError(f"size must be a power of two from {MIN_SIZE} to {MAX_SIZE}, got {size}")
    _check_int("style_dim", style_dim, 1, 1 << 16)
    _check_int("motion_dim", motion_dim, 1, style_dim)
    _check_int("channel_multiplier", channel_multiplier, 1, 64)
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 16):
        raise ValueError(f"width must be a number in (0, 16], got {width!r}")


def _check_int(name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


def _no_autocast(device):
    kind = torch.device(device).type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()

