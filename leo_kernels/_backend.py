"""Backend discovery and selection shared by every leo_kernels op.

Backends, fastest first: "cuda" (compiled extension), "triton", "cpu" (compiled
C++/OpenMP for the warp and StyleGAN ops; for the attention ops, which have no C++ kernel,
an ATen composite inside the same custom op), "reference" (eager PyTorch, the executable
definition of each op). The op template built on this module: leo_kernels/_op.py.
A call picks one per device; a user can force one with the op's ``backend=``
argument or the ``LEO_KERNELS_BACKEND`` environment variable, and ask which one
ran with :func:`last_backend`.
"""
from __future__ import annotations

import contextlib
import os

import torch

BACKENDS = ("cuda", "triton", "cpu", "reference")
ENV_VAR = "LEO_KERNELS_BACKEND"

try:  # The compiled extension registers the C++/CUDA kernels on import.
    from leo_kernels import _C  # noqa: F401

    _EXT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    _EXT_ERROR = exc


def extension_loaded() -> bool:
    return _C is not None


def extension_error() -> Exception | None:
    """Why the compiled extension failed to import (None when it loaded)."""
    return _EXT_ERROR


def extension_has_cuda() -> bool:
    return _C is not None and bool(_C.with_cuda())


def _import_triton() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


# Probed once at import; a plain global (not lru_cache) so torch.compile traces it cleanly.
_TRITON_IMPORTABLE = _import_triton()


def triton_importable() -> bool:
    return _TRITON_IMPORTABLE


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_type(device) -> str:
    return torch.device(device).type if device is not None else "cpu"


def available_backends(device=None) -> list[str]:
    """Backends usable for tensors on ``device`` (default: CPU), fastest first.

    Triton runs on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1``.
    """
    kind = _device_type(device)
    out = []
    if kind == "cuda":
        if extension_has_cuda():
            out.append("cuda")
        if triton_importable():
            out.append("triton")
    elif kind == "cpu":
        if triton_importable() and triton_interpret():
            out.append("triton")
        if extension_loaded():
            out.append("cpu")
    out.append("reference")
    return out


def _default_order(kind: str) -> tuple[str, ...]:
    # Under TRITON_INTERPRET the interpreter is slow: never pick it on CPU unless forced.
    return ("cuda", "triton", "reference") if kind == "cuda" else ("cpu", "reference")


def resolve_backend(op: str, device, backend: str | None, supported=BACKENDS, defaults=None) -> str:
    """Pick the backend for one call of ``op`` on ``device``.

    ``backend`` (argument) wins over ``$LEO_KERNELS_BACKEND`` which wins over the
    default order. ``supported`` lists the backends the op implements; ``defaults``
    maps a device type to the op's own default order where it differs from the
    library's (e.g. ``{"cpu": ("reference",)}``). An unknown name raises ValueError;
    a known but unavailable one raises RuntimeError.
    """
    requested = backend if backend is not None else (os.environ.get(ENV_VAR) or None)
    kind = _device_type(device)
    avail = [b for b in available_backends(device) if b in supported]
    order = (defaults or {}).get(kind) or _default_order(kind)
    if requested is not None:
        if not isinstance(requested, str) or requested not in BACKENDS:
            raise ValueError(
                f"{op}: backend must be one of {BACKENDS} or None, got {requested!r}"
            )
        if requested in avail:
            chosen = requested
        elif backend is None:
            # Environment default that does not apply here (e.g. "cuda" for a CPU tensor).
            chosen = next(b for b in order if b in avail)
        else:
            raise RuntimeError(
                f"{op}: backend {requested!r} is not available for {kind} tensors "
                f"(available: {avail}){_why_unavailable(requested, kind)}"
            )
    else:
        chosen = next(b for b in order if b in avail)
    if not torch.compiler.is_compiling():
        _LAST[op] = chosen
    return chosen


def _why_unavailable(backend: str, kind: str) -> str:
    if backend in ("cpu", "cuda") and not extension_loaded():
        return f"; the compiled extension did not load: {_EXT_ERROR}"
    if backend == "cuda" and kind == "cuda":
        return "; the extension was built without CUDA (see LEO_FORCE_CUDA in setup.py)"
    if backend == "cuda" or (backend == "cpu" and kind == "cuda"):
        return f"; the {backend} backend only runs on {backend} tensors"
    if backend == "triton":
        if not triton_importable():
            return "; triton is not installed"
        return "; on CPU tensors Triton runs only with TRITON_INTERPRET=1"
    return ""


_LAST: dict[str, str] = {}


def last_backend(op: str) -> str | None:
    """The backend the most recent eager call of ``op`` used (None if never called)."""
    return _LAST.get(op)


def deterministic_requested(flag: bool | None = None) -> bool:
    """Deterministic mode: explicit flag, else torch.are_deterministic_algorithms_enabled()."""
    return bool(flag) if flag is not None else torch.are_deterministic_algorithms_enabled()


try:
    import nvtx as _nvtx
except ImportError:
    _nvtx = None


def nvtx_range(name: str):
    """An nvtx range around an op call when the ``nvtx`` package is installed."""
    if _nvtx is None or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _nvtx.annotate(f"leo_kernels.{name}", domain="leo_kernels")
