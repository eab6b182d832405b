"""Stage-1 training step: leo's default path vs the baselines, paired and interleaved
(_timing.compare), for two recipes.

- ``demo``: what `leo demo`'s stage 1 does per step today (its settings read from leo/cli/demo.py's
  "full" preset: width 0.0625, batch 4, lr 3e-3, Adam betas (0.9, 0.99)): generator forward (source and target encoded in one
  pass, flows decoded relative to those at zero motion, i.e. the source's zero-motion decoder pass in the
  same batch as the motion pass),
  L1 + 3 average-pooled L1 terms, backward, Adam, EMA update; no discriminator (adv weight 0). The
  demo renders each pair's frames on the fly (2 to 3 ms per pair on 2 CPU threads); that is data, not timed here.
- ``G+D``: issue 11's step (the demo's recipe when the issue was filed): absolute flows, the same
  loss + 0.05 x the non-saturating adversarial loss through the discriminator, backward, Adam; then
  the discriminator on real and fake in one forward, logistic loss, backward, Adam.

Both at the demo's model settings: 64x64, style_dim 128, motion_dim 20, copy init, relative latent,
align_corners, pyramid 3, no VGG, no R1; width 0.0625 (demo) and 0.125 (G+D, the issue's, and the
demo's until docs/MOTION.md's tenth round); batch 4.

Implementations (each with its own models and optimizers, same initial weights and batch):
- leo: ``kernels="auto"``: on CPU the ATen fast path of leo.layers (channels_last, depthwise blurs,
  bias + activation folded into the convs);
- custom ops: the same models with ``LEO_KERNELS_BACKEND=cpu``, i.e. every blur and bias + activation
  through the leo_kernels custom ops (the default path before the ATen fast path);
- eager ops: ``kernels="reference"`` (leo_kernels' eager references, grouped modulated convs);
- compiled eager ops: the eager-ops models under torch.compile (``nn.Module.compile``), what a user
  would write instead of leo's kernels. Compiling them takes 1.5-2 minutes per recipe on a 2-core
  CPU, so on CPU the short settings compile the demo recipe only (``LEO_BENCH_FULL=1``: both);
- leo, still pass on its own (demo recipe): leo's path with the source's zero-motion decoder pass run as
  a pass of its own before the motion pass (``Synthesis.still_flows``), as training did before the two
  shared a batch;
- leo, CPU bf16 autocast (CPU only): leo's path with the step under ``torch.autocast("cpu", bfloat16)``, as
  ``leo train-animator --cpu-bf16`` trains (another precision: a speed reference, not a drop-in).

tools/train_step_vs.py times the G+D step of two source trees (e.g. today's against an older
commit), each in its own process. CUDA: batches 4 and 32 for both recipes (bf16 autocast off: float32
throughout).

    pytest benchmarks/bench_train_step.py --benchmark-only
"""
from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
from _timing import FULL, compare

from leo.animator import Animator
from leo.cli.demo import PRESETS
from leo.discriminator import Discriminator
from leo.train import losses
from leo.train.common import adam, ema_update
from leo.train.stage1 import reconstruction_loss

_CUDA = torch.cuda.is_available()
DEV = "cuda" if _CUDA else "cpu"
_DEMO = PRESETS["full"]
SIZE, STYLE_DIM, MOTION_DIM = _DEMO["size"], _DEMO["style_dim"], 20
PYRAMID, ADV_WEIGHT = 3, 0.05
RECIPES = {  # name: (relative flows, discriminator, learning rate, Adam betas, CPU batch, width)
    "demo": (True, False, _DEMO["animator_lr"], _DEMO["animator_betas"], _DEMO["animator_batch"], _DEMO["width"]),
    "G+D": (False, True, 2e-4, (0.0, 0.99), 4, 0.125),
}
CASES = ([(r, b) for r in RECIPES for b in (4, 32)] if _CUDA
         else [(r, c[4]) for r, c in RECIPES.items()] + ([("demo", 8), ("G+D", 8)] if FULL else []))


def _images(b, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(-1, 1).to(DEV)


@contextlib.contextmanager
def _env(name, value):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _separate_still_pass(dec):
    """``dec`` (a Synthesis) decodes the still pass as a pass of its own, then the motion pass."""
    def forward(latent, feats, return_flow=False, still_latent=None, still_flows=None):
        if still_flows is None and still_latent is not None:
            still_flows = dec.still_flows(still_latent, feats)
        return type(dec).forward(dec, latent, feats, return_flow=return_flow, still_flows=still_flows)

    dec.forward = forward


class Trainer:
    """Animator (+ discriminator) with Adam, stepped the way leo.train.stage1 steps them."""

    def __init__(self, kernels, recipe, env=None, cpu_bf16=False, separate_still=False, compiled=False):
        relative_flow, self.adv, lr, betas, _, width = RECIPES[recipe]
        torch.manual_seed(0)
        self.G = Animator(size=SIZE, style_dim=STYLE_DIM, motion_dim=MOTION_DIM, width=width, kernels=kernels,
                          align_corners=True, relative_latent=True,
                          relative_flow=relative_flow).init_copy_source(motion_gain=30.0).to(DEV)
        if separate_still:
            _separate_still_pass(self.G.dec)
        self.opt_g = adam(self.G.parameters(), lr=lr, betas=betas)  # leo.train.stage1's optimizer
        if self.adv:
            self.D = Discriminator(size=SIZE, width=width, kernels=kernels).to(DEV)
            self.opt_d = adam(self.D.parameters(), lr=lr, betas=betas)
        else:
            self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if compiled:  # in place: the optimizers and the EMA keep the same parameters
            self.G.compile(dynamic=False)
            if self.adv:
                self.D.compile(dynamic=False)
        self.env, self.steps, self.cpu_bf16 = env, 0, cpu_bf16

    def step(self, src, tgt):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            self._step(src, tgt)

    def _step(self, src, tgt):
        G = self.G
        with _env("LEO_KERNELS_BACKEND", self.env):
            G.train()
            self.opt_g.zero_grad(set_to_none=True)
            recon = G(src, tgt)
            l1 = (recon.float() - tgt.float()).abs().mean()
            loss = reconstruction_loss(recon, tgt, PYRAMID)
            if self.adv:
                self.D.requires_grad_(False)
                g_adv = losses.g_nonsaturating(self.D(recon))
                loss = loss + ADV_WEIGHT * g_adv
            loss.backward()
            l1.item()
            self.opt_g.step()
            self.steps += 1
            if not self.adv:
                ema_update(self.G_ema, G, self.steps, 0.995)
                return
            D = self.D
            D.requires_grad_(True)
            self.opt_d.zero_grad(set_to_none=True)
            n = tgt.shape[0]
            logits = D(torch.cat([tgt, recon.detach()]), n)
            d_loss = losses.d_logistic(logits[:n], logits[n:])
            d_loss.backward()
            d_loss.item()
            self.opt_d.step()


@pytest.mark.parametrize("recipe, batch", CASES, ids=[f"{r}-b{b}" for r, b in CASES])
def test_train_step(benchmark, recipe, batch):
    src, tgt = _images(batch, 1), _images(batch, 2)
    trainers = {
        "leo": Trainer("auto", recipe),
        "custom ops": Trainer("auto", recipe, env="cpu" if not _CUDA else None),
        "eager ops": Trainer("reference", recipe),
    }
    if FULL or recipe == "demo":  # the first step compiles (1.5-2 minutes per recipe on 2 CPU cores)
        trainers["compiled eager ops"] = Trainer("reference", recipe, compiled=True)
    trainers["leo, CPU bf16 autocast"] = Trainer("auto", recipe, cpu_bf16=True)
    if RECIPES[recipe][0]:  # source-relative flows: the still pass in its own pass, as before
        trainers["leo, still pass on its own"] = Trainer("auto", recipe, separate_still=True)
    if _CUDA:  # on CUDA the default path is the custom ops; CPU autocast does not apply
        del trainers["custom ops"], trainers["leo, CPU bf16 autocast"]
    impls = {name: (lambda t=t: t.step(src, tgt)) for name, t in trainers.items()}
    what = ("G step with source-relative flows + EMA, no discriminator" if recipe == "demo"
            else "G + D, absolute flows")
    benchmark.extra_info.update(device=DEV, size=SIZE, batch=batch, dtype="float32",
                                case=f"stage-1 step, {recipe} recipe ({what}; forward + backward + Adam), "
                                     f"{SIZE}x{SIZE}, width {RECIPES[recipe][5]}, style_dim {STYLE_DIM}, batch {batch}, float32")
    # Minimal traffic: parameters, gradients and both Adam moments, read and written once.
    models = [m for t in trainers.values() for m in (t.G, getattr(t, "D", None)) if m is not None]
    params = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    compare(benchmark, impls, "leo", rounds=5 if _CUDA else 3, nbytes=params // len(trainers) * 8, min_seconds=1.0)
