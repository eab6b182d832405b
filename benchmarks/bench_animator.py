"""Animator rendering at 256x256: leo's loop vs the baselines a user would pick, paired and interleaved.

test_animate, per frame (what `leo animate` does per chunk of B frames: encode_motion(chunk) + render,
the source encoded once, fused kernels), against
- official LIA loop: what LIA's run_demo.py does per driving frame: the whole generator forward
  (source re-encoded every frame), batch 1, eager ops (``kernels="reference"``);
- eager ops: leo's batched loop with every op eager (``kernels="reference"``).
test_render, the decoder alone for B frames from given motion codes: fused vs eager ops and
torch.compile of the eager-ops decoder (compiling the 45M-parameter decoder takes minutes on a 2-core
CPU, so on CPU only with LEO_BENCH_FULL=1).

Random weights (the released layout, 45.1M parameters), smooth random images.
CUDA: batches 1/8/32 in float32 and bfloat16 (autocast). CPU: batch 2, float32.

    pytest benchmarks/bench_animator.py --benchmark-only
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from _timing import FULL, compare

from leo.animator import Animator

SIZE = 256
_CUDA = torch.cuda.is_available()
DEV = "cuda" if _CUDA else "cpu"
BATCHES = [1, 8, 32] if _CUDA else ([1, 4] if FULL else [2])
DTYPES = [torch.float32, torch.bfloat16] if _CUDA else [torch.float32]
ROUNDS = 5 if _CUDA else 2


def smooth_images(b, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(-1, 1).to(DEV)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Animator(SIZE).eval().to(DEV)


def _amp(dtype):
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(DEV, dtype=dtype)


def _with_kernels(model, kernels, fn):
    def call():
        model.kernels = kernels
        try:
            return fn()
        finally:
            model.kernels = "auto"

    return call


def _weight_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _info(benchmark, batch, dtype, what):
    dt = str(dtype).replace("torch.", "")
    benchmark.extra_info.update(device=DEV, size=SIZE, batch=batch, dtype=dt,
                                case=f"{what}, {SIZE}x{SIZE}, batch {batch}, {dt}")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_animate(benchmark, model, dtype, batch):
    source, frame, chunk = smooth_images(1, 1), smooth_images(1, 2), smooth_images(batch, 3)
    image = source[0].numel() * source.element_size()
    with torch.inference_mode(), _amp(dtype):
        h_start = model.encode_motion(frame)
        cache = model.encode(source)
        start = model.encode_motion(chunk[:1])[0]
        impls = {
            "leo animate": lambda: model.render(cache, model.encode_motion(chunk), start),
            "official LIA loop": _with_kernels(model, "reference", lambda: model(source, frame, h_start)),
            "eager ops": _with_kernels(model, "reference", lambda: model.render(cache, model.encode_motion(chunk), start)),
        }
        _info(benchmark, batch, dtype, "per frame: encode_motion + render")
        # Minimal traffic: the weights once per call, the frames in and out (source too in the official loop).
        w = _weight_bytes(model)
        compare(benchmark, impls, "leo animate", rounds=ROUNDS,
                units={"leo animate": batch, "official LIA loop": 1, "eager ops": batch},
                nbytes={"leo animate": w + 2 * batch * image, "official LIA loop": w + 3 * image,
                        "eager ops": w + 2 * batch * image})


_COMPILED = {}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_render(benchmark, model, dtype, batch):
    source, chunk = smooth_images(1, 1), smooth_images(batch, 3)
    with torch.inference_mode(), _amp(dtype):
        cache = model.encode(source)
        alphas = model.encode_motion(chunk)
        impls = {
            "leo render": lambda: model.render(cache, alphas, alphas[0]),
            "eager ops": _with_kernels(model, "reference", lambda: model.render(cache, alphas, alphas[0])),
        }
        if FULL:
            if "render" not in _COMPILED:
                _COMPILED["render"] = torch.compile(model.render, dynamic=False)
            compiled = _COMPILED["render"]
            impls["compiled eager ops"] = _with_kernels(model, "reference", lambda: compiled(cache, alphas, alphas[0]))
        _info(benchmark, batch, dtype, "decoder only")
        image = source[0].numel() * source.element_size()
        compare(benchmark, impls, "leo render", rounds=ROUNDS, nbytes=_weight_bytes(model.dec) + batch * image)
