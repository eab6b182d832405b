"""Flow-warp ops: grid_sample, compose_flow, warp_inpaint (docs/OPS.md).

Scaffold: reference backend only; the fused backends are added op by op.
"""
from __future__ import annotations

from leo_kernels import reference
from leo_kernels._backend import resolve_backend

_SUPPORTED = ("reference",)


def grid_sample(input, grid, padding_mode="zeros", align_corners=False, *, backend=None):
    resolve_backend("grid_sample", input.device, backend, _SUPPORTED)
    return reference.grid_sample(input, grid, padding_mode, align_corners)


def compose_flow(coarse, fine, *, backend=None):
    resolve_backend("compose_flow", fine.device, backend, _SUPPORTED)
    return reference.compose_flow(coarse, fine)


def warp_inpaint(feat, x, logits, skip=None, align_corners=False, *, backend=None):
    resolve_backend("warp_inpaint", feat.device, backend, _SUPPORTED)
    return reference.warp_inpaint(feat, x, logits, skip, align_corners)
