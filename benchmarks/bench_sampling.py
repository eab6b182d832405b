"""LMDM sampling: the eager sampling loop vs the CUDA-graph loop (whole loop captured, replayed).

With CUDA: the default LMDM (width 128, channel_mult (1, 2, 2), motion_dim 20) in float32, DDPM-1000
and DDIM-50, batch 1 and 16, sequence length 16 and 64, eager and graphed (the baseline is the
eager loop measured in the same run). On CPU only the eager loop runs, at small sizes (a small
LMDM, DDIM-50 and DDIM-10).

    .venv/bin/python -m pytest benchmarks/bench_sampling.py --benchmark-only
    (add --benchmark-group-by=param:case to put eager and graph side by side)
"""
import pytest
import torch

from leo.lmdm import LMDM

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"

if HAS_CUDA:
    MODEL_CFG = dict(motion_dim=20, width=128, channel_mult=(1, 2, 2), head_dim=32, window=64)
    CASES = [(s, n, b, L) for (s, n) in (("ddpm", 1000), ("ddim", 50)) for b in (1, 16) for L in (16, 64)]
    MODES = ["eager", "graph"]
else:
    MODEL_CFG = dict(motion_dim=20, width=32, channel_mult=(1, 2), head_dim=16, window=16)
    CASES = [("ddim", 50, 1, 16), ("ddim", 50, 16, 16), ("ddim", 10, 1, 64)]
    MODES = ["eager"]

_MODEL = {}


def _model():
    if "m" not in _MODEL:
        torch.manual_seed(0)
        m = LMDM(**MODEL_CFG)
        with torch.no_grad():  # a trained-like model: no all-zero layers short-circuiting work
            for p in m.parameters():
                if p.dim() > 1 and p.abs().max() == 0:
                    p.normal_(0, 0.02)
        _MODEL["m"] = (m.to(DEV).eval(), m.make_diffusion())
    return _MODEL["m"]


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[f"{s}{n}-B{b}-L{L}" for s, n, b, L in CASES])
def test_sampling(benchmark, case, mode):
    sampler, steps, B, L = case
    model, diff = _model()
    cond = torch.randn(B, MODEL_CFG["motion_dim"], device=DEV)
    shape = (B, MODEL_CFG["motion_dim"], L)
    threads = torch.get_num_threads()
    if not HAS_CUDA:
        torch.set_num_threads(1)  # shared 2-core machine: one thread gives stable timings
    try:
        _bench(benchmark, model, diff, cond, shape, sampler, steps, B, L, mode)
    finally:
        torch.set_num_threads(threads)


def _bench(benchmark, model, diff, cond, shape, sampler, steps, B, L, mode):
    graph = mode == "graph"

    def run():
        out = diff.sample(model, shape, cond=cond, sampler=sampler, steps=steps, seed=0, cuda_graph=graph)
        _sync()
        return out

    out = run()  # warm-up (and graph capture, cached for the timed rounds)
    assert torch.isfinite(out).all()
    rounds = 3 if (sampler == "ddpm" and mode == "eager") or not HAS_CUDA else 10
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name() if HAS_CUDA else "cpu", dtype="float32", sampler=sampler,
        steps=steps, batch=B, length=L, mode=mode, model=MODEL_CFG, torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    benchmark.pedantic(run, rounds=rounds, iterations=1)
