"""`leo generate` (image-to-video with the LMDM), `leo edit` (re-render a video's motion on an
edited first frame) and `leo init-lmdm` (a random LMDM checkpoint for tests and demos)."""
from __future__ import annotations

import argparse
import os

import torch

from leo.cli import UserError
from leo.cli.common import (add_animator, add_device, add_dtype, add_progress, check_dims, finite, first_line,
                            load_animator, load_first_frame, load_lmdm, precision, read_image_arg,
                            resolve_device, run_outside_autocast)


def register(sub):
    p = sub.add_parser("generate", help="generate a video from a first frame (or unconditionally) with the LMDM")
    add_animator(p)
    p.add_argument("--lmdm", required=True, help="LMDM checkpoint (.safetensors, kind 'lmdm')")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="first frame image")
    src.add_argument("--unconditional", action="store_true", help="also generate the first frame (needs --first-frame-model)")
    p.add_argument("--first-frame-model", help="first-frame image model checkpoint (with --unconditional)")
    p.add_argument("--frames", type=int, required=True, help="number of frames to generate (any length)")
    p.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    p.add_argument("--fps", type=float, default=25.0, help="output frame rate (default: 25)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="sampler (default: ddim)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default: 0, deterministic)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the sampling loop as a CUDA graph (default: on for CUDA)")
    _common(p)
    p.set_defaults(func=run_generate)

    e = sub.add_parser("edit", help="re-render a video's motion on an edited first frame")
    add_animator(e)
    e.add_argument("--video", required=True, help="input video")
    e.add_argument("--first-frame", required=True, help="the edited first frame (image)")
    e.add_argument("--out", required=True, help="output video (.mp4 or .gif)")
    e.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    _common(e)
    e.set_defaults(func=run_edit)

    i = sub.add_parser("init-lmdm", help="write a randomly initialized LMDM checkpoint (tests, demos)")
    i.add_argument("--out", required=True, help="output .safetensors")
    i.add_argument("--motion-dim", type=int, default=20)
    i.add_argument("--width", type=int, default=32)
    i.add_argument("--channel-mult", default="1,2", help="comma-separated multipliers per level (default: 1,2)")
    i.add_argument("--num-res-blocks", type=int, default=1)
    i.add_argument("--head-dim", type=int, default=16)
    i.add_argument("--window", type=int, default=16)
    i.add_argument("--objective", choices=("eps", "v"), default="v")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--init-std", type=float, default=0.02,
                   help="also perturb zero-initialized output layers by this std, so the random model moves (default 0.02)")
    i.set_defaults(func=run_init)


def _common(p):
    add_device(p)
    add_dtype(p, note="; the animator renders in it, the LMDM's motion-code sampling stays float32")
    p.add_argument("--batch", type=int, default=16, help="frames rendered per animator call (default: 16)")
    p.add_argument("--kernels", default="auto", help="leo_kernels backend for the LMDM attention (default: auto)")
    add_progress(p)


def _check_out(path):
    if not path.lower().endswith((".mp4", ".gif")):
        raise UserError(f"--out must end in .mp4 or .gif, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--out: folder does not exist: {folder}")


def run_generate(args) -> int:
    from leo.media import MediaError, VideoWriter
    from leo.pipeline import LEOPipeline

    if args.frames < 1:
        raise UserError(f"--frames must be >= 1, got {args.frames}")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    finite("--fps", args.fps)
    finite("--eta", args.eta, strict=False)
    if args.unconditional and not args.first_frame_model:
        raise UserError("--unconditional needs --first-frame-model PATH")
    if args.first_frame_model and not args.unconditional:
        raise UserError("--first-frame-model is only used with --unconditional")
    _check_out(args.out)
    device = resolve_device(args.device)
    if args.cuda_graph and device.type != "cuda":
        raise UserError("--cuda-graph needs --device cuda")
    animator = load_animator(args.animator, device)
    # The LMDM samples in float32 whatever --dtype: it is small, and its fused attention takes one dtype.
    lmdm = run_outside_autocast(load_lmdm(args.lmdm, device, kernels=args.kernels))
    check_dims(animator, lmdm)
    pipe = LEOPipeline(animator, lmdm, render_batch=args.batch)
    if args.steps > pipe.diffusion.num_steps:
        raise UserError(f"--steps must be <= {pipe.diffusion.num_steps} (the model's training steps)")
    if args.unconditional:
        gen = load_first_frame(args.first_frame_model, device, size=pipe.size)
        first = gen(1, seed=args.seed)[0].float().clamp(-1, 1)
    else:
        first = read_image_arg(args.image, pipe.size, "--image")
    try:
        with VideoWriter(args.out, args.fps) as writer, precision(device, args.dtype):
            pipe.generate(
                first, args.frames, seed=args.seed, steps=args.steps, sampler=args.sampler,
                cuda_graph=args.cuda_graph, writer=writer, eta=args.eta, progress=not args.no_progress,
            )
    except MediaError as exc:
        raise UserError(f"--out: {first_line(exc)}") from None
    print(f"wrote {args.frames} frames ({pipe.size}x{pipe.size}) to {args.out}")
    return 0


def run_edit(args) -> int:
    from leo.media import MediaError, VideoReader, VideoWriter
    from leo.pipeline import LEOPipeline

    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    finite("--fps", args.fps, allow_none=True)
    _check_out(args.out)
    if not os.path.isfile(args.video):
        raise UserError(f"--video: file not found: {args.video}")
    device = resolve_device(args.device)
    animator = load_animator(args.animator, device)
    pipe = LEOPipeline(animator, None, render_batch=args.batch)  # editing needs no LMDM
    edited = read_image_arg(args.first_frame, pipe.size, "--first-frame")
    try:
        with VideoReader(args.video, pipe.size) as reader:
            fps = args.fps or reader.fps or 25.0
        with VideoWriter(args.out, fps) as writer, precision(device, args.dtype):
            n = pipe.edit(args.video, edited, writer=writer, progress=not args.no_progress)
    except MediaError as exc:
        raise UserError(first_line(exc)) from None
    except ValueError as exc:
        raise UserError(f"--video: {first_line(exc)}") from None
    print(f"wrote {n} frames ({pipe.size}x{pipe.size}) to {args.out}")
    return 0


def run_init(args) -> int:
    from leo.lmdm import LMDM

    finite("--init-std", args.init_std, strict=False)
    try:
        mult = tuple(int(m) for m in args.channel_mult.split(","))
    except ValueError:
        raise UserError(f"--channel-mult must be comma-separated ints, got {args.channel_mult!r}") from None
    torch.manual_seed(args.seed)
    try:
        model = LMDM(
            motion_dim=args.motion_dim, width=args.width, channel_mult=mult, num_res_blocks=args.num_res_blocks,
            head_dim=args.head_dim, window=args.window, objective=args.objective,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.init_std > 0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() > 1 and p.abs().max() == 0:
                    p.normal_(0.0, args.init_std)
    model.save(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote a random LMDM ({n / 1e6:.2f}M parameters, window {args.window}) to {args.out}")
    return 0
