"""LMDM sampling: leo's loops vs the baselines a user would pick, paired and interleaved.

- eager: the sampling loop calling the model eagerly (leo's loop on CPU);
- compiled: the same loop with torch.compile(model);
- graph (CUDA only, ours there): the whole loop captured as one CUDA graph and replayed.

With CUDA: the default LMDM (width 128, channel_mult (1, 2, 2), motion_dim 20) in float32, DDPM-1000
and DDIM-50, batch 1 and 16, sequence length 16 and 64. CPU: a small LMDM, DDIM-10 (LEO_BENCH_FULL=1
adds DDIM-50 cases).

    pytest benchmarks/bench_sampling.py --benchmark-only
"""
import pytest
import torch
from _timing import FULL, compare

from leo.lmdm import LMDM

_CUDA = torch.cuda.is_available()
DEV = "cuda" if _CUDA else "cpu"

if _CUDA:
    MODEL_CFG = dict(motion_dim=20, width=128, channel_mult=(1, 2, 2), head_dim=32, window=64)
    CASES = [(s, n, b, L) for (s, n) in (("ddpm", 1000), ("ddim", 50)) for b in (1, 16) for L in (16, 64)]
else:
    MODEL_CFG = dict(motion_dim=20, width=32, channel_mult=(1, 2), head_dim=16, window=16)
    CASES = [("ddim", 10, 1, 64)] + ([("ddim", 50, 1, 16), ("ddim", 50, 16, 16)] if FULL else [])

_MODEL = {}


def _models():
    """(eager model, compiled model, diffusion), built once."""
    if "m" not in _MODEL:
        torch.manual_seed(0)
        m = LMDM(**MODEL_CFG)
        with torch.no_grad():  # a trained-like model: no all-zero layers short-circuiting work
            for p in m.parameters():
                if p.dim() > 1 and p.abs().max() == 0:
                    p.normal_(0, 0.02)
        m = m.to(DEV).eval()
        _MODEL["m"] = (m, torch.compile(m, dynamic=False), m.make_diffusion())
    return _MODEL["m"]


@pytest.mark.parametrize("case", CASES, ids=[f"{s}{n}-B{b}-L{L}" for s, n, b, L in CASES])
def test_sampling(benchmark, case):
    sampler, steps, B, L = case
    model, compiled, diff = _models()
    cond = torch.randn(B, MODEL_CFG["motion_dim"], device=DEV)
    shape = (B, MODEL_CFG["motion_dim"], L)

    def loop(net, graph):
        return lambda: diff.sample(net, shape, cond=cond, sampler=sampler, steps=steps, seed=0, cuda_graph=graph)

    impls = {"eager": loop(model, False), "compiled": loop(compiled, False)}
    if _CUDA:
        impls["graph"] = loop(model, True)
    ours = "graph" if _CUDA else "eager"
    with torch.no_grad():
        ref = impls["eager"]()
        assert torch.isfinite(ref).all()
        for name, fn in impls.items():
            err = ((fn() - ref).norm() / ref.norm()).item()
            assert err < 1e-3, f"{name} sampling disagrees with the eager loop: relative error {err:.2e}"
        benchmark.extra_info.update(
            device=DEV, dtype="float32", sampler=sampler, steps=steps, batch=B, length=L, model=MODEL_CFG,
            case=f"{sampler.upper()}-{steps}, batch {B}, length {L}",
        )
        # Minimal traffic: every network evaluation reads the weights once.
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        rounds = 3 if (sampler == "ddpm" or not _CUDA) else 10
        compare(benchmark, impls, ours, rounds=rounds, nbytes=weights * steps)
