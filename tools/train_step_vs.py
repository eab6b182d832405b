"""Stage-1 training steps per second of two source trees (e.g. a worktree of an older commit and
this one), each timed in its own process, the processes alternating: issue 11's "against the
current main, same session, same machine, interleaved".

    git worktree add /tmp/old 48a9538 && (cd /tmp/old && python setup.py build_ext --inplace)
    python tools/train_step_vs.py /tmp/old . --pairs 3 --seconds 15 --threads 1

Each process builds issue 11's stage-1 step, `leo demo`'s when the issue was filed (64x64, width
0.125, style_dim 128, batch 4, copy init, relative latent, absolute flows, pyramid 3, adversarial
weight 0.05; generator then discriminator, each with its tree's Adam) from the tree's own leo, runs 5
warm-up steps and counts steps for --seconds.
Prints each pair's steps/s and the median ratio new / old. ``--new-cpu-bf16`` runs the new tree's
step under CPU bf16 autocast, as `leo train-animator --cpu-bf16` does. The step is written out here rather
than imported from benchmarks/bench_train_step.py, whose Trainer needs today's leo API.
``--new-demo`` times the new tree's own `leo demo` stage-1 step instead (its benchmarks/bench_train_step.py
"demo" recipe: width 1/16, source-relative flows, no discriminator, EMA), against the old tree's step
above: the demo's step then against the demo's step now, a change of recipe and not only of speed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def _timed(step, seconds: float) -> None:
    for _ in range(5):
        step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(n / (time.perf_counter() - t0))


def _demo_child(seconds: float) -> None:
    """The current tree's `leo demo` stage-1 step (benchmarks/bench_train_step.py, recipe "demo")."""
    sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
    from bench_train_step import RECIPES, Trainer, _images

    trainer, batch = Trainer("auto", "demo"), RECIPES["demo"][4]
    src, tgt = _images(batch, 1), _images(batch, 2)
    _timed(lambda: trainer.step(src, tgt), seconds)


def _child(seconds: float, threads: int, bf16: bool = False, demo: bool = False) -> None:
    import contextlib

    import torch

    torch.set_num_threads(threads)
    if demo:
        return _demo_child(seconds)
    from leo.animator import Animator
    from leo.discriminator import Discriminator
    from leo.train import losses
    from leo.train.stage1 import reconstruction_loss

    torch.manual_seed(0)
    G = Animator(size=64, style_dim=128, motion_dim=20, width=0.125, align_corners=True,
                 relative_latent=True).init_copy_source(motion_gain=30.0)
    D = Discriminator(size=64, width=0.125)
    try:  # the tree's own optimizer: leo.train.common.adam where it exists, plain Adam before it
        from leo.train.common import adam
    except ImportError:
        def adam(params, lr, betas):
            return torch.optim.Adam(params, lr=lr, betas=betas)
    opt_g, opt_d = adam(G.parameters(), lr=2e-4, betas=(0.0, 0.99)), adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))
    g = torch.Generator().manual_seed(1)

    def image():
        x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
        return torch.nn.functional.interpolate(x, size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)

    src, tgt = image(), image()

    def amp():  # as leo.train.stage1 steps with cpu_amp (`leo train-animator --cpu-bf16`)
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        G.train()
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with amp():
            recon = G(src, tgt)
            loss = reconstruction_loss(recon, tgt, 3) + 0.05 * losses.g_nonsaturating(D(recon))
        loss.backward()
        opt_g.step()
        D.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        with amp():
            logits = D(torch.cat([tgt, recon.detach()]), 4)
            d_loss = losses.d_logistic(logits[:4], logits[4:])
        d_loss.backward()
        opt_d.step()

    _timed(step, seconds)


def _rate(tree: str, seconds: float, threads: int, bf16: bool = False, demo: bool = False) -> float:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(seconds), str(threads)]
                         + (["--bf16"] if bf16 else []) + (["--demo"] if demo else []),
                         env=env, cwd=os.path.abspath(tree), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"timing {tree} failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(float(argv[1]), int(argv[2]), bf16="--bf16" in argv[3:], demo="--demo" in argv[3:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", help="source tree of the baseline (extensions built in place)")
    p.add_argument("new", help="source tree measured against it")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per process")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--new-cpu-bf16", action="store_true",
                   help="time the new tree's step under CPU bf16 autocast (`leo train-animator --cpu-bf16`)")
    p.add_argument("--new-demo", action="store_true",
                   help="time the new tree's `leo demo` stage-1 step (its own recipe) instead of the G+D step")
    a = p.parse_args(argv)
    if a.new_demo and a.new_cpu_bf16:
        p.error("--new-demo times the demo's float32 step; leave out --new-cpu-bf16")
    ratios = []
    for i in range(a.pairs):
        old, new = _rate(a.old, a.seconds, a.threads), _rate(a.new, a.seconds, a.threads, a.new_cpu_bf16, a.new_demo)
        ratios.append(new / old)
        print(f"pair {i + 1}: old {old:.3f} steps/s, new {new:.3f} steps/s, ratio {new / old:.2f}", flush=True)
    what = (", new under CPU bf16 autocast" if a.new_cpu_bf16 else "") + (", new: the demo's own step" if a.new_demo else "")
    print(f"median ratio new / old: {statistics.median(ratios):.2f} ({a.threads} thread(s), {a.pairs} pairs{what})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
