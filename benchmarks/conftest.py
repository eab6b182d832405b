"""Benchmark session set-up shared by benchmarks/bench_*.py (pytest-benchmark).

`pytest benchmarks --benchmark-only` (`make bench`) runs every file here: short settings on CPU (a
few minutes on 2 cores), the full set when CUDA is present or LEO_BENCH_FULL=1 (see _timing.py).
`python benchmarks/report.py` (`make bench-results`) runs the same and rewrites RESULTS.md.
Every benchmark times leo against its baselines with _timing.compare (paired, interleaved).

The process keeps freed memory for reuse (leo.cli.reuse_freed_memory, as every `leo` command and a
training loop's steady state do), for every implementation alike: by default glibc returns each large
tensor to the OS when it is freed, and the next one is zero-filled page by page by the kernel, a cost
of the allocator that at the (8, 64, 256, 256) warp shapes is as large as the copy of the op's bytes.
LEO_BENCH_FRESH_PAGES=1 measures a default process instead.
"""
import os
import platform

import pytest
import torch
from _timing import FULL, RESULTS

FRESH_PAGES = os.environ.get("LEO_BENCH_FRESH_PAGES", "") == "1"
if not FRESH_PAGES:
    from leo.cli import reuse_freed_memory

    reuse_freed_memory()

# Each benchmark case compiles its own shapes; past dynamo's recompile limit (8 per function) the
# `compiled` baselines would silently run eagerly.
torch._dynamo.config.recompile_limit = 256
torch._dynamo.config.accumulated_recompile_limit = 4096


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:torch.*")  # inductor start-up noise


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py, which pytest's default file pattern (test_*.py) skips. A hook rather than
    an ini option, so it works whichever ini file pytest picks (the top-level one lists tests/)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):  # a file named on the command line: pytest collects it itself
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def machine() -> dict:
    """What the numbers were measured on. ``cpu_isa``: the vector ISA torch's CPU kernels use and
    whether bf16 is native; same-named CPUs differ (an "AMD EPYC" may lack AVX512), and so do the
    float32 and bf16 rows."""
    info = _cpuinfo()
    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    bf16 = {"avx512_bf16", "amx_bf16"} & set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_isa": f"{isa}, {'native bf16' if bf16 else 'no native bf16'}",
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "settings": "full" if FULL else "short",
        "huge_pages": os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1",  # PyTorch's switch, if the user set it
        "freed_memory_reuse": not FRESH_PAGES,
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def pytest_report_header(config):
    m = machine()
    return (f"leo benchmarks: torch {m['torch']}, {m['cpu_count']} CPUs ({m['cpu']}), torch threads "
            f"{m['torch_threads']}, CUDA device: {m['gpu'] or 'none'}, {m['settings']} settings, "
            f"load average {m['load_avg_1_5_15']}")


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["leo"] = machine()


def pytest_terminal_summary(terminalreporter):
    """Per-implementation times and paired speedups (pytest-benchmark's own table shows whole rounds)."""
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("leo: paired timings (median ms per call, GB/s; speedup = median of per-pair ratios)")
    for name, info in RESULTS:
        tr.write_line(f"{name}: {info.get('case', '')}")
        width = max([16, *map(len, info["impls"])])
        for impl, st in info["impls"].items():
            gbs = f"{st['GB/s']:8.2f} GB/s" if st["GB/s"] is not None else ""
            if impl in info["ours"]:
                note = "(ours)"
            else:
                note = "speedup of " + ", ".join(f"{o}: {r:.2f}x" for o, r in info["speedup"][impl].items())
            tr.write_line(f"    {impl:<{width}} {st['median_ms']:12.3f} ms {gbs:>14}   {note}")
