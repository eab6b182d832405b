#!/usr/bin/env python3
"""AOT-compile every Triton kernel of leo_kernels (warp, stylegan, attention) for sm_90 and sm_80
without a GPU, and check each fits the target's shared memory. Catches GPU-compile errors that
TRITON_INTERPRET cannot see (layouts, types, constexpr branches, ptxas limits).

Which variants: the host wrappers in leo_kernels/triton/*_triton.py are called on small CPU tensors
that reach every dispatch decision (dtypes the GPU backend takes, head dims, sequence-length
classes, channel counts, kernel sizes, flags) while JITFunction.run only records the launch. Each
record is bound by Triton's own binder for the target, so the signature, constexprs and
specializations are what the runtime would compile. A variant is a kernel with one choice of
pointer dtypes, constexpr values, num_warps and num_stages.

    python tools/compile_triton.py            # CI set: on sm_90 each kernel's largest variant, then
                                              #   more until every value of every constexpr, pointer
                                              #   dtype and num_warps is compiled; on sm_80 the
                                              #   largest variant per kernel and code-path value
    python tools/compile_triton.py --full     # every variant for every arch (use -j on a big machine)
    python tools/compile_triton.py --list     # print the variants, compile nothing
    options: --arch 90,80  --family attention,stylegan,warp  --kernel REGEX  -j N (default $MAX_JOBS or 2)

Prints one line per compile (name, shared memory) and a summary; exits 1 if any variant fails to
compile or needs more shared memory than the target allows, naming each.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import re
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # the wrappers pick GPU code paths (e.g. attention's DOT mode)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

try:
    import triton  # noqa: E402
except ImportError:
    sys.exit("compile_triton: triton is not installed (make build installs it with the test extra)")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

# Largest shared memory one block may opt into (bytes): H100/H200 227 KB, A100 163 KB.
SMEM_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # float64 is CPU-only for every op
# Failures found by this tool and not fixed yet: printed as KNOWN and not counted (a known failure
# that starts to pass is printed too, to be removed here). Key: start of the variant's line.
KNOWN_FAILURES: dict[str, str] = {}
# constexprs that set a kernel's tile shape (the rest select code paths)
SHAPE_CONSTEXPRS = {"D", "KH", "KW"}


# --------------------------------------------------------------------------- recording launches
class Launch:
    def __init__(self, fn, args, kwargs):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        bound = dict(zip(fn.arg_names, args), **kwargs)
        self.constexprs = {p.name: bound[p.name] for p in fn.params if p.is_constexpr}
        self.dtypes = {p.name: str(bound[p.name].dtype).replace("torch.", "")
                       for p in fn.params if isinstance(bound.get(p.name), torch.Tensor)}
        self.options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
        self.key = (self.name, tuple(sorted(self.dtypes.items())),
                    tuple(sorted((k, str(v)) for k, v in self.constexprs.items())), tuple(sorted(self.options.items())))

    @property
    def name(self) -> str:
        return self.fn.fn.__name__

    def describe(self) -> str:
        cx = " ".join(f"{k}={v}" for k, v in self.constexprs.items())
        dt = "/".join(sorted(set(self.dtypes.values())))
        opts = " ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name} [{dt}] {cx} {opts}".strip()

    def axes(self) -> set:
        """(axis, value) pairs: every constexpr, pointer dtype and launch option of this variant."""
        return ({(k, str(v)) for k, v in self.constexprs.items()} | {("dtype:" + k, v) for k, v in self.dtypes.items()}
                | {(k, str(v)) for k, v in self.options.items()})

    def size(self) -> tuple[int, int]:
        """Rough resource score: product of the tile sizes times the element bits summed over the
        pointer arguments, then the number of flags on (e.g. ROPE loads more tiles)."""
        n = 1
        for k, v in self.constexprs.items():
            if k in SHAPE_CONSTEXPRS or k.startswith("BLOCK"):
                n *= int(v)
        bits = sum(getattr(torch, d).itemsize * 8 for d in self.dtypes.values())
        return n * bits, sum(v is True for v in self.constexprs.values())

    def compile(self, arch: int):
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        # What JITFunction.run does before compiling, with this target's backend.
        binder = create_function_from_signature(self.fn.signature, self.fn.params, backend)
        kwargs = dict(self.kwargs)
        bound, specialization, options = binder(*self.args, **kwargs)
        options, signature, constexprs, attrs = self.fn._pack_args(backend, kwargs, bound, specialization, options)
        return triton.compile(ASTSource(self.fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def record(calls) -> list[Launch]:
    """Run `calls()` with every Triton launch recorded instead of run; one Launch per variant."""
    found: dict = {}

    def run(self, *args, grid, warmup, **kwargs):
        launch = Launch(self, args, kwargs)
        found.setdefault(launch.key, launch)

    saved = JITFunction.run
    JITFunction.run = run
    try:
        calls()
    finally:
        JITFunction.run = saved
    return list(found.values())


def _randn(*shape, dtype, cl=False):
    t = torch.randn(*shape).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def attention_calls():
    from leo_kernels.attention import HEAD_DIMS
    from leo_kernels.triton import attention_triton as A

    assert A.BLOCK_OVERRIDE is None
    # 5, 17, 33, 65: one-tile sizes 16..128 (the short-sequence path); 129: the tiled path.
    lengths, channels = (5, 17, 33, 65, 129), (8, 24, 40)  # channels: block tile sizes 16, 32, 64
    for dtype, tf32 in [(dt, False) for dt in GPU_DTYPES] + [(torch.float32, True)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32  # float32 dots: exact (DOT=1) or TF32 (DOT=0)
        try:
            for d, L, rope in itertools.product(HEAD_DIMS, lengths, (False, True)):
                q = _randn(1, 2, L, d, dtype=dtype)
                out, lse = A.attention_fwd(q, q, q, rope)
                A.attention_bwd(out, q, q, q, out, lse, rope)
            for d, L, C in itertools.product(HEAD_DIMS, lengths[:3], channels):
                heads = 2
                x = _randn(1, C, L, dtype=dtype)
                A.block_fwd(x, _randn(C, dtype=dtype), _randn(3 * heads * d, C, dtype=dtype),
                            _randn(C, heads * d, dtype=dtype), _randn(C, dtype=dtype), heads, True)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False


def stylegan_calls():
    from leo_kernels.triton import stylegan_triton as S

    for dtype, cl in itertools.product(GPU_DTYPES, (False, True)):
        x = _randn(2, 3, 9, 7, dtype=dtype, cl=cl)
        for kh, kw in ((4, 4), (1, 3), (5, 5)):  # leo's FIR is 4x4; the dispatch takes any size
            S.upfirdn2d_fwd(x, torch.rand(kh, kw), 2, 2, 1, 1, 2, 2, 2, 2)
        for bias in (None, torch.randn(3)):
            S.bias_act_fwd(x, bias, 0.2, 2 ** 0.5)
            S.bias_act_bwd(x, x, bias, 0.2, 2 ** 0.5)


def warp_calls():
    from leo_kernels.triton import warp_triton as W

    for dtype, C in itertools.product(GPU_DTYPES, (1, 2, 3, 5, 9, 17)):  # channel blocks 1..32
        inp = _randn(2, C, 5, 6, dtype=dtype)
        grid = _randn(2, 4, 3, 2, dtype=dtype)
        go = _randn(2, C, 4, 3, dtype=dtype)
        for pad, align in itertools.product((0, 1, 2), (False, True)):
            W.grid_sample_fwd(inp, grid, pad, align)
            for det in (False, True):
                W.grid_sample_bwd(go, inp, grid, pad, align, det)
        feat, x = _randn(2, C, 6, 4, dtype=dtype), _randn(2, C, 6, 4, dtype=dtype)
        logits, skip = _randn(2, 3, 6, 4, dtype=dtype), _randn(2, 3, 3, 2, dtype=dtype)
        for sk, align in itertools.product((None, skip), (False, True)):
            warped, blended, composed = W.warp_inpaint_fwd(feat, x, logits, sk, align)
            for det in (False, True):
                W.warp_inpaint_bwd(warped, blended, composed, feat, x, composed, sk is not None, align, det)
        W.compose_flow_fwd(skip, logits)
        W.compose_flow_bwd(logits)


FAMILIES = {"attention": attention_calls, "stylegan": stylegan_calls, "warp": warp_calls}


# --------------------------------------------------------------------------- choosing what to compile
def largest_per_mode(launches: list[Launch]) -> list[Launch]:
    """Per kernel: its largest variant (flags on, as they only add work), and the largest variant for
    each value of each non-boolean code-path constexpr (e.g. attention's DOT: float32 with TF32 dots
    needs more shared memory than exact float32 there). The variants that decide shared-memory fit."""
    chosen: dict = {}
    for name in sorted({v.name for v in launches}):
        group = [v for v in launches if v.name == name]
        modes = {(k, str(x)) for v in group for k, x in v.constexprs.items()
                 if not isinstance(x, bool) and k not in SHAPE_CONSTEXPRS and not k.startswith("BLOCK")}
        for mode in [None, *sorted(modes)]:
            best = max((v for v in group if mode is None or mode in v.axes()), key=Launch.size)
            chosen[best.key] = best
    return list(chosen.values())


def covering_set(launches: list[Launch]) -> list[Launch]:
    """largest_per_mode, then more variants (greedy set cover, the smallest, quickest to compile, on
    ties) until every value of every constexpr, pointer dtype and launch option has been compiled."""
    chosen = largest_per_mode(launches)
    for name in sorted({v.name for v in launches}):
        group = [v for v in launches if v.name == name and v not in chosen]
        todo = set().union(*(v.axes() for v in launches if v.name == name))
        todo -= set().union(*(v.axes() for v in chosen if v.name == name))
        while todo:
            pick = max(group, key=lambda v: (len(v.axes() & todo), -v.size()[0]))
            chosen.append(pick)
            todo -= pick.axes()
            group.remove(pick)
    return chosen


_JOBS: list = []  # (Launch, arch); forked workers get them by index (kernels do not pickle)


def _compile_job(i):
    launch, arch = _JOBS[i]
    t = time.time()
    try:
        shared = launch.compile(arch).metadata.shared
    except Exception as exc:  # noqa: BLE001 - report every failure by name, keep going
        return launch.describe(), arch, None, f"{type(exc).__name__}: {str(exc)[-1500:]}", time.time() - t
    return launch.describe(), arch, shared, None, time.time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90,80", help="comma-separated SM versions (90, 80)")
    ap.add_argument("--family", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    ap.add_argument("--kernel", default="", help="only kernels whose name matches this regular expression")
    ap.add_argument("--full", action="store_true", help="every variant for every arch (not the CI set)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    args = ap.parse_args()
    archs = [int(a) for a in args.arch.split(",")]
    unknown = [a for a in archs if a not in SMEM_LIMIT]
    if unknown:
        ap.error(f"--arch: unknown SM version(s) {unknown}; known: {sorted(SMEM_LIMIT)}")

    launches = []
    for fam in args.family.split(","):
        if fam not in FAMILIES:
            ap.error(f"--family: unknown {fam!r}; known: {', '.join(FAMILIES)}")
        found = record(FAMILIES[fam])
        kernels = sorted({v.name for v in found})
        print(f"{fam}: {len(found)} variants of {len(kernels)} kernels ({', '.join(kernels)})")
        launches += [v for v in found if re.search(args.kernel, v.name)]
    jobs = _JOBS
    for i, arch in enumerate(archs):
        if args.full:
            pick = launches
        else:  # CI: the covering set on the first arch (sm_90), the largest variant per mode on the others
            pick = covering_set(launches) if i == 0 else largest_per_mode(launches)
        jobs += [(v, arch) for v in pick]
    print(f"compiling {len(jobs)} kernel variants ({'every variant' if args.full else 'CI set'}) for "
          f"{', '.join(f'sm_{a}' for a in archs)} with triton {triton.__version__}, {args.jobs} jobs")
    if args.list:
        for v, arch in jobs:
            print(f"  sm_{arch} {v.describe()}")
        return 0

    t0 = time.time()
    failures, known, fixed = [], [], []
    ctx = multiprocessing.get_context("fork")  # workers inherit the recorded launches
    with ctx.Pool(max(1, args.jobs)) as pool:
        for name, arch, shared, err, dt in pool.imap(_compile_job, range(len(jobs))):
            line = f"sm_{arch} {name}"
            if err is None and shared > SMEM_LIMIT[arch]:
                err = f"needs {shared} B of shared memory, sm_{arch} allows {SMEM_LIMIT[arch]} B"
            why = next((w for k, w in KNOWN_FAILURES.items() if line.startswith(k)), None)
            if err is None:
                print(f"ok   {line}: shared {shared} B, {100 * shared / SMEM_LIMIT[arch]:.0f}% of sm_{arch}'s "
                      f"({dt:.1f}s)", flush=True)
                if why:
                    fixed.append(line)
            elif why:
                known.append(f"{line}: {err.splitlines()[0]} ({why})")
                print(f"KNOWN {known[-1]}", flush=True)
            else:
                failures.append(f"{line}: {err}")
                print(f"FAIL {line}: {err}", flush=True)
    print(f"compile_triton: {len(jobs) - len(failures) - len(known)}/{len(jobs)} variants compiled and fit, "
          f"{len(known)} known failures ({time.time() - t0:.0f}s)")
    for f in known:
        print("KNOWN FAILURE", f)
    for f in fixed:
        print("KNOWN FAILURE NOW PASSES (remove it from KNOWN_FAILURES):", f)
    for f in failures:
        print("FAILED", f.splitlines()[0])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
