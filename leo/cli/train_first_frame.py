"""`leo train-first-frame`: the image diffusion model that makes first frames for unconditional
generation (`leo generate --unconditional --first-frame-model ...`).

One process or torchrun with the same arguments:
    torchrun --nproc_per_node 2 -m leo train-first-frame --data videos/ --out runs/ff
"""
from __future__ import annotations

from leo.cli.common import (UserError, add_diffusion_training_args, check_diffusion_training_args, int_list,
                            run_diffusion_trainer, training_kwargs)


def register(sub):
    p = sub.add_parser("train-first-frame", help="train the first-frame image generator (unconditional generation)")
    add_diffusion_training_args(p, 20000)
    p.add_argument("--size", type=int, default=64, help="image size (default 64)")
    p.add_argument("--channels", type=int, default=32, help="U-Net base width (default 32)")
    p.add_argument("--channel-mults", type=int_list, default=(1, 2, 2, 4), help="per-level widths (default 1,2,2,4)")
    p.add_argument("--attn-res", type=int_list, default=(8,), help="resolutions with self-attention (default 8)")
    p.add_argument("--latent-dim", type=int, default=0,
                   help="> 0: an MLP denoiser over this many principal components of the frames instead of the pixel "
                        "U-Net (trains in a minute on a CPU; its images stay in the span of the components; default 0)")
    p.add_argument("--latent-width", type=int, default=512, help="that MLP's width (default 512)")
    p.add_argument("--frame-stride", type=int, default=4, help="use every N-th frame (default 4)")
    p.add_argument("--frames-per-video", type=int, default=64, help="at most this many frames per video (default 64)")
    p.add_argument("--samples", type=int, default=16, help="images in OUT/samples.png at the end (default 16, 0: none)")
    p.set_defaults(func=run_first_frame)


def run_first_frame(args) -> int:
    from leo.train.first_frame_train import FirstFrameTrainConfig, train_first_frame

    check_diffusion_training_args(args)
    if args.samples < 0:
        raise UserError(f"--samples must be >= 0, got {args.samples}")
    if args.latent_dim < 0 or args.latent_width < 1:
        raise UserError(f"--latent-dim must be >= 0 and --latent-width >= 1, got {args.latent_dim} and "
                        f"{args.latent_width}")
    cfg = FirstFrameTrainConfig(
        data=args.data, out=args.out, image_size=args.size, base_channels=args.channels,
        channel_mults=args.channel_mults, attn_resolutions=args.attn_res,
        objective=args.objective or ("v" if args.latent_dim else "eps"), latent_dim=args.latent_dim, latent_hidden=args.latent_width,
        frame_stride=args.frame_stride, frames_per_video=args.frames_per_video, sample_count=args.samples,
        batch=args.batch, ema_decay=args.ema_decay, device=args.device, amp=args.amp, **training_kwargs(args),
    )
    return run_diffusion_trainer(train_first_frame, cfg)
