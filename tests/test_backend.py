"""Backend discovery and selection (leo_kernels._backend)."""
import pytest
import torch

import leo_kernels
from leo_kernels import _backend


def test_reference_always_available():
    assert leo_kernels.available_backends("cpu")[-1] == "reference"
    assert "reference" in leo_kernels.available_backends("cuda")


def test_extension_loaded_with_cpu_backend():
    assert leo_kernels.extension_loaded(), f"compiled extension failed to load: {leo_kernels.extension_error()}"
    assert "cpu" in leo_kernels.available_backends("cpu")


def test_unknown_backend_is_value_error_naming_argument():
    with pytest.raises(ValueError, match="backend"):
        _backend.resolve_backend("some_op", "cpu", "tpu")


def test_unavailable_backend_is_clear_runtime_error():
    with pytest.raises(RuntimeError, match="'cuda' is not available for cpu tensors"):
        _backend.resolve_backend("some_op", "cpu", "cuda")


def test_op_without_backend_falls_back_in_order():
    assert _backend.resolve_backend("some_op", "cpu", None, ("cpu", "reference")) == "cpu"
    assert _backend.resolve_backend("some_op", "cpu", None, ("reference",)) == "reference"
    assert leo_kernels.last_backend("some_op") == "reference"


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert _backend.resolve_backend("some_op", "cpu", None, ("cpu", "reference")) == "reference"
    # An environment choice that does not apply to the device falls back instead of failing.
    monkeypatch.setenv(_backend.ENV_VAR, "cuda")
    assert _backend.resolve_backend("some_op", "cpu", None, ("cpu", "reference")) == "cpu"
    monkeypatch.setenv(_backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="backend"):
        _backend.resolve_backend("some_op", "cpu", None)


def test_triton_on_cpu_only_under_interpreter(monkeypatch):
    if not _backend.triton_importable():
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "triton" in leo_kernels.available_backends("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "triton" not in leo_kernels.available_backends("cpu")
    # Never the default on CPU, even when the interpreter is on.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.resolve_backend("some_op", "cpu", None) == "cpu"


def test_deterministic_flag_follows_torch():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert _backend.deterministic_requested() is True
        torch.use_deterministic_algorithms(False)
        assert _backend.deterministic_requested() is False
        assert _backend.deterministic_requested(True) is True
    finally:
        torch.use_deterministic_algorithms(before)


def test_op_specific_default_order(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    prefer_ref = {"cpu": ("reference",)}
    assert _backend.resolve_backend("some_op", "cpu", None, ("cpu", "reference"), prefer_ref) == "reference"
    # An explicit backend or environment choice still wins over the op's default.
    assert _backend.resolve_backend("some_op", "cpu", "cpu", ("cpu", "reference"), prefer_ref) == "cpu"
    monkeypatch.setenv(_backend.ENV_VAR, "cpu")
    assert _backend.resolve_backend("some_op", "cpu", None, ("cpu", "reference"), prefer_ref) == "cpu"
