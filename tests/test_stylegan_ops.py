"""upfirdn2d and bias_act: fused backends (cpu, triton via its interpreter) vs the eager reference.

The CUDA backend runs the same tests when a GPU is visible (``_BACKENDS`` picks it up).
"""
import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import leo_kernels
from leo_kernels import reference
from tests import _cases
from tests._cases import BIAS_SHAPES, GENERAL_CASES, LIA_CASES, bias_act_inputs, bias_act_variants
from tests._cases import fir as _fir
from tests._util import assert_close, channels_last, non_contiguous

_GPU = torch.cuda.is_available()
# On CPU: the compiled kernels and Triton's interpreter; with a GPU, Triton runs on CUDA tensors.
_BACKENDS = [b for b in ("cpu", "triton") if b in leo_kernels.available_backends("cpu")]
if _GPU:
    _BACKENDS += [b for b in ("cuda", "triton") if b in leo_kernels.available_backends("cuda") and b not in _BACKENDS]


def _dev(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and _GPU) else "cpu"


def _naive_upfirdn2d(x, k, up, down, pad):
    """The definition, loop by loop (float64): zero-insert, pad/crop, true convolution, decimate."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = up, down, pad
    n, c, h, w = x.shape
    kh, kw = k.shape
    xu = torch.zeros(n, c, h * uy, w * ux, dtype=torch.float64)
    xu[:, :, ::uy, ::ux] = x.double()
    full = torch.zeros(n, c, h * uy + max(py0, 0) + max(py1, 0), w * ux + max(px0, 0) + max(px1, 0), dtype=torch.float64)
    full[:, :, max(py0, 0) : max(py0, 0) + h * uy, max(px0, 0) : max(px0, 0) + w * ux] = xu
    full = full[:, :, max(-py0, 0) : full.shape[2] - max(-py1, 0), max(-px0, 0) : full.shape[3] - max(-px1, 0)]
    ho, wo = (full.shape[2] - kh) // dy + 1, (full.shape[3] - kw) // dx + 1
    out = torch.zeros(n, c, ho, wo, dtype=torch.float64)
    for oy in range(ho):
        for ox in range(wo):
            win = full[:, :, oy * dy : oy * dy + kh, ox * dx : ox * dx + kw]
            out[:, :, oy, ox] = (win * k.double().flip((0, 1))).sum((2, 3))
    return out


# --------------------------------------------------------------------------- upfirdn2d forward
def test_reference_matches_definition():
    g = torch.Generator().manual_seed(0)
    for shape, ks, up, down, pad in GENERAL_CASES:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        k = torch.randn(ks, generator=g, dtype=torch.float64)
        out = reference.upfirdn2d(x, k, up, down, pad)
        assert_close(out, _naive_upfirdn2d(x, k, up, down, pad), name=f"reference {shape} {up} {down} {pad}")


def test_rgb_skip_upsample_is_up2():
    """up=2, pad=(2,1), kernel*4 is StyleGAN2's FIR upsampler (an independent closed form)."""
    x = torch.randn(1, 2, 9, 6, dtype=torch.float64)
    for backend in _BACKENDS + ["reference"]:
        xb = x.to(_dev(backend))
        out = leo_kernels.upfirdn2d(xb, _fir(scale=4, dtype=torch.float64).to(xb.device), 2, 1, (2, 1), backend=backend)
        assert_close(out.cpu(), reference.up2(x), name=backend)


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("case", sorted(LIA_CASES))
def test_lia_cases(backend, case):
    scale, up, down, pad = LIA_CASES[case]
    dev = _dev(backend)
    g = torch.Generator().manual_seed(1)
    # float32 with more channels (fewer under the slow Triton interpreter), odd size, batch 1; float64 small.
    c = 32 if backend != "triton" else 6
    for dtype, shape in ((torch.float32, (1, c, 9, 11)), (torch.float64, (2, 3, 8, 8))):
        x = (torch.randn(shape, generator=g, dtype=dtype) * 10).to(dev)
        k = _fir(scale=scale, dtype=torch.float32).to(dev)
        ref = reference.upfirdn2d(x.cpu(), k.cpu(), (up, up), (down, down), (*pad, *pad))
        for layout in (lambda t: t, channels_last):
            out = leo_kernels.upfirdn2d(layout(x), k, up, down, pad, backend=backend)
            assert leo_kernels.last_backend("upfirdn2d") == backend
            assert_close(out.cpu(), ref, name=f"{case} {dtype}")


@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("idx", range(len(GENERAL_CASES)))
def test_general_cases(backend, idx):
    shape, ks, up, down, pad = GENERAL_CASES[idx]
    dev = _dev(backend)
    g = torch.Generator().manual_seed(10 + idx)
    x64 = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    k64 = torch.randn(ks, generator=g, dtype=torch.float64)
    dtypes = [torch.float32, torch.float16, torch.bfloat16] + ([torch.float64] if dev == "cpu" else [])
    for dtype in dtypes:
        x = x64.to(dtype)
        ref = reference.upfirdn2d(x, k64.to(dtype), up, down, pad)
        layouts = (("contiguous", lambda t: t), ("channels_last", channels_last), ("strided", non_contiguous))
        for name, layout in layouts:
            xd = layout(x.to(dev))
            out = leo_kernels.upfirdn2d(xd, k64.to(dtype).to(dev), up, down, pad, backend=backend)
            assert out.dtype == dtype
            if name == "channels_last" and shape[1] > 1:
                assert out.is_contiguous(memory_format=torch.channels_last)
            assert_close(out.cpu(), ref, name=f"{name} {dtype}")


def test_cpu_vectorized_paths_wider():
    """Rows longer than a SIMD width and several planes per thread (the NCHW fast path)."""
    if "cpu" not in _BACKENDS:
        pytest.skip("compiled extension not loaded")
    x = torch.randn(2, 8, 37, 70)
    for up, down, pad in ((1, 1, (2, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), ((1, 2), (2, 1), (0, 3, 1, 2))):
        for layout in (lambda t: t, channels_last):
            out = leo_kernels.upfirdn2d(layout(x), _fir(), up, down, pad, backend="cpu")
            up2, down2 = ((up, up) if isinstance(up, int) else up), ((down, down) if isinstance(down, int) else down)
            ref = reference.upfirdn2d(x, _fir(), up2, down2, pad if len(pad) == 4 else pad * 2)
            assert_close(out, ref)


def test_pad_forms_and_int_factors():
    x = torch.randn(1, 2, 6, 6)
    k = _fir()
    a = leo_kernels.upfirdn2d(x, k, 2, 2, 1)
    b = leo_kernels.upfirdn2d(x, k, (2, 2), (2, 2), (1, 1, 1, 1))
    c = leo_kernels.upfirdn2d(x, k, (2, 2), (2, 2), (1, 1))
    assert torch.equal(a, b) and torch.equal(a, c)


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8)
    out = leo_kernels.upfirdn2d(x, _fir(), 2, 1, (2, 1), backend="cpu")
    assert out.shape == (0, 3, 16, 16)


# --------------------------------------------------------------------------- upfirdn2d gradients
@pytest.mark.parametrize("cfg", [((2, 2), (1, 1), (2, 1, 2, 1)), ((3, 2), (1, 2), (-1, 2, 3, 0)), ((1, 1), (2, 2), (1, 1, 1, 1))])
def test_upfirdn2d_gradcheck_cpu(cfg):
    if "cpu" not in _BACKENDS:
        pytest.skip("compiled extension not loaded")
    up, down, pad = cfg
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 4, dtype=torch.float64)
    f = lambda t: leo_kernels.upfirdn2d(t, k, up, down, pad, backend="cpu")  # noqa: E731
    assert gradcheck(f, (x,))
    assert gradgradcheck(f, (x,))


@pytest.mark.parametrize("backend", _BACKENDS)
def test_upfirdn2d_grads_match_reference(backend):
    dev = _dev(backend)
    dtype = torch.float64 if dev == "cpu" else torch.float32
    x = torch.randn(2, 3, 7, 6, dtype=dtype, device=dev)
    k = torch.randn(4, 3, dtype=dtype, device=dev)
    up, down, pad = (2, 1), (1, 2), (2, -1, 1, 2)

    def second_order(bk):
        xx = x.clone().requires_grad_()
        y = leo_kernels.upfirdn2d(xx, k, up, down, pad, backend=bk)
        w = torch.linspace(-1, 1, y.numel(), dtype=dtype, device=dev).view_as(y)
        (g,) = torch.autograd.grad((y * w).sum() + (y**2).sum(), xx, create_graph=True)
        (gg,) = torch.autograd.grad((g**2).sum(), xx)
        return g.detach(), gg

    g, gg = second_order(backend)
    g_ref, gg_ref = second_order("reference")
    assert_close(g.cpu(), g_ref.cpu(), name="grad")
    assert_close(gg.cpu(), gg_ref.cpu(), name="grad of grad")


def test_kernel_grad_policy():
    x = torch.randn(1, 2, 6, 6)
    k = _fir().requires_grad_()
    with pytest.raises(ValueError, match="kernel requires grad"):
        leo_kernels.upfirdn2d(x, k, 1, 1, (2, 1), backend="cpu")
    with torch.no_grad():  # constant in inference: allowed
        leo_kernels.upfirdn2d(x, k, 1, 1, (2, 1), backend="cpu")
    leo_kernels.upfirdn2d(x, k, 1, 1, (2, 1), backend="reference").sum().backward()
    assert k.grad is not None and torch.isfinite(k.grad).all()


# --------------------------------------------------------------------------- bias_act
@pytest.mark.parametrize("backend", _BACKENDS)
def test_bias_act_forward(backend):
    dev = _dev(backend)
    g = torch.Generator().manual_seed(3)
    dtypes = [torch.float32, torch.float16, torch.bfloat16] + ([torch.float64] if dev == "cpu" else [])
    for shape in BIAS_SHAPES:
        x64, b64 = bias_act_inputs(shape, g)
        for dtype in dtypes:
            x, b = x64.to(dtype), b64.to(dtype)
            for name, layout, bias, slope, gain in bias_act_variants(len(shape), b):
                out = leo_kernels.bias_act(layout(x.to(dev)), None if bias is None else bias.to(dev),
                                           slope, gain, backend=backend)
                ref = reference.bias_act(x, bias, slope, gain)
                assert out.dtype == dtype
                assert_close(out.cpu(), ref, name=f"{shape} {dtype} {name} bias={bias is not None}")


@pytest.mark.parametrize("backend", _BACKENDS)
def test_bias_act_float32_bias_with_low_precision_x(backend):
    dev = _dev(backend)
    x = torch.randn(2, 6, 4, 4, dtype=torch.bfloat16, device=dev)
    b = torch.randn(6, device=dev, requires_grad=True)
    xr = x.clone().requires_grad_()
    out = leo_kernels.bias_act(xr, b, backend=backend)
    assert out.dtype == torch.bfloat16
    assert_close(out.cpu(), reference.bias_act(x.cpu(), b.detach().cpu()))
    out.float().sum().backward()
    assert b.grad.dtype == torch.float32
    gate = torch.where(x.float() + b.detach().view(1, -1, 1, 1) > 0, 1.0, 0.2) * math.sqrt(2)
    assert_close(b.grad.cpu(), gate.sum((0, 2, 3)).cpu(), tol=1e-2)


def test_bias_act_gradcheck_cpu():
    if "cpu" not in _BACKENDS:
        pytest.skip("compiled extension not loaded")
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x = (x + 0.1 * torch.sign(x)).requires_grad_()  # keep clear of the kink for finite differences
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    for xx in (x, channels_last(x.detach()).requires_grad_()):
        f = lambda t, bb: leo_kernels.bias_act(t, bb, 0.2, 1.7, backend="cpu")  # noqa: E731
        assert gradcheck(f, (xx, b))
        assert gradgradcheck(f, (xx, b))


@pytest.mark.parametrize("backend", _BACKENDS)
def test_r1_style_double_backward_matches_reference(backend):
    """A tiny discriminator (bias_act + blur-downsample) with an R1 penalty, fused vs reference."""
    dev = _dev(backend)
    dtype = torch.float64 if dev == "cpu" else torch.float32
    g = torch.Generator().manual_seed(5)
    img = torch.randn(2, 3, 8, 8, generator=g, dtype=dtype).to(dev)
    w1 = torch.randn(4, 3, 3, 3, generator=g, dtype=dtype).to(dev)
    b1 = torch.randn(4, generator=g, dtype=dtype).to(dev)
    k = _fir(dtype=dtype).to(dev)

    def run(bk):
        x = img.clone().requires_grad_()
        b = b1.clone().requires_grad_()
        h = torch.nn.functional.conv2d(leo_kernels.upfirdn2d(x, k, 1, 1, (2, 2), backend=bk), w1, stride=2)
        h = leo_kernels.bias_act(h, b, backend=bk)
        h = leo_kernels.upfirdn2d(h, k, 1, 2, (1, 1), backend=bk)
        score = h.square().sum()
        (gx,) = torch.autograd.grad(score, x, create_graph=True)
        r1 = gx.square().sum()
        gxx, gb = torch.autograd.grad(r1 + score, (x, b))
        return r1.detach(), gxx, gb

    for got, want in zip(run(backend), run("reference")):
        assert_close(got.cpu().reshape(-1), want.cpu().reshape(-1))


# --------------------------------------------------------------------------- registration
def test_opcheck():
    if "cpu" not in _BACKENDS:
        pytest.skip("compiled extension not loaded")
    from torch.library import opcheck

    x = torch.randn(2, 3, 5, 6)
    xc = channels_last(torch.randn(2, 3, 5, 6))
    k = torch.randn(4, 4)
    b = torch.randn(3)
    ops = torch.ops.leo_kernels
    opcheck(ops.upfirdn2d, (x.clone().requires_grad_(), k, [2, 2], [1, 1], [2, 1, 2, 1], "cpu"))
    opcheck(ops.upfirdn2d, (xc.clone().requires_grad_(), k, [1, 2], [2, 1], [1, -1, 0, 2], "cpu"))
    opcheck(ops._upfirdn2d_fwd, (x, k, 2, 1, 1, 2, 1, 2, 0, 1))
    opcheck(ops.bias_act, (x.clone().requires_grad_(), b.clone().requires_grad_(), 0.2, 1.4, "cpu"))
    opcheck(ops.bias_act, (xc.clone().requires_grad_(), None, 0.2, 1.4, "cpu"))
    opcheck(ops.bias_act_backward, (torch.randn(2, 3, 5, 6).requires_grad_(), xc, b, 0.2, 1.4, "cpu"))
    opcheck(ops._bias_act_fwd, (x, b, 0.2, 1.4))
    opcheck(ops._bias_act_bwd, (torch.randn(2, 3, 5, 6), xc, b, 0.2, 1.4))


def test_opcheck_triton():
    if "triton" not in _BACKENDS:
        pytest.skip("triton not available")
    from torch.library import opcheck

    dev = _dev("triton")
    x = torch.randn(1, 2, 4, 5, device=dev)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    k = torch.randn(3, 3, device=dev)
    opcheck(torch.ops.leo_kernels.upfirdn2d, (x.requires_grad_(), k, [2, 1], [1, 2], [1, 1, 2, 0], "triton"),
            test_utils=utils)
    opcheck(torch.ops.leo_kernels.bias_act, (x, torch.randn(2, device=dev).requires_grad_(), 0.2, 1.4, "triton"),
            test_utils=utils)


def test_torch_compile_fullgraph():
    if "cpu" not in _BACKENDS:
        pytest.skip("compiled extension not loaded")
    k = _fir()

    def block(x, b):
        y = leo_kernels.bias_act(x, b)
        y = leo_kernels.upfirdn2d(y, k * 4, 2, 1, (2, 1))
        return leo_kernels.upfirdn2d(y, k, 1, 2, (1, 1))

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    out = compiled(x, b)
    ref = block(x, b)
    assert_close(out, ref)
    gx, gb = torch.autograd.grad(out.square().sum(), (x, b))
    rx, rb = torch.autograd.grad(ref.square().sum(), (x, b))
    assert_close(gx, rx)
    assert_close(gb, rb)
    # Dynamic shapes: the backward pads are SymInts (odd and even sizes give different pads).
    dynamic = torch.compile(block, fullgraph=True, dynamic=True, backend="aot_eager")
    for h, w in ((9, 8), (12, 13)):
        x = torch.randn(1, 3, h, w, requires_grad=True)
        out, ref = dynamic(x, b), block(x, b)
        assert_close(out, ref)
        assert_close(torch.autograd.grad(out.sum(), x)[0], torch.autograd.grad(ref.sum(), x)[0])


# --------------------------------------------------------------------------- validation
def test_upfirdn2d_errors_name_the_argument():
    x, k = torch.randn(1, 2, 6, 6), _fir()
    f = leo_kernels.upfirdn2d
    with pytest.raises(ValueError, match="x must be 4-D"):
        f(torch.randn(2, 6, 6), k)
    with pytest.raises(ValueError, match="kernel must be 2-D"):
        f(x, torch.ones(4))
    with pytest.raises(ValueError, match="up must be >= 1"):
        f(x, k, up=0)
    with pytest.raises(ValueError, match="down must be >= 1"):
        f(x, k, down=(1, 0))
    with pytest.raises(TypeError, match="up must be an int or a pair"):
        f(x, k, up=(1, 2, 3))
    with pytest.raises(ValueError, match="pad must have 1, 2 or 4 entries"):
        f(x, k, pad=(1, 1, 1))
    with pytest.raises(ValueError, match="pad .* fewer than the kernel"):
        f(x, k, pad=(-2, -2))
    with pytest.raises(TypeError, match="x must have a dtype"):
        f(x.long(), k)
    with pytest.raises(TypeError, match="kernel must have a dtype"):
        f(x, k.long())
    with pytest.raises(ValueError, match="kernel is on meta but x is on cpu"):
        f(x, k.to("meta"))
    with pytest.raises(ValueError, match="backend"):
        f(x, k, backend="tpu")


def test_bias_act_errors_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    f = leo_kernels.bias_act
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        f(x, torch.randn(4))
    with pytest.raises(ValueError, match="bias must be 1-D"):
        f(x, torch.randn(3, 1))
    with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
        f(x, torch.randn(3, device="meta"))
    with pytest.raises(TypeError, match="bias must have a dtype"):
        f(x, torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must have a dtype"):
        f(x.int())
    with pytest.raises(TypeError, match="negative_slope must be a number"):
        f(x, None, "0.2")
    with pytest.raises(ValueError, match="backend"):
        f(x, backend="tpu")


@pytest.mark.parametrize("backend", _BACKENDS)
def test_sum_backward_with_expanded_grad(backend):
    """.sum().backward() hands the ops a stride-0 gradient; channels_last input keeps its format."""
    dev = _dev(backend)
    x0 = channels_last(torch.randn(1, 3, 5, 6, device=dev))
    b0 = torch.randn(3, device=dev)
    grads = {}
    for bk in (backend, "reference"):
        x, b = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        y = leo_kernels.bias_act(x, b, backend=bk)
        leo_kernels.upfirdn2d(y, _fir(scale=4).to(dev), 2, 1, (2, 1), backend=bk).sum().backward()
        grads[bk] = (x.grad, b.grad)
    assert_close(grads[backend][0].cpu(), grads["reference"][0].cpu(), name="grad x")
    assert_close(grads[backend][1].cpu(), grads["reference"][1].cpu(), name="grad bias")


# --------------------------------------------------------------------------- shared sample inputs
@pytest.mark.parametrize("backend", _BACKENDS)
@pytest.mark.parametrize("op", _cases.FAMILIES["stylegan"])
def test_sample_inputs_match_reference(backend, op):
    dtypes = (torch.float32,) + ((torch.float64,) if backend == "cpu" else ())
    for dtype in dtypes:
        assert _cases.check_against_reference(op, backend, device=_dev(backend), dtype=dtype) > 0
