"""Stage-1 ablation harness: one training recipe change at a time, measured on the same held-out
synthetic clips with leo.metrics (gain over copying frame 0, motion ratio). Its runs fill the table
in docs/MOTION.md.

It trains in memory (no video files, no discriminator unless --adv), so a run of a few hundred
steps takes minutes on a 2-core CPU; `leo train-animator` is the real trainer and has the recipe's
options (init, align_corners, relative_latent, pyramid).

    python tools/stage1_ablation.py --name copy_rel --init copy --relative --align-corners --pyramid 3
    python tools/stage1_ablation.py --name lia --init random --lr 2e-3          # LIA's recipe

Data: 24 synthetic clips of seed 0 for training, 8 clips of seed 1000 held out (48 frames, 64x64).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from leo.animator import Animator
from leo.data.synthetic import keypoints, render_pairs, render_video, true_flow
from leo.discriminator import Discriminator
from leo.metrics import animator_report
from leo.train import losses
from leo.train.stage1 import reconstruction_loss
from leo_kernels.reference import flow_grid

from flow_oracle import optimize_flow  # tools/: the per-pair flow of the oracle is the flow teacher


def affine_targets(src, rng, magnitude):
    """Known random affine warps of ``src`` and their sampling grids (align_corners=True)."""
    n, _, h, w = src.shape
    ang = torch.from_numpy(rng.uniform(-1.5, 1.5, n)).float() * magnitude
    sc = 1 + torch.from_numpy(rng.uniform(-1, 1, n)).float() * magnitude
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = sc * torch.cos(ang), -sc * torch.sin(ang)
    theta[:, 1, 0], theta[:, 1, 1] = sc * torch.sin(ang), sc * torch.cos(ang)
    theta[:, :, 2] = torch.from_numpy(rng.uniform(-magnitude, magnitude, (n, 2))).float()
    grid = F.affine_grid(theta, (n, 3, h, w), align_corners=True)
    return F.grid_sample(src, grid, align_corners=True), grid


def dssim(x, y, c1=0.01 ** 2, c2=0.03 ** 2):
    """mean (1 - SSIM) / 2 over 3x3 windows of images in [-1, 1] (mapped to [0, 1] first)."""
    x, y = (x + 1) / 2, (y + 1) / 2
    pool = lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, 1)  # noqa: E731
    mx, my = pool(x), pool(y)
    vx, vy, cxy = pool(x * x) - mx * mx, pool(y * y) - my * my, pool(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ((1 - ssim) / 2).clamp(0, 1).mean()


def random_recolour(rng, n, low):
    """A random colour change per sample: a channel permutation, then each channel scaled by U(low, 1)."""
    perm = torch.stack([torch.from_numpy(rng.permutation(3)) for _ in range(n)])
    gain = torch.from_numpy(rng.uniform(low, 1.0, (n, 3, 1, 1))).float()
    return lambda x: torch.gather(x, 1, perm.view(-1, 3, 1, 1).expand_as(x)) * gain


@torch.no_grad()
def follow(ema, model, decay: float) -> None:
    """One EMA step of ``ema`` toward ``model`` at a constant ``decay`` (no warm-up, unlike the trainer's
    leo.train.common.ema_update, so the harness's earlier EMA rows stay comparable); buffers copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def lr_mult(text: str) -> tuple[str, float]:
    """--lr-mult SUBSTRING=K -> (SUBSTRING, K)."""
    sub, sep, k = text.partition("=")
    try:
        if not sep or not sub:
            raise ValueError
        return sub, float(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr-mult wants SUBSTRING=K (e.g. to_flows=5), got {text!r}") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--init", choices=("random", "copy", "copy_amp"), default="copy",
                   help="copy_amp: copy, with the last motion fc layer scaled x30 (informative codes at step 0)")
    p.add_argument("--relative", action="store_true", help="relative latent wa_s + Q (alpha_t - alpha_s)")
    p.add_argument("--align-corners", action="store_true", help="exact identity at zero flow")
    p.add_argument("--relative-flow", action="store_true",
                   help="source-relative flows: minus the flows decoded at zero motion (needs --relative)")
    p.add_argument("--still-detach", action="store_true",
                   help="with --relative-flow: decode the zero-motion flows without gradient (no second backward)")
    p.add_argument("--pyramid", type=int, default=0, help="extra L1 terms on average-pooled images")
    p.add_argument("--code-floor", type=float, default=0.0, help="hinge on mean |alpha_t - alpha_s|")
    p.add_argument("--equivariance", type=int, default=0,
                   help="this many samples per batch are (frame, known affine warp of it) with a flow loss")
    p.add_argument("--affine-magnitude", type=float, default=0.1)
    p.add_argument("--motion-weight", type=float, default=0.0,
                   help="weight the full-resolution L1 by 1 + K * |target - source| (normalized): moving regions count more")
    p.add_argument("--motion-weight-steps", type=int, default=0,
                   help="apply --motion-weight only for the first N steps (0: always)")
    p.add_argument("--ema", type=float, default=0.0, help="evaluate an EMA of the generator with this decay (0: off)")
    p.add_argument("--ema-extra", type=float, nargs="*", default=[],
                   help="more EMA decays, kept and evaluated in the same run (keys emaDECAY_gain, ...)")
    p.add_argument("--seed", type=int, default=0, help="model init, pair sampling and the stream's clips")
    p.add_argument("--motion-gain", type=float, default=30.0, help="copy_amp's scale of the last motion fc layer")
    p.add_argument("--mask-logit", type=float, default=5.0,
                   help="copy init: the finest occlusion mask's starting logit (5: sigmoid 0.993, nearly saturated)")
    p.add_argument("--grad-clip", type=float, default=0.0, help="clip the generator's gradient norm (0: off)")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up over this many steps")
    p.add_argument("--bf16", action="store_true", help="the generator's forward and loss under CPU bf16 autocast")
    p.add_argument("--decay-last", type=float, default=0.0,
                   help="decay the learning rate linearly to 0 over this last fraction of the steps (0: off)")
    p.add_argument("--lr-decay", choices=("none", "cosine"), default="none",
                   help="cosine: the learning rate falls to 0 at the last step (half a cosine)")
    p.add_argument("--adv", type=float, default=0.0,
                   help="adversarial weight with the trainer's discriminator (0: none; leo train-animator: 0.05)")
    p.add_argument("--lr-mult", action="append", default=[], metavar="SUBSTRING=K", type=lr_mult,
                   help="parameters whose name contains SUBSTRING train at K x lr (repeatable; first match wins)")
    p.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (LIA/StyleGAN: 0)")
    p.add_argument("--beta2", type=float, default=0.99, help="Adam beta2 (LIA/StyleGAN: 0.99)")
    p.add_argument("--grad-loss", type=float, default=0.0,
                   help="weight of an L1 loss between the horizontal and vertical pixel differences of output and target")
    p.add_argument("--curriculum", type=int, default=0,
                   help="for this many steps the target frame is at most g frames from the source, g growing from 2 to all")
    p.add_argument("--both-directions", action="store_true",
                   help="render batch/2 pairs and train each both ways (source->target and target->source)")
    p.add_argument("--image-warp", type=float, default=0.0,
                   help="weight of an L1 loss between the target and the source image warped by the finest flow")
    p.add_argument("--pose-loss", type=float, default=0.0,
                   help="with --stream: weight of an MSE between a linear read-out of alpha_t - alpha_s (trained "
                        "with the model) and the figure's true capsule end-point displacements (synthetic ground truth)")
    p.add_argument("--ssim", type=float, default=0.0,
                   help="weight of a structural loss, mean (1 - SSIM) / 2 over 3x3 windows (monodepth-style), added to L1")
    p.add_argument("--true-flow", type=float, default=0.0,
                   help="with --stream and --align-corners: weight of an L1 loss between the finest flow's grid offsets "
                        "and the true displacement of every pixel (synthetic ground truth, leo.data.synthetic.true_flow)")
    p.add_argument("--true-flow-moving", action="store_true",
                   help="--true-flow only where the true motion exceeds 0.1 pixel (the moving figure), averaged there")
    p.add_argument("--flow-teacher", type=float, default=0.0,
                   help="weight of an L1 loss between the finest predicted grid offsets and a per-pair optimized flow")
    p.add_argument("--teacher-res", type=int, default=16)
    p.add_argument("--teacher-steps", type=int, default=50)
    p.add_argument("--limbs", type=float, default=1.0,
                   help="thickness of the figure's arms and legs (render_video's limbs)")
    p.add_argument("--sway", type=float, default=1.0, help="synthetic figure travel (render_video's sway)")
    p.add_argument("--body", type=float, default=1.0,
                   help="synthetic figure build/place spread between clips (render_video's body; 0: one body)")
    p.add_argument("--moves", type=int, default=0,
                   help="joints follow this many shared moves (render_video's moves; 0: free joints)")
    p.add_argument("--stream", action="store_true",
                   help="every pair from a fresh training clip (seed 0, never repeated): no clip is seen twice")
    p.add_argument("--train-clips", type=int, default=24, help="number of training clips (1: can it fit one clip at all?)")
    p.add_argument("--augment", nargs="?", const="all", choices=("all", "colour"), default=None,
                   help="per pair, the same for both frames (against per-clip memorization): 'all' (the default "
                        "when given without a value) a random horizontal flip and colour permutation/scale, "
                        "'colour' the colour change only")
    p.add_argument("--width", type=float, default=0.125, help="channel width multiplier of the animator")
    p.add_argument("--eval-train", action="store_true",
                   help="also report gain and motion on 8 training clips (train_ keys): fit vs generalization")
    p.add_argument("--identity", type=int, default=0,
                   help="this many samples per batch have target = source (zero motion must render the source)")
    p.add_argument("--wa-invariance", type=float, default=0.0,
                   help="weight of a loss tying the source's code wa to that of a recoloured copy (look-free codes)")
    p.add_argument("--style-dim", type=int, default=128, help="the animator's latent size (LIA: 512)")
    p.add_argument("--save", default=None,
                   help="save the evaluated animator (EMA if --ema) here at the end (.safetensors, Animator.save)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the log (default: ablation_NAME.json)")
    a = p.parse_args(argv)
    if a.pose_loss > 0 and (not a.stream or a.both_directions):
        p.error("--pose-loss needs --stream (without --both-directions)")
    if a.true_flow > 0 and (not a.stream or a.both_directions or not a.align_corners):
        p.error("--true-flow needs --stream and --align-corners (without --both-directions)")
    if a.both_directions and (a.batch % 2 or not a.stream):
        p.error("--both-directions needs --stream and an even --batch")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    size = 64
    scene = dict(sway=a.sway, body=a.body, moves=a.moves, limbs=a.limbs)
    train = torch.stack([render_video(0, i, 48, size, **scene) for i in range(a.train_clips)])  # (V, T, 3, S, S)
    heldout = [render_video(1000, i, 48, size, **scene) for i in range(8)]
    G = Animator(size=size, style_dim=a.style_dim, width=a.width, align_corners=a.align_corners, relative_latent=a.relative,
                 relative_flow=a.relative_flow)
    if a.init != "random":
        G.init_copy_source(mask_logit=a.mask_logit, motion_gain=a.motion_gain if a.init == "copy_amp" else 1.0)
    groups: dict[float, list] = {}
    for name, prm in G.named_parameters():
        k = next((k for sub, k in a.lr_mult if sub in name), 1.0)
        groups.setdefault(k, []).append(prm)
    motion_dim = G.dec.direction.weight.shape[1]
    pose_probe = torch.nn.Linear(motion_dim, 48) if a.pose_loss > 0 else None  # -> 12 capsules x 2 ends x (x, y)
    if pose_probe is not None:
        groups.setdefault(1.0, []).extend(pose_probe.parameters())
    opt = torch.optim.Adam([{"params": v, "lr": a.lr * k} for k, v in groups.items()], lr=a.lr, betas=(a.beta1, a.beta2))
    base_lrs = [g["lr"] for g in opt.param_groups]
    D = opt_d = None
    if a.adv > 0:
        D = Discriminator(size=size, width=0.125)
        opt_d = torch.optim.Adam(D.parameters(), lr=a.lr, betas=(a.beta1, a.beta2))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if a.ema > 0 else None
    extra_emas = {d: copy.deepcopy(G).eval().requires_grad_(False) for d in a.ema_extra}
    rng = np.random.default_rng(a.seed)
    stream_offset = a.train_clips + a.seed * 10_000_000  # each seed streams clips no other seed sees
    log, norms, t0 = [], [], time.time()

    def idle_error(model, clips):
        """L1(animator(frame, frame), frame) / copy L1 on held-out pairs: damage done at zero motion."""
        src = torch.stack([c[0] for c in clips])
        copy_l1 = torch.stack([(c[1:] - c[0]).abs().mean() for c in clips]).mean()
        with torch.no_grad():
            return float((model(src, src) - src).abs().mean() / copy_l1)

    def evaluate(step):
        r = {k: round(v, 4) for k, v in animator_report(G, heldout, pairs_per_clip=8).items()}
        r["ema_idle" if a.ema > 0 else "idle"] = round(idle_error(G_ema or G, heldout), 4)
        if a.ema > 0:
            r.update({"ema_" + k: round(v, 4) for k, v in animator_report(G_ema, heldout, pairs_per_clip=8).items()
                      if k in ("l1", "gain", "motion_ratio", "psnr")})
        for d, m in extra_emas.items():
            r.update({f"ema{d}_" + k: round(v, 4) for k, v in animator_report(m, heldout, pairs_per_clip=8).items()
                      if k in ("gain", "motion_ratio")})
        if a.eval_train:
            r.update({"train_" + k: round(v, 4) for k, v in animator_report(G_ema or G, list(train[:8]), pairs_per_clip=8).items()
                      if k in ("gain", "moving_gain", "motion_ratio")})
        if norms:  # the generator's gradient norm (before clipping) since the last evaluation
            r["grad_norm_median"] = round(float(np.median(norms)), 4)
            norms.clear()
        r.update(step=step, seconds=round(time.time() - t0, 1))
        print(json.dumps(r), flush=True)
        log.append(r)

    evaluate(0)
    V, T = train.shape[:2]
    for step in range(1, a.steps + 1):
        vi, si, ti = rng.integers(V, size=a.batch), rng.integers(T, size=a.batch), rng.integers(T, size=a.batch)
        if a.curriculum and step <= a.curriculum:  # near frames first: small motions, then all gaps
            g = int(2 + (T - 2) * (step - 1) / a.curriculum)
            ti = np.clip(si + rng.integers(-g, g + 1, size=a.batch), 0, T - 1)
        if a.identity:
            ti[:a.identity] = si[:a.identity]
        if a.stream:  # a fresh clip per pair: indices past the stored ones, two frames rendered each
            n_render = a.batch // 2 if a.both_directions else a.batch
            clips = [stream_offset + (step - 1) * a.batch + b for b in range(n_render)]
            pairs = render_pairs(0, clips, np.stack([si, ti], 1)[:n_render], 48, size, **scene)
            src, tgt = pairs[:, 0], pairs[:, 1]
            if pose_probe is not None:  # true end-point displacements, x10 (about unit scale)
                kp = [keypoints(0, c, [si[b], ti[b]], **scene) for b, c in enumerate(clips)]
                pose_delta = torch.from_numpy(np.stack([10 * (k[1] - k[0]).reshape(-1) for k in kp])).float()
            if a.true_flow > 0:  # frame units -> the grid's units (align_corners: 2 / (S - 1) per pixel)
                gt_offset = torch.stack([true_flow(0, c, int(si[b]), int(ti[b]), size, **scene)
                                         for b, c in enumerate(clips)]) * (2 * size / (size - 1))
            if a.both_directions:
                src, tgt = torch.cat([src, tgt]), torch.cat([tgt, src])
        else:
            src, tgt = train[vi, si], train[vi, ti].clone()
        if a.augment:  # the same random flip and colour change for both frames of a pair
            flip = torch.from_numpy(rng.random(a.batch) < (0.5 if a.augment == "all" else 0.0)).view(-1, 1, 1, 1)
            recolour = random_recolour(rng, a.batch, 0.7)

            def aug(x):
                return recolour(torch.where(flip, x.flip(-1), x))

            src, tgt = aug(src), aug(tgt)
        ne = a.equivariance
        if ne:
            tgt[:ne], egrid = affine_targets(src[:ne], rng, a.affine_magnitude)
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16)
        amp.__enter__()
        wa_all, feats = G.enc.net_app(torch.cat([src, tgt]))
        wa, wa_t = wa_all[:a.batch], wa_all[a.batch:]
        alpha_s, alpha_t = G.enc.fc(wa), G.enc.fc(wa_t)
        latent = G.latent(wa, alpha_t, alpha_s)
        src_feats = [f[:a.batch] for f in feats]
        still = None
        if a.relative_flow:
            with torch.no_grad() if a.still_detach else contextlib.nullcontext():
                still = G.dec.still_flows(wa, src_feats)
        recon, flow = G.dec(latent, src_feats, return_flow=True, still_flows=still)
        loss = reconstruction_loss(recon, tgt, a.pyramid)
        if a.motion_weight > 0 and (a.motion_weight_steps == 0 or step <= a.motion_weight_steps):
            moving = (tgt - src).abs().mean(1, keepdim=True)
            moving = moving / moving.mean((2, 3), keepdim=True).clamp_min(1e-6)
            loss = loss + a.motion_weight * (moving * (recon - tgt).abs()).mean()
        if a.wa_invariance > 0:  # the code of a recoloured source must not change: wa carries pose, not colour
            wa_r, _ = G.enc.net_app(random_recolour(rng, a.batch, 0.6)(src), with_feats=False)
            loss = loss + a.wa_invariance * (wa_r - wa).pow(2).mean() / wa.detach().pow(2).mean().clamp_min(1e-8)
        if pose_probe is not None:
            loss = loss + a.pose_loss * (pose_probe(alpha_t - alpha_s) - pose_delta).pow(2).mean()
        if a.code_floor > 0:
            loss = loss + torch.relu(a.code_floor - (alpha_t - alpha_s).abs().mean())
        if ne:
            loss = loss + (flow_grid(flow[:ne].float()) - egrid).abs().mean()
        if a.grad_loss > 0:  # edges: a limb a pixel off costs along its whole outline
            def diffs(x):
                return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

            loss = loss + a.grad_loss * sum((r - t).abs().mean() for r, t in zip(diffs(recon), diffs(tgt)))
        if a.image_warp > 0:  # supervise the finest flow directly: it must carry the source's pixels to the target's
            warped = F.grid_sample(src, flow_grid(flow.float()), mode="bilinear", padding_mode="border", align_corners=True)
            loss = loss + a.image_warp * (warped - tgt).abs().mean()
        if a.ssim > 0:
            loss = loss + a.ssim * dssim(recon.float(), tgt.float())
        if a.true_flow > 0:
            err = (torch.tanh(flow[:, :2].float()) - gt_offset).abs()
            if a.true_flow_moving:  # the figure's flow alone: no pull toward zero on the background
                moving = (gt_offset.norm(dim=1, keepdim=True) > 0.1 * 2 / (size - 1)).float()
                loss = loss + a.true_flow * (err * moving).sum() / (2 * moving.sum()).clamp_min(1)
            else:
                loss = loss + a.true_flow * err.mean()
        if a.flow_teacher > 0:
            off = optimize_flow(src, tgt, a.teacher_res, a.teacher_steps, lr=0.02)[0]
            loss = loss + a.flow_teacher * (torch.tanh(flow[:, :2].permute(0, 2, 3, 1)) - off).abs().mean()
        if D is not None:
            D.requires_grad_(False)
            loss = loss + a.adv * losses.g_nonsaturating(D(recon))
        amp.__exit__(None, None, None)
        scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / a.steps)) if a.lr_decay == "cosine" else 1.0
        if a.decay_last > 0:  # constant, then linearly to 0 over the last fraction of the steps
            scale *= min(1.0, (a.steps - step + 1) / (a.decay_last * a.steps))
        if a.warmup:
            scale *= min(1.0, step / a.warmup)
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(G.parameters(), a.grad_clip if a.grad_clip > 0 else math.inf)))
        opt.step()
        if D is not None:  # the trainer's discriminator step: real targets vs these reconstructions
            D.requires_grad_(True)
            logits = D(torch.cat([tgt, recon.detach()]), a.batch)
            opt_d.zero_grad(set_to_none=True)
            losses.d_logistic(logits[:a.batch], logits[a.batch:]).backward()
            opt_d.step()
        for d, m in ([(a.ema, G_ema)] if a.ema > 0 else []) + list(extra_emas.items()):
            follow(m, G, d)
        if step % a.eval_every == 0 or step == a.steps:
            evaluate(step)
    if a.save:
        (G_ema or G).save(a.save)  # leo's checkpoint format: Animator.from_checkpoint reads it
    with open(a.out or f"ablation_{a.name}.json", "w") as f:
        json.dump({"args": vars(a), "log": log}, f, indent=1)


if __name__ == "__main__":
    main()
