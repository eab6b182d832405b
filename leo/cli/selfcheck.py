"""`leo selfcheck`: run every leo_kernels op on every available backend against its
reference on fresh random inputs and print a table."""
from __future__ import annotations

import torch

from leo.cli.common import add_device, resolve_device


def register(sub):
    p = sub.add_parser("selfcheck", help="check every kernel backend against the eager reference")
    add_device(p)
    p.set_defaults(func=run)


def _random_source(device, seed):
    """A fresh generator per call, so every backend sees the same (random) inputs."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return r


def _cases():
    import leo_kernels as K

    yield "grid_sample", lambda b, r: K.grid_sample(r(2, 5, 9, 11), r(2, 7, 6, 2, scale=0.8), backend=b)
    yield "compose_flow", lambda b, r: K.compose_flow(r(2, 3, 5, 6), r(2, 3, 10, 12), backend=b)
    yield "warp_inpaint", lambda b, r: K.warp_inpaint(
        r(2, 4, 10, 12), r(2, 4, 10, 12), r(2, 3, 10, 12), r(2, 3, 5, 6), backend=b
    )[1]
    yield "upfirdn2d", lambda b, r: K.upfirdn2d(r(2, 3, 9, 9), r(4, 4), up=2, pad=(2, 1), backend=b)
    yield "bias_act", lambda b, r: K.bias_act(r(2, 3, 5, 5), r(3), backend=b)
    yield "temporal_attention", lambda b, r: K.temporal_attention(r(2, 2, 7, 16), r(2, 2, 7, 16), r(2, 2, 7, 16), backend=b)


def run(args) -> int:
    import leo_kernels as K

    device = resolve_device(args.device)
    backends = K.available_backends(device)
    print(f"leo_kernels backends on {device}: {backends}")
    failures = 0
    seed = torch.seed() % 2**31
    for name, fn in _cases():
        ref = None
        row = []
        for b in reversed(backends):  # reference first
            try:
                out = fn(b, _random_source(device, seed))
            except RuntimeError as exc:  # backend present in general but not for this op
                row.append(f"{b}: n/a ({str(exc).splitlines()[0][:60]})")
                continue
            if ref is None:
                ref = out.double()
                row.append(f"{b}: ref")
                continue
            err = ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            ok = err < 1e-4 and torch.isfinite(out).all().item()
            failures += not ok
            row.append(f"{b}: {'ok' if ok else 'FAIL'} rel={err:.1e}")
        print(f"  {name:20s} " + "  ".join(row))
    print("selfcheck:", "all ok" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0
