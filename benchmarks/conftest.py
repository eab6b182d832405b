"""Benchmark session set-up shared by benchmarks/*.py (pytest-benchmark).

Run with `pytest benchmarks --benchmark-only` (`make bench`). Each benchmark records its shapes,
dtype and device in `benchmark.extra_info`; the header below records the machine.
"""
import os
import platform

import pytest
import torch


def pytest_report_header(config):
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"leo benchmarks: torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"torch threads {torch.get_num_threads()}, CUDA device: {cuda}"
    )


@pytest.fixture
def record_throughput():
    """record_throughput(benchmark, nbytes): store the minimal bytes moved and the achieved GB/s
    (from the median time) in extra_info. Call it after `benchmark(...)` has run."""

    def record(benchmark, nbytes: int):
        benchmark.extra_info["bytes_moved"] = int(nbytes)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None:
            median = stats.stats.median
            benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 2) if median > 0 else None

    return record
