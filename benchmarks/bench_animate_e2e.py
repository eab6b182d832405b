"""`leo animate` end to end against the official LIA demo loop, both as the command a user runs:
process start, imports, checkpoint load, decoding the driving video, encoding, rendering and the
H.264 write, paired and interleaved (_timing.compare).

- leo animate: ``python -m leo animate`` (source encoded once, batches of 8 frames, the fast path);
- official loop: ``python benchmarks/official_loop.py``: LIA's run_demo.py loop (the whole generator
  per frame, source re-encoded every frame, batch 1, eager ops), same I/O (leo.media).

A real clip (lia_samples/taichi driving1.mp4 and subject1.png from ../shared/data) at 256x256, a
random animator in the released layout (45.1M parameters), 24 frames (the measure issue 11 sets; with
8 frames process start-up weighs three times as much), three pairs (about 3.5 min on the 2-core CPU).
Threads: whatever the environment gives both processes (OMP_NUM_THREADS).

    pytest benchmarks/bench_animate_e2e.py --benchmark-only
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from _timing import compare

ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "data" / "lia_samples" / "taichi"
FRAMES = 24


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("anim") / "animator256.safetensors"
    subprocess.run([sys.executable, "-m", "leo", "init-animator", "--size", "256", "--width", "1", "--style-dim", "512",
                    "--out", str(path)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return path


@pytest.mark.skipif(not (SAMPLES / "driving1.mp4").exists(), reason="needs ../shared/data/lia_samples")
def test_animate_end_to_end(benchmark, checkpoint, tmp_path):
    common = ["--animator", str(checkpoint), "--source", str(SAMPLES / "subject1.png"),
              "--driving", str(SAMPLES / "driving1.mp4"), "--max-frames", str(FRAMES)]
    device = ["--device", "cuda"] if torch.cuda.is_available() else ["--device", "cpu"]

    def run(cmd):
        return lambda: subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))

    impls = {
        "leo animate": run([sys.executable, "-m", "leo", "animate", *common, *device, "--no-progress",
                            "--out", str(tmp_path / "leo.mp4")]),
        "official loop": run([sys.executable, str(ROOT / "benchmarks" / "official_loop.py"), *common, *device,
                              "--out", str(tmp_path / "official.mp4")]),
    }
    benchmark.extra_info.update(device=device[1], size=256, frames=FRAMES, dtype="float32",
                                case=f"whole command, {FRAMES} real frames (taichi) at 256x256, float32")
    # Three pairs: one pair of whole commands swings by 20% on a shared machine.
    compare(benchmark, impls, "leo animate", rounds=3, warmup=0, min_seconds=0)
