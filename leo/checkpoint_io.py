"""Atomic file writes and leo's own weight format.

Our format is one ``.safetensors`` file: the tensors, plus the model's JSON config
(architecture hyperparameters) and its kind in the file's metadata. Every write goes
to a temporary file in the same folder, is fsynced, then renamed over the target,
so a crash mid-write never leaves a corrupt file behind.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Callable

import torch

FORMAT_VERSION = "1"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then atomically move the result to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_weights(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str, config: dict) -> None:
    """Save ``tensors`` with ``{kind, config}`` as a safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"leo_kind": kind, "leo_config": json.dumps(config, sort_keys=True), "leo_format": FORMAT_VERSION}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_weights(path: str | os.PathLike, expected_kind: str | None = None):
    """Return ``(tensors, kind, config)`` from a file written by :func:`save_weights`.

    Raises FileNotFoundError for a missing file and ValueError for one that is not a
    leo weights file (or of another kind than ``expected_kind``).
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({unreadable_reason(exc)}); "
                         "accepted: a .safetensors file written by leo") from None
    kind = meta.get("leo_kind")
    if kind is None:
        raise ValueError(f"{path} has no leo metadata (not written by leo)")
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{path} holds a {kind!r} model, expected {expected_kind!r}")
    return tensors, kind, json.loads(meta.get("leo_config", "{}"))


def unreadable_reason(exc: BaseException, limit: int = 200) -> str:
    """One line saying why ``torch.load(weights_only=True)`` or safetensors refused a file.

    PyTorch's weights-only error advises re-running ``torch.load`` with ``weights_only=False``.
    That runs whatever code the pickle holds, so for a file of unknown origin it is never passed
    on: the reason says what the file is not instead (callers add which formats are accepted).
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "weights_only" in text or "Weights only load failed" in text or "WeightsUnpickler" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return f"a pickle of Python objects ({found.group(1)}), not of tensors only"
        return "not a PyTorch file of tensors only"
    text = " ".join(text.split())
    if not text:
        return type(exc).__name__
    return text[:limit] + "..." if len(text) > limit else text


def is_leo_weights(path: str | os.PathLike) -> bool:
    """True if ``path`` looks like a safetensors file (by its header), whatever its extension."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{"
    except OSError:
        return False
