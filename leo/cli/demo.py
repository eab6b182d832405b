"""`leo demo`: the whole system on a fresh machine, no downloads.

Generates a synthetic dataset (or uses ``--data``), trains small models of all three kinds
(animator, LMDM, first-frame generator) and writes into one folder: a conditional video,
a long chained video, an edited video (recolored first frame, same motion), an
unconditional video, a contact sheet of all of them and the loss curves.
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import sys
import time

from leo.cli.common import add_device, check_data_arg, data_errors, resolve_device

# name: (videos, frames, size, animator width, animator steps, lmdm steps, first-frame steps,
#        first-frame size and latent, sampling steps, and each stage's time budget in minutes)
PRESETS = {
    # Under 10 min on a 2-core CPU whatever state the machine is in: each stage trains until its step
    # cap or its time budget (6 + 1 + 1 min; the data, videos, measurements and the stages' own
    # evaluations add about half a minute, 1.5 min on a machine at a third of its speed), so a fast
    # machine trains more animator steps and a slow one fewer (2-core EPYC, 2026-12: 3.2 stage-1 steps/s
    # next to the test suite, 13.3 alone, i.e. about 1150 to 4800 steps in the budget; `--no-time-budget`
    # trains the caps). The animator trains on a fresh clip per pair (the 24 written clips are for the
    # LMDM and stay unseen by the animator) with Adam beta1 0.9 (docs/MOTION.md, eighth round), at half
    # the channels (width 1/16) and batch 4 at lr 3e-3: on 2 threads a step costs what a batch-2 step
    # of width 1/8 does, and learns the held-out motion faster (tenth round). No discriminator: with
    # source-relative flows it changed the held-out gain by less than 0.01 and cost 48% more time per
    # step (sixth round). The first-frame model is an MLP over 128 principal components of the frames
    # (leo.first_frame.LatentFirstFrameModel): in its minute the pixel U-Net drew coloured noise, this one
    # recognizable frames (docs/MOTION.md, eighteenth round).
    "full": dict(videos=24, frames=48, size=64, width=0.0625, style_dim=128, animator_steps=5000,
                 animator_batch=4, animator_lr=3e-3, animator_betas=(0.9, 0.99), animator_adv=0.0,
                 animator_stream=True, lmdm_steps=1500, ff_steps=6000, ff_size=64, ff_latent=128, sample_steps=25,
                 video_frames=32,
                 window=16, heldout_clips=8, animator_minutes=6.0, lmdm_minutes=1.0, ff_minutes=1.0),
    "quick": dict(videos=4, frames=20, size=32, width=1 / 32, style_dim=32, animator_steps=4, animator_batch=2,
                  animator_lr=2e-3, animator_betas=(0.9, 0.99), animator_adv=0.0, animator_stream=True,
                  lmdm_steps=6, ff_steps=6, ff_size=16, ff_latent=16, sample_steps=4, video_frames=10, window=8, heldout_clips=2,
                  animator_minutes=None, lmdm_minutes=None, ff_minutes=None),
}
# `leo demo --data DIR` trains on a fixed set of clips, where a high learning rate fits (memorizes) the
# training clips faster and unseen ones no better: the sixth round's recipe for 24 clips (its width too),
# about as long.
FIXED_CLIPS = dict(width=0.125, animator_steps=1400, animator_batch=4, animator_lr=5e-4, animator_betas=(0.0, 0.99))
# The synthetic clips: one body build, joints driven by 3 shared moves (leo.data.synthetic). With
# every clip's build and joints drawn independently the animator memorizes each training clip and
# gains nothing on unseen ones in the demo's budget (docs/MOTION.md, fourth round). They are written
# as PNG frames: H.264 at 64x64 blurs the gratings, and an animator trained on that blur damages the
# lossless held-out clips (held-out gain -0.016 from mp4 files, -0.001 from PNG frames). Arms and legs
# 1.6x the original thickness (about human proportions; the original forearm is 2 pixels wide at 64x64,
# finer than the animator's flows learn to follow in the budget: docs/MOTION.md, sixteenth round).
SYNTHETIC = dict(body=0.0, moves=3, limbs=1.6)


def register(sub):
    p = sub.add_parser("demo", help="train small models of every kind on synthetic data and render sample videos")
    p.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    p.add_argument("--data", default=None, help="train on this folder of real videos instead of synthetic ones")
    add_device(p)
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps (CI smoke run, ~2 min)")
    p.add_argument("--animator-steps", type=int, default=None,
                   help="stage-1 steps, trained in full (overrides the preset's steps and time budget)")
    p.add_argument("--lmdm-steps", type=int, default=None,
                   help="stage-2 steps, trained in full (overrides the preset's steps and time budget)")
    p.add_argument("--first-frame-steps", type=int, default=None,
                   help="first-frame model steps, trained in full (overrides the preset's steps and time budget)")
    p.add_argument("--no-time-budget", action="store_true",
                   help="train every stage to its preset step count however long it takes (the same models on "
                        "every machine of the same kind); by default each stage stops at its time budget")
    p.add_argument("--size", type=int, default=None, help="animator image size (power of two, default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _step(msg):
    print(f"[leo demo] {msg}", flush=True)


def _steps_text(steps, minutes):
    return f"{steps} steps" if minutes is None else f"up to {steps} steps or {minutes:g} min"


def _fingerprint(path):
    from leo.train.video_source import file_fingerprint

    return file_fingerprint(path) if os.path.isfile(path) else None


def _remove_checkpoints(out, stages, why="was trained on other inputs"):
    """Drop the resumable checkpoints of these stages (their exported weights stay until retrained)."""
    for stage in stages:
        ckpt = os.path.join(out, stage, "checkpoint.pt")
        if os.path.exists(ckpt):
            _step(f"   {os.path.relpath(ckpt)} {why}: {stage} starts afresh")
            os.remove(ckpt)


def _stage1_settings_changed(ckpt, cfg) -> bool:
    """Whether a stage-1 checkpoint was trained with other settings than ``cfg`` (steps and other
    loop settings aside): resuming it would keep its old recipe (a run resumes with its saved config)."""
    from leo.train.common import load_training_checkpoint
    from leo.train.stage1 import RUNTIME_KEYS, Stage1Config

    try:
        saved = Stage1Config.from_dict(load_training_checkpoint(ckpt)["config"]).to_dict()
    except Exception:  # unreadable: the trainer reports it (or starts afresh) itself
        return False
    new = cfg.to_dict()
    return any(saved.get(k) != v for k, v in new.items() if k not in RUNTIME_KEYS)


def _first_frame_model_changed(ckpt, cfg) -> bool:
    """Whether a first-frame checkpoint holds another model than ``cfg`` trains (an earlier demo's
    pixel U-Net, another size or latent): resuming it would fail."""
    from leo.train.common import load_training_checkpoint
    from leo.train.diffusion_loop import holds_another_model
    from leo.train.first_frame_train import build_model

    try:
        payload = load_training_checkpoint(ckpt)
    except Exception:  # unreadable: the trainer reports it (or starts afresh) itself
        return False
    return holds_another_model(payload, build_model(cfg).config)


def _recolor(img):
    """A visible appearance edit: rotate the color channels and brighten (the motion is untouched)."""
    return (img[[2, 0, 1]] * 0.8 + 0.2).clamp(-1, 1)


def _contact_sheet(videos: dict, path, per_row: int = 8):
    """One row per video: ``per_row`` frames evenly spaced, labelled in the file's log."""
    import torch

    from leo.media import image_grid, save_image

    rows = []
    for frames in videos.values():
        idx = torch.linspace(0, frames.shape[0] - 1, per_row).round().long()
        rows.append(frames[idx])
    size = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.interpolate(r, size=(size, size), mode="bilinear", align_corners=False)
            if r.shape[-1] != size else r for r in rows]
    save_image(path, image_grid(torch.cat(rows), nrow=per_row))


def _measure(pipe, results, heldout, real, p, window, device) -> dict:
    """The demo's report: the animator on held-out clips, the generated videos' motion and
    jitter against real clips, seams of the long video, the edit, and the LMDM's residuals."""
    import torch

    from leo import metrics

    report = {"animator_heldout": metrics.animator_report(pipe.animator, heldout, pairs_per_clip=8)}
    n = min(v.shape[0] for v in heldout)
    gen = {k: results[k] for k in ("conditional", "long", "edited", "unconditional")}
    report["generated"] = metrics.generated_report(gen, [c[:n] for c in heldout])
    chunk = window - 1  # each chained chunk after the first adds window - 1 frames
    seams = list(range(window, results["long"].shape[0], chunk))
    report["long_seams"] = {**metrics.seam_jitter(results["long"], seams), "seams": seams}
    target = torch.stack([_recolor(f) for f in real])  # the real clip, recolored like the edit
    still = target[:1].expand_as(target)
    report["edit"] = {"l1_to_recolored_clip": (results["edited"] - target).abs().mean().item(),
                      "still_l1_to_recolored_clip": (still - target).abs().mean().item()}
    with torch.no_grad():
        real_codes = torch.stack([pipe.motion_codes(c.to(device)).cpu() for c in heldout])
        sampled = pipe.sample_codes(real_codes[:, 0].to(device), real_codes.shape[1], seed=0,
                                    steps=p["sample_steps"]).cpu()
    # FMD (leo.evaluate): Frechet distance of motion-code windows, generated vs held-out real
    from leo.evaluate import generation_metrics, windows

    frames = min(16, p["video_frames"])
    gm = generation_metrics(list(windows(heldout, frames)),
                            list(windows([gen["conditional"], gen["long"], gen["unconditional"]], frames)),
                            pipe.animator, frames=frames)
    report["fmd"] = {k: v for k, v in gm.items() if k.startswith("fmd") or k in ("clips_real", "clips_fake", "frames")}
    rs, ss = metrics.residual_stats(real_codes), metrics.residual_stats(sampled)
    report["lmdm_residuals"] = {"real": rs, "sampled": ss,
                                "std_ratio_mean": sum(b / a for a, b in zip(rs["std"], ss["std"]) if a > 0) / len(rs["std"])}
    return report


def _report_table(r: dict) -> str:
    a = r["animator_heldout"]
    trained = ", ".join(f"{name} {t['steps']} of {t['step_cap']} steps"
                        + (f" (its {t['max_minutes']:g}-min budget ended it)" if t["ended_by"] == "max_minutes" else "")
                        for name, t in r["training"].items())
    lines = ["", f"trained: {trained}"]
    if r["training"].get("animator", {}).get("ended_by") == "max_minutes":
        # the printed gain depends on it: it rises with the animator's steps (docs/MOTION.md)
        lines.append("  (the animator stopped at its time budget, before its step cap, and its gain rises with its steps: "
                     "--no-time-budget trains every stage to its cap)")
    lines += ["held-out clips, (frame 0, frame t) pairs:",
             f"  animator L1 {a['l1']:.4f}   copying frame 0: {a['copy_l1']:.4f}   gain {a['gain']:+.3f}",
             f"  PSNR {a['psnr']:.2f} dB (copy {a['copy_psnr']:.2f})   SSIM {a['ssim']:.3f} (copy {a['copy_ssim']:.3f})",
             f"  on moving pixels ({a['moving_fraction']:.0%}): gain {a['moving_gain']:+.3f}   "
             f"on still pixels: L1 {a['still_l1']:.4f} (copying: ~0)",
             f"  motion ratio (own codes, relative mode) {a['motion_ratio']:.3f}   code std {a['code_std']:.4f}",
             "generated videos, motion and jitter relative to the real clips (a still video: 0):"]
    for name, g in r["generated"].items():
        lines.append(f"  {name:<13} motion {g['motion_vs_real']:.2f}x   jitter {g['jitter_vs_real']:.2f}x")
    s = r["long_seams"]
    lines.append(f"long video: step at seams {s['seam']:.4f} vs inside chunks {s['within']:.4f} (ratio {s['ratio']:.2f})")
    e = r["edit"]
    lines.append(f"edit: L1 to the recolored clip {e['l1_to_recolored_clip']:.4f} "
                 f"(a still of the edited frame: {e['still_l1_to_recolored_clip']:.4f})")
    lines.append(f"LMDM: sampled residual std / real residual std, mean over dims {r['lmdm_residuals']['std_ratio_mean']:.2f}")
    f = r["fmd"]
    extra = ", ".join(f"{k} {v:.4f}" for k, v in f.items() if k.startswith("fmd_") and isinstance(v, float))
    lines.append(f"FMD (motion-code windows of {f['frames']} frames, generated vs real): {f['fmd']:.4f} ({extra})")
    return "\n".join(lines)


def _write_video(path, frames, fps):
    from leo.media import VideoWriter

    with VideoWriter(path, fps) as w:
        w.write(frames)


def run(args) -> int:
    import torch

    from leo.cli import UserError

    t0 = time.time()
    p = dict(PRESETS["quick" if args.quick else "full"])
    if args.data is not None:  # the user's videos: no fresh clips to stream, so the fixed-clip recipe
        p.update(animator_stream=False, **({} if args.quick else FIXED_CLIPS))
    if args.size is not None:
        from leo.animator import check_animator_args

        try:
            check_animator_args(size=args.size)
        except ValueError as exc:
            raise UserError(f"--{exc}") from None  # "--size must be a power of two ..."
        p["size"] = args.size
    p["ff_size"] = min(p["ff_size"], p["size"])  # generated at most at the animator's size
    for flag, key, budget in (("animator_steps", "animator_steps", "animator_minutes"),
                              ("lmdm_steps", "lmdm_steps", "lmdm_minutes"),
                              ("first_frame_steps", "ff_steps", "ff_minutes")):
        v = getattr(args, flag)
        if v is not None:
            if v < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be positive, got {v}")
            p[key], p[budget] = v, None
        if args.no_time_budget:
            p[budget] = None
    device = resolve_device(args.device)
    if args.data is not None:
        check_data_arg(args.data)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    _step(f"device {device}, output {out}, preset {'quick' if args.quick else 'full'}")
    if device.type == "cuda":  # a GPU affords bigger models and longer training in the same time
        p.update(width=max(p["width"], 0.25), style_dim=max(p["style_dim"], 256),
                 animator_steps=p["animator_steps"] * (1 if args.animator_steps else 4),
                 lmdm_steps=p["lmdm_steps"] * (1 if args.lmdm_steps else 4),
                 ff_steps=p["ff_steps"] * (1 if args.first_frame_steps else 4))

    # 1. data
    data = args.data
    if data is None:
        from leo.data.synthetic import read_manifest, write_dataset

        data = os.path.join(out, "data")
        spec = dict(videos=p["videos"], frames=p["frames"], size=p["size"], seed=args.seed, fmt="frames", **SYNTHETIC)
        try:
            written = read_manifest(data)  # None for a missing folder too
        except ValueError:  # a damaged manifest: the clips are written again
            written = None
        if written and all(written.get(k) == v for k, v in spec.items()):
            # an earlier run's clips, same settings: kept, so its stages resume
            _step(f"1/5 reusing the {p['videos']} synthetic videos in {data}")
        else:
            for old in glob.glob(os.path.join(data, "synthetic_*")):  # an earlier demo's clips must not mix in
                if os.path.isdir(old):
                    shutil.rmtree(old)
                else:
                    os.remove(old)
            # Checkpoints of an earlier run were trained on other data: start every stage afresh.
            _remove_checkpoints(out, ("animator", "lmdm", "first_frame"))
            _step(f"1/5 writing {p['videos']} synthetic videos ({p['frames']} frames, {p['size']}x{p['size']}) to {data}")
            write_dataset(data, num_videos=p["videos"], num_frames=p["frames"], size=p["size"], seed=args.seed,
                          fmt="frames", **SYNTHETIC)
    else:
        _step(f"1/5 using the videos in {data}")

    # 2. stage 1: the animator
    from leo.train.stage1 import Stage1Config, train_stage1

    _step(f"2/5 training the animator ({_steps_text(p['animator_steps'], p['animator_minutes'])})")
    animator_before = _fingerprint(os.path.join(out, "animator", "animator.safetensors"))
    s1_cfg = Stage1Config(
        out=os.path.join(out, "animator"), data=data, size=p["size"], width=p["width"], style_dim=p["style_dim"],
        synthetic_stream=p["animator_stream"],
        steps=p["animator_steps"], batch=p["animator_batch"], lr=p["animator_lr"], betas=p["animator_betas"],
        max_minutes=p["animator_minutes"], adv_weight=p["animator_adv"], save_every=max(50, p["animator_steps"]),
        sample_every=p["animator_steps"], eval_every=max(1, p["animator_steps"] // 4), log_every=max(1, min(10, p["animator_steps"] // 4)),
        eval_pairs=8 if not args.quick else 2, seed=args.seed, device=str(device), workers=0,
    )
    s1_ckpt = os.path.join(out, "animator", "checkpoint.pt")
    if os.path.exists(s1_ckpt) and _stage1_settings_changed(s1_ckpt, s1_cfg):
        _remove_checkpoints(out, ("animator",), why="was trained with other settings")
    s1_cfg.resume = os.path.exists(s1_ckpt)
    with data_errors():  # --data's clips exist but none can be read
        s1 = train_stage1(s1_cfg)
    animator_path = s1.get("animator") or os.path.join(out, "animator", "animator.safetensors")
    if _fingerprint(animator_path) != animator_before:  # an LMDM checkpoint holds codes of the old animator
        _remove_checkpoints(out, ("lmdm",))

    # 3. stage 2: the LMDM on the animator's motion codes
    from leo.train.stage2 import Stage2Config, train_lmdm

    _step(f"3/5 training the LMDM ({_steps_text(p['lmdm_steps'], p['lmdm_minutes'])})")
    lmdm_out = os.path.join(out, "lmdm")
    s2 = train_lmdm(Stage2Config(
        data=data, animator=animator_path, out=lmdm_out, window=p["window"], channels=32, channel_mult=(1, 2),
        head_dim=16, steps=p["lmdm_steps"], max_minutes=p["lmdm_minutes"], batch=16, lr=1e-3, save_every=max(100, p["lmdm_steps"]),
        log_every=max(1, min(10, p["lmdm_steps"] // 4)), seed=args.seed, device=str(device),
        resume=os.path.exists(os.path.join(lmdm_out, "checkpoint.pt")),
    ))

    # 4. the first-frame generator
    from leo.train.first_frame_train import FirstFrameTrainConfig, train_first_frame

    _step(f"4/5 training the first-frame generator ({_steps_text(p['ff_steps'], p['ff_minutes'])}, "
          f"{p['ff_size']}x{p['ff_size']})")
    ff_out = os.path.join(out, "first_frame")
    ff_ckpt = os.path.join(ff_out, "checkpoint.pt")
    ff_cfg = FirstFrameTrainConfig(
        data=data, out=ff_out, image_size=p["ff_size"], latent_dim=p["ff_latent"], frame_stride=2, objective="v",
        steps=p["ff_steps"], max_minutes=p["ff_minutes"], batch=64, lr=1e-3, ema_decay=0.999,
        save_every=max(100, p["ff_steps"]), log_every=max(1, min(10, p["ff_steps"] // 4)), seed=args.seed,
        device=str(device), sample_count=0, resume=os.path.exists(ff_ckpt),
    )
    if ff_cfg.resume and _first_frame_model_changed(ff_ckpt, ff_cfg):
        _remove_checkpoints(out, ("first_frame",), "holds another kind of first-frame model")
        ff_cfg.resume = False
    s3 = train_first_frame(ff_cfg)

    # 5. videos
    from leo.animator import Animator
    from leo.first_frame import load_first_frame_generator
    from leo.lmdm import LMDM
    from leo.pipeline import LEOPipeline
    from leo.train.video_source import iter_video_chunks, list_videos

    _step("5/5 generating videos")
    animator = Animator.from_checkpoint(animator_path).to(device).eval()
    lmdm = LMDM.from_checkpoint(s2["weights"]).to(device).eval()
    pipe = LEOPipeline(animator, lmdm)
    S, W, fps = pipe.size, lmdm.window, 15.0
    video = list_videos(data)[-1]
    real = torch.cat(list(iter_video_chunks(video, S)))
    if args.data is None:  # unseen clips of the same generator (another seed)
        from leo.data.synthetic import render_video

        heldout = [render_video(args.seed + 1000, i, p["frames"], S, **SYNTHETIC) for i in range(p["heldout_clips"])]
    else:  # the trainer's held-out split
        from leo.data.videos import VideoFolder
        from leo.train.stage1 import held_out_clips

        folder = VideoFolder(data, size=S, test_fraction=0.1, split_seed=0, verbose=False)
        heldout = held_out_clips(folder, p["heldout_clips"], "test" if folder.test else "train")
    kw = dict(steps=p["sample_steps"], progress=True)
    results = {}
    results["conditional"] = pipe.generate(real[0], p["video_frames"], seed=args.seed, **kw)
    long_frames = 4 * (W - 1) + 1 + W // 2  # at least 4 chained chunks (each adds W - 1 frames)
    results["long"] = pipe.generate(real[0], long_frames, seed=args.seed + 1, **kw)
    results["edited"] = pipe.edit(real, _recolor(real[0]))
    gen = load_first_frame_generator(s3["weights"], device=device, size=S, steps=p["sample_steps"])
    first = gen(1, seed=args.seed)[0]
    results["unconditional"] = pipe.generate(first, p["video_frames"], seed=args.seed + 2, **kw)
    results["real"] = real

    _step("measuring motion (leo.metrics; every number next to its trivial baseline)")
    report = _measure(pipe, results, heldout, real, p, W, device)
    report["training"] = {name: {"steps": summary["step"], "step_cap": p[cap], "ended_by": summary.get("ended_by"),
                                 "max_minutes": p[budget]}
                          for name, summary, cap, budget in (("animator", s1, "animator_steps", "animator_minutes"),
                                                              ("lmdm", s2, "lmdm_steps", "lmdm_minutes"),
                                                              ("first_frame", s3, "ff_steps", "ff_minutes"))}
    report_path = os.path.join(out, "metrics.json")
    from leo.checkpoint_io import atomic_write

    text = json.dumps(report, indent=2)
    atomic_write(report_path, lambda tmp: pathlib.Path(tmp).write_text(text))
    print(_report_table(report), flush=True)

    written = [(report_path, "metrics: gain over copying, motion ratio, generated motion and jitter")]
    for name in ("conditional", "long", "edited", "unconditional"):
        path = os.path.join(out, f"{name}.mp4")
        _write_video(path, results[name], fps)
        written.append((path, f"{results[name].shape[0]} frames"))
    sheet = os.path.join(out, "contact_sheet.png")
    _contact_sheet({k: results[k] for k in ("real", "conditional", "long", "edited", "unconditional")}, sheet)
    written.append((sheet, "rows: real, conditional, long, edited, unconditional"))
    curves = os.path.join(out, "loss_curves.png")
    from leo.train.common import plot_losses

    if plot_losses({"animator (stage 1)": os.path.join(out, "animator", "metrics.csv"),
                    "LMDM (stage 2)": os.path.join(lmdm_out, "metrics.csv"),
                    "first-frame": os.path.join(ff_out, "metrics.csv")}, curves):
        written.append((curves, "training losses"))
    written += [(animator_path, "animator"), (s2["weights"], "LMDM"), (s3["weights"], "first-frame model")]

    print(f"\nleo demo finished in {time.time() - t0:.0f} s on {device}; wrote:")
    for path, what in written:
        print(f"  {os.path.relpath(path)}  ({what})")
    sys.stdout.flush()
    return 0
