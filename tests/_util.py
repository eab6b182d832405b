"""Helpers for comparing fast paths with the eager reference, and saved training states."""
from __future__ import annotations

import torch

# Relative-error bounds (||a - b|| / ||b||) by dtype.
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype=None, tol=None, name="output"):
    """Relative error under the dtype's bound; NaN/Inf in ``out`` never passes."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    tol = tol if tol is not None else REL_TOL[dtype or out.dtype]
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so any element a kernel fails to write is caught."""
    return t.fill_(float("nan"))


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, strided storage (every other element of a doubled last dim)."""
    big = torch.empty(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def assert_states_equal(a, b, where: str = "") -> None:
    """``a`` and ``b`` (state_dicts, optimizer states, RNG states: nested dicts, lists and
    tensors) are identical, keys and values; the message names the first place that differs."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_states_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_states_equal(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where
