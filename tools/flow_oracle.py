"""Ceiling for a warp-only animator on held-out synthetic pairs: for every (frame 0, frame t) pair,
optimize a smooth flow field directly (no network, no learning across pairs) that warps frame 0
onto frame t, and report its gain over copying frame 0. A learned animator cannot beat this much
without inpainting; it tells how much of the copy error flows can remove at all.

    python tools/flow_oracle.py                 # the demo's held-out clips (seed 1000, 64x64)
    python tools/flow_oracle.py --sway 3        # a figure that travels further

Pairs are leo.metrics.pair_frames(clips, 4) of 8 clips: 32 pairs; flows are optimized at 16, 32
and 64 pixels (bilinearly upsampled), 400 Adam steps each.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from leo.data.synthetic import render_video
from leo.metrics import pair_frames


def optimize_flow(source, target, resolution: int, steps: int = 400, lr: float = 0.01):
    """A flow at ``resolution``, bilinearly upsampled, optimized by Adam so that ``source`` warped by it
    (align_corners=True, border padding) matches ``target`` in L1. Returns the sampling-grid offsets
    (B, S, S, 2) and the L1 of the last step."""
    n, _, h, w = source.shape
    base = F.affine_grid(torch.eye(2, 3).expand(n, -1, -1), (n, 3, h, w), align_corners=True)
    flow = torch.zeros(n, 2, resolution, resolution, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            up = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
            warped = F.grid_sample(source, base + up, align_corners=True, padding_mode="border")
            loss = (warped - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return up.detach(), loss.item()


def oracle_l1(source, target, resolution: int, steps: int = 400, lr: float = 0.01) -> float:
    """L1 of frame 0 warped by a per-pair flow optimized at ``resolution`` (align_corners=True)."""
    return optimize_flow(source, target, resolution, steps, lr)[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1000, help="synthetic seed of the clips (the demo holds out seed+1000)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sway", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    clips = [render_video(a.seed, i, 48, a.size, sway=a.sway) for i in range(a.clips)]
    pairs = pair_frames(clips, 4)
    copy = (pairs["source"] - pairs["target"]).abs().mean().item()
    print(f"{pairs['source'].shape[0]} pairs, copy L1 {copy:.4f}")
    for res in (16, 32, a.size):
        l1 = oracle_l1(pairs["source"], pairs["target"], res)
        print(f"flow optimized at {res}x{res}: L1 {l1:.4f}, gain over copying {1 - l1 / copy:+.3f}", flush=True)


if __name__ == "__main__":
    main()
