// StyleGAN2 ops on CUDA: upfirdn2d and bias_act (schemas declared in csrc/cpu/stylegan_cpu.cpp).
//
// upfirdn2d: one thread per output element, taps on inserted zeros or padding skipped; works for
// NCHW- and channels_last-dense tensors through strides. The FIR kernel is small (read through the
// read-only cache). bias_act: elementwise over storage order of a dense tensor.
// Launched on the current stream; never synchronizes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "leo_cuda.h"  // CUDA headers, LEO_LAUNCH; host emulation under LEO_CUDA_EMULATE

namespace leo {
namespace {

template <typename T>
struct AccType { using type = float; };
template <>
struct AccType<double> { using type = double; };

bool use_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat out_format(const at::Tensor& x) {
  return use_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

constexpr int kThreads = 256;

int64_t num_blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return b < 65535 * 32 ? b : 65535 * 32;  // grid-stride loops cover the rest
}

template <typename scalar_t, typename acc_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ k,
                                 scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t H, int64_t W,
                                 int64_t Ho, int64_t Wo, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw,
                                 int64_t son, int64_t soc, int64_t soh, int64_t sow, int upx, int upy,
                                 int downx, int downy, int padx0, int pady0, int kh, int kw, bool channels_last) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    // Consecutive threads walk the output's storage order (coalesced stores): x fastest for NCHW,
    // channel fastest for channels_last.
    int64_t n, c, oy, ox, t;
    if (channels_last) {
      c = i % C;
      t = i / C;
      ox = t % Wo;
      t /= Wo;
      oy = t % Ho;
      n = t / Ho;
    } else {
      ox = i % Wo;
      t = i / Wo;
      oy = t % Ho;
      t /= Ho;
      c = t % C;
      n = t / C;
    }
    const scalar_t* xb = x + n * sxn + c * sxc;
    acc_t acc = 0;
    for (int ty = 0; ty < kh; ++ty) {
      const int64_t uy = oy * downy + ty - pady0;
      if (uy < 0 || uy >= H * upy || uy % upy != 0) continue;
      const scalar_t* xr = xb + (uy / upy) * sxh;
      const acc_t* kr = k + (kh - 1 - ty) * kw;
      for (int tx = 0; tx < kw; ++tx) {
        const int64_t ux = ox * downx + tx - padx0;
        if (ux < 0 || ux >= W * upx || ux % upx != 0) continue;
        acc += kr[kw - 1 - tx] * static_cast<acc_t>(xr[(ux / upx) * sxw]);
      }
    }
    out[n * son + c * soc + oy * soh + ox * sow] = static_cast<scalar_t>(acc);
  }
}

at::Tensor upfirdn2d_fwd_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, int64_t upx, int64_t upy,
                              int64_t downx, int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                              int64_t pady1) {
  TORCH_CHECK(x_in.dim() == 4, "upfirdn2d: x must be 4-D (N, C, H, W), got ", x_in.sizes());
  TORCH_CHECK(kernel_in.dim() == 2 && kernel_in.numel() > 0, "upfirdn2d: kernel must be non-empty 2-D, got ",
              kernel_in.sizes());
  TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
  TORCH_CHECK(kernel_in.device() == x_in.device(), "upfirdn2d: kernel is on ", kernel_in.device(),
              " but x is on ", x_in.device());
  const auto want = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(kernel_in.scalar_type() == want, "upfirdn2d: kernel must be ", want, " for x of dtype ",
              x_in.scalar_type());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = out_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor kernel = kernel_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t spany = H * upy + pady0 + pady1, spanx = W * upx + padx0 + padx1;
  TORCH_CHECK(spany >= kh && spanx >= kw, "upfirdn2d: the upsampled and padded input (", spany, "x", spanx,
              ") is smaller than the kernel (", kh, "x", kw, ")");
  const int64_t Ho = (spany - kh) / downy + 1, Wo = (spanx - kw) / downx + 1;
  at::Tensor out = at::empty({N, C, Ho, Wo}, x.options().memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    LEO_LAUNCH(num_blocks(total), stream, upfirdn2d_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), kernel.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), total, C,
        H, W, Ho, Wo, x.stride(0), x.stride(1), x.stride(2), x.stride(3), out.stride(0), out.stride(1),
        out.stride(2), out.stride(3), (int)upx, (int)upy, (int)downx, (int)downy, (int)padx0, (int)pady0, (int)kh,
        (int)kw, fmt == at::MemoryFormat::ChannelsLast);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// grad == nullptr: out = act(x + b) * gain; otherwise out = grad * act'(x + b) * gain.
template <typename scalar_t, typename acc_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const acc_t* __restrict__ b,
                                const scalar_t* __restrict__ g, scalar_t* __restrict__ out, int64_t total,
                                int64_t C, int64_t inner, acc_t slope, acc_t gain) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    acc_t v = static_cast<acc_t>(x[i]);
    if (b != nullptr) v += b[(i / inner) % C];
    const acc_t s = v > acc_t(0) ? gain : gain * slope;
    out[i] = static_cast<scalar_t>(g != nullptr ? static_cast<acc_t>(g[i]) * s : v * s);
  }
}

at::Tensor bias_act_cuda(const at::Tensor& x_in, const c10::optional<at::Tensor>& bias_opt,
                         const at::Tensor* grad_in, double slope, double gain) {
  const bool has_bias = bias_opt.has_value() && bias_opt->defined();
  const auto want = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (has_bias) {
    TORCH_CHECK(x_in.dim() >= 2 && bias_opt->dim() == 1 && bias_opt->size(0) == x_in.size(1),
                "bias_act: bias must have shape (C,) matching x's dim 1, got bias ", bias_opt->sizes(), " for x ",
                x_in.sizes());
    TORCH_CHECK(bias_opt->device() == x_in.device(), "bias_act: bias is on ", bias_opt->device(),
                " but x is on ", x_in.device());
    TORCH_CHECK(bias_opt->scalar_type() == want, "bias_act: bias must be ", want, " for x of dtype ",
                x_in.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat fmt = out_format(x_in);
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor bias = has_bias ? bias_opt->contiguous() : at::Tensor();
  at::Tensor grad;
  if (grad_in) {
    TORCH_CHECK(grad_in->sizes() == x_in.sizes() && grad_in->scalar_type() == x_in.scalar_type(),
                "bias_act backward: grad_out must match x in shape and dtype");
    TORCH_CHECK(grad_in->device() == x_in.device(), "bias_act backward: grad_out is on ", grad_in->device(),
                " but x is on ", x_in.device());
    grad = grad_in->contiguous(fmt);
  }
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt));
  const int64_t total = x.numel();
  if (total == 0) return out;
  int64_t C = 1, inner = 1;
  if (has_bias) {
    C = x.size(1);
    if (fmt == at::MemoryFormat::Contiguous)
      for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    LEO_LAUNCH(num_blocks(total), stream, bias_act_kernel<scalar_t, acc_t>)(
        x.const_data_ptr<scalar_t>(), has_bias ? bias.const_data_ptr<acc_t>() : nullptr,
        grad_in ? grad.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), total, C, inner,
        static_cast<acc_t>(slope), static_cast<acc_t>(gain));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor bias_act_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias, double slope,
                             double gain) {
  return bias_act_cuda(x, bias, nullptr, slope, gain);
}

at::Tensor bias_act_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                             const c10::optional<at::Tensor>& bias, double slope, double gain) {
  return bias_act_cuda(x, bias, &grad_out, slope, gain);
}

}  // namespace
}  // namespace leo

#ifndef LEO_CUDA_EMULATE
TORCH_LIBRARY_IMPL(leo_kernels, CUDA, m) {
  m.impl("_upfirdn2d_fwd", &leo::upfirdn2d_fwd_cuda);
  m.impl("_bias_act_fwd", &leo::bias_act_fwd_cuda);
  m.impl("_bias_act_bwd", &leo::bias_act_bwd_cuda);
}
#else
TORCH_LIBRARY(leo_stylegan_cuda_emu, m) {  // same kernels and host code, run on CPU tensors
  m.def("_upfirdn2d_fwd", &leo::upfirdn2d_fwd_cuda);
  m.def("_bias_act_fwd", &leo::bias_act_fwd_cuda);
  m.def("_bias_act_bwd", &leo::bias_act_bwd_cuda);
}
#endif
