#!/usr/bin/env python3
"""`make gpu-check`: everything a lent GPU should run, in one go (docs/GPU.md).

Steps, each run to its end whatever the others did (a step past its time limit counts as failed):
  build      the CUDA extension, in place, for this GPU's architecture; checks the CUDA kernels loaded
  tests      the CUDA and Triton tests (CUDA-graph capture, determinism and poisoned-allocation tests
             included; pytest-xdist workers when installed)
  memcheck   compute-sanitizer --tool memcheck on one small case per CUDA kernel (when installed)
  racecheck  compute-sanitizer --tool racecheck on the same cases
  bench-*    each GPU benchmark file (the full GPU set of benchmarks/_timing.py), sharing the time left
It writes OUT/gpu_check_results.md (device, driver, torch/triton/CUDA versions, a pass/fail line per
step, then the benchmark tables as benchmarks/report.py renders RESULTS.md: every implementation of a
case, ours and its baselines, timed in the same run), OUT/RESULTS.gpu.md (report.py's whole page),
OUT/bench.json and OUT/<step>.log; prints the summary last and exits 1 if any step failed.
OUT is --out, else $OUT, else ./gpu_check_out. The limits add up to 8 minutes at most; a benchmark
file that runs out of time keeps what it measured (it is stopped with SIGINT). --scale multiplies
every limit, --skip drops steps.

Without a CUDA GPU it prints one line and exits 0 (CI runs it that way).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TEST_FILES = ["tests/test_warp_cuda.py", "tests/test_warp_triton.py", "tests/test_warp_ops.py",
              "tests/test_stylegan_ops.py", "tests/test_attention_ops.py", "tests/test_backend.py"]
BENCH_FILES = ["bench_warp", "bench_attention", "bench_stylegan", "bench_sampling", "bench_animator"]
# Seconds per step; the benchmark files share what is left of TOTAL (8 minutes with margin).
LIMITS = {"build": 150, "tests": 170, "memcheck": 45, "racecheck": 45}
TOTAL = 470


# --------------------------------------------------------------------------- sanitizer cases
def sanitizer_cases(dev: str = "cuda", ops=None) -> None:
    """One small case per CUDA kernel of csrc/cuda/*.cu, run through the compiled ops (no Triton, no
    checks of values: compute-sanitizer looks at the accesses). Each tile path is reached: NCHW and
    channels_last (16-byte) warp paths, atomic and deterministic backwards, several 32-row attention
    tiles with a partial last one, every head dim. tests/test_emulator_cuda_emulated.py runs them on
    the emulated kernels (dev="cpu", ops=the emulated ops) and checks that every kernel ran."""
    import torch

    if ops is None:
        sys.path.insert(0, ROOT)  # the extension is built in place
        import leo_kernels  # noqa: F401  (loads the compiled ops)

        ops = torch.ops.leo_kernels
    g = torch.Generator(device=dev).manual_seed(0)

    def rnd(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=dev, generator=g).to(dtype)

    for dtype in (torch.float32, torch.bfloat16):
        for cl in (False, True):
            inp = rnd(2, 16, 10, 6, dtype=dtype)
            inp = inp.contiguous(memory_format=torch.channels_last) if cl else inp
            grid = rnd(2, 5, 6, 2, dtype=dtype)
            go = rnd(2, 16, 5, 6, dtype=dtype)
            ops._grid_sample_fwd(inp, grid, 2, False)
            for det in (False, True):
                ops._grid_sample_bwd(go, inp, grid, 0, True, det)
            feat, x = inp, rnd(*inp.shape, dtype=dtype)
            logits, skip = rnd(2, 3, 10, 6, dtype=dtype), rnd(2, 3, 5, 3, dtype=dtype)
            warped, blended, composed = ops._warp_inpaint_fwd(feat, x, logits, skip, False)
            for det in (False, True):
                ops._warp_inpaint_bwd(warped, blended, composed, feat, x, composed, True, False, det)
        coarse, fine = rnd(2, 3, 5, 4, dtype=dtype), rnd(2, 3, 10, 8, dtype=dtype)
        ops._compose_flow_fwd(coarse, fine)
        ops._compose_flow_bwd(fine)
        k = torch.rand(4, 4, device=dev, generator=g)
        for cl in (False, True):
            x = rnd(2, 8, 11, 9, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            ops._upfirdn2d_fwd(x, k, 2, 2, 1, 1, 2, 1, 2, 1)
            ops._upfirdn2d_fwd(x, k, 1, 1, 2, 2, 1, 1, 1, 1)
            ops._bias_act_fwd(x, rnd(8), 0.2, 2 ** 0.5)
            ops._bias_act_bwd(x, x, rnd(8), 0.2, 2 ** 0.5)
        for d in (16, 32, 64, 128):
            q, kk, v = (rnd(1, 2, 40, d, dtype=dtype) for _ in range(3))
            for rope in (False, True):
                out, lse = ops._temporal_attention_fwd(q, kk, v, rope)
                ops._temporal_attention_bwd(out, q, kk, v, out, lse, rope)
    if dev == "cuda":
        torch.cuda.synchronize()
    print("sanitizer cases: done")


def build_extension() -> int:
    """setup.py build_ext --inplace (arch and jobs from the environment), then check that the CUDA
    kernels are in the built extension."""
    rc = subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=ROOT).returncode
    if rc != 0:
        return rc
    sys.path.insert(0, ROOT)
    import leo_kernels
    from leo_kernels import _backend

    if not _backend.extension_has_cuda():
        print("build: leo_kernels._C has no CUDA kernels (was nvcc found? torch.version.cuda set?)")
        return 1
    print("build: backends on cuda:", leo_kernels.available_backends("cuda"))
    return 0


# --------------------------------------------------------------------------- running steps
class Step:
    def __init__(self, name, status, seconds, detail=""):
        self.name, self.status, self.seconds, self.detail = name, status, seconds, detail


def run_step(name, cmd, out_dir, limit, env=None):
    """Run cmd with a time limit, output to OUT/name.log; returns (Step, output). Past the limit the
    process group gets SIGINT first, so pytest still prints its summary and pytest-benchmark still
    writes the JSON of what it measured; SIGKILL 10 s later if it is still running."""
    t0 = time.time()
    log_path = os.path.join(out_dir, f"{name}.log")
    print(f"gpu-check: {name}: {' '.join(cmd)} (limit {limit}s)", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            status = "PASS" if rc == 0 else f"FAIL (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"FAIL (over {limit}s)"
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    with open(log_path, errors="replace") as f:
        output = f.read()
    tail = [ln for ln in output.strip().splitlines() if ln.strip()][-1:] or [""]
    step = Step(name, status, time.time() - t0, tail[0][:200])
    print(f"gpu-check: {name}: {status} in {step.seconds:.0f}s  {step.detail}", flush=True)
    return step, output


def versions() -> list[tuple[str, str]]:
    import torch

    def cmd(args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "not found"

    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    p = torch.cuda.get_device_properties(0)
    return [
        ("device", f"{torch.cuda.get_device_name(0)} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                   f"{p.total_memory / 2**30:.0f} GiB)"),
        ("driver", cmd(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) or "unknown"),
        ("torch", torch.__version__), ("torch CUDA", str(torch.version.cuda)), ("triton", triton_v),
        ("nvcc", (cmd([nvcc, "--version"]).splitlines() or ["not found"])[-1]),
        ("compute-sanitizer", (cmd(["compute-sanitizer", "--version"]).splitlines() or ["not found"])[-1]
         if shutil.which("compute-sanitizer") else "not found"),
        ("python", sys.version.split()[0]), ("CPUs", str(os.cpu_count())),
    ]


def bench_tables(json_paths, out_dir) -> list[str]:
    """Merge the per-file pytest-benchmark JSONs into OUT/bench.json and render them with
    benchmarks/report.py (the renderer of RESULTS.md): one table per benchmark, every implementation
    of a case (ours and its baselines) timed in the same run, with the paired speedups."""
    merged = None
    for path in json_paths:
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            if merged is None:
                merged = data
            else:
                merged["benchmarks"] += data.get("benchmarks", [])
    if not merged or not merged.get("benchmarks"):
        return ["", "(no benchmark results)"]
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(merged, f)
    try:
        spec = importlib.util.spec_from_file_location("leo_bench_report", os.path.join(ROOT, "benchmarks", "report.py"))
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
        text = report.render(merged, None)
    except Exception as exc:  # noqa: BLE001 - the raw numbers stay in bench.json
        return ["", f"(benchmarks/report.py could not render OUT/bench.json: {type(exc).__name__}: {exc})"]
    with open(os.path.join(out_dir, "RESULTS.gpu.md"), "w") as f:
        f.write(text)
    body = text.split("\n")
    start = next((i for i, line in enumerate(body) if line.startswith("## ")), len(body))
    return [""] + [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in body[start:]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out"))
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: build,tests,sanitizer,bench")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every time limit")
    ap.add_argument("--sanitizer-cases", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sanitizer_cases:
        sanitizer_cases()
        return 0
    if args.build_only:
        return build_extension()
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not importable with this Python; nothing to check")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda}); "
              "skipped, nothing to check")
        return 0

    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    limit = {k: int(v * args.scale) for k, v in LIMITS.items()}
    major, minor = torch.cuda.get_device_capability(0)
    t_start = time.time()
    steps: list[Step] = []

    if "build" not in skip:
        env = {"TORCH_CUDA_ARCH_LIST": f"{major}.{minor}", "MAX_JOBS": str(os.cpu_count() or 4), "LEO_FORCE_CUDA": "1"}
        cmd = [PY, os.path.abspath(__file__), "--build-only"]
        steps.append(run_step("build", cmd, args.out, limit["build"], env)[0])

    if "tests" not in skip:
        cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES]
        if importlib.util.find_spec("xdist"):
            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
        step, output = run_step("tests", cmd, args.out, limit["tests"])
        counts = re.findall(r"\d+ (?:passed|failed|skipped|errors?|xfailed)", output)
        step.detail = ", ".join(counts) or step.detail
        steps.append(step)

    if "sanitizer" not in skip:
        sanitizer = shutil.which("compute-sanitizer") or (
            "/usr/local/cuda/bin/compute-sanitizer" if os.path.exists("/usr/local/cuda/bin/compute-sanitizer") else None)
        if sanitizer is None:
            steps.append(Step("sanitizer", "SKIP (compute-sanitizer not found)", 0.0))
        else:
            for tool in ("memcheck", "racecheck"):
                cmd = [sanitizer, "--tool", tool, "--error-exitcode", "86", PY, os.path.abspath(__file__),
                       "--sanitizer-cases"]
                # one cudaMalloc per tensor, so an access past a tensor's end is outside any allocation
                steps.append(run_step(tool, cmd, args.out, limit[tool], {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})[0])

    tables = []
    if "bench" not in skip:
        json_paths = []
        for name in BENCH_FILES:
            path = os.path.join("benchmarks", f"{name}.py")
            if not os.path.exists(os.path.join(ROOT, path)):
                continue
            json_paths.append(os.path.join(args.out, f"{name}.json"))
            cmd = [PY, "-m", "pytest", path, "--benchmark-only", "-q", "-p", "no:cacheprovider",
                   f"--benchmark-json={json_paths[-1]}"]
            files_left = len(BENCH_FILES) - BENCH_FILES.index(name)
            share = int((TOTAL * args.scale - (time.time() - t_start)) / files_left)
            step_name = f"bench-{name.removeprefix('bench_')}"
            if share < 10:
                steps.append(Step(step_name, "SKIP (no time left; --scale 2)", 0.0))
                continue
            steps.append(run_step(step_name, cmd, args.out, share)[0])
        tables = bench_tables(json_paths, args.out)

    failed = [s for s in steps if s.status.startswith("FAIL")]
    skipped = [s for s in steps if s.status.startswith("SKIP")]
    verdict = (f"{'FAIL' if failed else 'PASS'}: {len(steps) - len(failed) - len(skipped)} steps passed, "
               f"{len(failed)} failed, {len(skipped)} skipped")
    lines = ["# gpu-check results", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{time.time() - t_start:.0f}s in all, limits x{args.scale}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in versions()]
    lines += ["", "## Steps", "", "| step | result | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail.replace('|', '/')} |" for s in steps]
    lines += ["", f"**{verdict}**"]
    if tables:
        lines += ["", "## Benchmarks (benchmarks/report.py tables; also OUT/RESULTS.gpu.md and OUT/bench.json)"] + tables
    results = os.path.join(args.out, "gpu_check_results.md")
    with open(results, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\ngpu-check summary")
    for s in steps:
        print(f"  {s.status:<22} {s.name:<16} {s.seconds:5.0f}s  {s.detail}")
    print(f"gpu-check: {verdict}; results in {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
