"""CUDA backend of the warp ops (csrc/cuda/warp_cuda.cu) vs the eager reference.

Needs a CUDA device and an extension built with CUDA; skips with the reason otherwise.
"""
import functools

import pytest
import torch

import leo_kernels
from leo_kernels import _backend
from leo_kernels import reference as R
from tests._util import assert_close, channels_last, non_contiguous
from tests._warp_gpu_checks import DTYPES, CompiledOps, check_grid_sample_modes, check_warp_inpaint, randn, tol
from tests._warp_gpu_checks import compose_flow_case, grid_sample_case, warp_inpaint_case

if not torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="needs a CUDA device (none visible)")
elif not _backend.extension_has_cuda():
    pytestmark = pytest.mark.skip(
        reason="leo_kernels._C was built without CUDA kernels (rebuild with a CUDA torch, or LEO_FORCE_CUDA=1)"
    )

DEV = "cuda"
OPS = CompiledOps()
_randn = functools.partial(randn, device=DEV)


GS_SHAPES = [  # N, C, H, W, Ho, Wo
    (1, 1, 1, 1, 1, 1),
    (2, 3, 2, 2, 3, 2),
    (1, 5, 7, 6, 4, 9),
    (2, 64, 17, 31, 20, 13),
    (1, 512, 8, 8, 8, 8),
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", GS_SHAPES, ids=str)
def test_grid_sample_matches_reference(shape, dtype, layout):
    torch.manual_seed(sum(shape))
    grid_sample_case(OPS, shape, dtype, DEV, layout)


@pytest.mark.parametrize("case", ["non_contiguous", "far_out_of_range", "collisions"])
def test_grid_sample_special_inputs(case):
    torch.manual_seed(7)
    inp, grid = _randn(2, 16, 9, 11), _randn(2, 12, 10, 2)
    if case == "non_contiguous":
        inp, grid = non_contiguous(inp), non_contiguous(grid)
    elif case == "far_out_of_range":
        grid = grid * 40.0
    else:
        grid = grid * 0.05  # most samples land on the same few input pixels
    check_grid_sample_modes(OPS, inp, grid, det_repeat=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 3, 5), (4, 3, 32, 17)], ids=str)
def test_compose_flow_matches_reference(shape, dtype):
    torch.manual_seed(3)
    compose_flow_case(OPS, shape, dtype, DEV)


WI_SHAPES = [  # N, C, H, W, with skip
    (1, 1, 1, 1, False),
    (1, 2, 2, 2, True),
    (2, 3, 5, 7, False),
    (2, 64, 32, 16, True),
    (1, 512, 8, 8, True),
    (3, 24, 17, 9, False),
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", WI_SHAPES, ids=str)
def test_warp_inpaint_matches_reference(shape, dtype, layout):
    torch.manual_seed(4)
    warp_inpaint_case(OPS, shape, dtype, DEV, layout)


@pytest.mark.parametrize("case", ["non_contiguous", "far_flows"])
def test_warp_inpaint_special_inputs(case):
    torch.manual_seed(5)
    feat, x = _randn(2, 16, 12, 8), _randn(2, 16, 12, 8)
    logits, skip = _randn(2, 3, 12, 8), _randn(2, 3, 6, 4)
    if case == "non_contiguous":
        feat, x, logits, skip = map(non_contiguous, (feat, x, logits, skip))
    else:
        logits = logits * 30.0
    for align in (False, True):
        check_warp_inpaint(OPS, feat, x, logits, skip, align, det_repeat=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_backward_is_bitwise_repeatable(dtype):
    torch.manual_seed(8)
    N, C, H, W = 2, 64, 32, 32
    feat, x = channels_last(_randn(N, C, H, W, dtype=dtype)), channels_last(_randn(N, C, H, W, dtype=dtype))
    logits = _randn(N, 3, H, W, dtype=dtype, scale=0.05)  # near-identity flows: neighbours share targets
    _, _, comp = OPS.warp_inpaint_fwd(feat, x, logits, None, False)
    gw, gb = _randn(N, C, H, W, dtype=dtype), _randn(N, C, H, W, dtype=dtype)
    gc = _randn(N, 3, H, W, dtype=dtype)
    first = OPS.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
    for _ in range(3):
        again = OPS.warp_inpaint_bwd(gw, gb, gc, feat, x, comp, False, False, True)
        for a, b in zip(first, again):
            assert torch.equal(a, b)
    grid = _randn(N, H, W, 2, dtype=dtype, scale=0.05)
    go = _randn(N, C, H, W, dtype=dtype)
    first = OPS.grid_sample_bwd(go, feat, grid, 0, False, True)
    # The global switch also selects the deterministic path.
    torch.use_deterministic_algorithms(True)
    try:
        again = OPS.grid_sample_bwd(go, feat, grid, 0, False, False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_cuda_graph_capture_and_replay():
    torch.manual_seed(9)
    N, C, H, W = 2, 32, 16, 24
    feat, x = _randn(N, C, H, W), _randn(N, C, H, W)
    logits, skip = _randn(N, 3, H, W), _randn(N, 3, H // 2, W // 2)
    gw, gb, gc = _randn(N, C, H, W), _randn(N, C, H, W), _randn(N, 3, H, W)
    grid, go = _randn(N, H, W, 2), _randn(N, C, H, W)

    def step():
        warped, blended, composed = OPS.warp_inpaint_fwd(feat, x, logits, skip, False)
        grads = OPS.warp_inpaint_bwd(gw, gb, gc, feat, x, composed, True, False, False)
        gs = OPS.grid_sample_fwd(feat, grid, 2, True)
        gsg = OPS.grid_sample_bwd(go, feat, grid, 2, True, False)
        return (warped, blended, composed, *grads, gs, *gsg)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    # New inputs, replay, compare with eager.
    for t in (feat, x, logits, skip, gw, gb, gc, grid, go):
        t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for i, (a, b) in enumerate(zip(static_out, eager)):
        assert_close(a, b, torch.float32, 1e-6, f"graph output {i}")
    ref = R.warp_inpaint(feat, x, logits, skip, False)
    for a, b in zip(static_out[:3], ref):
        assert_close(a, b, torch.float32, tol(torch.float32))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_public_ops_on_cuda_backends(backend, dtype):
    torch.manual_seed(10)
    if backend not in leo_kernels.available_backends(DEV):
        pytest.skip(f"backend {backend!r} unavailable on CUDA here")
    N, C, H, W = 2, 64, 32, 16
    mk = lambda *s, scale=1.0: _randn(*s, dtype=dtype, scale=scale).requires_grad_()  # noqa: E731
    feat, x, logits, skip = mk(N, C, H, W), mk(N, C, H, W), mk(N, 3, H, W, scale=0.5), mk(N, 3, H // 2, W // 2)
    outs = leo_kernels.warp_inpaint(channels_last(feat), x, logits, skip, backend=backend)
    refs = R.warp_inpaint(feat, x, logits, skip)
    for o, r in zip(outs, refs):
        assert_close(o, r, dtype, tol(dtype))
    ws = [torch.randn_like(r) for r in refs]
    got = torch.autograd.grad(outs, (feat, x, logits, skip), ws)
    want = torch.autograd.grad(refs, (feat, x, logits, skip), ws)
    for name, a, b in zip(("feat", "x", "logits", "skip"), got, want):
        assert_close(a, b, dtype, tol(dtype, True), f"grad {name}")
