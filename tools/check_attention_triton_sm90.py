#!/usr/bin/env python3
"""Compile every Triton attention kernel for sm_90 without a GPU (ptxas from $TRITON_PTXAS_PATH or
/usr/local/cuda) and print its shared-memory use; fails if one does not compile or needs more than
the 227 KB an H100 block can have. Catches GPU-only errors the interpreter cannot see.

    .venv/bin/python tools/check_attention_triton_sm90.py
"""
import inspect
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_PTXAS_PATH", "/usr/local/cuda/bin/ptxas")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from leo_kernels.triton import attention_triton as T  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 227 * 1024
STORAGE = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV", "X", "W", "NW", "QKV", "A", "BIAS", "Y"}
FLOAT32 = {"LSE", "DELTA", "COS", "SIN", "RSTD"}


def signature(fn, dt, consts):
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in consts:
            sig[name] = "constexpr"
        elif name in STORAGE:
            sig[name] = "*" + dt
        elif name in FLOAT32:
            sig[name] = "*fp32"
        else:
            sig[name] = "fp32" if name.startswith("scale") or name == "eps" else "i32"
    return sig


def main() -> int:
    failed = 0
    for dt in ("fp32", "bf16", "fp16"):
        mode = 1 if dt == "fp32" else 0
        cases = []
        for d in T_HEAD_DIMS:
            bm, bn, nw = T._blocks(64 if d == 128 else 128, d)  # largest single-tile config
            cases.append((T._attn_fwd_kernel, dict(D=d, BLOCK_M=bm, BLOCK_N=bn, ROPE=True, DOT=mode), nw, 1))
            cases.append((T._attn_bwd_single_kernel, dict(D=d, BLOCK=64, ROPE=True, DOT=mode), 8 if d >= 64 else 4, 1))
            bm, bn, nw = T._blocks(4096, d)
            for fn in (T._attn_fwd_kernel, T._attn_bwd_dkdv_kernel, T._attn_bwd_dq_kernel):
                cases.append((fn, dict(D=d, BLOCK_M=bm, BLOCK_N=bn, ROPE=True, DOT=mode), nw, 1))
        cases.append((T._norm_qkv_kernel, dict(D=64, BLOCK_O=64, BLOCK_L=64, BLOCK_C=32, DOT=mode), 4, 3))
        cases.append((T._out_proj_kernel, dict(D=64, BLOCK_O=64, BLOCK_L=64, BLOCK_K=32, DOT=mode), 4, 3))
        for fn, consts, nw, ns in cases:
            name = f"{fn.fn.__name__} {dt} {consts}"
            try:
                k = triton.compile(ASTSource(fn=fn, signature=signature(fn, dt, consts), constexprs=consts),
                                   target=TARGET, options={"num_warps": nw, "num_stages": ns})
                ok = k.metadata.shared <= SMEM_LIMIT
                print(f"{'ok ' if ok else 'TOO MUCH SHARED'} {name}: shared {k.metadata.shared} B")
                failed += not ok
            except Exception as exc:  # noqa: BLE001
                print(f"FAILED {name}: {type(exc).__name__}: {str(exc)[:2000]}")
                failed += 1
    return 1 if failed else 0


T_HEAD_DIMS = (16, 32, 64, 128)

if __name__ == "__main__":
    sys.exit(main())
