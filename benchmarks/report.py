"""Regenerate benchmarks/RESULTS.md: run every benchmark once, write one table per benchmark function,
each stating the machine, the threads and the command that reproduces it.

    python benchmarks/report.py                 # `make bench-results`: runs the benchmarks, rewrites RESULTS.md
    python benchmarks/report.py -- -k warp      # extra pytest arguments after --
    python benchmarks/report.py --json FILE     # only render FILE (a pytest-benchmark JSON from these benchmarks)

Short settings on CPU, the full set with CUDA or LEO_BENCH_FULL=1 (see _timing.py). The session keeps
freed memory for reuse (conftest.py); on a CPU-only machine the warp benchmarks run a second time with
the default allocator (LEO_BENCH_FRESH_PAGES=1) and get tables of their own.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS_MD = os.path.join(HERE, "RESULTS.md")


def run_benchmarks(json_path: str, extra: list[str], target: str = "benchmarks", env: dict | None = None) -> dict:
    """Run the benchmarks (pytest-benchmark) from the repo root; returns load and wall-time facts."""
    cmd = [sys.executable, "-m", "pytest", target, "--benchmark-only", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={json_path}", *extra]
    load_before, t0 = os.getloadavg(), time.time()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"report: the benchmarks failed (exit code {proc.returncode}); RESULTS.md left unchanged")
    return {"load_before": load_before, "load_after": os.getloadavg(), "wall_s": time.time() - t0,
            "pytest_args": extra}


def _fmt(x, digits=3):
    if x is None:
        return ""
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def _table(entries: list[dict]) -> list[str]:
    lines = ["| case | implementation | median ms per call | min ms | GB/s | speedup of ours (median of paired ratios) |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        info = e["extra_info"]
        per_unit = any(st.get("units", 1) != 1 for st in info["impls"].values())
        first = True
        for impl, st in info["impls"].items():
            name = f"{impl} ({st['units']}/call)" if per_unit else impl
            if impl in info["ours"]:
                name, speed = f"**{name}**", "ours"
            else:
                speed = ", ".join(f"{o}: **{r:.2f}x**" for o, r in info["speedup"][impl].items())
            case = info.get("case", e["name"]) if first else ""
            lines.append(f"| {case} | {name} | {_fmt(st['median_ms'])} | {_fmt(st['min_ms'])} | "
                         f"{_fmt(st['GB/s'])} | {speed} |")
            first = False
    return lines


def _machine(m: dict) -> tuple[str, str]:
    """The machine line of a run's ``machine_info["leo"]`` and the environment prefix its commands need."""
    threads = m.get("torch_threads", "?")
    env = "LEO_BENCH_FULL=1 " if m.get("settings") == "full" and not m.get("gpu") else ""
    if m.get("freed_memory_reuse") is False:
        env += "LEO_BENCH_FRESH_PAGES=1 "
    device = f"{m.get('gpu')} GPU + " if m.get("gpu") else ""
    isa = f" ({m['cpu_isa']})" if m.get("cpu_isa") else ""
    machine = (f"{device}{m.get('cpu', '?')}{isa}, {m.get('cpu_count', '?')} CPUs, torch {m.get('torch', '?')}, "
               f"torch threads: {threads} (OMP_NUM_THREADS), {m.get('settings', '?')} settings")
    if m.get("huge_pages"):  # THP_MEM_ALLOC_ENABLE=1 in the environment: say so, it changes allocation costs
        machine += ", THP_MEM_ALLOC_ENABLE=1"
    if m.get("freed_memory_reuse"):
        machine += ", freed memory kept for reuse (as `leo` commands run)"
    elif "freed_memory_reuse" in m:
        machine += ", default allocator: fresh pages for large tensors (LEO_BENCH_FRESH_PAGES=1)"
    return machine, f"{env}OMP_NUM_THREADS={threads}"


def _sections(data: dict, title_suffix: str = "") -> list[str]:
    """One table per benchmark function of a pytest-benchmark JSON, each with its machine and command."""
    machine, env = _machine(data["machine_info"].get("leo", {}))
    groups = defaultdict(list)
    for e in data["benchmarks"]:
        groups[e["fullname"].split("[")[0]].append(e)
    out = []
    for test, entries in groups.items():
        out += ["", f"## {test.removeprefix('benchmarks/')}{title_suffix}", "",
                f"Machine: {machine}.  ",
                f"Command: `{env} python -m pytest {test} --benchmark-only`", ""]
        out += _table(entries)
    return out


def render(data: dict, run: dict | None = None) -> str:
    """The Markdown page for a pytest-benchmark JSON of these benchmarks. ``run``: load and wall-time
    facts of the run (default: those report.py stored in the JSON, if any). A second run of the warp
    benchmarks with the default allocator, stored under ``leo_fresh_pages``, gets tables of its own."""
    m = data["machine_info"].get("leo", {})
    run = run or data.get("leo_run")
    threads = m.get("torch_threads", "?")
    machine, _ = _machine(m)
    when = data.get("datetime", datetime.datetime.now(datetime.timezone.utc).isoformat())[:16].replace("T", " ")
    out = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/report.py` (`make bench-results`); do not edit by hand. Every table",
        "times leo against the baselines a user would pick, interleaved in the same run: each round calls a",
        "baseline and then ours, and the speedup is the median of the per-pair time ratios (baseline / ours,",
        "per frame where implementations differ in frames per call), so load from other jobs hits both sides",
        "of a pair alike. GB/s = the minimal bytes a call must move / its median time. Flow-warp inputs are",
        "smooth few-pixel flows unless the case says random (the worst case). Settings: short = the CPU",
        "defaults (a few cases, a few minutes on 2 cores); full = every case (with CUDA, or LEO_BENCH_FULL=1).",
        "",
        f"Machine: {machine}. Taken {when} UTC.",
    ]
    if run:
        ncpu = m.get("cpu_count") or os.cpu_count() or 1
        lb, la = run["load_before"][0], run["load_after"][0]
        # the benchmarks themselves keep `threads` CPUs busy: other jobs show as load beyond that
        own = threads if isinstance(threads, int) else 0
        busy = lb > 0.5 * ncpu or la > own + 0.5 * ncpu
        out += ["", f"Whole run: {run['wall_s'] / 60:.1f} min; load average {lb:.1f} before, {la:.1f} after, on {ncpu} CPUs."
                + (" **Busy machine**: other jobs shared the CPUs, so absolute times are noisy; the paired"
                   " ratios are the robust numbers." if busy else "")]
    if not m.get("gpu"):
        out += ["", "**No GPU numbers**: no CUDA device was present. On a GPU machine the same command runs the",
                "full GPU set (decoder shapes, bfloat16, the `cuda` and `triton` backends, CUDA-graph sampling)."]

    out += _sections(data)
    fresh = data.get("leo_fresh_pages")
    if fresh and fresh.get("benchmarks"):
        out += ["", "# The warp benchmarks with the default allocator", "",
                "The same warp cases in a process that keeps glibc's defaults: each freed tensor above 32 MB goes",
                "back to the OS and the next one is zero-filled page by page, for every implementation alike.",
                "That favours the fused ops, which allocate only their outputs, where the eager baselines",
                "allocate every intermediate; leo's own commands keep freed memory (the tables above)."]
        out += _sections(fresh, " (default allocator)")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="render this pytest-benchmark JSON instead of running the benchmarks")
    p.add_argument("--out", default=RESULTS_MD, help="where to write (default: benchmarks/RESULTS.md)")
    a = p.parse_args(argv)
    if a.json:
        json_path = a.json
        with open(json_path) as f:
            data = json.load(f)
    else:
        json_path = os.path.join(tempfile.mkdtemp(prefix="leo-bench-"), "results.json")
        run = run_benchmarks(json_path, extra)
        with open(json_path) as f:
            data = json.load(f)
        data["leo_run"] = run  # kept in the JSON, so --json renders the same page again
        if not data["machine_info"].get("leo", {}).get("gpu") and not extra:
            # CPU: the warp cases again with the default allocator (allocation costs differ by 2x and more)
            fresh_path = os.path.join(os.path.dirname(json_path), "fresh_pages.json")
            run_benchmarks(fresh_path, [], target="benchmarks/bench_warp.py", env={"LEO_BENCH_FRESH_PAGES": "1"})
            with open(fresh_path) as f:
                data["leo_fresh_pages"] = json.load(f)
        with open(json_path, "w") as f:
            json.dump(data, f)
        print(f"report: raw results in {json_path}")
    if not data.get("benchmarks"):
        sys.exit(f"report: {json_path} holds no benchmark results")
    text = render(data)
    with open(a.out, "w") as f:
        f.write(text)
    print(f"report: wrote {os.path.relpath(a.out)} ({len(data['benchmarks'])} benchmarks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
