"""StyleGAN2-style residual discriminator for stage-1 (animator) training.

Equalized learning rate (weights stored N(0, 1), scaled by 1/sqrt(fan_in) at run time), FIR
blur ([1, 3, 3, 1]) before every stride-2 convolution, residual blocks whose sum is scaled by
1/sqrt(2), a minibatch standard-deviation feature, then two linear layers to one logit.
Activations and blurs run on ``leo_kernels.bias_act`` / ``leo_kernels.upfirdn2d`` (both twice
differentiable, so the R1 penalty works on every backend).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import leo_kernels as K

_BLUR = (1.0, 3.0, 3.0, 1.0)


def _kernel() -> torch.Tensor:
    k = torch.tensor(_BLUR)
    k = k[:, None] * k[None, :]
    return k / k.sum()


def channel_table(size: int, width: float = 1.0) -> dict[int, int]:
    """Channels per resolution (StyleGAN2's table scaled by ``width``; at least 8)."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {r: max(8, int(round(c * width))) for r, c in base.items() if r <= size}


class _Conv(nn.Module):
    """[blur] -> equalized conv -> [bias + leaky ReLU * sqrt(2)]."""

    def __init__(self, cin, cout, k, down=False, act=True, bias=True, backend=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale = 1.0 / math.sqrt(cin * k * k)
        self.down, self.act, self.k, self.backend = down, act, k, backend
        if down:
            self.register_buffer("kernel", _kernel(), persistent=False)
            p = (len(_BLUR) - 2) + (k - 1)  # output exactly half the input after the stride-2 conv
            self.pad = ((p + 1) // 2, p // 2)

    def forward(self, x):
        if self.down:
            x = K.upfirdn2d(x, self.kernel.to(x.dtype), pad=self.pad, backend=self.backend)
            x = F.conv2d(x, (self.weight * self.scale).to(x.dtype), stride=2)
        else:
            x = F.conv2d(x, (self.weight * self.scale).to(x.dtype), padding=self.k // 2)
        if self.act:
            b = None if self.bias is None else self.bias.to(x.dtype)
            return K.bias_act(x, b, backend=self.backend)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, backend=None):
        super().__init__()
        self.conv1 = _Conv(cin, cin, 3, backend=backend)
        self.conv2 = _Conv(cin, cout, 3, down=True, backend=backend)
        self.skip = _Conv(cin, cout, 1, down=True, act=False, bias=False, backend=backend)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) * (1.0 / math.sqrt(2.0))


class _Linear(nn.Module):
    def __init__(self, cin, cout, act=True, backend=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale, self.act, self.backend = 1.0 / math.sqrt(cin), act, backend

    def forward(self, x):
        x = F.linear(x, (self.weight * self.scale).to(x.dtype))
        if self.act:
            return K.bias_act(x, self.bias.to(x.dtype), backend=self.backend)
        return x + self.bias.to(x.dtype)


class Discriminator(nn.Module):
    """Real/fake logits (B,) for images (B, 3, size, size) in [-1, 1].

    size: power of two >= 8; width scales the channel table; mbstd_group: minibatch-stddev
    group size (the batch is split in groups of at most this many samples).
    """

    def __init__(self, size: int = 256, width: float = 1.0, mbstd_group: int = 4, backend: str | None = None):
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {size!r}")
        if not (isinstance(width, (int, float)) and 0 < width <= 16):
            raise ValueError(f"width must be a number in (0, 16], got {width!r}")
        self.size, self.width, self.mbstd_group = size, float(width), int(mbstd_group)
        ch = channel_table(size, width)
        self.from_rgb = _Conv(3, ch[size], 1, backend=backend)
        blocks, res = [], size
        while res > 4:
            blocks.append(_ResBlock(ch[res], ch[res // 2], backend=backend))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = _Conv(ch[4] + 1, ch[4], 3, backend=backend)
        self.fc = _Linear(ch[4] * 16, ch[4], backend=backend)
        self.out = _Linear(ch[4], 1, act=False, backend=backend)

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
        x = self.blocks(self.from_rgb(img))
        x = self.final_conv(self._mbstd(x, group_of or img.shape[0]))
        return self.out(self.fc(x.flatten(1))).squeeze(1).float()
