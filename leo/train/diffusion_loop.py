"""The training loop shared by the two diffusion trainers (`leo train-lmdm`,
`leo train-first-frame`): data held in memory, a model trained with
GaussianDiffusion.training_loss, an EMA copy, atomic checkpoints with exact resume,
progress/CSV logging and torchrun (DDP) support through leo.train.common.

Exact resume: every step's randomness (batch choice, diffusion noise, condition
dropout) comes from generators seeded by (seed, rank, step), so a resumed run draws the
same batches as an uninterrupted one without having to restore generator state.
"""
from __future__ import annotations

import copy
import os
import signal
from dataclasses import dataclass, field
from typing import Callable

import torch

from leo.train import common

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class LoopConfig:
    out_dir: str
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    device: str | None = None
    amp: bool = False  # bf16 autocast (CUDA only)
    extra: dict = field(default_factory=dict)  # stored in the checkpoint's config


def step_generators(seed: int, rank: int, step: int, device) -> tuple[torch.Generator, torch.Generator]:
    """(cpu generator for data, device generator for diffusion noise), fixed by (seed, rank, step)."""
    base = (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step) * 104_729) % (2**63 - 1)
    g_cpu = torch.Generator(device="cpu").manual_seed(base)
    dev = torch.device(device)
    g_dev = g_cpu if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(base + 1)
    return g_cpu, g_dev


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    # Warm-up: short runs (demo, tests) still get an EMA that follows the model.
    d = min(decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - d)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def run(
    cfg: LoopConfig,
    model: torch.nn.Module,
    diffusion,
    sample_batch: Callable[[torch.Generator, int], tuple],
    export: Callable[[torch.nn.Module, str], None],
    export_name: str,
    ctx=None,
    data_key: str | None = None,
) -> dict:
    """Train ``model`` and return a summary dict.

    sample_batch(generator, batch_size) -> (x0, cond) on CPU (cond may be None; with the
    condition-dropout done by the caller). export(ema_model, path) writes the final
    weights file ``out_dir/export_name`` (also written at every checkpoint).
    """
    own_ctx = ctx is None
    ctx = ctx or common.DistributedContext(device=cfg.device)
    device = ctx.device
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT_NAME)
    export_path = os.path.join(cfg.out_dir, export_name)

    common.seed_everything(cfg.seed + ctx.rank)
    model = model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if cfg.resume and os.path.exists(ckpt_path):
        payload = common.load_training_checkpoint(ckpt_path)
        if data_key is not None and payload.get("data_key") not in (None, data_key):
            raise ValueError(
                f"--resume: {ckpt_path} was trained on other data/animator (key {payload.get('data_key')}, now {data_key})"
            )
        model.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        opt.load_state_dict(payload["optimizer"])
        start = int(payload["step"])
        if payload.get("rng") is not None:
            common.set_rng_state(payload["rng"])
        if ctx.is_main:
            print(f"resumed from {ckpt_path} at step {start}")
    elif cfg.resume and ctx.is_main:
        print(f"--resume: no checkpoint at {ckpt_path}, starting from scratch")

    train_model = ctx.wrap(model)
    logger = common.TrainLogger(cfg.out_dir, total_steps=cfg.steps, start_step=start, enabled=ctx.is_main,
                                desc=cfg.extra.get("desc", "train"),
                                samples_per_step=cfg.batch_size * ctx.world_size)

    def save(step):
        if not ctx.is_main:
            return
        payload = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "config": {**cfg.__dict__, "extra": cfg.extra},
            "rng": common.rng_state(),
            "data_key": data_key,
        }
        common.save_training_checkpoint(ckpt_path, payload)
        export(ema, export_path)

    # A SIGTERM (cluster preemption, `kill`) ends the run at a step boundary with a checkpoint.
    stop = {"flag": False}
    old_handler = None
    if ctx.is_main:
        try:
            old_handler = signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__("flag", True))
        except ValueError:  # not in the main thread
            old_handler = None

    losses, step = [], start
    try:
        model.train()
        for step in range(start, cfg.steps):
            g_cpu, g_dev = step_generators(cfg.seed, ctx.rank, step, device)
            x0, cond = sample_batch(g_cpu, cfg.batch_size)
            x0 = x0.to(device, non_blocking=True)
            cond = cond.to(device, non_blocking=True) if isinstance(cond, torch.Tensor) else cond
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and torch.device(device).type == "cuda"):
                loss = diffusion.training_loss(train_model, x0, cond=cond, generator=g_dev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            opt.step()
            ema_update(ema, model, step, cfg.ema_decay)
            losses.append(loss.item())
            done = step + 1
            to_csv = done % cfg.log_every == 0 or done == cfg.steps
            recent = losses[-cfg.log_every:]
            metrics = {"loss": sum(recent) / len(recent)}
            if gnorm is not None:
                metrics["grad_norm"] = float(gnorm)
            logger.log(done, metrics, to_csv=to_csv)
            if done % cfg.save_every == 0 and done != cfg.steps:
                save(done)
            if stop["flag"]:
                break
        step = step + 1 if cfg.steps > start else start
        save(step)
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        logger.close()
        ctx.barrier()
        if own_ctx:
            ctx.close()
    return {"step": step, "losses": losses, "checkpoint": ckpt_path, "weights": export_path, "ema": ema}
