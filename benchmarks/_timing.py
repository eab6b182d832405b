"""Paired, interleaved timing shared by every benchmark file.

On a machine shared with other jobs, load changes from one second to the next, so timing each
implementation in its own block compares different machines. `compare` instead times a baseline
call and then ours, again and again, and reports for each baseline the median of the per-pair
ratios (baseline time / our time): load that hits a pair hits both of its calls alike.

    compare(benchmark, {"leo-cpu": ours, "eager": eager, "compiled": compiled}, ours="leo-cpu",
            rounds=5, nbytes=bytes_moved)

pytest-benchmark drives the rounds (one round = every pair once), so its own table shows the time
of a whole round; the per-implementation numbers go into ``benchmark.extra_info`` (and from there
into the JSON that benchmarks/report.py turns into RESULTS.md; conftest.py prints them too):

    impls:   {name: {"median_ms", "min_ms", "GB/s"}}          per call, GB/s from the median
    speedup: {baseline: {ours_name: median(t_baseline / t_ours)}}   per work unit (e.g. per frame)
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch

# Short settings by default on CPU (all files in about 5 minutes on 2 cores, 9 with a cold torch.compile
# cache); the full set of shapes, dtypes and baselines when CUDA is present or LEO_BENCH_FULL=1.
FULL = torch.cuda.is_available() or os.environ.get("LEO_BENCH_FULL", "") == "1"

# (benchmark name, extra_info) of every compare() in this session, for conftest's summary.
RESULTS: list[tuple[str, dict]] = []


def sync() -> None:
    """Wait for queued GPU work, so a call's time includes its kernels."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def compare(benchmark, impls: dict[str, Callable[[], object]], ours: str | list[str], *, rounds: int,
            nbytes: int | dict[str, int] | None = None, units: dict[str, int] | None = None,
            warmup: int = 1, min_seconds: float = 1.0) -> dict:
    """Time every implementation in ``impls`` (zero-argument callables) interleaved: each round calls
    every (baseline, ours) pair, baseline first. ``ours`` names the implementation(s) being measured,
    every other entry is a baseline. ``nbytes``: the minimal bytes one call must move (one number, or
    one per implementation), for GB/s. ``units``: work units per call (e.g. frames in a batch) when
    implementations differ in it; ratios compare time per unit. ``rounds`` is a minimum: fast calls
    get more rounds, up to ``min_seconds`` of timing in all (a median of 5 sub-millisecond pairs is
    at the mercy of a single scheduler hiccup). Returns the summary it stores in ``benchmark.extra_info``."""
    ours = [ours] if isinstance(ours, str) else list(ours)
    unknown = [o for o in ours if o not in impls]
    if unknown or not ours:
        raise ValueError(f"ours={ours} must name entries of impls ({sorted(impls)})")
    baselines = [b for b in impls if b not in ours]
    if not baselines:
        raise ValueError("compare needs at least one baseline besides ours")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    units = {name: 1 for name in impls} | (units or {})
    if not isinstance(nbytes, dict):
        nbytes = {name: nbytes for name in impls}

    last = {}
    for _ in range(warmup):  # compilation, caches, allocator
        for name, fn in impls.items():
            last[name] = _timed(fn)
    if last:
        round_s = sum(last[b] + last[o] for b in baselines for o in ours)
        rounds = max(rounds, min(1000, int(min_seconds / max(round_s, 1e-9))))

    times = {name: [] for name in impls}
    ratios = {b: {o: [] for o in ours} for b in baselines}

    def one_round():
        for b in baselines:
            for o in ours:
                tb, to = _timed(impls[b]), _timed(impls[o])
                times[b].append(tb)
                times[o].append(to)
                ratios[b][o].append((tb / units[b]) / (to / units[o]))

    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)

    summary = {"impls": {}, "speedup": {}, "ours": ours, "pairs_per_baseline": rounds}
    for name, ts in times.items():
        med = statistics.median(ts)
        n = nbytes.get(name)
        summary["impls"][name] = {
            "median_ms": round(med * 1e3, 4),
            "min_ms": round(min(ts) * 1e3, 4),
            "GB/s": round(n / med / 1e9, 2) if n and med > 0 else None,
            "units": units[name],
        }
    for b in baselines:
        summary["speedup"][b] = {o: round(statistics.median(r), 3) for o, r in ratios[b].items()}
    if any(nbytes.values()):
        summary["bytes_moved"] = {k: int(v) for k, v in nbytes.items() if v}
    summary["torch_threads"] = torch.get_num_threads()
    benchmark.extra_info.update(summary)
    RESULTS.append((benchmark.name, dict(benchmark.extra_info)))
    return summary
