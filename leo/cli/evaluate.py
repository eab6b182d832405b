"""`leo evaluate reconstruction` (stage 1 on held-out clips) and `leo evaluate generation`
(generated videos against real ones: FVD/KVD with a user-supplied I3D, weight-free motion
metrics). Protocol: docs/EVALUATE.md."""
from __future__ import annotations

import json
import math
import os

from leo.cli.common import add_device, add_progress
from leo.data.videos import SPLITS_BY


def register(sub):
    p = sub.add_parser("evaluate", help="metrics: stage-1 reconstruction, or generated vs real videos (FVD/KVD, FMD)")
    ev = p.add_subparsers(dest="evaluate_command", metavar="WHAT")
    p.set_defaults(func=lambda args: _need_sub(p))

    r = ev.add_parser("reconstruction", help="stage 1 on held-out clips: L1/PSNR/SSIM vs copying the source, motion ratio")
    r.add_argument("--animator", required=True, help="animator checkpoint (LIA .pt or leo .safetensors)")
    r.add_argument("--data", required=True, help="folder of videos / frame folders (held-out split as the trainers')")
    r.add_argument("--pairs", type=int, default=64, help="(frame 0, frame t) pairs, spread over the clips (default: 64)")
    r.add_argument("--clips", type=int, default=8, help="held-out clips (default: 8, the trainer's)")
    r.add_argument("--max-frames", type=int, default=48, help="frames used per clip (default: 48, the trainer's)")
    r.add_argument("--split-by", choices=SPLITS_BY, default="clip",
                   help="held-out part, as the trainer's --split-by: unseen clips (default) or the last 10%% of "
                        "every clip's frames")
    r.add_argument("--seed", type=int, default=None,
                   help="pick the held-out clips at random with this seed (default: the first ones, as the trainer)")
    _common(r)
    r.set_defaults(func=run_reconstruction)

    g = ev.add_parser("generation", help="generated vs real videos: FVD/KVD (with --i3d), FMD, motion, jitter")
    g.add_argument("--real", required=True, help="folder of real videos")
    g.add_argument("--fake", help="folder of generated videos")
    g.add_argument("--animator", help="animator checkpoint: generates with --lmdm; gives the motion codes for FMD")
    g.add_argument("--lmdm", help="LMDM checkpoint: generate videos from the real clips' first frames")
    g.add_argument("--first-frame-model", help="first-frame model: generate the first frames too (unconditional)")
    g.add_argument("--i3d", help="I3D weights for FVD/KVD: StyleGAN-V's i3d_torchscript.pt, or an InceptionI3d "
                                 "state dict (rgb_imagenet.pt, i3d_pretrained_400.pt)")
    g.add_argument("--frames", type=int, choices=(16, 128), default=16, help="frames per clip (default: 16)")
    g.add_argument("--clips", type=int, default=2048, help="clips per set (default: 2048, or all available)")
    g.add_argument("--clips-per-video", type=int, default=1,
                   help="windows taken from each video (default: 1, StyleGAN-V's protocol)")
    g.add_argument("--skip-short", action="store_true",
                   help="skip videos shorter than --frames (default: an error)")
    g.add_argument("--size", type=int, default=None,
                   help="frame size the videos are decoded at (default: the animator's, else 256)")
    g.add_argument("--steps", type=int, default=50, help="LMDM sampling steps (default: 50)")
    g.add_argument("--seed", type=int, default=0, help="seed of the real clips' offsets and of sampling (default: 0)")
    _common(g)
    g.set_defaults(func=run_generation)


def _need_sub(p):
    from leo.cli import UserError

    raise UserError("evaluate needs a subcommand: reconstruction or generation (see `leo evaluate --help`)")


def _common(p):
    p.add_argument("--out", default="./eval_out", help="output folder for metrics.json (default: ./eval_out)")
    add_device(p)
    p.add_argument("--batch", type=int, default=8, help="clips (or frames) per batch (default: 8)")
    add_progress(p)


def _positive(args, *names):
    from leo.cli import UserError

    for n in names:
        v = getattr(args, n)
        if v is not None and v < 1:
            raise UserError(f"--{n.replace('_', '-')} must be >= 1, got {v}")


def _prepare_out(path):
    from leo.cli import UserError

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out: cannot create {path}: {exc.strerror}") from None
    return os.path.join(path, "metrics.json")


def _write(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=float)
    os.replace(tmp, path)


def _table(rows) -> str:
    rows = [tuple("" if c is None else str(c) for c in r) for r in rows]
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)


def _fmt(v, spec=".4f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


# ------------------------------------------------------------------------------ reconstruction
def run_reconstruction(args) -> int:
    from leo.cli import UserError
    from leo.cli.common import load_animator, resolve_device
    from leo.data.videos import DataError, VideoFolder
    from leo.metrics import animator_report

    _positive(args, "pairs", "clips", "max_frames", "batch")
    if not os.path.exists(args.data):
        raise UserError(f"--data: not found: {args.data}")
    out_json = _prepare_out(args.out)
    device = resolve_device(args.device)
    animator = load_animator(args.animator, device)
    size = int(animator.config["size"])
    try:
        folder = VideoFolder(args.data, size=size, test_fraction=0.1, split_seed=0, min_frames=2,
                             max_frames=args.max_frames, verbose=False, split_by=args.split_by)
    except (DataError, ValueError) as exc:
        raise UserError(f"--data: {exc}") from None
    split = "test" if folder.test else "train"
    order = folder.split(split)
    if args.seed is not None:
        import numpy as np

        order = [order[i] for i in np.random.default_rng(args.seed).permutation(len(order))]
    clips, names = [], []
    bar = None if args.no_progress else _bar(min(args.clips, len(order)), "reading clips")
    for i in order:
        f = folder.frames(i)
        if f is not None:
            clips.append(f[:args.max_frames])
            names.append(folder.clips[i].name)
            if bar is not None:
                bar.update(1)
        if len(clips) == args.clips:
            break
    if bar is not None:
        bar.close()
    if not clips:
        raise UserError(f"--data: no readable {split} clip with at least 2 frames in {args.data}")
    per_clip = max(1, -(-args.pairs // len(clips)))
    print(f"held-out split ({split}, by {args.split_by}, test_fraction 0.1, split_seed 0): {len(clips)} clips"
          + (f" (asked {args.clips}; all available)" if len(clips) < args.clips else "")
          + f", {per_clip} (frame 0, frame t) pairs per clip, at {size}x{size}")
    rep = animator_report(animator, clips, pairs_per_clip=per_clip, batch=args.batch)
    print(_table([
        ("metric", "animator", "copy-source baseline", "note"),
        ("L1", _fmt(rep["l1"]), _fmt(rep["copy_l1"]), "lower is better"),
        ("PSNR (dB)", _fmt(rep["psnr"], ".2f"), _fmt(rep["copy_psnr"], ".2f"), "higher is better"),
        ("SSIM", _fmt(rep["ssim"]), _fmt(rep["copy_ssim"]), "higher is better"),
        ("gain over copy", _fmt(rep["gain"], "+.3f"), "0", "1 - L1 / copy L1 (1: perfect)"),
        ("motion ratio", _fmt(rep["motion_ratio"], ".3f"), "0", "rendered / real motion (1: moves as real)"),
    ]))
    result = {"command": "reconstruction", "animator": args.animator, "data": args.data, "split": split,
              "clips": len(clips), "clip_names": names, "pairs_per_clip": per_clip, "size": size, **rep}
    _write(out_json, result)
    print(f"wrote {out_json}")
    return 0


def _bar(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip")


# ------------------------------------------------------------------------------ generation
def _named(items, flag):
    """Re-raise the errors of a clip source as one-line user errors naming its argument."""
    from leo.cli import UserError
    from leo.data.videos import DataError

    try:
        yield from items
    except (DataError, ValueError) as exc:
        raise UserError(f"{flag}: {str(exc).splitlines()[0]}") from None


def run_generation(args) -> int:
    from leo.cli import UserError
    from leo.cli.common import check_dims, load_animator, load_lmdm, resolve_device
    from leo.data.videos import DataError
    from leo.evaluate.clips import ClipSource, generated_clips
    from leo.evaluate.generation import generation_metrics

    _positive(args, "clips", "clips_per_video", "steps", "batch", "size")
    if args.fake and (args.lmdm or args.first_frame_model):
        raise UserError("--fake cannot be combined with --lmdm/--first-frame-model: give generated videos or models")
    if not args.fake and not args.lmdm:
        raise UserError("give the generated videos (--fake DIR) or the models that make them (--animator A --lmdm L)")
    if args.lmdm and not args.animator:
        raise UserError("--lmdm needs --animator")
    for flag in ("real", "fake"):
        path = getattr(args, flag)
        if path and not os.path.exists(path):
            raise UserError(f"--{flag}: not found: {path}")
    out_json = _prepare_out(args.out)
    device = resolve_device(args.device)

    detector = None
    if args.i3d:
        from leo.evaluate.i3d import load_i3d

        try:
            detector = load_i3d(args.i3d, device)
        except ValueError as exc:
            raise UserError(f"--i3d: {exc}") from None
        print(f"--i3d: {detector.kind}")
    animator = lmdm = None
    if args.animator:
        animator = load_animator(args.animator, device)
    if args.lmdm:
        lmdm = load_lmdm(args.lmdm, device)
        check_dims(animator, lmdm)
    size = args.size or (int(animator.config["size"]) if animator is not None else 256)
    if animator is not None and size != int(animator.config["size"]):
        raise UserError(f"--size {size} differs from the animator's {animator.config['size']}")

    def source(path, flag, random_offset):
        try:
            return ClipSource(path, size, args.frames, args.clips_per_video, random_offset, args.seed, args.skip_short)
        except (DataError, ValueError) as exc:
            raise UserError(f"{flag}: {str(exc).splitlines()[0]}") from None

    real = source(args.real, "--real", True)
    fake_source = None
    if args.fake:
        fake_source = source(args.fake, "--fake", False)
        fake = _named(fake_source, "--fake")
        made_by = f"videos in {args.fake} (windows from frame 0)"
    else:
        from leo.pipeline import LEOPipeline

        pipe = LEOPipeline(animator, lmdm, render_batch=16)
        if args.steps > pipe.diffusion.num_steps:
            raise UserError(f"--steps must be <= {pipe.diffusion.num_steps} (the model's training steps)")
        firsts = _named((v[0] for v in source(args.real, "--real", True)), "--real")
        made_by = "animator + LMDM from the real clips' first frames"
        if args.first_frame_model:
            from leo.first_frame import load_first_frame_generator

            try:
                gen = load_first_frame_generator(args.first_frame_model, device=device, size=size, steps=args.steps)
            except (ValueError, FileNotFoundError, OSError) as exc:
                raise UserError(f"--first-frame-model: {str(exc).splitlines()[0]}") from None
            firsts = (gen(1, seed=args.seed + i)[0].float().cpu().clamp(-1, 1) for i, _ in enumerate(firsts))
            made_by = "animator + LMDM from generated first frames (unconditional)"
        fake = generated_clips(pipe, firsts, args.frames, seed=args.seed, steps=args.steps, batch=args.batch)
    try:
        res = generation_metrics(_named(real, "--real"), fake, animator, detector=detector, lmdm=lmdm,
                                 frames=args.frames, max_clips=args.clips, batch=args.batch,
                                 progress=not args.no_progress)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if real.short:
            msg += f" ({len(real.short)} real videos shorter than --frames {args.frames} skipped)"
        raise UserError(msg) from None

    used = f"{res['clips_real']} real, {res['clips_fake']} generated clips of {args.frames} frames"
    if res["clips_real"] < args.clips or res["clips_fake"] < args.clips:
        used += f" (all available; --clips {args.clips} asked)"
    print(f"clips: {used}; generated: {made_by}")
    for name, src in (("real", real), ("generated", fake_source)):
        if src is not None and src.short:
            print(f"skipped {len(src.short)} {name} videos shorter than --frames {args.frames}")
    print(_table(_generation_rows(res)))
    if "fvd_protocol" in res:
        print("protocol: " + res["fvd_protocol"])
    else:
        print("FVD/KVD: not computed (no --i3d weights file given); the weight-free metrics only")
    if "fmd_pooling" in res:
        print("FMD features: " + res["fmd_pooling"])
    else:
        print("FMD and residual statistics: not computed (they need --animator for the motion codes)")
    result = {"command": "generation", "real": args.real, "fake": args.fake, "animator": args.animator,
              "lmdm": args.lmdm, "first_frame_model": args.first_frame_model, "i3d": args.i3d, "seed": args.seed,
              "clips_asked": args.clips, "clips_per_video": args.clips_per_video, "size": size,
              "generated_by": made_by, **res}
    _write(out_json, result)
    print(f"wrote {out_json}")
    return 0


def _generation_rows(res):
    rows = [("metric", "generated", "baseline", "note")]
    if "fvd" in res:
        rows.append(("FVD", _fmt(res["fvd"], ".2f"), _fmt(res["fvd_real_halves"], ".2f"), "baseline: real vs real (halves)"))
        rows.append(("KVD", _fmt(res["kvd"], ".5f"), _fmt(res["kvd_real_halves"], ".5f"), "baseline: real vs real (halves)"))
    if "fmd" in res:
        rows.append(("FMD", _fmt(res["fmd"]), _fmt(res["fmd_real_halves"]), "baseline: real vs real (halves)"))
        rows.append(("FMD of stills", _fmt(res["fmd_still"]), "", "a generator that does not move"))
    rows.append(("motion vs real", _fmt(res["motion_vs_real"], ".3f"), "1", f"mean |f_t - f_0|: {_fmt(res['motion_fake'])} vs real {_fmt(res['motion_real'])}"))
    rows.append(("jitter vs real", _fmt(res["jitter_vs_real"], ".3f"), "1", f"mean |f_t - f_t-1|: {_fmt(res['jitter_fake'])} vs real {_fmt(res['jitter_real'])}"))
    for key, label in (("fake", "generated"), ("sampled", "LMDM-sampled")):
        vs_real = res.get(f"residuals_{key}_vs_real")
        if vs_real:
            rows.append((f"residual mean gap ({label})", _fmt(vs_real["mean_gap"], ".3f"), "0", "vs real codes, in real std units"))
            rows.append((f"residual std ratio ({label})", _fmt(vs_real["std_ratio"], ".3f"), "1", "vs real codes"))
        vs_train = res.get(f"residuals_{key}_vs_train")
        if vs_train:
            base = res["residuals_real_vs_train"]
            rows.append((f"residual mean gap vs train ({label})", _fmt(vs_train["mean_gap"], ".3f"),
                         _fmt(base["mean_gap"], ".3f"), "baseline: real codes vs the LMDM's training stats"))
            rows.append((f"residual std ratio vs train ({label})", _fmt(vs_train["std_ratio"], ".3f"),
                         _fmt(base["std_ratio"], ".3f"), "baseline: real codes vs the LMDM's training stats"))
    return rows
