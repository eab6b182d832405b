"""The official LIA demo loop (LIA's run_demo.py), end to end, as the baseline of `leo animate`.

    python benchmarks/official_loop.py --animator A --source S --driving D --out O [--max-frames N]

What LIA's script does: load the generator, read the source image and the driving video, then per
driving frame the whole generator forward ``gen(img_source, img_target, h_start)`` (the source
re-encoded every frame), batch 1, eager ops (leo's ``kernels="reference"``), relative mode, and
write the frames as an H.264 video. Frames are read and written with leo.media, the same I/O as
`leo animate`, so the two differ only in what the animator does per frame.
"""
from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    t0 = time.perf_counter()
    p = argparse.ArgumentParser()
    p.add_argument("--animator", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--driving", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from leo.animator import Animator
    from leo.media import VideoReader, VideoWriter, read_image

    gen = Animator.from_checkpoint(args.animator, map_location=args.device, kernels="reference").eval()
    img_source = read_image(args.source, gen.size).unsqueeze(0).to(args.device)
    with VideoReader(args.driving, gen.size) as reader:
        vid_target = reader.read_all(args.max_frames).to(args.device)
        fps = reader.fps
    frames = []
    with torch.no_grad():
        h_start = gen.encode_motion(vid_target[:1])  # LIA: gen.enc.enc_motion(vid_target[:, 0])
        for i in range(vid_target.shape[0]):
            frames.append(gen(img_source, vid_target[i : i + 1], h_start))
    with VideoWriter(args.out, fps) as writer:
        writer.write(torch.cat(frames))
    print(f"wrote {args.out}: {len(frames)} frames in {time.perf_counter() - t0:.1f} s (after interpreter start)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
