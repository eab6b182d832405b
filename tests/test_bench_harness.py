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
