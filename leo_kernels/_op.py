"""The op template: helpers every leo_kernels op family uses (docs/INTERNALS.md, "Adding an op").

One place for
- the compute-dtype rule (:func:`compute_dtype`): float64 stays float64, everything else
  accumulates in float32;
- the layout rule shared with the C++/CUDA/Triton kernels (:func:`output_format`, :func:`dense`,
  :func:`empty`): C-channel outputs are channels_last when the 4-D input is channels_last (and not
  also plain contiguous), else contiguous;
- the compiled-op check (:func:`has_compiled`): is ``torch.ops.leo_kernels.<name>`` registered;
- fake registration of compiled ops (:func:`register_compiled_fakes`): each fake function is
  written once and registered for the Python custom op and, when built, for the compiled op;
- the public-call dispatch (:func:`call`): resolve the backend, run the eager reference or the
  custom op, both inside one nvtx range.
"""
from __future__ import annotations

import importlib

import torch

from leo_kernels import _backend
from leo_kernels._backend import nvtx_range, resolve_backend

__all__ = [
    "compute_dtype",
    "is_channels_last",
    "output_format",
    "dense",
    "empty",
    "empty_out",
    "has_compiled",
    "register_compiled_fakes",
    "kernel",
    "call",
]


# --------------------------------------------------------------------------- dtype rule
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for storage ``dtype``: float64 for float64 (gradcheck), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- layout rule
def is_channels_last(t: torch.Tensor) -> bool:
    """True when 4-D ``t`` is channels_last-contiguous and not also plain contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def output_format(t: torch.Tensor) -> torch.memory_format:
    """Memory format of the outputs/gradients shaped like input ``t`` (the rule every kernel follows)."""
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a dense NCHW- or channels_last-contiguous tensor (kernels index storage linearly)."""
    return t if (t.is_contiguous() or is_channels_last(t)) else t.contiguous()


def empty(shape, like: torch.Tensor, fmt: torch.memory_format = torch.contiguous_format, dtype=None) -> torch.Tensor:
    """An uninitialized output on ``like``'s device (``like``'s dtype unless ``dtype``)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def empty_out(x: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialized output of ``shape`` with ``x``'s dtype and device, laid out by the layout
    rule for input ``x``."""
    return empty(shape, x, output_format(x))


# --------------------------------------------------------------------------- compiled ops
def has_compiled(name: str) -> bool:
    """Whether the compiled extension registered ``leo_kernels::<name>`` (schema declared in C++)."""
    if not _backend.extension_loaded():
        return False
    try:
        getattr(torch.ops.leo_kernels, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register_compiled_fakes(fakes: dict) -> None:
    """Register ``{compiled op name: fake fn}`` for the compiled ops that exist in this build."""
    for name, fn in fakes.items():
        if has_compiled(name):
            torch.library.register_fake(f"leo_kernels::{name}", fn)


# --------------------------------------------------------------------------- dispatch
def kernel(family: str, name: str, backend: str, *, triton_name: str | None = None, composite=None):
    """The function that computes kernel ``name`` (e.g. "grid_sample_fwd") on ``backend``, called
    by a custom op's implementation:
    - "triton": ``leo_kernels.triton.<family>_triton.<triton_name or name>`` (imported lazily:
      triton is optional);
    - "cpu" with a ``composite`` (an ATen composite standing in for a C++ kernel): ``composite``;
    - otherwise the compiled op ``torch.ops.leo_kernels._<name>``, which the dispatcher routes to
      the C++ CPU or the CUDA kernel by device.
    """
    if backend == "triton":
        module = importlib.import_module(f"leo_kernels.triton.{family}_triton")
        return getattr(module, triton_name or name)
    if backend == "cpu" and composite is not None:
        return composite
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"leo_kernels::{name}: unknown backend {backend!r}")
    return getattr(torch.ops.leo_kernels, "_" + name)


def call(op: str, device, backend, supported, reference_fn, custom_fn, defaults=None):
    """Resolve the backend of one call of ``op`` and run it inside an nvtx range:
    ``reference_fn()`` for "reference", else ``custom_fn(chosen)`` (the custom op call)."""
    chosen = resolve_backend(op, device, backend, supported, defaults)
    with nvtx_range(op):
        if chosen == "reference":
            return reference_fn()
        return custom_fn(chosen)
