"""StyleGAN2 ops: upfirdn2d (FIR up/down-sampling) and bias_act (fused bias + leaky ReLU).

Scaffold: reference backend only; the fused backends are added op by op.
"""
from __future__ import annotations

import math

from leo_kernels import reference
from leo_kernels._backend import resolve_backend

_SUPPORTED = ("reference",)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad4(pad):
    if isinstance(pad, int):
        return (pad, pad, pad, pad)
    pad = tuple(pad)
    return pad * 2 if len(pad) == 2 else pad


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0), *, backend=None):
    resolve_backend("upfirdn2d", x.device, backend, _SUPPORTED)
    return reference.upfirdn2d(x, kernel, _pair(up), _pair(down), _pad4(pad))


def bias_act(x, bias=None, negative_slope=0.2, gain=math.sqrt(2.0), *, backend=None):
    resolve_backend("bias_act", x.device, backend, _SUPPORTED)
    return reference.bias_act(x, bias, negative_slope, gain)
