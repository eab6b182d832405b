"""Shared test set-up.

Without CUDA the Triton backend is tested through its interpreter: TRITON_INTERPRET
must be set before triton is first imported, so it is set here.
"""
import os
import pathlib

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]
LIA_SAMPLES = REPO.parent / "shared" / "data" / "lia_samples"


@pytest.fixture
def lia_samples() -> pathlib.Path:
    """The real TaichiHD/TED sample clips beside the repo; skip when absent."""
    if not (LIA_SAMPLES / "taichi").is_dir():
        pytest.skip(f"real sample clips not found at {LIA_SAMPLES} (../shared/data/lia_samples)")
    return LIA_SAMPLES


requires_cuda = pytest.mark.skipif(not _HAS_CUDA, reason="needs a CUDA device (none visible)")


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test. For tests made of thousands of tiny ops
    (a few thousand elements each), where a second thread only adds synchronization (measured
    ~17x more CPU time with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
