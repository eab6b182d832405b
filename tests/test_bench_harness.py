"""The benchmark harness (no timing here): `pytest benchmarks` collects every bench_*.py, and the
paired timing helper keeps its bookkeeping straight and rejects bad input."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def test_pytest_benchmarks_collects_every_bench_file():
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    for f in sorted(BENCH.glob("bench_*.py")):
        assert any(i.startswith(f"benchmarks/{f.name}::") for i in ids), f"{f.name}: no benchmark collected"
    assert len(ids) == len(set(ids)), "a benchmark was collected twice"


class _FakeBenchmark:
    name = "fake"

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        for _ in range(rounds):
            fn()


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _timing

    return _timing


def test_compare_pairs_each_baseline_with_ours(timing):
    calls = []
    impls = {"ours": lambda: calls.append("ours"), "a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    bench = _FakeBenchmark()
    res = timing.compare(bench, impls, "ours", rounds=3, nbytes=1000, units={"ours": 4}, warmup=0)
    assert calls == ["a", "ours", "b", "ours"] * 3  # baseline first, then ours, interleaved
    assert set(res["speedup"]) == {"a", "b"} and set(res["speedup"]["a"]) == {"ours"}
    assert res["impls"]["ours"]["units"] == 4 and res["impls"]["a"]["units"] == 1
    assert res["impls"]["a"]["GB/s"] > 0 and bench.extra_info["pairs_per_baseline"] == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(ours="missing"), "must name entries"),
    (dict(ours=["ours", "a"]), "at least one baseline"),
    (dict(ours="ours", rounds=0), "rounds must be >= 1"),
])
def test_compare_rejects_bad_input(timing, kwargs, match):
    kwargs = {"rounds": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        timing.compare(_FakeBenchmark(), {"ours": lambda: None, "a": lambda: None}, **kwargs)


@pytest.mark.parametrize("reuse", [True, False])
def test_results_page_states_the_allocator_setting(monkeypatch, reuse):
    """The allocator changes large-tensor timings by 2x or more: RESULTS.md's machine line must say
    which one ran, and a default-allocator run's command must reproduce it (LEO_BENCH_FRESH_PAGES=1)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    entry = {"name": "test_warp_inpaint[x]", "fullname": "benchmarks/bench_warp.py::test_warp_inpaint[x]", "extra_info": {
        "case": "c", "ours": ["leo-cpu"], "impls": {"leo-cpu": {"median_ms": 1.0, "min_ms": 1.0, "GB/s": None}},
        "speedup": {}}}
    data = {"machine_info": {"leo": {"cpu": "cpu", "cpu_count": 2, "torch": "t", "torch_threads": 2,
                                     "settings": "short", "freed_memory_reuse": reuse}},
            "datetime": "2026-12-07T00:00:00", "benchmarks": [entry]}
    page = report.render(data)
    assert ("freed memory kept for reuse" in page) == reuse
    assert ("LEO_BENCH_FRESH_PAGES=1 OMP_NUM_THREADS=2 python -m pytest benchmarks/bench_warp.py" in page) == (not reuse)


def test_results_page_adds_the_default_allocator_tables(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    def run(reuse, case):
        return {"machine_info": {"leo": {"cpu": "cpu", "cpu_count": 2, "torch": "t", "torch_threads": 2,
                                         "settings": "short", "freed_memory_reuse": reuse}},
                "datetime": "2026-12-07T00:00:00", "benchmarks": [{
                    "name": "test_warp_inpaint[x]", "fullname": "benchmarks/bench_warp.py::test_warp_inpaint[x]",
                    "extra_info": {"case": case, "ours": ["leo-cpu"], "speedup": {},
                                   "impls": {"leo-cpu": {"median_ms": 1.0, "min_ms": 1.0, "GB/s": None}}}}]}

    data = run(True, "case-reuse")
    data["leo_fresh_pages"] = run(False, "case-fresh")
    page = report.render(data)
    reuse_at, fresh_at = page.index("case-reuse"), page.index("case-fresh")
    assert reuse_at < page.index("# The warp benchmarks with the default allocator") < fresh_at
    assert "## bench_warp.py::test_warp_inpaint (default allocator)" in page
    assert page.count("LEO_BENCH_FRESH_PAGES=1 OMP_NUM_THREADS=2 python -m pytest") == 1


def test_profile_train_step_finds_the_convolutions():
    """tools/profile_train_step.py (docs/INTERNALS.md) attributes time and FLOPs to the step's
    convolutions; it exits 1 where the profiler names none of them."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "profile_train_step.py"), "--recipe", "demo",
                           "--steps", "2", "--threads", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(s for s in proc.stdout.splitlines() if "convolutions (forward + backward)" in s)
    share = float(line.split("ms per step, ")[1].split("%")[0])
    gflop = float(line.split("; ")[1].split(" GFLOP per step")[0])
    assert 0 < share < 100 and gflop > 0.1, line


def test_train_step_vs_times_both_steps():
    """tools/train_step_vs.py times two trees' steps in alternating processes; with --new-demo the
    new tree's side is the demo's own step. Same tree on both sides here: rates positive, ratio printed."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train_step_vs.py"), str(REPO), str(REPO),
                           "--pairs", "1", "--seconds", "0.5", "--new-demo"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pair = next(s for s in proc.stdout.splitlines() if s.startswith("pair 1:"))
    old = float(pair.split("old ")[1].split(" steps/s")[0])
    new = float(pair.split("new ")[1].split(" steps/s")[0])
    assert old > 0 and new > 0, pair
    assert "new: the demo's own step" in proc.stdout, proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "train_step_vs.py"), str(REPO), str(REPO),
                          "--new-demo", "--new-cpu-bf16"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--new-cpu-bf16" in bad.stderr, bad.stderr
