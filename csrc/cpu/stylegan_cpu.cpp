// StyleGAN2 ops on the CPU: upfirdn2d (FIR up/down-sampling) and bias_act (bias + leaky ReLU).
//
// The schemas of the compiled StyleGAN2 ops live here (this file always builds); the CUDA kernels in
// csrc/cuda/stylegan_cuda.cu register implementations for the same schemas. See docs/OPS.md.
//
// upfirdn2d, per axis: out[o] = sum_t K[k-1-t] * xup[o*down + t - pad0], where xup is the input with
// up-1 zeros inserted after every sample (true convolution with K). The backward is the same op
// with the flipped kernel and up/down swapped, so no separate backward kernel is needed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace leo {
namespace {

// The output memory format rule shared with the fake impls in leo_kernels/stylegan.py:
// channels_last exactly when the input is channels_last-dense and not also plain-contiguous.
bool use_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Taps of one axis: for output o, the (input index, kernel index) pairs that are non-zero.
struct AxisTaps {
  std::vector<int64_t> start;  // size out+1, offsets into idx/k
  std::vector<int64_t> in_idx;
  std::vector<int64_t> k_idx;
};

AxisTaps axis_taps(int64_t in, int64_t out, int64_t up, int64_t down, int64_t pad0, int64_t k) {
  AxisTaps a;
  a.start.reserve(out + 1);
  for (int64_t o = 0; o < out; ++o) {
    a.start.push_back(static_cast<int64_t>(a.in_idx.size()));
    for (int64_t t = 0; t < k; ++t) {
      const int64_t u = o * down + t - pad0;  // index in the zero-inserted signal
      if (u < 0 || u >= in * up || u % up != 0) continue;
      a.in_idx.push_back(u / up);
      a.k_idx.push_back(k - 1 - t);
    }
  }
  a.start.push_back(static_cast<int64_t>(a.in_idx.size()));
  return a;
}

int64_t upfirdn_out_size(const char* axis, int64_t in, int64_t up, int64_t down, int64_t p0, int64_t p1,
                         int64_t k) {
  const int64_t span = in * up + p0 + p1;
  TORCH_CHECK(span >= k, "upfirdn2d: along ", axis, " the upsampled and padded size (", span,
              ") is smaller than the kernel (", k, ")");
  return (span - k) / down + 1;
}

void check_upfirdn_args(const at::Tensor& x, const at::Tensor& kernel, int64_t upx, int64_t upy,
                        int64_t downx, int64_t downy) {
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be 4-D (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be 2-D, got ", kernel.sizes());
  TORCH_CHECK(upx >= 1 && upy >= 1, "upfirdn2d: up must be >= 1");
  TORCH_CHECK(downx >= 1 && downy >= 1, "upfirdn2d: down must be >= 1");
  TORCH_CHECK(kernel.size(0) >= 1 && kernel.size(1) >= 1, "upfirdn2d: kernel must not be empty");
  TORCH_CHECK(kernel.device() == x.device(), "upfirdn2d: kernel is on ", kernel.device(), " but x is on ",
              x.device());
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(kernel.scalar_type() == want, "upfirdn2d: kernel must be ", want, " for x of dtype ",
              x.scalar_type(), ", got ", kernel.scalar_type());
}

// NCHW: each (n, c) plane is first laid out as float rows already upsampled and padded along x
// (only the span the output reads), so the inner loops are unit-stride and vectorize.
template <typename scalar_t>
void upfirdn_nchw(const at::Tensor& x, const at::Tensor& kernel, at::Tensor& out, int64_t upx, int64_t downx,
                  int64_t padx0, const AxisTaps& ty) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = out.size(2), Wo = out.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t span = (Wo - 1) * downx + kw;  // samples of the padded row the output reads
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* kp = kernel.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();

  // Which padded-row position each input column lands on (or -1 when it falls outside the span).
  std::vector<int64_t> col_pos(W);
  for (int64_t ix = 0; ix < W; ++ix) {
    const int64_t j = ix * upx + padx0;
    col_pos[ix] = (j >= 0 && j < span) ? j : -1;
  }

  at::parallel_for(0, NC, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows(H * span);
    std::vector<acc_t> acc(Wo);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* xplane = xp + p * H * W;
      std::fill(rows.begin(), rows.end(), acc_t(0));
      for (int64_t iy = 0; iy < H; ++iy) {
        acc_t* r = rows.data() + iy * span;
        const scalar_t* xr = xplane + iy * W;
        for (int64_t ix = 0; ix < W; ++ix)
          if (col_pos[ix] >= 0) r[col_pos[ix]] = static_cast<acc_t>(xr[ix]);
      }
      scalar_t* oplane = op + p * Ho * Wo;
      for (int64_t oy = 0; oy < Ho; ++oy) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t q = ty.start[oy]; q < ty.start[oy + 1]; ++q) {
          const acc_t* r = rows.data() + ty.in_idx[q] * span;
          const acc_t* krow = kp + ty.k_idx[q] * kw;
          for (int64_t t = 0; t < kw; ++t) {
            const acc_t w = krow[kw - 1 - t];
            if (w == acc_t(0)) continue;
            const acc_t* rt = r + t;
            if (downx == 1) {
              for (int64_t ox = 0; ox < Wo; ++ox) acc[ox] += w * rt[ox];
            } else {
              for (int64_t ox = 0; ox < Wo; ++ox) acc[ox] += w * rt[ox * downx];
            }
          }
        }
        scalar_t* orow = oplane + oy * Wo;
        for (int64_t ox = 0; ox < Wo; ++ox) orow[ox] = static_cast<scalar_t>(acc[ox]);
      }
    }
  });
}

// channels_last: the taps are gathered per output pixel and the inner loop runs over channels.
template <typename scalar_t>
void upfirdn_nhwc(const at::Tensor& x, const at::Tensor& kernel, at::Tensor& out, const AxisTaps& ty,
                  const AxisTaps& tx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = out.size(2), Wo = out.size(3);
  const int64_t kw = kernel.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t* kp = kernel.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, oy = r % Ho;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t qy = ty.start[oy]; qy < ty.start[oy + 1]; ++qy) {
          for (int64_t qx = tx.start[ox]; qx < tx.start[ox + 1]; ++qx) {
            const acc_t w = kp[ty.k_idx[qy] * kw + tx.k_idx[qx]];
            const scalar_t* src = xp + ((n * H + ty.in_idx[qy]) * W + tx.in_idx[qx]) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += w * static_cast<acc_t>(src[c]);
          }
        }
        scalar_t* dst = op + ((n * Ho + oy) * Wo + ox) * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

at::Tensor upfirdn2d_fwd_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t upx, int64_t upy,
                             int64_t downx, int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                             int64_t pady1) {
  check_upfirdn_args(x_in, kernel_in, upx, upy, downx, downy);
  const bool cl = use_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const at::Tensor kernel = kernel_in.contiguous();
  const int64_t H = x.size(2), W = x.size(3), kh = kernel.size(0), kw = kernel.size(1);
  const int64_t Ho = upfirdn_out_size("y", H, upy, downy, pady0, pady1, kh);
  const int64_t Wo = upfirdn_out_size("x", W, upx, downx, padx0, padx1, kw);
  at::Tensor out = at::empty({x.size(0), x.size(1), Ho, Wo},
                             x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                          : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const AxisTaps ty = axis_taps(H, Ho, upy, downy, pady0, kh);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cpu", [&] {
    if (cl) {
      const AxisTaps tx = axis_taps(W, Wo, upx, downx, padx0, kw);
      upfirdn_nhwc<scalar_t>(x, kernel, out, ty, tx);
    } else {
      upfirdn_nchw<scalar_t>(x, kernel, out, upx, downx, padx0, ty);
    }
  });
  return out;
}

// ----------------------------------------------------------------------------------------- bias_act
// Elements are visited in storage order of a dense tensor; `inner` is how many consecutive storage
// elements share one channel (H*W... for NCHW-contiguous, 1 for channels_last).
struct Layout {
  at::Tensor x;
  int64_t channels = 1;
  int64_t inner = 1;
};

Layout dense_layout(const at::Tensor& x_in, bool has_bias) {
  Layout l;
  const bool cl = use_channels_last(x_in);
  l.x = cl ? x_in : x_in.contiguous();
  if (has_bias) {
    l.channels = x_in.size(1);
    l.inner = 1;
    if (!cl)
      for (int64_t d = 2; d < x_in.dim(); ++d) l.inner *= x_in.size(d);
  }
  return l;
}

void check_bias(const at::Tensor& x, const c10::optional<at::Tensor>& bias) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(x.dim() >= 2, "bias_act: x must have a channel dim (>= 2-D) when bias is given, got ", x.sizes());
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "bias_act: bias must have shape (", x.size(1),
              ",), got ", bias->sizes());
  TORCH_CHECK(bias->device() == x.device(), "bias_act: bias is on ", bias->device(), " but x is on ", x.device());
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(bias->scalar_type() == want, "bias_act: bias must be ", want, " for x of dtype ", x.scalar_type(),
              ", got ", bias->scalar_type());
}

at::Tensor out_like(const at::Tensor& x) {
  return at::empty(x.sizes(), x.options().memory_format(use_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                                                              : at::MemoryFormat::Contiguous));
}

// One span of elements sharing bias b. BWD: out = grad * act'(x + b) * gain, else act(x + b) * gain.
// Branch-free body with restrict pointers so the compiler vectorizes it.
template <typename scalar_t, bool BWD>
inline void bias_act_span(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                          scalar_t* __restrict__ out, int64_t n, at::opmath_type<scalar_t> b,
                          at::opmath_type<scalar_t> gain, at::opmath_type<scalar_t> gain_neg) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]) + b;
    const acc_t s = v > acc_t(0) ? gain : gain_neg;
    out[i] = static_cast<scalar_t>((BWD ? static_cast<acc_t>(g[i]) : v) * s);
  }
}

template <typename scalar_t, bool BWD>
void bias_act_loop(const Layout& l, const at::Tensor& bias, const at::Tensor& grad, at::Tensor& out,
                   double slope_d, double gain_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t gain = static_cast<acc_t>(gain_d), gain_neg = static_cast<acc_t>(gain_d * slope_d);
  const scalar_t* xp = l.x.const_data_ptr<scalar_t>();
  const scalar_t* gp = BWD ? grad.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* bp = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const int64_t numel = l.x.numel(), C = l.channels, inner = l.inner;
  auto span = [&](int64_t i0, int64_t n, acc_t b) {
    bias_act_span<scalar_t, BWD>(xp + i0, BWD ? gp + i0 : nullptr, op + i0, n, b, gain, gain_neg);
  };
  if (!bp) {
    at::parallel_for(0, numel, 65536, [&](int64_t begin, int64_t end) { span(begin, end - begin, acc_t(0)); });
  } else if (inner > 1) {  // NCHW-like: runs of `inner` elements share one channel
    at::parallel_for(0, numel / inner, std::max<int64_t>(1, 65536 / inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) span(r * inner, inner, bp[r % C]);
    });
  } else {  // channels_last (or no spatial dims): rows of C channels
    at::parallel_for(0, numel / C, std::max<int64_t>(1, 65536 / C), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* x = xp + r * C;
        const scalar_t* g = BWD ? gp + r * C : nullptr;
        scalar_t* o = op + r * C;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t v = static_cast<acc_t>(x[c]) + bp[c];
          const acc_t s = v > acc_t(0) ? gain : gain_neg;
          o[c] = static_cast<scalar_t>((BWD ? static_cast<acc_t>(g[c]) : v) * s);
        }
      }
    });
  }
}

at::Tensor bias_act_impl(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias_opt,
                         const at::Tensor* grad_in, double slope, double gain) {
  check_bias(x_in, bias_opt);
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  const Layout l = dense_layout(x_in, has_bias);
  at::Tensor out = out_like(x_in);
  if (out.numel() == 0) return out;
  at::Tensor grad;
  if (grad_in) {
    TORCH_CHECK(grad_in->sizes() == x_in.sizes(), "bias_act backward: grad_out shape ", grad_in->sizes(),
                " != x shape ", x_in.sizes());
    TORCH_CHECK(grad_in->scalar_type() == x_in.scalar_type(), "bias_act backward: grad_out dtype ",
                grad_in->scalar_type(), " != x dtype ", x_in.scalar_type());
    grad = grad_in->contiguous(use_channels_last(x_in) ? at::MemoryFormat::ChannelsLast
                                                       : at::MemoryFormat::Contiguous);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "bias_act_cpu", [&] {
    if (grad_in)
      bias_act_loop<scalar_t, true>(l, bias, grad, out, slope, gain);
    else
      bias_act_loop<scalar_t, false>(l, bias, grad, out, slope, gain);
  });
  return out;
}

at::Tensor bias_act_fwd_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& bias, double slope,
                            double gain) {
  return bias_act_impl(x, bias, nullptr, slope, gain);
}

at::Tensor bias_act_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                            double slope, double gain) {
  return bias_act_impl(x, bias, &grad_out, slope, gain);
}

}  // namespace
}  // namespace leo

TORCH_LIBRARY_FRAGMENT(leo_kernels, m) {
  m.def(
      "_upfirdn2d_fwd(Tensor x, Tensor kernel, int upx, int upy, int downx, int downy, int padx0, int padx1, "
      "int pady0, int pady1) -> Tensor");
  m.def("_bias_act_fwd(Tensor x, Tensor? bias, float negative_slope, float gain) -> Tensor");
  m.def("_bias_act_bwd(Tensor grad_out, Tensor x, Tensor? bias, float negative_slope, float gain) -> Tensor");
}

TORCH_LIBRARY_IMPL(leo_kernels, CPU, m) {
  m.impl("_upfirdn2d_fwd", &leo::upfirdn2d_fwd_cpu);
  m.impl("_bias_act_fwd", &leo::bias_act_fwd_cpu);
  m.impl("_bias_act_bwd", &leo::bias_act_bwd_cpu);
}
