"""Temporal attention ops: temporal_attention and the fused T-atten residual block.

Scaffold: reference backend only; the fused backends are added op by op.
"""
from __future__ import annotations

from leo_kernels import reference
from leo_kernels._backend import resolve_backend

_SUPPORTED = ("reference",)


def temporal_attention(q, k, v, rope=False, *, backend=None):
    resolve_backend("temporal_attention", q.device, backend, _SUPPORTED)
    return reference.temporal_attention(q, k, v, rope)


def temporal_attention_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope=False, *, backend=None):
    resolve_backend("temporal_attention_block", x.device, backend, _SUPPORTED)
    return reference.temporal_attention_block(x, norm_weight, w_qkv, w_out, b_out, heads, rope)
