"""`leo train-lmdm` (stage 2: latent motion diffusion) and `leo train-first-frame`
(the image diffusion model that makes first frames for unconditional generation).

Both run as one process or under torchrun with the same arguments:
    torchrun --nproc_per_node 2 -m leo train-lmdm --data videos/ --animator animator.safetensors --out runs/lmdm
"""
from __future__ import annotations

import os


def _int_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _common(p, default_steps):
    p.add_argument("--data", required=True, help="folder of videos (mp4/mov/avi/webm) or frame folders (png/jpg)")
    p.add_argument("--out", required=True, help="output folder (weights, checkpoint.pt, metrics.csv)")
    p.add_argument("--steps", type=int, default=default_steps, help=f"total training steps (default {default_steps})")
    p.add_argument("--batch-size", type=int, default=16, help="batch size per process (default 16)")
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (default 2e-4)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the exported weights (default 0.999)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint interval in steps (default 500)")
    p.add_argument("--log-every", type=int, default=10, help="metrics.csv interval in steps (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt when it exists")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--objective", choices=("eps", "v"), default=None,
                   help="diffusion prediction target (default: eps for first-frame, v for LMDM)")


def register(sub):
    p = sub.add_parser("train-lmdm", help="train the latent motion diffusion model (stage 2) on videos")
    _common(p, 20000)
    p.add_argument("--animator", required=True, help="trained animator checkpoint (its encoder is frozen)")
    p.add_argument("--window", type=int, default=32, help="frames per training window (default 32)")
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="probability of dropping the alpha_1 condition (default 0.1)")
    p.add_argument("--cache-dir", default=None, help="motion-code cache folder (default OUT/code_cache)")
    p.add_argument("--encode-batch", type=int, default=64, help="frames per encoder batch (default 64)")
    p.add_argument("--channels", type=int, default=None, help="LMDM base width (default: LMDM's)")
    p.add_argument("--channel-mult", type=_int_list, default=None, help="LMDM per-level widths, e.g. 1,2 (default: LMDM's)")
    p.add_argument("--head-dim", type=int, default=None, help="temporal attention head size (default: LMDM's)")
    p.set_defaults(func=run_lmdm)

    p = sub.add_parser("train-first-frame", help="train the first-frame image generator (unconditional generation)")
    _common(p, 20000)
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--channels", type=int, default=32, help="U-Net base width (default 32)")
    p.add_argument("--channel-mults", type=_int_list, default=(1, 2, 2, 4), help="per-level widths (default 1,2,2,4)")
    p.add_argument("--attn-res", type=_int_list, default=(8,), help="resolutions with self-attention (default 8)")
    p.add_argument("--frame-stride", type=int, default=4, help="use every N-th frame (default 4)")
    p.add_argument("--frames-per-video", type=int, default=64, help="at most this many frames per video (default 64)")
    p.add_argument("--samples", type=int, default=16, help="images in OUT/samples.png at the end (default 16, 0: none)")
    p.set_defaults(func=run_first_frame)


def _check_common(args):
    from leo.cli import UserError

    if not os.path.isdir(args.data):
        raise UserError(f"--data: folder not found: {args.data}")
    for name in ("steps", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available")


def run_first_frame(args) -> int:
    from leo.cli import UserError
    from leo.train.first_frame_train import FirstFrameTrainConfig, train_first_frame

    _check_common(args)
    cfg = FirstFrameTrainConfig(
        data=args.data, out_dir=args.out, image_size=args.size, base_channels=args.channels,
        channel_mults=args.channel_mults, attn_resolutions=args.attn_res, objective=args.objective or "eps",
        frame_stride=args.frame_stride, frames_per_video=args.frames_per_video, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay, save_every=args.save_every,
        log_every=args.log_every, seed=args.seed, resume=args.resume, device=args.device, amp=args.amp,
        sample_count=max(0, args.samples),
    )
    try:
        summary = train_first_frame(cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    _report(summary)
    return 0


def _report(summary):
    # Under torchrun only rank 0 writes the weights, so only it says so.
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {summary['weights']} (step {summary['step']})")


def run_lmdm(args) -> int:
    from leo.cli import UserError
    from leo.train.stage2 import Stage2Config, train_lmdm

    _check_common(args)
    if not os.path.isfile(args.animator):
        raise UserError(f"--animator: file not found: {args.animator}")
    if not 0.0 <= args.p_uncond <= 1.0:
        raise UserError(f"--p-uncond must be in [0, 1], got {args.p_uncond}")
    if args.window < 2:
        raise UserError(f"--window must be at least 2, got {args.window}")
    cfg = Stage2Config(
        data=args.data, animator=args.animator, out_dir=args.out, window=args.window, p_uncond=args.p_uncond,
        cache_dir=args.cache_dir, encode_batch=args.encode_batch, channels=args.channels, objective=args.objective or "v",
        channel_mult=args.channel_mult, head_dim=args.head_dim,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
        save_every=args.save_every, log_every=args.log_every, seed=args.seed, resume=args.resume,
        device=args.device, amp=args.amp,
    )
    try:
        summary = train_lmdm(cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    _report(summary)
    return 0
