"""`leo train-lmdm`: stage 2, the latent motion diffusion model, trained on the motion codes a
frozen animator encodes from videos.

One process or torchrun with the same arguments:
    torchrun --nproc_per_node 2 -m leo train-lmdm --data videos/ --animator animator.safetensors --out runs/lmdm
"""
from __future__ import annotations

import os

from leo.cli import UserError
from leo.cli.common import (add_diffusion_training_args, check_diffusion_training_args, int_list, run_diffusion_trainer,
                            training_kwargs)


def register(sub):
    p = sub.add_parser("train-lmdm", help="train the latent motion diffusion model (stage 2) on videos")
    add_diffusion_training_args(p, 20000)
    p.add_argument("--animator", required=True, help="trained animator checkpoint (its encoder is frozen)")
    p.add_argument("--window", type=int, default=32, help="frames per training window (default 32)")
    p.add_argument("--p-uncond", type=float, default=0.1,
                   help="probability of dropping the alpha_1 condition (default 0.1)")
    p.add_argument("--cache-dir", default=None, help="motion-code cache folder (default OUT/code_cache)")
    p.add_argument("--encode-batch", type=int, default=64, help="frames per encoder batch (default 64)")
    p.add_argument("--channels", type=int, default=None, help="LMDM base width (default: LMDM's)")
    p.add_argument("--channel-mult", type=int_list, default=None, help="LMDM per-level widths, e.g. 1,2 (default: LMDM's)")
    p.add_argument("--head-dim", type=int, default=None, help="temporal attention head size (default: LMDM's)")
    p.set_defaults(func=run_lmdm)


def run_lmdm(args) -> int:
    from leo.train.stage2 import Stage2Config, train_lmdm

    check_diffusion_training_args(args)
    if not os.path.isfile(args.animator):
        raise UserError(f"--animator: file not found: {args.animator}")
    if not 0.0 <= args.p_uncond <= 1.0:
        raise UserError(f"--p-uncond must be in [0, 1], got {args.p_uncond}")
    if args.window < 2:
        raise UserError(f"--window must be at least 2, got {args.window}")
    if args.encode_batch < 1:
        raise UserError(f"--encode-batch must be a positive int, got {args.encode_batch}")
    cfg = Stage2Config(
        data=args.data, animator=args.animator, out=args.out, window=args.window, p_uncond=args.p_uncond,
        cache_dir=args.cache_dir, encode_batch=args.encode_batch, channels=args.channels, objective=args.objective or "v",
        channel_mult=args.channel_mult, head_dim=args.head_dim,
        batch=args.batch, ema_decay=args.ema_decay, device=args.device, amp=args.amp, **training_kwargs(args),
    )
    return run_diffusion_trainer(train_lmdm, cfg)
