"""StyleGAN2-style residual discriminator for stage-1 (animator) training.

Equalized learning rate (weights stored N(0, 1), scaled by 1/sqrt(fan_in) at run time), FIR
blur ([1, 3, 3, 1]) before every stride-2 convolution, residual blocks whose sum is scaled by
1/sqrt(2), a minibatch standard-deviation feature, then two linear layers to one logit.
Activations and blurs run on ``leo_kernels.bias_act`` / ``leo_kernels.upfirdn2d`` (both twice
differentiable, so the R1 penalty works on every backend).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from leo.layers import EqualConvAct, EqualLinear, KernelUser, ResBlock, aten_path, channel_table

_UNSET = object()


class Discriminator(nn.Module):
    """Real/fake logits (B,) for images (B, 3, size, size) in [-1, 1].

    size: power of two >= 8; width scales the channel table; mbstd_group: minibatch-stddev
    group size (the batch is split in groups of at most this many samples). ``kernels``:
    "auto" (fastest leo_kernels backend) or a backend name ("reference", "cpu", "triton",
    "cuda"), as for Animator and LMDM; ``backend=`` is its deprecated alias (None = "auto").
    Built from leo.layers: EqualConvAct (keys ``weight``/``bias``), ResBlock, EqualLinear.
    """

    def __init__(self, size: int = 256, width: float = 1.0, mbstd_group: int = 4, kernels: str = "auto",
                 backend=_UNSET):
        super().__init__()
        if backend is not _UNSET:
            warnings.warn("Discriminator(backend=) is deprecated; use kernels= ('auto' for None)",
                          DeprecationWarning, stacklevel=2)
            kernels = "auto" if backend is None else backend
        if kernels not in ("auto", "reference", "triton", "cuda", "cpu"):
            raise ValueError(f"kernels must be 'auto' or a leo_kernels backend name, got {kernels!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size!r}")
        if not (isinstance(width, (int, float)) and 0 < width <= 16):
            raise ValueError(f"width must be a number in (0, 16], got {width!r}")
        self.size, self.width, self.mbstd_group = size, float(width), int(mbstd_group)
        ch = channel_table(size, width=width, min_channels=8)  # at least 8 channels per level
        self.from_rgb = EqualConvAct(3, ch[size], 1)
        blocks, res = [], size
        while res > 4:
            blocks.append(ResBlock(ch[res], ch[res // 2], conv=EqualConvAct))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = EqualConvAct(ch[4] + 1, ch[4], 3)
        self.fc = EqualLinear(ch[4] * 16, ch[4], activate=True)
        self.out = EqualLinear(ch[4], 1)
        self.kernels = kernels

    @property
    def kernels(self) -> str:
        return self._kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        self._kernels = value
        for m in self.modules():
            if isinstance(m, KernelUser):
                m.backend = None if value == "auto" else value

    @property
    def backend(self) -> str | None:
        """Deprecated alias of ``kernels`` (None for "auto")."""
        return None if self._kernels == "auto" else self._kernels

    @property
    def config(self) -> dict:
        return {"size": self.size, "width": self.width, "mbstd_group": self.mbstd_group}

    def _mbstd(self, x, group_of):
        """Append the mean std over groups of ``g`` consecutive samples; ``g`` divides ``group_of``
        (the trainer passes the real/fake half size, so a group never mixes real and fake)."""
        b, c, h, w = x.shape
        g = min(self.mbstd_group, group_of)
        while group_of % g or b % g:
            g -= 1
        y = x.float().view(-1, g, c, h, w)
        y = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (b/g,)
        y = y.view(-1, 1, 1, 1, 1).expand(-1, g, 1, h, w).reshape(b, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def forward(self, img: torch.Tensor, group_of: int | None = None) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3 or img.shape[2] != self.size or img.shape[3] != self.size:
            raise ValueError(f"img must have shape (B, 3, {self.size}, {self.size}), got {tuple(img.shape)}")
        if aten_path(self.from_rgb.backend, img):
            img = img.contiguous(memory_format=torch.channels_last)  # oneDNN convs without reorders
        x = self.blocks(self.from_rgb(img))
        x = self.final_conv(self._mbstd(x, group_of or img.shape[0]))
        return self.out(self.fc(x.flatten(1))).squeeze(1).float()
