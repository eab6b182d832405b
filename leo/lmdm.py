"""LMDM: LEO's latent motion diffusion denoiser, a 1D U-Net over time.

Linear Motion Condition: a motion-code sequence a = (alpha_1, ..., alpha_L) is modelled as
residuals m_i = alpha_i - alpha_1 given alpha_1. The diffusion state is the standardized
residual sequence x (B, motion_dim, L) (channels first, time last; per-dimension statistics of
the training residuals are buffers of the model), the condition is the raw alpha_1 (B, motion_dim)
(standardized inside with its own statistics). A learned null condition replaces alpha_1 where
it is dropped (classifier-free style), so one model samples both ways.

Architecture: input = concat(x, standardized alpha_1 broadcast over time) -> conv; every
residual block takes a scale-shift from the conditioning embedding (sinusoidal timestep
embedding + embedded alpha_1); a fused temporal attention block
(leo_kernels.temporal_attention_block) follows the residual blocks at every level and in the
middle; down/up-sampling by 2 along time with skip connections. Any length: the sequence is
padded (replicate) to a multiple of 2^(levels - 1) and cropped back.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from leo.checkpoint_io import CheckpointError, load_weights, save_weights
from leo.diffusion import timestep_embedding  # noqa: F401  (one embedding for every denoiser; kept importable here)

_DEFAULTS = dict(
    motion_dim=20,
    width=128,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    head_dim=32,
    groups=8,
    window=64,
    rope=True,
    diffusion_steps=1000,
    schedule="cosine",
    objective="v",
)


class ResBlock1d(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift from the embedding, GroupNorm-SiLU-conv (zero init), skip."""

    def __init__(self, cin, cout, emb_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv1d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv1d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TemporalAttention(nn.Module):
    """Parameters of the fused T-atten block: y = x + W_out attn(RMSNorm(x) W_qkv) + b_out."""

    def __init__(self, channels, head_dim, rope, kernels):
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"channels {channels} must be a multiple of head_dim {head_dim}")
        self.heads = channels // head_dim
        self.rope = rope
        self.kernels = kernels
        inner = self.heads * head_dim
        self.norm_weight = nn.Parameter(torch.ones(channels))
        self.w_qkv = nn.Parameter(torch.randn(3 * inner, channels) / math.sqrt(channels))
        # Zero output projection: the block starts as the identity (stable early training).
        self.w_out = nn.Parameter(torch.zeros(channels, inner))
        self.b_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        import leo_kernels

        backend = None if self.kernels == "auto" else self.kernels
        return leo_kernels.temporal_attention_block(
            x, self.norm_weight, self.w_qkv, self.w_out, self.b_out, self.heads, self.rope, backend=backend
        )


class LMDM(nn.Module):
    """The motion denoiser: ``model(x_t (B, motion_dim, L), t (B,), cond, cond_mask=None)
    -> prediction (B, motion_dim, L)``. ``cond``: alpha_1 (B, motion_dim) (raw codes), None (the
    null condition for every sample), or a pair (alpha_1, cond_mask); ``cond_mask`` (B,) bool,
    True = use the condition, False = null condition (classifier-free dropping)."""

    def __init__(
        self,
        motion_dim: int = 20,
        width: int = 128,
        channel_mult=(1, 2, 2),
        num_res_blocks: int = 1,
        head_dim: int = 32,
        groups: int = 8,
        window: int = 64,
        rope: bool = True,
        diffusion_steps: int = 1000,
        schedule: str = "cosine",
        objective: str = "v",
        kernels: str = "auto",
    ):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        for name, val in (("motion_dim", motion_dim), ("width", width), ("num_res_blocks", num_res_blocks),
                          ("head_dim", head_dim), ("groups", groups), ("window", window)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}")
        if window < 2:  # a window's first code is its starting code: a window of 1 adds no frame
            raise ValueError(f"window must be at least 2 frames, got {window}")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {channel_mult!r}")
        if head_dim not in (16, 32, 64, 128):
            raise ValueError(f"head_dim must be one of 16, 32, 64, 128 (temporal_attention), got {head_dim}")
        chans = [width * m for m in channel_mult]
        for c in chans:
            if c % groups or c % head_dim:
                raise ValueError(f"width * channel_mult ({c}) must be a multiple of groups ({groups}) and head_dim ({head_dim})")
        if kernels not in ("auto", "reference", "triton", "cuda", "cpu"):
            raise ValueError(f"kernels must be 'auto' or a leo_kernels backend name, got {kernels!r}")
        self.config = dict(
            motion_dim=motion_dim, width=width, channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
            head_dim=head_dim, groups=groups, window=window, rope=bool(rope),
            diffusion_steps=diffusion_steps, schedule=schedule, objective=objective,
        )
        self.kernels = kernels
        D = motion_dim
        emb_dim = 4 * width
        self.levels = len(chans)

        # Standardization statistics (saved with the model): residuals and alpha_1, per dimension.
        self.register_buffer("res_mean", torch.zeros(D))
        self.register_buffer("res_std", torch.ones(D))
        self.register_buffer("alpha_mean", torch.zeros(D))
        self.register_buffer("alpha_std", torch.ones(D))

        self.null_cond = nn.Parameter(torch.zeros(D))
        self.time_mlp = nn.Sequential(nn.Linear(width, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_mlp = nn.Sequential(nn.Linear(D, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv1d(2 * D, chans[0], 3, padding=1)

        def attn(c):
            return TemporalAttention(c, head_dim, rope, kernels)

        self.down = nn.ModuleList()
        skips = [chans[0]]
        c = chans[0]
        for i, co in enumerate(chans):
            level = nn.ModuleDict()
            level["res"] = nn.ModuleList()
            for _ in range(num_res_blocks):
                level["res"].append(ResBlock1d(c, co, emb_dim, groups))
                c = co
            level["attn"] = attn(c)
            skips.append(c)
            if i + 1 < len(chans):
                level["downsample"] = nn.Conv1d(c, c, 3, stride=2, padding=1)
            self.down.append(level)
        self.mid1 = ResBlock1d(c, c, emb_dim, groups)
        self.mid_attn = attn(c)
        self.mid2 = ResBlock1d(c, c, emb_dim, groups)
        self.up = nn.ModuleList()
        for i, co in reversed(list(enumerate(chans))):
            level = nn.ModuleDict()
            level["res"] = nn.ModuleList()
            for j in range(num_res_blocks):
                # The first block of a level takes the level's skip, the last the input conv's.
                sk = skips.pop() if j == 0 else 0
                level["res"].append(ResBlock1d(c + sk, co, emb_dim, groups))
                c = co
            level["attn"] = attn(c)
            if i > 0:
                level["upsample"] = nn.Conv1d(c, c, 3, padding=1)
            self.up.append(level)
        self.out_norm = nn.GroupNorm(groups, c + skips[-1])
        self.conv_out = nn.Conv1d(c + skips.pop(), D, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ------------------------------------------------------------------ properties
    @property
    def motion_dim(self) -> int:
        return self.config["motion_dim"]

    @property
    def window(self) -> int:
        return self.config["window"]

    def make_diffusion(self):
        """The GaussianDiffusion this model was trained with (from its config)."""
        from leo.diffusion import GaussianDiffusion

        c = self.config
        return GaussianDiffusion(c["diffusion_steps"], c["schedule"], c["objective"])

    # ------------------------------------------------------------------ code statistics / LMC
    @torch.no_grad()
    def set_code_stats(self, mean, std, alpha_mean=None, alpha_std=None, eps: float = 1e-4):
        """Set the residual (and optionally alpha_1) standardization statistics, each (motion_dim,)."""
        for name, v in (("mean", mean), ("std", std), ("alpha_mean", alpha_mean), ("alpha_std", alpha_std)):
            if v is not None and torch.as_tensor(v).shape != (self.motion_dim,):
                raise ValueError(f"{name} must have shape ({self.motion_dim},), got {tuple(torch.as_tensor(v).shape)}")
        self.res_mean.copy_(torch.as_tensor(mean))
        self.res_std.copy_(torch.as_tensor(std).clamp_min(eps))
        if alpha_mean is not None:
            self.alpha_mean.copy_(torch.as_tensor(alpha_mean))
        if alpha_std is not None:
            self.alpha_std.copy_(torch.as_tensor(alpha_std).clamp_min(eps))

    @torch.no_grad()
    def fit_code_stats(self, codes: torch.Tensor):
        """Statistics from training sequences (N, L, motion_dim) (codes, not residuals)."""
        codes = _check_codes(codes, self.motion_dim).double()
        res = codes - codes[:, :1]
        a1 = codes[:, 0]
        self.set_code_stats(res.mean((0, 1)), res.std((0, 1)), a1.mean(0), a1.std(0) if len(a1) > 1 else None)

    def codes_to_residuals(self, codes: torch.Tensor):
        """codes (B, L, motion_dim) -> (standardized residuals x (B, motion_dim, L), alpha_1 (B, motion_dim))."""
        codes = _check_codes(codes, self.motion_dim)
        alpha_1 = codes[:, 0]
        res = codes - alpha_1[:, None]
        x = (res - self.res_mean.to(codes)) / self.res_std.to(codes)
        return x.transpose(1, 2), alpha_1

    def residuals_to_codes(self, x: torch.Tensor, alpha_1: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`codes_to_residuals`: codes (B, L, motion_dim) = alpha_1 + m. The first
        residual is zero by definition, so the first code is exactly alpha_1."""
        if x.dim() != 3 or x.shape[1] != self.motion_dim:
            raise ValueError(f"x must be (B, {self.motion_dim}, L), got {tuple(x.shape)}")
        res = x.transpose(1, 2) * self.res_std.to(x) + self.res_mean.to(x)
        res = torch.cat((torch.zeros_like(res[:, :1]), res[:, 1:]), dim=1)
        return alpha_1.to(x)[:, None] + res

    # ------------------------------------------------------------------ forward
    def _cond_vector(self, cond, cond_mask, B, like):
        """Standardized alpha_1 (B, D), with the learned null condition where dropped."""
        null = self.null_cond.to(like.dtype).expand(B, -1)
        if isinstance(cond, (tuple, list)):  # (alpha_1, keep mask): dropping chosen by the data loader
            if len(cond) != 2 or cond_mask is not None:
                raise ValueError("cond must be alpha_1 or a pair (alpha_1, cond_mask), not both forms")
            cond, cond_mask = cond
            cond = cond.to(like.device)
        if cond is None:
            return null
        if cond.shape != (B, self.motion_dim):
            raise ValueError(f"cond must be alpha_1 of shape ({B}, {self.motion_dim}), got {tuple(cond.shape)}")
        c = ((cond.to(like.dtype) - self.alpha_mean.to(like.dtype)) / self.alpha_std.to(like.dtype))
        if cond_mask is not None:
            c = torch.where(cond_mask.view(B, 1).to(c.device), c, null)
        return c

    def forward(self, x, t, cond=None, cond_mask=None):
        if x.dim() != 3 or x.shape[1] != self.motion_dim:
            raise ValueError(f"x must be (B, motion_dim={self.motion_dim}, L), got {tuple(x.shape)}")
        B, D, L = x.shape
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be (B,) = ({B},), got {tuple(t.shape)}")
        # The sampler may keep its state in float32 while the weights are half precision.
        out_dtype = x.dtype
        x = x.to(self.conv_in.weight.dtype)
        c = self._cond_vector(cond, cond_mask, B, x)
        emb = self.time_mlp(timestep_embedding(t, self.config["width"]).to(x.dtype)) + self.cond_mlp(c)

        mult = 2 ** (self.levels - 1)
        Lp = -(-L // mult) * mult
        h = torch.cat((x, c[:, :, None].expand(B, D, L)), dim=1)
        if Lp != L:
            h = F.pad(h, (0, Lp - L), mode="replicate")
        h = self.conv_in(h)
        skips = [h]
        for level in self.down:
            for blk in level["res"]:
                h = blk(h, emb)
            h = level["attn"](h)
            skips.append(h)
            if "downsample" in level:
                h = level["downsample"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level in self.up:
            for j, blk in enumerate(level["res"]):
                if j == 0:
                    h = torch.cat((h, skips.pop()), dim=1)
                h = blk(h, emb)
            h = level["attn"](h)
            if "upsample" in level:
                h = level["upsample"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = torch.cat((h, skips.pop()), dim=1)
        out = self.conv_out(F.silu(self.out_norm(h)))
        return out[:, :, :L].to(out_dtype)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path) -> None:
        """Weights, statistics and config in leo's safetensors format (kind "lmdm"), atomically."""
        save_weights(path, self.state_dict(), "lmdm", self.config)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", kernels: str = "auto") -> "LMDM":
        tensors, _, config = load_weights(path, expected_kind="lmdm")
        unknown = set(config) - set(_DEFAULTS)
        if unknown:
            raise CheckpointError(f"{path}: unknown LMDM config keys {sorted(unknown)}")
        try:
            model = cls(**config, kernels=kernels)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: bad LMDM config ({exc})") from None
        missing, unexpected = model.state_dict().keys() - tensors.keys(), tensors.keys() - model.state_dict().keys()
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: LMDM weights do not match its config (missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: LMDM weights do not match its config ({str(exc).splitlines()[-1].strip()})") from None
        return model.to(map_location)


def _check_codes(codes, motion_dim):
    if not torch.is_tensor(codes) or codes.dim() != 3 or codes.shape[-1] != motion_dim or codes.shape[1] < 1:
        shape = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
        raise ValueError(f"codes must be (B, L, motion_dim={motion_dim}) with L >= 1, got {shape}")
    return codes
