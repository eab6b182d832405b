"""Checkpoint I/O: atomic file writes, leo's own weight format, and reading LIA checkpoints.

Our format is one ``.safetensors`` file: the tensors, plus the model's JSON config
(architecture hyperparameters) and its kind in the file's metadata. Every write goes
to a temporary file in the same folder, is fsynced, then renamed over the target,
so a crash mid-write never leaves a corrupt file behind.

:func:`read_animator_checkpoint` / :func:`infer_animator_config` read the animator's inputs:
our files, released LIA checkpoints and bare state_dicts. Every checkpoint that cannot be
read raises :class:`CheckpointError` (a ValueError; also importable from leo.animator and
leo.train.common).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from typing import Any, Callable

import torch

FORMAT_VERSION = "1"
ANIMATOR_KIND = "animator"
ANIMATOR_SIZES = (32, 512)  # smallest and largest animator size (powers of two)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not ours, or does not fit the model (message says why)."""


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

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) for one that
    is not a leo weights file (or of another kind than ``expected_kind``).
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
        raise CheckpointError(f"{path} is not a readable safetensors file ({unreadable_reason(exc)}); "
                              "accepted: a .safetensors file written by leo") from None
    kind = meta.get("leo_kind")
    if kind is None:
        raise CheckpointError(f"{path} has no leo metadata (not written by leo)")
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, expected {expected_kind!r}")
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


# --------------------------------------------------------------------------- animator (LIA) checkpoints
ACCEPTED_FORMATS = ("a leo .safetensors file, a released LIA .pt checkpoint, "
                    "or a torch.save'd state_dict of tensors")


def read_animator_checkpoint(path) -> tuple[dict, dict | None]:
    """-> (state_dict, config or None). Raises FileNotFoundError / CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_leo_weights(path):
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({unreadable_reason(exc)}); "
                                  f"accepted: {ACCEPTED_FORMATS}") from None
        if "leo_kind" in meta:
            try:
                tensors, _, config = load_weights(path, expected_kind=ANIMATOR_KIND)
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
            return tensors, config
        from safetensors.torch import load_file

        return load_file(path), None
    try:
        # Released LIA files also pickle the training argparse.Namespace: allow only that.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({unreadable_reason(exc)}); "
                              f"accepted: {ACCEPTED_FORMATS}") from None
    if isinstance(obj, dict) and isinstance(obj.get("gen"), dict):
        obj = obj["gen"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds neither a LIA checkpoint ('gen' entry) nor a state_dict; "
                              f"accepted: {ACCEPTED_FORMATS}")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, None


def infer_animator_config(state_dict: dict, source: str = "state_dict") -> dict:
    """Architecture hyperparameters (size, style_dim, motion_dim, channel_multiplier, width)
    from the tensors of a generator state_dict."""
    try:
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"enc\.net_app\.convs\.(\d+)\.conv1\.", k))}
        n_blocks = len(blocks)
        size = 2 ** (n_blocks + 2)
        last = state_dict[f"enc.net_app.convs.{n_blocks + 1}.weight"]  # (style_dim, C4, 4, 4)
        style_dim, c4 = int(last.shape[0]), int(last.shape[1])
        motion_dim = int(state_dict["dec.direction.weight"].shape[1])
        width = c4 / 512.0
        c_size = int(state_dict["enc.net_app.convs.0.0.weight"].shape[0])
        cm = 1
        if size >= 64:
            base = {64: 256, 128: 128, 256: 64, 512: 32}[size]
            cm = max(1, int(round(c_size / (base * width))))
    except (KeyError, IndexError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{source} is not an animator (LIA generator) state_dict: cannot find {exc}") from None
    if n_blocks == 0 or not ANIMATOR_SIZES[0] <= size <= ANIMATOR_SIZES[1]:
        raise CheckpointError(f"{source}: unsupported generator size {size} (from {n_blocks} encoder blocks)")
    if float(width).is_integer():
        width = float(width)
    return {"size": size, "style_dim": style_dim, "motion_dim": motion_dim, "channel_multiplier": cm, "width": width}
