"""AOT-compile every Triton warp kernel (leo_kernels/triton/warp_triton.py) for sm_90 without a GPU.

Catches GPU-compile errors the interpreter cannot see (constexpr handling, types, layouts): each
kernel is lowered to PTX and assembled with ptxas for representative bf16/fp32/fp64 signatures and
every constexpr variant. Usage: .venv/bin/python tools/compile_triton_warp.py (a few minutes).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from leo_kernels.triton import warp_triton as T
tl = triton.language
TARGET = GPUTarget("cuda", 90, 32)

def compile_kernel(kernel, types, constexprs):
    fn = kernel
    params = fn.arg_names
    sig = {}
    for name in params:
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = types(name)
    src = ASTSource(fn=fn, signature=sig, constexprs={(params.index(k),): v for k, v in constexprs.items()})
    t = time.time()
    triton.compile(src, target=TARGET, options={"num_warps": 4})
    return time.time() - t

def typer(ptr_types):
    def f(name):
        if name in ptr_types:
            return ptr_types[name]
        if name.startswith("s_"):
            return "i64"
        return "i32"
    return f




BF, F32, I64 = "*bf16", "*fp32", "*i64"
acc = tl.float32
jobs = []
for pad in (0, 1, 2):
    for align in (False, True):
        jobs.append(("gs_fwd", T._gs_fwd_kernel, {"inp": BF, "grid": BF, "out": BF},
                     dict(PAD=pad, ALIGN=align, ACC=acc, BLOCK_P=64, BLOCK_C=32, s_iw=1, s_gk=1, s_ow=1)))
        for atomic in (False, True):
            jobs.append(("gs_bwd", T._gs_bwd_kernel, {"go": BF, "inp": BF, "grid": BF, "gin": F32, "part": F32},
                         dict(PAD=pad, ALIGN=align, ACC=acc, ATOMIC=atomic, BLOCK_P=64, BLOCK_C=32, s_ic=1, s_aw=1)))
        for inpaint in (False, True):
            jobs.append(("corners", T._gs_corners_kernel, {"grid": BF, "keys": I64, "wts": F32},
                         dict(PAD=pad, ALIGN=align, ACC=acc, INPAINT=inpaint, BLOCK_P=128)))
for inpaint in (False, True):
    jobs.append(("gather", T._gather_kernel, {"starts": I64, "perm": I64, "wts": F32, "go": BF, "gb": BF, "comp": F32, "gin": BF},
                 dict(ACC=acc, INPAINT=inpaint, BLOCK_T=64, BLOCK_C=32)))
jobs.append(("compose_fwd", T._compose_fwd_kernel, {"coarse": BF, "fine": BF, "out": BF}, dict(ACC=acc, BLOCK=256)))
jobs.append(("compose_bwd", T._compose_bwd_kernel, {"g": F32, "out": BF}, dict(ACC=acc, BLOCK=256)))
for skip in (False, True):
    for align in (False, True):
        jobs.append(("wi_fwd", T._wi_fwd_kernel, {"feat": BF, "x": BF, "logits": BF, "skip": BF, "warped": BF, "blended": BF, "composed": BF},
                     dict(HAS_SKIP=skip, ALIGN=align, ACC=acc, BLOCK_P=64, BLOCK_C=32, s_fc=1)))
for atomic in (False, True):
    jobs.append(("wi_bwd", T._wi_bwd_kernel, {"gw": BF, "gb": BF, "feat": BF, "x": BF, "comp": F32, "gfeat": F32, "gx_out": BF, "part": F32},
                 dict(ALIGN=False, ACC=acc, ATOMIC=atomic, BLOCK_P=64, BLOCK_C=32, s_fw=1)))
jobs.append(("wi_logits", T._wi_logits_grad_kernel, {"part": F32, "comp": F32, "gcomp": BF, "out": F32}, dict(ACC=acc, BLOCK=128)))
# float64 accumulation variant (interpreter dtype; also valid on GPU)
jobs.append(("gs_fwd_f64", T._gs_fwd_kernel, {"inp": "*fp64", "grid": "*fp64", "out": "*fp64"},
             dict(PAD=2, ALIGN=False, ACC=tl.float64, BLOCK_P=64, BLOCK_C=32)))
jobs.append(("wi_fwd_f64", T._wi_fwd_kernel, {k: "*fp64" for k in ("feat", "x", "logits", "skip", "warped", "blended", "composed")},
             dict(HAS_SKIP=True, ALIGN=False, ACC=tl.float64, BLOCK_P=64, BLOCK_C=32)))
fails = 0
for name, k, ptrs, cx in jobs:
    try:
        dt = compile_kernel(k, typer(ptrs), cx)
        print(f"ok   {name} {sorted((a, b) for a, b in cx.items() if a in ('PAD','ALIGN','ATOMIC','INPAINT','HAS_SKIP'))} {dt:.1f}s", flush=True)
    except Exception as e:
        fails += 1
        print(f"FAIL {name} {cx}: {type(e).__name__}: {str(e)[:1500]}", flush=True)
print("fails", fails)
sys.exit(1 if fails else 0)
