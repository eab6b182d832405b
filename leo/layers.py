"""Equalized-learning-rate building blocks of the LIA animator (StyleGAN2 family).

Weights are stored unscaled and multiplied at run time by 1/sqrt(fan_in) ("equalized
learning rate"), exactly as the released LIA checkpoints expect. Parameter and buffer
names (``weight``, ``bias``, ``kernel``, ``modulation``, ``noise``, ``activate``, numbered
``nn.Sequential`` children) are chosen so state_dict keys equal the released generator's.

Every module here has a ``backend`` attribute: ``None`` runs the fast leo_kernels
backends and the batched modulated-conv formulation; ``"reference"`` runs the eager
reference of every op and the per-sample grouped modulated conv (the formulation of the
original StyleGAN2/LIA code), for comparison. :func:`set_backend` switches a whole tree.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import leo_kernels as K
from leo_kernels._op import is_channels_last

BLUR_KERNEL = (1, 3, 3, 1)


def make_kernel(taps=BLUR_KERNEL, gain: float = 1.0) -> torch.Tensor:
    """Normalized outer product of a 1-D FIR kernel, times ``gain``."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * gain


# StyleGAN2 base channels per resolution (before width / channel_multiplier).
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def channel_table(size: int, channel_multiplier: int = 1, width: float = 1.0, min_channels: int = 1) -> dict[int, int]:
    """Channels per resolution 4..size: StyleGAN2's table, resolutions >= 64 times
    ``channel_multiplier``, all scaled by ``width``, at least ``min_channels``.

    LIA's decoder multiplies resolutions >= 64 by ``channel_multiplier`` and its encoder
    does not, so only channel_multiplier=1 runs in LIA; the animator uses it for both
    (identical at 1). The discriminator uses ``min_channels=8``.
    """
    out = {}
    for res, ch in _BASE_CHANNELS.items():
        if res > size:
            break
        ch = ch * (channel_multiplier if res >= 64 else 1)
        out[res] = max(min_channels, int(round(ch * width)))
    return out


class KernelUser(nn.Module):
    """A module whose ops take ``backend=`` (None: fastest available; "reference": eager)."""

    backend: str | None = None


def set_backend(module: nn.Module, backend: str | None) -> None:
    if backend not in (None, "reference"):
        raise ValueError(f"backend must be None or 'reference', got {backend!r}")
    for m in module.modules():
        if isinstance(m, KernelUser):
            m.backend = backend


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or float64 if it already is (small tensors computed at full precision)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _as(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s dtype (keeps autocast activations from being promoted to fp32)."""
    return t if t.dtype == like.dtype else t.to(like.dtype)


# --------------------------------------------------------------------------- ATen fast path
# On CPU the animator's and discriminator's tensors are small (64x64 training: ~1 MB), where a
# Python custom-op call (~0.15 ms of dispatch each) and a generic FIR kernel cost more than the
# equivalent ATen ops: a [1,3,3,1] blur is a depthwise convolution, and bias + leaky ReLU * g
# folds into the preceding conv/linear (leaky_relu(z) * g == leaky_relu(z * g) for g > 0: the
# gain scales the weight and the bias, then one in-place leaky ReLU). ``backend=None`` on CPU
# takes this path unless $LEO_KERNELS_BACKEND forces a backend; CUDA keeps the leo_kernels ops.
_SQRT2 = math.sqrt(2.0)
_ENV_BACKEND = "LEO_KERNELS_BACKEND"


def aten_path(backend: str | None, x: torch.Tensor) -> bool:
    """Whether a layer with ``backend`` runs its ATen composition for input ``x``."""
    return backend is None and x.device.type == "cpu" and not os.environ.get(_ENV_BACKEND)


def _backend_of(module: nn.Module) -> str | None:
    """The backend of ``module`` or of its first KernelUser descendant (None if it has none)."""
    if isinstance(module, KernelUser):
        return module.backend
    return next((m.backend for m in module.modules() if isinstance(m, KernelUser)), None)


def _lrelu(y: torch.Tensor) -> torch.Tensor:
    """leaky_relu(y, 0.2) in place on a fresh activation (autograd saves the result)."""
    return F.leaky_relu_(y, 0.2)


def cpu_autocast(x: torch.Tensor) -> bool:
    """Whether ``x`` is on the CPU under autocast (bf16 training on CPUs with native bf16). There
    the depthwise blurs and the warp kernel run in float32: oneDNN has no fast low-precision
    depthwise conv (4x slower than float32 in the backward), and our CPU warp kernel's fast
    paths are float32 ones."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def _depthwise(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The FIR ``kernel`` (kh, kw) as a depthwise conv2d weight (C, 1, kh, kw) for ``x``
    (flipped: upfirdn2d applies a true convolution, conv2d a correlation)."""
    kh, kw = kernel.shape
    return _as(kernel, x).flip((0, 1)).reshape(1, 1, kh, kw).expand(x.shape[1], 1, kh, kw)


def _depthwise_conv(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """conv2d(x, the FIR ``kernel`` per channel); in float32 under CPU autocast (cpu_autocast)."""
    if cpu_autocast(x):
        with torch.autocast("cpu", enabled=False):
            return _depthwise_conv(x.float(), kernel, stride, padding)
    return F.conv2d(x, _depthwise(kernel, x), stride=stride, padding=padding, groups=x.shape[1])


def fir_down(x: torch.Tensor, kernel: torch.Tensor, pad, down: int = 1) -> torch.Tensor:
    """upfirdn2d(x, kernel, up=1, down, pad=(p0, p1)) as a depthwise conv (any pad pair)."""
    p0, p1 = pad
    if p0 != p1:
        x = F.pad(x, (p0, p1, p0, p1))
        p0 = 0
    return _depthwise_conv(x, kernel, stride=down, padding=p0)


def fir_up2(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, kernel, up=2, pad=(2, 1)) for a 4x4 ``kernel``: a depthwise stride-2
    transposed conv cropped by one sample per side (output 2H x 2W); float32 under CPU autocast."""
    if cpu_autocast(x):
        with torch.autocast("cpu", enabled=False):
            return fir_up2(x.float(), kernel)
    kh, kw = kernel.shape
    w = _as(kernel, x).reshape(1, 1, kh, kw).expand(x.shape[1], 1, kh, kw)
    return F.conv_transpose2d(x, w, stride=2, padding=1, groups=x.shape[1])


# --------------------------------------------------------------------------- plain layers
class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"


class EqualLinear(KernelUser):
    """Equalized linear layer; ``activate``: bias + leaky ReLU * sqrt(2) through ``bias_act``."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        if activate and not bias:
            raise ValueError("EqualLinear: activate needs a bias")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x):
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activate and aten_path(self.backend, x):
            return _lrelu(F.linear(x, _as(self.weight * (self.scale * _SQRT2), x), _as(bias * _SQRT2, x)))
        if self.activate:
            x = F.linear(x, _as(self.weight * self.scale, x))
            return K.bias_act(x, _as(bias, x), 0.2, math.sqrt(2.0), backend=self.backend)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self):
        act = ", activate=True" if self.activate else ""
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}{act}"


class BiasAct(KernelUser):
    """leaky_relu(x + bias, 0.2) * sqrt(2) ("fused leaky ReLU"); bias stored as (1, C, 1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        if aten_path(self.backend, x):
            return _lrelu(torch.add(_as(self.bias * _SQRT2, x), x, alpha=_SQRT2))
        return K.bias_act(x, _as(self.bias.view(-1), x), 0.2, math.sqrt(2.0), backend=self.backend)


# --------------------------------------------------------------------------- FIR wrappers
# The pad arithmetic of StyleGAN2's FIR resampling lives in these classes and nowhere else.
class Blur(KernelUser):
    """FIR filter with the normalized [1,3,3,1] kernel (times up**2 after zero insertion).

    Build it with :meth:`before_downsample` (in front of a stride-``factor`` conv) or
    :meth:`after_upsample` (behind a stride-``factor`` transposed conv), which own the pads.
    ``persistent=False`` keeps the kernel out of the state_dict."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1, persistent: bool = True):
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=upsample_factor**2), persistent=persistent)
        self.pad = tuple(pad)

    @classmethod
    def before_downsample(cls, conv_kernel: int, factor: int = 2, persistent: bool = True) -> "Blur":
        """Blur whose output, convolved by a ``conv_kernel`` conv of stride ``factor`` without
        padding, is exactly 1/factor of the input size."""
        p = (len(BLUR_KERNEL) - factor) + (conv_kernel - 1)
        return cls(((p + 1) // 2, p // 2), persistent=persistent)

    @classmethod
    def after_upsample(cls, conv_kernel: int, factor: int = 2) -> "Blur":
        """Blur (gain factor**2) behind a ``conv_kernel`` transposed conv of stride ``factor``,
        so the pair upsamples exactly by ``factor``."""
        p = (len(BLUR_KERNEL) - factor) - (conv_kernel - 1)
        return cls(((p + 1) // 2 + 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x, down: int = 1):
        """``down``: keep every down-th output sample (a blur followed by subsampling)."""
        if aten_path(self.backend, x):
            return fir_down(x, self.kernel, self.pad, down)
        return K.upfirdn2d(x, _as(self.kernel, x), up=1, down=down, pad=self.pad, backend=self.backend)


class Upsample(KernelUser):
    """FIR upsampling by ``factor`` (zero insertion, [1,3,3,1] kernel x factor**2, pad (2, 1) at 2)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel(gain=factor**2))
        p = self.kernel.shape[0] - factor
        self.factor, self.pad = factor, ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        if self.factor == 2 and self.kernel.shape == (4, 4) and aten_path(self.backend, x):
            return fir_up2(x, self.kernel)
        return K.upfirdn2d(x, _as(self.kernel, x), up=self.factor, down=1, pad=self.pad, backend=self.backend)


class Downsample(KernelUser):
    """FIR downsampling by ``factor`` ([1,3,3,1] kernel, pad (1, 1) at 2)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", make_kernel())
        p = self.kernel.shape[0] - factor
        self.factor, self.pad = factor, ((p + 1) // 2, p // 2)

    def forward(self, x):
        if aten_path(self.backend, x):
            return fir_down(x, self.kernel, self.pad, self.factor)
        return K.upfirdn2d(x, _as(self.kernel, x), up=1, down=self.factor, pad=self.pad, backend=self.backend)


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [bias + leaky ReLU], as numbered children (keys .0/.1/.2).

    With ``downsample`` the blur (pads chosen so the stride-2 conv halves the size exactly)
    precedes a stride-2 conv without padding.
    """

    def __init__(self, in_ch, out_ch, kernel_size, downsample=False, bias=True, activate=True):
        layers = []
        if downsample:
            layers.append(Blur.before_downsample(kernel_size))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            if not bias:
                raise ValueError("ConvLayer: activate without bias is not part of this architecture")
            layers.append(BiasAct(out_ch))
        super().__init__(*layers)
        self.blur_then_subsample = downsample and kernel_size == 1

    def forward(self, x, gain: float = 1.0):
        """``gain``: multiplies the output (the fast path folds it into the weights; ResBlock
        passes 1/sqrt(2))."""
        if aten_path(_backend_of(self), x):
            return self._aten(x, gain)
        out = self._forward(x)
        return out if gain == 1.0 else out * gain

    def _aten(self, x, gain):
        conv = self[1] if isinstance(self[0], Blur) else self[0]
        act = self[-1] if isinstance(self[-1], BiasAct) else None
        g = gain * _SQRT2 if act is not None else gain
        w = _as(conv.weight * (conv.scale * g), x)
        b = act.bias.view(-1) * g if act is not None else (conv.bias * g if conv.bias is not None else None)
        b = None if b is None else _as(b, x)
        if isinstance(self[0], Blur):
            blur = self[0]
            if self.blur_then_subsample:
                return _conv1x1(fir_down(x, blur.kernel, blur.pad, 2), w, b, act is not None)
            x = F.conv2d(fir_down(x, blur.kernel, blur.pad), w, b, stride=conv.stride)
        elif w.shape[-1] == 1 and conv.stride == 1:
            return _conv1x1(x, w, b, act is not None)
        else:
            x = F.conv2d(x, w, b, stride=conv.stride, padding=conv.padding)
        return _lrelu(x) if act is not None else x

    def _forward(self, x):
        if self.blur_then_subsample and self[0].backend != "reference":
            # A 1x1 stride-2 conv reads every other blurred pixel: let the FIR op compute only
            # those (down=2), then a stride-1 1x1 conv. Same values, a quarter of the blur work.
            blur, conv = self[0], self[1]
            x = blur(x, down=2)
            x = F.conv2d(x, conv.weight * conv.scale, conv.bias)
            return self[2](x) if len(self) > 2 else x
        return super().forward(x)


class EqualConvAct(KernelUser):
    """ConvLayer as one module (keys ``weight``, ``bias`` (C,); the blur kernel is not saved):
    [Blur] -> equalized conv -> [bias + leaky ReLU * sqrt(2)] (or + bias without activation).
    Weights are cast to the input's dtype. Used by the discriminator."""

    def __init__(self, in_ch, out_ch, kernel_size, downsample=False, bias=True, activate=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.downsample, self.activate, self.kernel_size = downsample, activate, kernel_size
        if downsample:
            self.blur = Blur.before_downsample(kernel_size, persistent=False)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, downsample={self.downsample}, activate={self.activate}"

    def forward(self, x, gain: float = 1.0):
        """``gain`` multiplies the output (folded into the weights on the fast path)."""
        if aten_path(self.backend, x):
            g = gain * _SQRT2 if self.activate else gain
            w = _as(self.weight * (self.scale * g), x)
            b = None if self.bias is None else _as(self.bias * g, x)
            if self.downsample and self.kernel_size == 1:  # a 1x1 stride-2 conv reads every other blurred pixel
                return _conv1x1(fir_down(x, self.blur.kernel, self.blur.pad, 2), w, b, self.activate)
            elif self.downsample:
                x = F.conv2d(fir_down(x, self.blur.kernel, self.blur.pad), w, b, stride=2)
            elif self.kernel_size == 1:
                return _conv1x1(x, w, b, self.activate)
            else:
                x = F.conv2d(x, w, b, padding=self.kernel_size // 2)
            return _lrelu(x) if self.activate else x
        out = self._forward(x)
        return out if gain == 1.0 else out * gain

    def _forward(self, x):
        w = _as(self.weight * self.scale, x)
        if self.downsample:
            x = F.conv2d(self.blur(x), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.kernel_size // 2)
        b = None if self.bias is None else _as(self.bias, x)
        if self.activate:
            return K.bias_act(x, b, 0.2, math.sqrt(2.0), backend=self.backend)
        return x if b is None else x + b.view(1, -1, 1, 1)


class ResBlock(nn.Module):
    """Residual downsampling block: (conv1 -> conv2 + skip) / sqrt(2). ``conv``: the conv layer
    class (ConvLayer: the animator's encoder, LIA's keys; EqualConvAct: the discriminator)."""

    def __init__(self, in_ch: int, out_ch: int, conv=None):
        super().__init__()
        conv = conv or ConvLayer
        self.conv1 = conv(in_ch, in_ch, 3)
        self.conv2 = conv(in_ch, out_ch, 3, downsample=True)
        self.skip = conv(in_ch, out_ch, 1, downsample=True, bias=False, activate=False)

    def forward(self, x):
        # (conv2 + skip) / sqrt(2), the 1/sqrt(2) folded into both branches' weights on the fast path
        g = 1.0 / math.sqrt(2.0)
        if aten_path(_backend_of(self.conv1), x):
            return self.conv2(self.conv1(x), gain=g) + self.skip(x, gain=g)
        out = self.conv2(self.conv1(x))
        return (out + self.skip(x)) / math.sqrt(2.0)


# --------------------------------------------------------------------------- style layers
class ModulatedConv2d(KernelUser):
    """StyleGAN2 modulated conv: weight scaled per input channel by ``modulation(style)``
    (bias init 1), optionally demodulated, optionally a 2x transposed conv followed by blur.

    Fast formulation (batches over samples with one shared conv):
        conv(x * s, W) * d  with  d[b, o] = rsqrt(sum_i s[b,i]^2 sum_k W[o,i,k]^2 + 1e-8),
    which equals the grouped conv with per-sample weights W * s * d (the reference one).
    """

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:  # registered first: keeps the released state_dict's key order
            self.blur = Blur.after_upsample(kernel_size)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2

    def extra_repr(self):
        return (
            f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, "
            f"demodulate={self.demodulate}, upsample={self.upsample}"
        )

    def styles(self, style):
        return self.modulation(style)

    def forward(self, x, style):
        s = self.styles(style)
        if self.backend == "reference":
            return self._grouped(x, s)
        return self._batched(x, s)

    def _demod(self, s):
        w2 = (full(self.weight[0]) * self.scale).square().sum(dim=(2, 3))  # (out, in)
        return torch.rsqrt(full(s).square() @ w2.t() + 1e-8)  # (B, out)

    def _batched(self, x, s, act_bias=None):
        """``act_bias`` (1, out, 1, 1): also apply bias + leaky ReLU * sqrt(2) (StyledConv's
        activation), fused with the demodulation into one multiply-add and an in-place leaky ReLU."""
        b = x.shape[0]
        w = self.weight[0] * self.scale
        if self.kernel_size == 1 and not self.upsample:
            # 1x1: per-sample weights are tiny, a batched matmul avoids touching x twice.
            wm = w[:, :, 0, 0].unsqueeze(0) * s.unsqueeze(1).to(w.dtype)  # (B, out, in)
            if self.demodulate:
                wm = wm * self._demod(s).unsqueeze(2)
            wm = _as(wm, x)
            if is_channels_last(x):
                # NHWC storage: contract over the innermost (channel) axis without a copy.
                out = torch.matmul(x.permute(0, 2, 3, 1), wm.transpose(1, 2).unsqueeze(1))
                return out.permute(0, 3, 1, 2)
            h, wd = x.shape[2:]
            out = torch.bmm(wm, x.reshape(b, self.in_ch, h * wd))
            return out.view(b, self.out_ch, h, wd)
        xm = x * _as(s, x).view(b, self.in_ch, 1, 1)
        if act_bias is not None:
            # blur is linear per channel, so it commutes with the per-(sample, channel) demodulation
            if self.upsample and self.kernel_size == 3 and self.blur.pad == (1, 1) and self.blur.kernel.shape == (4, 4):
                out = _up_blur_aten(xm, w, self.blur.kernel)
            elif self.upsample:
                out = self.blur(_conv_transpose3x3_s2(xm, w))
            else:
                out = F.conv2d(xm, w, padding=self.padding)
            d = self._demod(s) * _SQRT2 if self.demodulate else s.new_full((b, self.out_ch), _SQRT2)
            return _lrelu(torch.addcmul(_as(act_bias * _SQRT2, out), out, _as(d, out).view(b, self.out_ch, 1, 1)))
        if self.upsample:
            out = _conv_transpose3x3_s2(xm, w)
        else:
            out = F.conv2d(xm, w, padding=self.padding)
        if self.demodulate:
            out = out * _as(self._demod(s), out).view(b, self.out_ch, 1, 1)
        if self.upsample:
            out = self.blur(out)
        return out

    def _grouped(self, x, s):
        """Per-sample modulated weights and a grouped conv (the original formulation)."""
        b, _, h, wd = x.shape
        k = self.kernel_size
        w = self.scale * self.weight * s.view(b, 1, self.in_ch, 1, 1).to(self.weight.dtype)
        if self.demodulate:
            w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4)) + 1e-8).view(b, self.out_ch, 1, 1, 1)
        xg = x.reshape(1, b * self.in_ch, h, wd)
        if self.upsample:
            w = w.transpose(1, 2).reshape(b * self.in_ch, self.out_ch, k, k)
            out = F.conv_transpose2d(xg, _as(w, x), stride=2, padding=0, groups=b)
            out = self.blur(out.view(b, self.out_ch, out.shape[2], out.shape[3]))
        else:
            w = w.reshape(b * self.out_ch, self.in_ch, k, k)
            out = F.conv2d(xg, _as(w, x), padding=self.padding, groups=b)
            out = out.view(b, self.out_ch, out.shape[2], out.shape[3])
        return out


class _Interleave(torch.autograd.Function):
    """(B, C, 2h+3, 2w+3) from the four output phases of a stride-2 transposed 3x3 conv, ee
    (h+1, w+1), eo (h+1, w), oe (h, w+1), oo (h, w): phase (a, c) at rows 1+a::2 and columns
    1+c::2, zeros around (rows 0 and 2h+2, columns 0 and 2w+2), i.e. the transposed conv's
    (2h+1, 2w+1) output already padded by one sample for the blur behind it. The backward
    returns strided views of the gradient (in-place slice assignment under autograd would clone
    the whole gradient once per slice)."""

    @staticmethod
    def forward(ctx, fmt, ee, eo, oe, oo):
        b, c, h1, w1 = ee.shape
        out = torch.empty(b, c, 2 * h1 + 1, 2 * w1 + 1, dtype=ee.dtype, device=ee.device, memory_format=fmt)
        for i in (0, 2 * h1):
            out[:, :, i].zero_()
        for j in (0, 2 * w1):
            out[:, :, :, j].zero_()
        out[:, :, 1::2, 1::2] = ee
        out[:, :, 1::2, 2:-1:2] = eo
        out[:, :, 2:-1:2, 1::2] = oe
        out[:, :, 2:-1:2, 2:-1:2] = oo
        return out

    @staticmethod
    def backward(ctx, g):
        return None, g[:, :, 1::2, 1::2], g[:, :, 1::2, 2:-1:2], g[:, :, 2:-1:2, 1::2], g[:, :, 2:-1:2, 2:-1:2]


def _up_blur_aten(x, w, kernel):
    """upfirdn2d(conv_transpose2d(x, w.transpose(0, 1), stride=2), kernel, pad=(1, 1)) for a 3x3
    ``w`` (out, in, 3, 3) and a 4x4 ``kernel``: (B, out, 2h, 2w). Four phase convs (one per output
    row/column parity, 9 taps in all, as _conv_transpose3x3_s2), interleaved inside a zero border
    that is the blur's pad: one unpadded depthwise conv gives the output."""
    we, wo = w[:, :, 0::2].flip(2), w[:, :, 1:2]  # rows landing on even outputs (taps 2, 0) / odd (tap 1)
    ee = F.conv2d(x, we[:, :, :, 0::2].flip(3), padding=1)
    eo = F.conv2d(x, we[:, :, :, 1:2], padding=(1, 0))
    oe = F.conv2d(x, wo[:, :, :, 0::2].flip(3), padding=(0, 1))
    oo = _conv1x1(x, wo[:, :, :, 1:2])
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    y = _Interleave.apply(fmt, ee, eo, oe, oo)
    return _depthwise_conv(y, kernel)


def _conv1x1(x, w, b=None, act: bool = False):
    """conv2d with a 1x1 ``w`` (out, in, 1, 1) [+ in-place leaky ReLU]; an NHWC ``x`` contracts its
    innermost axis in one GEMM (PyTorch's single-thread small-batch 1x1 conv path copies to NCHW
    and back). The activation runs on the GEMM's output itself, not on the permuted view (an
    in-place op on a view makes autograd clone the gradient)."""
    if is_channels_last(x):
        n, c, h, wd = x.shape
        y = F.linear(x.permute(0, 2, 3, 1).reshape(n * h * wd, c), w.flatten(1), b)  # a view, one addmm
        return (_lrelu(y) if act else y).view(n, h, wd, -1).permute(0, 3, 1, 2)
    y = F.conv2d(x, w, b)
    return _lrelu(y) if act else y


def _conv_transpose3x3_s2(x, w):
    """conv_transpose2d(x, w.transpose(0, 1), stride=2) for a 3x3 ``w`` (out, in, 3, 3), as four
    ordinary convs, one per output phase (even/odd row x even/odd column), whose outputs are
    interleaved. Same multiply count; PyTorch's CPU transposed conv is ~1.4x slower than this."""
    if w.shape[-1] != 3 or x.device.type != "cpu":
        return F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
    b, _, h, wd = x.shape
    even, odd = [2, 0], [1]  # taps landing on even output positions (2i <- x[i-1], x[i]) / odd ones
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = torch.empty(b, w.shape[0], 2 * h + 1, 2 * wd + 1, dtype=x.dtype, device=x.device, memory_format=fmt)
    out[:, :, 0::2, 0::2] = F.conv2d(x, w[:, :, even][:, :, :, even], padding=1)
    out[:, :, 0::2, 1::2] = F.conv2d(x, w[:, :, even][:, :, :, odd], padding=(1, 0))
    out[:, :, 1::2, 0::2] = F.conv2d(x, w[:, :, odd][:, :, :, even], padding=(0, 1))
    out[:, :, 1::2, 1::2] = F.conv2d(x, w[:, :, odd][:, :, :, odd])
    return out


class NoiseInjection(nn.Module):
    """Holds the released checkpoints' noise weight; LIA never adds noise, so this is identity."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x


class StyledConv(nn.Module):
    def __init__(self, in_ch, out_ch, kernel_size, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasAct(out_ch)

    def forward(self, x, style):
        conv = self.conv
        if aten_path(conv.backend, x) and aten_path(self.activate.backend, x):
            # NoiseInjection is the identity: modulated conv + bias + leaky ReLU in one epilogue
            return conv._batched(x, conv.styles(style), act_bias=self.activate.bias)
        return self.activate(self.noise(conv(x, style)))


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int):
        return self.input.expand(batch, -1, -1, -1)


class ToRGB(nn.Module):
    """1x1 conv + bias + leaky ReLU, plus a second bias, plus the upsampled previous RGB."""

    def __init__(self, in_ch: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ConvLayer(in_ch, 3, 1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, skip=None):
        out = self.conv(x) + _as(self.bias, x)
        if skip is not None:
            up = self.upsample(_as(skip, out))
            # in place on the fresh sum on the fast path (add's backward saves no operand)
            out = out.add_(up) if aten_path(self.upsample.backend, x) else out + up
        return out


class FlowWarpLevel(KernelUser):
    """One decoder level of flow warping (LIA's ``ToFlow``): predicts flow and mask, then warps
    and inpaints. A modulated 1x1 conv (no demodulation) + bias gives the logits (2 flow
    channels, 1 mask channel), composed with the previous level's; ``leo_kernels.warp_inpaint``
    warps the encoder feature with them and blends it into the decoder feature.
    Returns (warped, blended, composed logits). Attribute names (``upsample``, ``conv``, ``bias``)
    are LIA's ``to_flows.<i>`` keys."""

    def __init__(self, in_ch: int, style_dim: int):
        super().__init__()
        # Only its buffer is used (for the state_dict): warp_inpaint applies this upsampler itself.
        self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.align_corners = False  # LIA's convention; Animator(align_corners=True) for exact zero-flow identity

    def logits(self, x, style):
        """This level's own logits (B, 3, h, w): flow x, y and mask, before composing."""
        return self.conv(x, style) + _as(self.bias, x)

    def forward(self, x, style, feat, skip=None, logits=None):
        """``logits``: this level's logits if the caller computed (and changed) them already."""
        logits = self.logits(x, style) if logits is None else logits
        if cpu_autocast(x) and aten_path(self.backend, x):  # the float32 kernel (see cpu_autocast)
            x = x.float()
        feat = _as(feat, x)
        skip = _as(skip, x) if skip is not None else None
        if (not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()
                and aten_path(self.backend, x) and _has_warp_kernel()):
            # Inference (leo animate): the compiled CPU kernel itself. The custom op would do the
            # same, plus its Python dispatch and, on its first call, importing torch._dynamo
            # (about 1 s of CPU at process start). Not under torch.compile: it cannot trace
            # is_inference_mode_enabled (a graph break per decoder level), and a compiled graph
            # has no per-call Python dispatch to save.
            fmt = torch.channels_last if is_channels_last(feat) else torch.contiguous_format
            warped, blended, composed = torch.ops.leo_kernels._warp_inpaint_fwd(
                feat, x, _as(logits, x).contiguous(), None if skip is None else skip.contiguous(), self.align_corners)
            return warped.contiguous(memory_format=fmt), blended.contiguous(memory_format=fmt), composed.contiguous()
        return K.warp_inpaint(feat, x, _as(logits, x), skip, align_corners=self.align_corners, backend=self.backend)


ToFlow = FlowWarpLevel  # LIA's name, kept importable

_WARP_KERNEL = []


def _has_warp_kernel() -> bool:
    """Whether the compiled extension registered ``leo_kernels::_warp_inpaint_fwd`` (checked once)."""
    if not _WARP_KERNEL:
        from leo_kernels._op import has_compiled

        _WARP_KERNEL.append(has_compiled("_warp_inpaint_fwd"))
    return _WARP_KERNEL[0]


class Direction(nn.Module):
    """Learned motion basis W (style_dim x motion_dim); Q = QR(W + 1e-8).Q is orthonormal."""

    def __init__(self, style_dim: int, motion_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(style_dim, motion_dim))

    def basis(self) -> torch.Tensor:
        return torch.linalg.qr(full(self.weight) + 1e-8, mode="reduced").Q

    def forward(self, alpha: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        q = self.basis() if q is None else q
        return _as(alpha, q) @ q.t()
