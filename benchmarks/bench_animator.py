"""Animator rendering throughput at 256x256: leo's way vs the official LIA demo's way, same run.

- official: what LIA's run_demo.py does per driving frame: the whole generator forward
  (source re-encoded every frame, target encoded, decoder), batch 1, eager ops
  (``kernels="reference"``: eager upfirdn2d/bias_act/warp and per-sample grouped modulated convs).
- animate: what ``leo animate`` does per chunk of B frames: encode_motion(chunk) + render(cache, ...),
  the source encoded once (outside the timed region), fused kernels ("auto") or eager ("reference").
- render: the decoder alone for B frames from given motion codes.

Random weights (the released layout, 45.1M parameters), smooth random images.
CUDA: batches 1/8/32 in float32 and bfloat16 (autocast). CPU: batches 1/4, float32, one thread
(on a shared 2-core box OpenMP threads spinning against other jobs dominate otherwise).

    .venv/bin/python -m pytest benchmarks/bench_animator.py --benchmark-only
    .venv/bin/python benchmarks/bench_animator.py [--batch 4] [--rounds 2]   # per-frame CPU-time table
"""
from __future__ import annotations

import contextlib
import time

import pytest
import torch
import torch.nn.functional as F

from leo.animator import Animator

SIZE = 256
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
if HAS_CUDA:
    BATCHES = [1, 8, 32]
    DTYPES = [torch.float32, torch.bfloat16]
else:
    BATCHES = [1, 4]
    DTYPES = [torch.float32]


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


def smooth_images(b, size=SIZE, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1).to(device)


def build_model(device=DEV):
    torch.manual_seed(0)
    return Animator(SIZE).eval().to(device)


def _amp(dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(DEV, dtype=dtype)


@pytest.fixture(scope="module")
def model():
    if not HAS_CUDA:
        torch.set_num_threads(1)
    return build_model()


def _info(benchmark, batch, dtype, path, frames):
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(0) if HAS_CUDA else "cpu (1 thread)",
        size=SIZE, batch=batch, dtype=str(dtype).replace("torch.", ""), path=path, frames_per_call=frames,
    )
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["frames_per_s"] = round(frames / stats.stats.median, 3)
        benchmark.extra_info["ms_per_frame"] = round(stats.stats.median / frames * 1e3, 2)


def official_step(model, source, frame, h_start):
    """One driving frame the way LIA's demo does it (call with model.kernels="reference")."""
    out = model(source, frame, h_start)
    _sync()
    return out


def animate_step(model, cache, chunk, start_alpha):
    """One chunk the way `leo animate` does it."""
    out = model.render(cache, model.encode_motion(chunk), start_alpha)
    _sync()
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_official_loop(benchmark, model, dtype):
    source, frame = smooth_images(1, seed=1), smooth_images(1, seed=2)
    with torch.inference_mode(), _amp(dtype):
        h_start = model.encode_motion(frame)
        model.kernels = "reference"
        try:
            benchmark.pedantic(official_step, args=(model, source, frame, h_start), rounds=3 if HAS_CUDA else 2,
                               iterations=1, warmup_rounds=1)
        finally:
            model.kernels = "auto"
    _info(benchmark, 1, dtype, "official (re-encode source, batch 1, eager)", 1)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_animate_loop(benchmark, model, dtype, batch, kernels):
    if kernels == "reference" and batch != BATCHES[-1]:
        pytest.skip("eager path measured at the largest batch only (time)")
    source, chunk = smooth_images(1, seed=1), smooth_images(batch, seed=3)
    with torch.inference_mode(), _amp(dtype):
        model.kernels = kernels
        try:
            cache = model.encode(source)
            start = model.encode_motion(chunk[:1])[0]
            benchmark.pedantic(animate_step, args=(model, cache, chunk, start), rounds=3 if HAS_CUDA else 2,
                               iterations=1, warmup_rounds=1)
        finally:
            model.kernels = "auto"
    _info(benchmark, batch, dtype, f"leo animate loop ({kernels})", batch)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_render(benchmark, model, dtype, batch, kernels):
    if kernels == "reference" and batch != BATCHES[-1]:
        pytest.skip("eager path measured at the largest batch only (time)")
    source, chunk = smooth_images(1, seed=1), smooth_images(batch, seed=3)
    with torch.inference_mode(), _amp(dtype):
        model.kernels = kernels
        try:
            cache = model.encode(source)
            alphas = model.encode_motion(chunk)

            def step():
                out = model.render(cache, alphas, alphas[0])
                _sync()
                return out

            benchmark.pedantic(step, rounds=5 if HAS_CUDA else 2, iterations=1, warmup_rounds=1)
        finally:
            model.kernels = "auto"
    _info(benchmark, batch, dtype, f"render ({kernels})", batch)


# --------------------------------------------------------------------------- CPU-time table
def _cpu_time(fn):
    """(process CPU time, wall time) of one call; CPU time is the robust one on a machine
    shared with other jobs, wall time the one a user sees."""
    t, w = time.process_time(), time.perf_counter()
    fn()
    _sync()
    return time.process_time() - t, time.perf_counter() - w


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = build_model()
    source, frame, chunk = smooth_images(1, seed=1), smooth_images(1, seed=2), smooth_images(a.batch, seed=3)
    res = {"official": [], "animate": [], "render": []}
    with torch.inference_mode():
        h_start = model.encode_motion(frame)
        cache = model.encode(source)
        alphas = model.encode_motion(chunk)
        for _ in range(a.rounds):  # interleaved, so background load hits both alike
            model.kernels = "reference"
            res["official"].append(_cpu_time(lambda: model(source, frame, h_start)))
            model.kernels = "auto"
            res["animate"].append(_cpu_time(lambda: model.render(cache, model.encode_motion(chunk), alphas[0])))
            res["render"].append(_cpu_time(lambda: model.render(cache, alphas, alphas[0])))
    per = {"official": 1, "animate": a.batch, "render": a.batch}
    cpu = {k: min(c for c, _ in v) / per[k] for k, v in res.items()}
    wall = {k: min(w for _, w in v) / per[k] for k, v in res.items()}
    print(f"device={DEV} threads={a.threads} size={SIZE} float32, random weights (45.1M params), "
          f"seconds per frame, min of {a.rounds} interleaved rounds: CPU time / wall time")
    print(f"  official loop (batch 1, source re-encoded, eager ops): {cpu['official']:.3f} / {wall['official']:.3f}")
    print(f"  leo animate loop (batch {a.batch}, encode_motion + render, fused): {cpu['animate']:.3f} / {wall['animate']:.3f}"
          f"  -> {cpu['official'] / cpu['animate']:.2f}x / {wall['official'] / wall['animate']:.2f}x lower")
    print(f"  render only (batch {a.batch}, fused): {cpu['render']:.3f} / {wall['render']:.3f}")


if __name__ == "__main__":
    main()
