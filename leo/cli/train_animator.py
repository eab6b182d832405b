"""`leo train-animator` (stage 1) and `leo make-synthetic` (synthetic training videos).

The same command runs on one process or under torchrun (one process per GPU, or CPU processes
with gloo):
    leo train-animator --synthetic 16 --out runs/anim --steps 2000
    torchrun --nproc_per_node 2 -m leo train-animator --data videos/ --out runs/anim --size 256 --width 1
"""
from __future__ import annotations

from leo.cli import UserError
from leo.cli.common import add_training_args, check_data_arg, resolve_device, training_kwargs
from leo.data.videos import SPLITS_BY


def register(sub):
    p = sub.add_parser("train-animator", help="train the animator (stage 1) on videos or synthetic data")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="folder of videos (mp4/mov/avi/webm) and/or frame folders (png/jpg), or one video file")
    src.add_argument("--synthetic", metavar="N", type=int, help="generate N synthetic videos into OUT/data and train on them")
    add_training_args(p, 2000, "Adam (both networks)",
                      "run folder: checkpoint.pt, metrics.csv, loss.png, samples/, animator.safetensors", "RUN_DIR")
    p.add_argument("--size", type=int, default=64, help="image size, a power of two 32..512 (default 64)")
    p.add_argument("--width", type=float, default=0.25, help="channel width of the animator, 1.0 = LIA (default 0.25)")
    p.add_argument("--style-dim", type=int, default=512, help="latent size (default 512, as LIA)")
    p.add_argument("--motion-dim", type=int, default=20, help="motion code size (default 20, as LIA)")
    p.add_argument("--batch", type=int, default=8, help="batch per process and micro-batch (default 8)")
    p.add_argument("--accum", type=int, default=1, help="gradient-accumulation micro-batches per step (default 1)")
    rec = p.add_argument_group("recipe (docs/MOTION.md; --init random --lia-grid --absolute-latent --pyramid 0 "
                               "--lr 2e-3 is LIA's; --absolute-latent implies --absolute-flow)")
    rec.add_argument("--init", choices=("copy", "random"), default="copy",
                     help="copy: start from an animator that reproduces the source exactly (default); random: LIA's")
    rec.add_argument("--init-from", metavar="CHECKPOINT",
                     help="start from this animator's weights (LIA .pt, a state_dict or a leo .safetensors of the "
                          "same size, width, style and motion dims) instead of --init: fine-tuning")
    rec.add_argument("--motion-gain", type=float, default=30.0,
                     help="copy init: scale of the motion codes, so they differ by frame from step 0 (default 30)")
    rec.add_argument("--lia-grid", action="store_true",
                     help="LIA's sampling grid (not an identity at zero flow) instead of align_corners=True")
    rec.add_argument("--absolute-latent", action="store_true",
                     help="LIA's latent wa_s + Q alpha_t instead of wa_s + Q (alpha_t - alpha_s)")
    rec.add_argument("--absolute-flow", action="store_true",
                     help="LIA's flows instead of flows minus those decoded at zero motion (source-relative)")
    rec.add_argument("--pyramid", type=int, default=3, help="extra L1 terms on 2x..2^N x pooled images (default 3)")
    rec.add_argument("--ema", type=float, default=0.995,
                     help="decay of the generator's EMA, which is evaluated and exported (default 0.995; 0 = off)")
    rec.add_argument("--beta1", type=float, default=0.0,
                     help="Adam beta1 of both networks (default 0, StyleGAN's; `leo demo` uses 0.9, docs/MOTION.md)")
    p.add_argument("--adv-weight", type=float, default=0.05, help="adversarial loss weight, 0 = off (default 0.05)")
    p.add_argument("--vgg19", metavar="PATH",
                   help="local VGG19 weights in torchvision format; turns the perceptual loss on")
    p.add_argument("--r1", type=float, default=0.0, metavar="GAMMA", help="R1 penalty weight (default 0 = off)")
    p.add_argument("--r1-every", type=int, default=16, help="lazy R1: apply every N steps (default 16)")
    p.add_argument("--sample-every", type=int, default=500, help="PNG sample-grid interval (default 500)")
    p.add_argument("--eval-every", type=int, default=250, help="held-out evaluation interval: L1/PSNR/SSIM, copy baseline, gain, motion ratio (default 250)")
    p.add_argument("--frames", type=int, default=48, help="frames per synthetic video (default 48)")
    p.add_argument("--synthetic-stream", action="store_true",
                   help="with --synthetic N, or --data DIR written by `leo make-synthetic`: train on pairs of fresh "
                        "clips of the same generator, never the same clip twice (the written ones evaluate; "
                        "docs/MOTION.md, seventh round)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="use at most this many frames of each clip (with --split-by time: the first ones of each "
                        "clip's training part, i.e. it drops the training frames nearest the held-out ones)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share held out: of the clips, or of every clip's frames with --split-by time (default 0.1)")
    p.add_argument("--max-gap", type=int, default=None, metavar="N",
                   help="--data: training pairs at most N frames apart (default: any two frames of a clip; "
                        "docs/MOTION.md, Real clips)")
    p.add_argument("--flip", action="store_true",
                   help="--data: mirror half of the training pairs left-right (both frames of a pair)")
    p.add_argument("--split-by", choices=SPLITS_BY, default="clip",
                   help="clip: evaluate on unseen clips (default); time: on the last frames of every clip, "
                        "i.e. unseen poses of the people trained on (for very few clips; docs/MOTION.md, Real clips)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's; 1 is fastest for tiny models on a busy CPU)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast of the training steps on CPU: faster on CPUs with native bf16 "
                        "(AVX512-BF16, AMX; elsewhere bf16 convolutions are emulated and may be slower); "
                        "evaluations stay float32")
    p.set_defaults(func=run_train)

    p = sub.add_parser("make-synthetic", help="write synthetic human-like training videos")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--videos", type=int, default=16, help="number of videos (default 16)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    p.add_argument("--size", type=int, default=64, help="frame size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("mp4", "frames"), default="mp4", help="mp4 files or PNG frame folders")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--body", type=float, default=1.0,
                   help="how much the figures' build and place differ between videos, 0..1 (default 1; leo demo: 0)")
    p.add_argument("--moves", type=int, default=0,
                   help="drive the joints by this many shared moves (default 0: every joint on its own; leo demo: 3)")
    p.add_argument("--limbs", type=float, default=1.0,
                   help="thickness of the figures' arms and legs, 0.5..3 times the original (default 1; leo demo: 1.6)")
    p.set_defaults(func=run_make_synthetic)


def run_make_synthetic(args) -> int:
    from leo.data.synthetic import write_dataset

    # a clip needs two frames to show motion; the trainers read frames of at least 8x8
    for name, least in (("videos", 1), ("frames", 2), ("size", 8)):
        if getattr(args, name) < least:
            raise UserError(f"--{name} must be >= {least}, got {getattr(args, name)}")
    try:
        paths = write_dataset(args.out, args.videos, args.frames, args.size, args.seed, args.format, args.fps,
                              body=args.body, moves=args.moves, limbs=args.limbs)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {len(paths)} synthetic videos ({args.frames} frames, {args.size}x{args.size}) to {args.out}")
    return 0


def run_train(args) -> int:
    import os

    from leo.data.videos import DataError
    from leo.train.common import CheckpointError
    from leo.train.stage1 import Stage1Config, train_stage1

    resolve_device(args.device)  # a one-line error for an unknown or missing device
    if args.synthetic is not None and args.synthetic < 2:
        raise UserError("--synthetic needs at least 2 videos (one is held out)")
    if args.init_from is not None and not os.path.isfile(args.init_from):
        raise UserError(f"--init-from {args.init_from}: no such file")
    if args.vgg19 is not None and not os.path.isfile(args.vgg19):
        raise UserError(f"--vgg19 {args.vgg19}: no such file")
    cfg = Stage1Config(
        out=args.out, data=args.data, synthetic=args.synthetic or 0, synthetic_frames=args.frames,
        synthetic_stream=args.synthetic_stream,
        size=args.size, width=args.width, style_dim=args.style_dim, motion_dim=args.motion_dim,
        batch=args.batch, accum=args.accum, adv_weight=args.adv_weight, vgg19=args.vgg19, r1=args.r1,
        r1_every=args.r1_every, sample_every=args.sample_every, eval_every=args.eval_every, max_frames=args.max_frames,
        test_fraction=args.test_fraction, split_by=args.split_by, max_gap=args.max_gap, flip=args.flip,
        device=args.device or "auto", workers=args.workers,
        threads=args.threads, amp=not args.no_amp, cpu_amp=args.cpu_bf16, init=args.init, init_from=args.init_from,
        **training_kwargs(args),
        motion_gain=args.motion_gain, align_corners=not args.lia_grid, relative_latent=not args.absolute_latent,
        relative_flow=not (args.absolute_latent or args.absolute_flow),
        pyramid=args.pyramid, ema=args.ema, betas=(args.beta1, 0.99),
    )
    if args.data is not None:  # after every flag (the config above checks them): those are cheaper
        check_data_arg(args.data)
    try:
        cfg.validate()
        summary = train_stage1(cfg)
    except DataError as exc:  # e.g. --data's clips exist but none can be read
        raise UserError(f"--data: {exc}" if args.data is not None else str(exc)) from None
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        ev0, ev1 = summary.get("initial_eval") or {}, summary.get("final_eval") or {}
        if ev0 and ev1:
            print(f"held-out L1 {ev0['l1']:.4f} -> {ev1['l1']:.4f} (copying the source: {ev1['copy_l1']:.4f}), "
                  f"gain over copying {ev0['gain']:+.3f} -> {ev1['gain']:+.3f}, motion ratio {ev1['motion_ratio']:.3f}, "
                  f"PSNR {ev0['psnr']:.2f} -> {ev1['psnr']:.2f} dB (copy {ev1['copy_psnr']:.2f})")
        if summary.get("ended_by") == "max_minutes":
            print(f"--max-minutes reached: the run ended at step {summary['step']} of {summary['steps']}")
        if summary.get("animator"):
            print(f"animator: {summary['animator']}")
        print(f"run folder: {args.out} (metrics.csv, loss.png, samples/, checkpoint.pt)")
    return 0 if summary.get("finished") else 130
