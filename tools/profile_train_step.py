"""Where a stage-1 training step's CPU time goes: its convolutions against the machine's GEMM rate.

    python tools/profile_train_step.py --recipe "G+D" --threads 2

Builds the step of benchmarks/bench_train_step.py (``demo``: leo demo's generator step; ``G+D``:
issue 11's generator + discriminator step), times it (median of --steps), then profiles --steps more
and prints: the convolutions' share of the step (forward and backward), their FLOPs
(torch.utils.flop_counter), the rate they reach, a large float32 matrix product's rate in the same
process, and the step time the convolutions alone would take at that rate. When the convolutions
already run at the matrix-product rate, a faster step needs fewer FLOPs or less of everything else.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from bench_train_step import DEV, RECIPES, Trainer, _images  # noqa: E402

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
            "aten::_slow_conv2d_backward", "aten::thnn_conv2d")


def gemm_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="G+D")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args(argv)
    if DEV != "cpu":  # bench_train_step builds its step on CUDA where CUDA is present
        print("profile_train_step.py profiles the CPU step; run it with CUDA_VISIBLE_DEVICES= on a CUDA machine",
              file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    batch = RECIPES[a.recipe][4]
    trainer = Trainer("auto", a.recipe)
    src, tgt = _images(batch, 1), _images(batch, 2)
    for _ in range(5):
        trainer.step(src, tgt)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        trainer.step(src, tgt)
        times.append(time.perf_counter() - t)
    step_ms = 1e3 * statistics.median(times)
    with FlopCounterMode(display=False) as counter:
        trainer.step(src, tgt)
    flops = counter.get_flop_counts()["Global"]
    conv_flops = sum(v for k, v in flops.items() if "convolution" in str(k))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.steps):
            trainer.step(src, tgt)
    events = prof.key_averages()
    conv_us = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS) / a.steps
    total_us = sum(e.self_cpu_time_total for e in events) / a.steps
    if conv_flops == 0 or conv_us == 0:  # op names this torch build does not use
        print(f"no convolution found (FLOPs {conv_flops}, profiled time {conv_us} us): update CONV_OPS", file=sys.stderr)
        return 1
    gemm = gemm_gflops()
    conv_rate = conv_flops / (conv_us * 1e-6) / 1e9
    print(f"{a.recipe} step, batch {batch}, {a.threads} threads, float32: median {step_ms:.1f} ms over {a.steps} steps")
    print(f"  convolutions (forward + backward): {conv_us / 1e3:.1f} ms per step, {100 * conv_us / total_us:.0f}% of the "
          f"profiled time; {conv_flops / 1e9:.2f} GFLOP per step, {conv_rate:.0f} GFLOP/s")
    print(f"  float32 2048x2048 matrix product in this process: {gemm:.0f} GFLOP/s")
    print(f"  the convolutions' FLOPs at that rate: {conv_flops / gemm / 1e6:.1f} ms per step; "
          f"everything else: {(total_us - conv_us) / 1e3:.1f} ms (profiled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
