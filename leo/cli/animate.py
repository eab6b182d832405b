"""`leo animate`, `leo manipulate` and `leo init-animator`: the stage-1 animator from the shell.

animate:     source image + driving video -> video (streams the driving video in chunks,
             so memory does not grow with its length; keeps its fps; H.264 mp4 or GIF).
manipulate:  sweeps each motion direction of the source over [-range, range] (LIA's linear
             manipulation demo) into a video or a contact sheet (rows = directions).
init-animator: writes a randomly initialized (small) animator checkpoint for tests/demos.
"""
from __future__ import annotations

import os

import torch

from leo.cli import UserError
from leo.cli.common import (add_animator, add_device, add_dtype, add_progress, finite, first_line, load_animator,
                            positive, precision, progress, read_image_arg, resolve_device)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def register(sub):
    p = sub.add_parser("animate", help="animate a source image with a driving video (LIA stage 1)")
    add_animator(p)
    p.add_argument("--source", required=True, help="source image (any format Pillow reads)")
    p.add_argument("--driving", required=True, help="driving video (mp4, mov, mkv, avi, webm, gif, ...)")
    p.add_argument("--out", required=True, help="output video: .mp4 (H.264), .mkv, .mov or .gif")
    p.add_argument("--mode", choices=("relative", "absolute"), default="relative",
                   help="relative: transfer motion relative to the first driving frame (taichi/vox demos); "
                   "absolute: use the driving frames' motion codes directly (ted demo)")
    _common(p, batch=8)
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many driving frames")
    p.set_defaults(func=run_animate)

    p = sub.add_parser("manipulate", help="sweep each motion direction of a source image (video or contact sheet)")
    add_animator(p)
    p.add_argument("--source", required=True, help="source image")
    p.add_argument("--out", required=True, help="output: video (.mp4/.gif) or contact sheet (.png/.jpg)")
    p.add_argument("--range", type=float, default=3.0, help="sweep each direction over [-range, range] (default 3)")
    p.add_argument("--steps", type=int, default=None, help="values per direction (default: 16 video, 7 sheet)")
    p.add_argument("--directions", default=None, help="comma-separated direction indices (default: all)")
    p.add_argument("--fps", type=float, default=10.0, help="video frame rate (default 10)")
    _common(p, batch=16)
    p.set_defaults(func=run_manipulate)

    p = sub.add_parser("init-animator", help="write a randomly initialized animator checkpoint (tests, demos)")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.add_argument("--size", type=int, default=64, help="image size, a power of two 32..512 (default 64)")
    p.add_argument("--width", type=float, default=0.25, help="channel width scale (default 0.25)")
    p.add_argument("--style-dim", type=int, default=512)
    p.add_argument("--motion-dim", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_init)


def _common(p, batch):
    p.add_argument("--batch", type=int, default=batch, help=f"frames rendered per batch (default {batch})")
    add_device(p)
    add_dtype(p)
    p.add_argument("--size", type=int, default=None, help="model image size (must match the checkpoint)")
    p.add_argument("--kernels", default="auto", choices=("auto", "reference"),
                   help="auto: fastest leo_kernels backends; reference: eager PyTorch ops")
    add_progress(p)


def _load_model(args, device):
    return load_animator(args.animator, device, kernels=args.kernels, size=args.size)


# --------------------------------------------------------------------------- animate
def run_animate(args) -> int:
    from leo.media import MediaError, VideoReader, VideoWriter

    positive("--batch", args.batch)
    positive("--max-frames", args.max_frames, allow_none=True)
    positive("--size", args.size, allow_none=True)
    device = resolve_device(args.device)
    if os.path.splitext(args.out)[1].lower() not in (".mp4", ".m4v", ".mov", ".mkv", ".gif"):
        raise UserError(f"--out must end in .mp4, .m4v, .mov, .mkv or .gif, got {args.out}")
    if not os.path.isfile(args.driving):
        raise UserError(f"--driving: file not found: {args.driving}")
    model = _load_model(args, device)
    source = read_image_arg(args.source, model.size, "--source").unsqueeze(0).to(device)
    try:
        reader = VideoReader(args.driving, model.size)
    except MediaError as exc:
        raise UserError(f"--driving: {first_line(exc)}") from None
    total = reader.num_frames if args.max_frames is None else min(reader.num_frames or args.max_frames, args.max_frames)
    relative = args.mode == "relative"
    done = 0
    try:
        with reader, VideoWriter(args.out, reader.fps) as writer, torch.inference_mode(), precision(device, args.dtype):
            cache = model.encode(source)
            start_alpha = None
            with progress(total, not args.no_progress, "animate") as bar:
                for chunk in reader.chunks(args.batch):
                    if args.max_frames is not None:
                        chunk = chunk[: args.max_frames - done]
                    alphas = model.encode_motion(chunk.to(device))
                    if relative and start_alpha is None:
                        start_alpha = alphas[0]
                    frames = model.render(cache, alphas, start_alpha)
                    writer.write(frames.float())
                    done += chunk.shape[0]
                    bar.update(chunk.shape[0])
                    if args.max_frames is not None and done >= args.max_frames:
                        break
    except MediaError as exc:
        raise UserError(str(exc)) from None
    print(f"wrote {args.out}: {done} frames, {model.size}x{model.size}, {reader.fps:g} fps ({args.mode} mode)")
    return 0


# --------------------------------------------------------------------------- manipulate
def _parse_directions(text, motion_dim):
    if text is None:
        return list(range(motion_dim))
    try:
        dirs = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--directions must be comma-separated integers, got {text!r}") from None
    bad = [d for d in dirs if not 0 <= d < motion_dim]
    if not dirs or bad:
        raise UserError(f"--directions must list indices in [0, {motion_dim - 1}], got {text!r}")
    return dirs


def run_manipulate(args) -> int:
    from leo.media import MediaError, VideoWriter, image_grid, save_image

    positive("--batch", args.batch)
    positive("--size", args.size, allow_none=True)
    ext = os.path.splitext(args.out)[1].lower()
    sheet = ext in IMAGE_EXTENSIONS
    if not sheet and ext not in (".mp4", ".m4v", ".mov", ".mkv", ".gif"):
        raise UserError(f"--out must be a video (.mp4/.mkv/.mov/.gif) or an image (.png/.jpg), got {args.out}")
    steps = args.steps if args.steps is not None else (7 if sheet else 16)
    positive("--steps", steps)
    finite("--range", args.range)
    finite("--fps", args.fps)
    device = resolve_device(args.device)
    model = _load_model(args, device)
    dirs = _parse_directions(args.directions, model.motion_dim)
    source = read_image_arg(args.source, model.size, "--source").unsqueeze(0).to(device)
    values = torch.linspace(-args.range, args.range, steps)
    # LIA's manipulation: latent = wa + Q alpha_source + Q (value * e_direction).
    codes = torch.zeros(len(dirs), steps, model.motion_dim)
    for row, d in enumerate(dirs):
        codes[row, :, d] = values
    codes = codes.reshape(-1, model.motion_dim).to(device)
    frames = []
    try:
        with torch.inference_mode(), precision(device, args.dtype):
            cache = model.encode(source)
            zero = torch.zeros(model.motion_dim, device=device)
            writer = None if sheet else VideoWriter(args.out, args.fps)
            with progress(codes.shape[0], not args.no_progress, "manipulate") as bar:
                for i in range(0, codes.shape[0], args.batch):
                    out = model.render(cache, codes[i : i + args.batch], start_alpha=zero).float().cpu()
                    if sheet:
                        frames.append(out)
                    else:
                        writer.write(out)
                    bar.update(out.shape[0])
            if writer is not None:
                writer.close()
        if sheet:
            save_image(args.out, image_grid(torch.cat(frames), nrow=steps))
    except MediaError as exc:
        raise UserError(str(exc)) from None
    what = "contact sheet" if sheet else "video"
    print(f"wrote {args.out}: {what}, {len(dirs)} directions x {steps} values in [-{args.range:g}, {args.range:g}]")
    return 0


# --------------------------------------------------------------------------- init-animator
def run_init(args) -> int:
    from leo.animator import Animator

    try:
        torch.manual_seed(args.seed)
        model = Animator(args.size, style_dim=args.style_dim, motion_dim=args.motion_dim, width=args.width)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        model.save(args.out)
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc}") from None
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: random animator, size {model.size}, width {model.width:g}, {n / 1e6:.2f}M parameters")
    return 0
