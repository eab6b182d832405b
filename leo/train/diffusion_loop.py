"""The training loop shared by the two diffusion trainers (`leo train-lmdm`,
`leo train-first-frame`): data held in memory, a model trained with
GaussianDiffusion.training_loss, an EMA copy, atomic checkpoints with exact resume,
progress/CSV logging, ``loss.png`` at the end and torchrun (DDP) support through leo.train.common.

Exact resume: every step's randomness (batch choice, diffusion noise, condition
dropout) comes from generators seeded by (seed, rank, step), so a resumed run draws the
same batches as an uninterrupted one without having to restore generator state.

Resume, stopping and logging are leo.train.common's (the same as stage 1's): ``open_run``
(``--resume`` loads ``out/checkpoint.pt``; without it an old checkpoint is overwritten),
``StopRequest`` (SIGINT/SIGTERM on any rank stop every rank after the same step, with a
checkpoint), every rank's RNG state in the checkpoint, progress/CSV on the main rank only.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, fields
from typing import Callable

import torch

from leo.train import common

CHECKPOINT_NAME = common.CHECKPOINT_NAME


@dataclass(kw_only=True)
class DiffusionTrainConfig(common.TrainConfig):
    """The loop settings of a diffusion trainer's config (Stage2Config, FirstFrameTrainConfig)."""

    batch: int = 16                     # per process
    ema_decay: float = 0.999

    def __post_init__(self, out_dir, batch_size, quiet):
        super().__post_init__(out_dir, batch_size, quiet)
        if not 0 <= self.ema_decay < 1:  # also refuses NaN
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")


@dataclass
class LoopConfig(DiffusionTrainConfig):
    out: str
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    @classmethod
    def of(cls, cfg: DiffusionTrainConfig, out: str, **extra) -> "LoopConfig":
        """The loop settings of a trainer's config; ``extra`` (then ``cfg.extra``) goes to the checkpoint."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(DiffusionTrainConfig)}
        shared["extra"] = {**extra, **cfg.extra}
        return cls(out=out, **shared)


@dataclass
class DiffusionTask:
    """What :func:`run` trains.

    sample_batch(generator, batch) -> (x0, cond) on CPU (cond may be None; condition
    dropout is the diffusion's). export(ema_model, path) writes the final weights file
    ``out/export_name`` (also written at every checkpoint). ``data_key`` identifies the
    training data: resuming on other data is refused.
    """

    model: torch.nn.Module
    diffusion: object  # anything with training_loss(model, x0, cond=, generator=)
    sample_batch: Callable[[torch.Generator, int], tuple]
    export: Callable[[torch.nn.Module, str], None]
    export_name: str
    data_key: str | None = None


def saved_model_config(payload: dict) -> dict | None:
    """The model config a checkpoint of this loop was trained with (None: an older checkpoint)."""
    return (payload.get("config") or {}).get("extra", {}).get("model")


def holds_another_model(payload: dict, model_config: dict) -> bool:
    """Whether a checkpoint of this loop was trained with another model config than ``model_config``
    (compared as JSON: a tuple saves as a list). Checkpoints without one are assumed to match."""
    saved = saved_model_config(payload)
    return saved is not None and (json.dumps(saved, sort_keys=True, default=str)
                                  != json.dumps(model_config, sort_keys=True, default=str))


def step_generators(seed: int, rank: int, step: int, device) -> tuple[torch.Generator, torch.Generator]:
    """(cpu generator for data, device generator for diffusion noise), fixed by (seed, rank, step)."""
    base = (int(seed) * 1_000_003 + int(rank) * 7_919 + int(step) * 104_729) % (2**63 - 1)
    g_cpu = torch.Generator(device="cpu").manual_seed(base)
    dev = torch.device(device)
    g_dev = g_cpu if dev.type == "cpu" else torch.Generator(device=dev).manual_seed(base + 1)
    return g_cpu, g_dev


def run(cfg: LoopConfig, task: DiffusionTask, ctx: common.DistributedContext | None = None,
        hooks: dict | None = None) -> dict:
    """Train ``task.model`` and return a summary dict (``step``, ``finished``, ``losses``,
    ``checkpoint``, ``weights``, ``ema``).

    ``hooks`` (tests): ``{"after_step": fn(step, info)}`` called on every rank after each step.
    """
    hooks = hooks or {}
    with common.distributed_context(ctx, cfg.device) as ctx:
        return _run(cfg, task, ctx, hooks)


def _run(cfg: LoopConfig, task: DiffusionTask, ctx: common.DistributedContext, hooks: dict) -> dict:
    device = ctx.device
    os.makedirs(cfg.out, exist_ok=True)
    run_dir = common.open_run(cfg.out, cfg.resume, overwrite=True)
    ckpt_path = str(run_dir.checkpoint)
    export_path = os.path.join(cfg.out, task.export_name)

    common.seed_everything(cfg.seed + ctx.rank)
    model = task.model.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = common.adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled=True)
    payload, start = run_dir.payload, run_dir.start_step
    if payload is not None:
        if task.data_key is not None and payload.get("data_key") not in (None, task.data_key):
            raise ValueError(f"--resume: {ckpt_path} was trained on other data/animator "
                             f"(key {payload.get('data_key')}, now {task.data_key})")
        if "model" in cfg.extra and holds_another_model(payload, cfg.extra["model"]):
            raise ValueError(f"--resume: {ckpt_path} holds another model ({saved_model_config(payload)}, now "
                             f"{cfg.extra['model']}); use another --out or delete the checkpoint")
        model.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        opt.load_state_dict(payload["optimizer"])
        common.restore_rng(payload.get("rng"), ctx)

    train_model = ctx.wrap(model)
    logger = common.TrainLogger(cfg.out, total_steps=cfg.steps, start_step=start, enabled=ctx.is_main,
                                desc=cfg.extra.get("desc", "train"),
                                samples_per_step=cfg.batch * ctx.world_size, progress=cfg.progress)
    if payload is not None:
        logger.message(f"resumed from {ckpt_path} at step {start}")
    elif cfg.resume:
        logger.message(f"--resume: no checkpoint at {ckpt_path}, starting from scratch")

    def save(step):
        rng = common.gather_rng(ctx)  # a collective: every rank saves at the same steps
        if ctx.is_main:
            common.save_training_checkpoint(ckpt_path, {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "config": {**cfg.__dict__, "extra": cfg.extra},
                "rng": rng,
                "world_size": ctx.world_size,
                "data_key": task.data_key,
            })
            task.export(ema, export_path)
        ctx.barrier()

    losses, step, stopped = [], start, False
    try:
        with common.StopRequest.for_budget(cfg.max_minutes) as stop:
            model.train()
            while step < cfg.steps:
                g_cpu, g_dev = step_generators(cfg.seed, ctx.rank, step, device)
                x0, cond = task.sample_batch(g_cpu, cfg.batch)
                x0 = x0.to(device, non_blocking=True)
                cond = cond.to(device, non_blocking=True) if isinstance(cond, torch.Tensor) else cond
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                    loss = task.diffusion.training_loss(train_model, x0, cond=cond, generator=g_dev)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
                opt.step()
                common.ema_update(ema, model, step, cfg.ema_decay)
                losses.append(loss.item())
                step += 1
                recent = losses[-cfg.log_every:]
                metrics = {"loss": sum(recent) / len(recent)}
                if gnorm is not None:
                    metrics["grad_norm"] = float(gnorm)
                logger.log(step, metrics, to_csv=step % cfg.log_every == 0 or step == cfg.steps)
                if "after_step" in hooks:
                    hooks["after_step"](step, {"loss": losses[-1], "model": model, "ema": ema})
                # agree on a clean stop (a signal or the time budget, on any rank) at this step boundary
                stopped = stop.should_stop(ctx)
                if stopped:
                    break
                if step % cfg.save_every == 0 and step != cfg.steps:
                    save(step)
            save(step)  # the end, a stop, or (resuming a finished run) the same state again
            if msg := stop.end_message(step, cfg.steps):
                logger.message(msg)
    finally:
        logger.close()
    if ctx.is_main:
        common.plot_run(cfg.out)  # loss.png, as every trainer (a notice when matplotlib is missing)
    ended_by = stop.ended_by(step, cfg.steps)
    return {"step": step, "finished": ended_by != "signal", "ended_by": ended_by, "losses": losses,
            "checkpoint": ckpt_path, "weights": export_path, "ema": ema}
