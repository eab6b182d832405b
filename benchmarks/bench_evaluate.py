"""FVD/KVD feature extraction: clips per second through the I3D at the protocol's input (16 frames
resized to 224x224), paired and interleaved.

- state-dict (ours): leo's InceptionI3d eager, the path of an ``rgb_imagenet.pt`` /
  ``i3d_pretrained_400.pt`` weights file;
- torchscript: the same network scripted and reloaded, the path of StyleGAN-V's
  ``i3d_torchscript.pt`` (both called as StyleGAN-V calls its detector: uint8 in, resize, rescale).

Random weights in the published layout (the speed does not depend on them); uint8 clips at 64x64
upsampled to 224 inside the call, as `leo evaluate generation` feeds them.
CUDA: batches of 8 and 32 clips. CPU: 2 clips (LEO_BENCH_FULL=1 adds 4).

    pytest benchmarks/bench_evaluate.py --benchmark-only
"""
from __future__ import annotations

import io

import pytest
import torch
from _timing import FULL, compare

from leo.evaluate.i3d import InceptionI3d, random_i3d_state_dict

_CUDA = torch.cuda.is_available()
DEV = "cuda" if _CUDA else "cpu"
BATCHES = [8, 32] if _CUDA else ([2, 4] if FULL else [2])
FRAMES, SIZE = 16, 64


@pytest.fixture(scope="module")
def models():
    m = InceptionI3d()
    m.load_state_dict(random_i3d_state_dict(0))
    m = m.eval().to(DEV)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(m), buf)
    buf.seek(0)
    return m, torch.jit.load(buf, map_location=DEV).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])
def test_i3d_features(benchmark, models, batch):
    eager, scripted = models
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (batch, 3, FRAMES, SIZE, SIZE), generator=g).to(torch.uint8).to(DEV)

    def call(net):
        def run():
            with torch.no_grad():
                return net(clips, rescale=True, resize=True, return_features=True)
        return run

    impls = {"torchscript": call(scripted), "state-dict": call(eager)}
    with torch.no_grad():
        ref = impls["state-dict"]()
        assert ref.shape == (batch, 400) and torch.isfinite(ref).all()
        err = ((impls["torchscript"]() - ref).norm() / ref.norm()).item()
        assert err < 1e-4, f"torchscript features disagree with eager: relative error {err:.2e}"
    benchmark.extra_info.update(device=DEV, dtype="float32", batch=batch, frames=FRAMES, input=f"{SIZE}->224",
                                case=f"I3D features, {batch} clips of {FRAMES} frames at 224x224")
    summary = compare(benchmark, impls, "state-dict", rounds=3 if _CUDA else 1, min_seconds=0.5 if not _CUDA else 1.0)
    benchmark.extra_info["clips_per_s"] = {name: round(batch / (st["median_ms"] / 1e3), 2)
                                           for name, st in summary["impls"].items()}
