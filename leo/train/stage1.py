"""Stage-1 training: the animator learns to reconstruct a target frame from a source frame of the
same video (self-supervised, as LIA), with L1 + multi-scale VGG19 perceptual (when weights are
given) + non-saturating adversarial loss against a StyleGAN2-style discriminator (R1 optional).

One function, :func:`train_stage1`, runs the same way as one process or under ``torchrun``
(DistributedDataParallel; gloo on CPU, nccl on CUDA), with bf16 autocast on GPU, gradient
accumulation, and exact resume: every ``save_every`` steps (and on a clean stop: end of training,
SIGINT or SIGTERM) it writes ``RUN_DIR/checkpoint.pt`` atomically with the models, optimizers,
step, config, every rank's RNG state and the data position. Because the datasets draw everything
from the sample id (leo.data), a resumed run sees the very batches the uninterrupted run would
have seen. A run killed without warning loses at most the steps since its last checkpoint.

Run folder: checkpoint.pt, metrics.csv, loss.png, samples/step_XXXXXXX.png (rows: source,
target, reconstruction), animator.safetensors (the final model, leo's format), summary.json.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import pathlib
import time
from dataclasses import dataclass, field

import torch

from leo.animator import Animator, check_animator_args
from leo.data.videos import DataError, FramePairDataset, VideoFolder, check_max_gap, check_split_by
from leo.discriminator import Discriminator
from leo.train import losses
from leo.train.common import (
    DistributedContext,
    RunDir,
    StopRequest,
    StreamSampler,
    TrainConfig,
    TrainLogger,
    adam,
    check_positive_finite,
    ema_update,
    gather_rng,
    open_run,
    plot_run,
    restore_rng,
    save_training_checkpoint,
    seed_everything,
)

CHECKPOINT_NAME = "checkpoint.pt"
EXPORT_NAME = "animator.safetensors"
# Settings that may change when resuming (they do not change what is computed).
RUNTIME_KEYS = ("steps", "max_minutes", "device", "workers", "threads", "save_every", "sample_every", "eval_every",
                "log_every", "out", "resume", "progress")


@dataclass
class Stage1Config(TrainConfig):
    """Stage-1 settings; the loop's (steps, save_every, log_every, seed, resume, ...) are TrainConfig's."""

    out: str = "runs/animator"
    data: str | None = None              # folder of videos / frame folders
    synthetic: int = 0                   # >0: generate this many synthetic videos into out/data
    synthetic_frames: int = 48
    synthetic_stream: bool = False       # train on pairs of fresh clips of the generator that wrote the data (synthetic
                                         # or a `leo make-synthetic` folder); its written clips all evaluate
    size: int = 64
    width: float = 0.25                  # animator channel width (1.0 = released LIA)
    style_dim: int = 512
    motion_dim: int = 20
    d_width: float | None = None         # discriminator width (default: the animator's)
    batch: int = 8                       # per process, per micro-batch
    accum: int = 1                       # micro-batches per optimizer step
    lr: float = field(default=2e-4, kw_only=True)  # LIA: 2e-3 (drifts off the copy init; docs/MOTION.md)
    d_lr: float | None = None
    betas: tuple = (0.0, 0.99)
    # Recipe (docs/MOTION.md): start from an animator that copies the source exactly, take motion
    # relative to the source's code, and add L1 terms on average-pooled images (wider basins
    # for the flows), and decode flows relative to those at zero motion. LIA's own recipe:
    # init="random", align_corners=False, relative_latent=False, relative_flow=False, pyramid=0.
    init: str = "copy"                   # "copy" (Animator.init_copy_source) or "random"
    init_from: str | None = None         # start from this animator checkpoint's weights instead (fine-tuning)
    motion_gain: float = 30.0            # copy init: scale of the motion codes (informative from step 0)
    align_corners: bool = True           # exact identity at zero flow (False: LIA's convention)
    relative_latent: bool = True         # latent wa_s + Q (alpha_t - alpha_s) (False: LIA's wa_s + Q alpha_t)
    relative_flow: bool = True           # flows minus those at zero motion (needs relative_latent; False: LIA's)
    pyramid: int = 3                     # extra L1 terms on 2x, 4x, 8x average-pooled images
    ema: float = 0.995                   # decay of the generator's EMA (0: off); evals, samples and the export use it
    l1_weight: float = 1.0
    vgg_weight: float = 1.0
    adv_weight: float = 0.05
    vgg19: str | None = None             # local torchvision VGG19 weights (perceptual loss on)
    r1: float = 0.0                      # R1 gamma (0: off)
    r1_every: int = 16                   # lazy R1: every N steps, scaled by N
    sample_every: int = 500
    eval_every: int = 250
    eval_pairs: int = 16                 # held-out (frame 0, frame t) pairs per eval (spread over eval_clips)
    eval_clips: int = 8                  # held-out clips for the motion ratio
    test_fraction: float = 0.1
    split_by: str = "clip"               # "clip": unseen clips evaluate; "time": the last frames of every clip
    max_frames: int | None = None        # use at most this many frames per clip
    max_gap: int | None = None           # training pairs at most this many frames apart (None: any two frames)
    flip: bool = False                   # mirror half of the training pairs left-right (both frames)
    device: str = field(default="auto", kw_only=True)
    workers: int = 2
    threads: int | None = None           # CPU threads for torch (None: torch's default)
    amp: bool = field(default=True, kw_only=True)  # bf16 autocast on CUDA
    cpu_amp: bool = field(default=False, kw_only=True)  # bf16 autocast of the training steps on CPU (evals stay fp32)
    kernels: str = "auto"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Stage1Config":
        d = cls.current_keys(d)  # old spellings (quiet) mapped, keys that are no fields dropped
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "init" not in d:  # a run saved before the recipe options existed trained LIA's way
            d.update(init="random", align_corners=False, relative_latent=False, relative_flow=False, pyramid=0)
        d.setdefault("ema", 0.0)  # runs saved before the EMA existed had none
        d.setdefault("relative_flow", False)  # nor source-relative flows
        return cls(**d)

    def validate(self) -> None:
        if (self.data is None) == (not self.synthetic):
            raise ValueError("give exactly one of data (a folder) or synthetic (a number of videos > 0)")
        if self.init not in ("copy", "random"):
            raise ValueError(f"init must be 'copy' or 'random', got {self.init!r}")
        if isinstance(self.pyramid, bool) or not isinstance(self.pyramid, int) or not 0 <= self.pyramid <= 5:
            raise ValueError(f"pyramid must be an int in [0, 5], got {self.pyramid!r}")
        for name in ("steps", "batch", "accum", "save_every", "sample_every", "eval_every", "log_every",
                     "r1_every", "eval_pairs", "eval_clips"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.init_from is not None and not os.path.isfile(self.init_from):
            raise ValueError(f"init_from: no such animator checkpoint: {self.init_from}")
        if self.synthetic_stream and not self.synthetic:
            from leo.data.synthetic import read_manifest

            if read_manifest(self.data) is None:
                raise ValueError(f"synthetic_stream needs synthetic N or a data folder written by `leo make-synthetic`; "
                                 f"{self.data} has no synthetic.json")
        if self.relative_flow and not self.relative_latent:
            raise ValueError("relative_flow needs relative_latent (flows relative to the source need its zero-motion latent)")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        check_positive_finite("lr", self.lr)  # again here: a resumed run's config is edited after construction
        if self.d_lr is not None:
            check_positive_finite("d_lr", self.d_lr)
        for name in ("l1_weight", "vgg_weight", "adv_weight", "r1"):  # not x >= 0 also refuses NaN
            v = getattr(self, name)
            if not v >= 0 or v == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        check_animator_args(self.size, self.style_dim, self.motion_dim, width=self.width)  # before any data is written
        check_max_gap(self.max_gap)
        if self.max_gap is not None and self.synthetic_stream:
            raise ValueError("max_gap limits pairs of stored clips; synthetic_stream renders its own pairs")
        if self.flip and self.synthetic_stream:
            raise ValueError("flip mirrors pairs of stored clips; synthetic_stream renders its own pairs")
        check_split_by(self.split_by)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads!r}")


def _autocast(device: torch.device, enabled: bool, cpu: bool = False):
    """bf16 autocast on CUDA when ``enabled``; on CPU only when ``cpu`` (Stage1Config.cpu_amp): CPUs with
    native bf16 (AVX512-BF16, AMX) run its convolutions 2-3x faster; elsewhere they are emulated."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_data(cfg: Stage1Config, ctx: DistributedContext, out: pathlib.Path) -> str:
    """The data folder; synthetic videos are written once (by rank 0) into ``out/data``."""
    if not cfg.synthetic:
        return cfg.data
    from leo.data.synthetic import write_dataset

    root = out / "data"
    marker = root / ".complete"
    if ctx.is_main and not marker.exists():
        write_dataset(root, num_videos=cfg.synthetic, num_frames=cfg.synthetic_frames, size=cfg.size, seed=cfg.seed)
        marker.write_text(json.dumps({"videos": cfg.synthetic, "frames": cfg.synthetic_frames, "size": cfg.size,
                                      "seed": cfg.seed}))
    ctx.barrier()
    return str(root)


def _grid(source, target, recon, path):
    from leo.media import image_grid, save_image

    n = source.shape[0]
    img = image_grid(torch.cat([source, target, recon.clamp(-1, 1)]).float().cpu(), nrow=n)
    save_image(path, img)


def _sample_pairs(clips: list, columns: int = 4) -> dict:
    """The sample grids' pairs: frame 0 -> the middle frame of up to ``columns`` held-out clips; with
    fewer clips, more targets per clip (frame 0 -> the middle and the last frame for two clips)."""
    per_clip = max(1, columns // len(clips))
    src, tgt = [], []
    for c in clips[:columns]:
        n = c.shape[0] - 1
        for j in range(1, per_clip + 1):
            t = max(1, round(n * j / per_clip)) if per_clip > 1 else c.shape[0] // 2
            src.append(c[0])
            tgt.append(c[t])
    return {"source": torch.stack(src), "target": torch.stack(tgt)}


def held_out_clips(folder, n: int, split: str, max_frames: int = 48) -> list:
    """Up to ``n`` clips of ``split`` (each cut to ``max_frames``) for the motion metrics."""
    clips = []
    for _, _, frames in folder.iter_clips(split):
        clips.append(frames[:max_frames])
        if len(clips) == n:
            break
    if not clips:
        raise DataError(f"no usable clip in the {split!r} split of {folder.root} to evaluate on")
    return clips


def evaluate(model, clips: list, device, pairs: int = 16, amp: bool = True) -> dict:
    """Held-out stage-1 metrics (leo.metrics): L1/PSNR/SSIM of (frame 0, frame t) reconstructions
    next to copying frame 0, the gain over it, and the rendered motion ratio."""
    from leo.metrics import animator_report

    per_clip = max(1, -(-pairs // len(clips)))
    return animator_report(model, clips, pairs_per_clip=per_clip, autocast=lambda: _autocast(device, amp))


def _eval_line(ev: dict) -> str:
    return (f"L1 {ev['l1']:.4f} (copying the source: {ev['copy_l1']:.4f}), gain {ev['gain']:+.3f} "
            f"(moving pixels {ev['moving_gain']:+.3f}, still-pixel L1 {ev['still_l1']:.4f}), "
            f"motion ratio {ev['motion_ratio']:.3f}, PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.3f}")


def reconstruction_loss(recon, target, pyramid: int) -> torch.Tensor:
    """L1, plus one L1 per 2x average-pooling level: the pooled terms reward a flow that moves
    content roughly right when it is still pixels off, where the full-resolution L1 sees nothing."""
    import torch.nn.functional as F

    recon, target = recon.float(), target.float()
    loss = (recon - target).abs().mean()
    for _ in range(pyramid):
        recon, target = F.avg_pool2d(recon, 2), F.avg_pool2d(target, 2)
        loss = loss + (recon - target).abs().mean()
    return loss


def train_stage1(cfg: Stage1Config, hooks: dict | None = None) -> dict:
    """Train (or resume) an animator; returns a summary dict (also written to summary.json).

    ``hooks`` (tests): ``{"after_step": fn(step, info)}`` called on every rank after each step.
    """
    hooks = hooks or {}
    run = open_run(cfg.out, cfg.resume, name=CHECKPOINT_NAME)  # FileExistsError without --resume
    if run.payload is not None:
        saved = Stage1Config.from_dict(run.payload["config"])
        for k in RUNTIME_KEYS:
            setattr(saved, k, getattr(cfg, k))
        cfg = saved
    cfg.validate()

    ctx = DistributedContext(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        # tiny models on a busy CPU: fewer threads avoid OpenMP oversubscription (restored below)
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, ctx, run, hooks)
    finally:
        torch.set_num_threads(threads)
        ctx.close()


def _load_initial_weights(G: Animator, path: str) -> None:
    """G's weights from an animator checkpoint (any format Animator.from_checkpoint reads: a released
    LIA file, a state_dict, a leo export) of the same architecture; G keeps this run's conventions
    (align_corners, relative latent and flows)."""
    src = Animator.from_checkpoint(path)
    want = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in src.state_dict().items()}
    if want != have:
        arch = ("size", "width", "style_dim", "motion_dim", "channel_multiplier")
        raise ValueError(f"init_from {path}: its animator ({', '.join(f'{k} {src.config[k]}' for k in arch)}) does not "
                         f"match this run's ({', '.join(f'{k} {G.config[k]}' for k in arch)})")
    G.load_state_dict(src.state_dict())


def _train(cfg: Stage1Config, ctx: DistributedContext, run: RunDir, hooks: dict) -> dict:
    ckpt, out, ckpt_path = run.payload, run.out, run.checkpoint
    device = ctx.device
    amp = cfg.amp and device.type == "cuda"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    # ---- data (read before the progress bar starts: an unusable folder's error is the last line printed)
    data_root = _prepare_data(cfg, ctx, out)
    folder = VideoFolder(data_root, size=cfg.size, test_fraction=cfg.test_fraction, split_seed=0, split_by=cfg.split_by,
                         max_frames=cfg.max_frames, verbose=ctx.is_main)
    log = TrainLogger(out, total_steps=cfg.steps, start_step=ckpt["step"] if ckpt else 0, enabled=ctx.is_main,
                      desc="stage1", samples_per_step=cfg.batch * cfg.accum * ctx.world_size,
                      progress=cfg.progress)
    log.message(f"data: {folder.summary()}")
    if cfg.synthetic_stream:  # the same generator past the written clips, so those stay unseen
        from leo.data.synthetic import SyntheticPairStream, read_manifest

        # what wrote the clips: this run (runs from before manifests have none) or `leo make-synthetic`
        m = (dict(seed=cfg.seed, videos=cfg.synthetic, frames=cfg.synthetic_frames) if cfg.synthetic
             else read_manifest(data_root))
        options = {k: m[k] for k in ("camera", "body", "moves", "limbs") if k in m}
        dataset = SyntheticPairStream(m["seed"], m["videos"], m["frames"], cfg.size, **options)
        log.message(f"training pairs: a fresh synthetic clip per pair (seed {m['seed']}, clips {m['videos']} and on)")
    else:
        dataset = FramePairDataset(folder, "train", seed=cfg.seed, max_gap=cfg.max_gap, flip=cfg.flip)
    # a streamed run trains on none of the stored clips: all of them are held out
    eval_split = "all" if cfg.synthetic_stream else ("test" if folder.test else "train")
    eval_clips = sample_pairs = None
    if ctx.is_main:
        eval_clips = held_out_clips(folder, cfg.eval_clips, eval_split)
        log.message(f"held-out evaluation: {len(eval_clips)} {eval_split} clips, {cfg.eval_pairs} (frame 0, frame t) pairs")
        sample_pairs = _sample_pairs(eval_clips)
    sample_ids_per_step = cfg.batch * cfg.accum  # per rank

    # ---- models (same init on every rank; DDP also broadcasts rank 0's)
    seed_everything(cfg.seed)
    G = Animator(size=cfg.size, style_dim=cfg.style_dim, motion_dim=cfg.motion_dim, width=cfg.width,
                 kernels=cfg.kernels, align_corners=cfg.align_corners, relative_latent=cfg.relative_latent,
                 relative_flow=cfg.relative_flow)
    if cfg.init_from is not None and ckpt is None:
        _load_initial_weights(G, cfg.init_from)
        log.message(f"initial weights: {cfg.init_from}")
    elif cfg.init == "copy" and ckpt is None:
        G.init_copy_source(motion_gain=cfg.motion_gain if cfg.relative_latent else 1.0)
    G = G.to(device)
    D = Discriminator(size=cfg.size, width=cfg.d_width or cfg.width).to(device)
    opt_g = adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = adam(D.parameters(), lr=cfg.d_lr or cfg.lr, betas=cfg.betas)
    perceptual = None
    if cfg.vgg19:
        perceptual = losses.PerceptualLoss(losses.VGG19Features.from_file(cfg.vgg19)).to(device)
        log.message(f"perceptual loss: VGG19 from {cfg.vgg19}")
    else:
        log.message("perceptual loss: off (no --vgg19 weights file given)")
    use_adv = cfg.adv_weight > 0

    start_step = 0
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
    # the model that is evaluated, sampled and exported: an EMA of G's weights (or G itself)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema > 0 else G
    if ckpt is not None:
        if G_ema is not G and "G_ema" in ckpt:
            G_ema.load_state_dict(ckpt["G_ema"])
        D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        start_step = int(ckpt["step"])
        if ckpt.get("world_size", 1) != ctx.world_size:
            log.message(f"resuming a {ckpt.get('world_size')}-process run with {ctx.world_size} processes: "
                        "batches will differ from the original run")
        log.message(f"resumed from {ckpt_path} at step {start_step}")
    # The animator keeps LIA's unused parameters (noise strengths, to_rgb1) and R1 does not reach
    # D's output bias: DDP must be told some parameters get no gradient.
    Gd, Dd = ctx.wrap(G, find_unused_parameters=True), ctx.wrap(D, find_unused_parameters=True)

    # ---- data stream from this step's sample position (the datasets are id-driven)
    position = ckpt["data_position"] if ckpt is not None else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch, sampler=StreamSampler(position, ctx.rank, ctx.world_size),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=False, prefetch_factor=2 if cfg.workers > 0 else None)
    batches = iter(loader)

    # RNG last, so nothing above (model init, data indexing) shifts it
    if ckpt is not None:
        restore_rng(ckpt["rng"], ctx)

    initial_eval = None
    if ctx.is_main and start_step == 0:
        initial_eval = evaluate(G_ema, eval_clips, device, pairs=cfg.eval_pairs, amp=amp)
        log.log(0, {f"eval_{k}": v for k, v in initial_eval.items()})
        log.message("step 0 held-out: " + _eval_line(initial_eval))
    summary = {"initial_eval": initial_eval if initial_eval is not None else (ckpt or {}).get("initial_eval")}

    def save(step):
        rng = gather_rng(ctx)
        if ctx.is_main:
            save_training_checkpoint(ckpt_path, {
                "step": step, "config": cfg.to_dict(), "G": G.state_dict(), "D": D.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng,
                **({"G_ema": G_ema.state_dict()} if G_ema is not G else {}),
                "data_position": step * sample_ids_per_step, "world_size": ctx.world_size,
                "initial_eval": summary["initial_eval"], "animator_config": G.config,
            })
        ctx.barrier()

    step = start_step
    last = {}
    t_start = time.perf_counter()
    with StopRequest.for_budget(cfg.max_minutes) as stop:
        while step < cfg.steps:
            # ---------------- generator: reconstruction (+ perceptual, + adversarial)
            G.train()
            D.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            micro = []
            sums = {"l1": 0.0, "vgg": 0.0, "g_adv": 0.0}
            for m in range(cfg.accum):
                b = next(batches)
                src = b["source"].to(device, non_blocking=True)
                tgt = b["target"].to(device, non_blocking=True)
                sync = contextlib.nullcontext() if m == cfg.accum - 1 or not ctx.distributed else Gd.no_sync()
                with sync:
                    with _autocast(device, amp, cfg.cpu_amp):
                        recon = Gd(src, tgt)
                        l1 = (recon.float() - tgt.float()).abs().mean()
                        loss = cfg.l1_weight * reconstruction_loss(recon, tgt, cfg.pyramid)
                        if perceptual is not None:
                            vgg = perceptual(recon, tgt)
                            loss = loss + cfg.vgg_weight * vgg
                            sums["vgg"] += vgg.item() / cfg.accum
                        if use_adv:
                            g_adv = losses.g_nonsaturating(D(recon))
                            loss = loss + cfg.adv_weight * g_adv
                            sums["g_adv"] += g_adv.item() / cfg.accum
                    (loss / cfg.accum).backward()
                sums["l1"] += l1.item() / cfg.accum
                micro.append((tgt, recon.detach()))
            opt_g.step()
            if G_ema is not G:
                ema_update(G_ema, G, step, cfg.ema)

            # ---------------- discriminator: logistic loss (+ lazy R1 on the last micro-batch)
            D.requires_grad_(True)
            if use_adv:
                do_r1 = cfg.r1 > 0 and step % cfg.r1_every == 0
                opt_d.zero_grad(set_to_none=True)
                d_sum = 0.0
                for m, (tgt, fake) in enumerate(micro):
                    last_micro = m == cfg.accum - 1
                    sync = contextlib.nullcontext() if last_micro or not ctx.distributed else Dd.no_sync()
                    n = tgt.shape[0]
                    real = tgt.detach().requires_grad_(do_r1 and last_micro)
                    with sync:
                        # one forward for real and fake (one backward per forward under DDP);
                        # minibatch-std groups stay within each half
                        with _autocast(device, amp, cfg.cpu_amp):
                            logits = Dd(torch.cat([real, fake]), n)
                            d_loss = losses.d_logistic(logits[:n], logits[n:])
                        loss = d_loss / cfg.accum
                        if real.requires_grad:
                            r1 = losses.r1_penalty(logits[:n], real)
                            loss = loss + cfg.r1 / 2 * r1 * cfg.r1_every
                            sums["r1"] = r1.item()
                        loss.backward()
                    d_sum += d_loss.item() / cfg.accum
                opt_d.step()
                sums["d"] = d_sum
            step += 1
            last = sums

            if "after_step" in hooks:
                hooks["after_step"](step, {"losses": sums, "G": G, "D": D})

            # agree on a clean stop (a signal or the time budget, on any rank) at this step boundary
            stop_now = stop.should_stop(ctx)
            last_step = step == cfg.steps or stop.out_of_time  # the run ends here: evaluate, sample, export

            if step % cfg.log_every == 0 or step == cfg.steps or stop_now:
                shown = {k: v for k, v in sums.items()
                         if not (k == "vgg" and perceptual is None) and not (k == "g_adv" and not use_adv)}
                if ctx.distributed:  # the losses of the whole global batch, not rank 0's share
                    keys = sorted(shown)
                    mean = ctx.all_reduce_mean(torch.tensor([shown[k] for k in keys], dtype=torch.float64,
                                                            device=device))
                    shown = dict(zip(keys, mean.tolist()))
                log.log(step, shown)
            if ctx.is_main and (step % cfg.eval_every == 0 or last_step):
                ev = evaluate(G_ema, eval_clips, device, pairs=cfg.eval_pairs, amp=amp)
                log.log(step, {f"eval_{k}": v for k, v in ev.items()})
                log.message(f"step {step} held-out: " + _eval_line(ev))
                summary["final_eval"] = ev
            if ctx.is_main and (step % cfg.sample_every == 0 or last_step):
                with torch.no_grad(), _autocast(device, amp):
                    was_training = G_ema.training
                    G_ema.eval()
                    rec = G_ema(sample_pairs["source"].to(device), sample_pairs["target"].to(device)).float().cpu()
                    G_ema.train(was_training)
                _grid(sample_pairs["source"], sample_pairs["target"], rec, out / "samples" / f"step_{step:07d}.png")
            if step % cfg.save_every == 0 or step == cfg.steps or stop_now:
                save(step)
            if stop_now:
                if msg := stop.end_message(step, cfg.steps):
                    log.message(msg)
                break

    elapsed = time.perf_counter() - t_start
    log.close()
    ended_by = stop.ended_by(step, cfg.steps)
    summary.update({"step": step, "steps": cfg.steps, "finished": ended_by != "signal", "ended_by": ended_by,
                    "last_losses": last,
                    "seconds": elapsed, "data": folder.summary(), "skipped_clips": folder.num_skipped,
                    "world_size": ctx.world_size, "device": str(device)})
    if ctx.is_main:
        if ended_by != "signal":
            G_ema.save(out / EXPORT_NAME)
            summary["animator"] = str(out / EXPORT_NAME)
        plot_run(out)  # loss.png (a one-line notice when matplotlib is missing)
        from leo.checkpoint_io import atomic_write

        text = json.dumps(summary, indent=2, default=str)
        atomic_write(out / "summary.json", lambda tmp: pathlib.Path(tmp).write_text(text))
    return summary
