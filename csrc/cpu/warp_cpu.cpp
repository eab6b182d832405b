// CPU (C++/OpenMP) kernels of the flow-warp ops: grid_sample, compose_flow, warp_inpaint.
// The schemas of the six compiled ops live here (this file always builds); CUDA kernels in
// csrc/cuda/warp_cuda.cu implement the same schemas.
//
// Layout contract shared by every backend (the Python fake impls assume it):
// - The C-channel tensors (input/feat/x and their outputs/grads) are channels_last when the
//   feature input (input or feat) is channels_last and not also plain contiguous; else NCHW.
// - grid, grad_grid, composed, logits and skip grads are contiguous.
//
// Math: docs/OPS.md. Coordinates, weights and sums are float32 (float64 for double). The
// backward never scatters from two threads into one element: grad_grid / grad_logits are
// gathered per output pixel (parallel over rows), and the input gradient is scattered with
// one thread owning a block of channels over all pixels, so it is deterministic always.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LEO_WARP_AVX2 1
#endif

namespace {

enum Padding : int64_t { kZeros = 0, kBorder = 1, kReflection = 2 };

bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat feature_format(const at::Tensor& t) {
  return use_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// Work items per parallel chunk so each chunk does at least ~32k element updates.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// --------------------------------------------------------------------------- coordinates
template <typename T>
T reflect(T x, T twice_low, T twice_high, T* d) {
  if (twice_low == twice_high) {
    *d = 0;
    return 0;
  }
  const T lo = twice_low / 2, span = (twice_high - twice_low) / 2;
  x -= lo;
  T sign = 1;
  if (x < 0) {
    sign = -1;
    x = -x;
  }
  const T extra = std::fmod(x, span);
  const int64_t flips = static_cast<int64_t>(std::floor(x / span));
  if (flips % 2 == 0) {
    *d = sign;
    return extra + lo;
  }
  *d = -sign;
  return span - extra + lo;
}

template <typename T>
T clip(T x, int64_t size, T* d) {
  if (x <= 0) {
    *d = 0;
    return 0;
  }
  const T hi = static_cast<T>(size - 1);
  if (x >= hi) {
    *d = 0;
    return hi;
  }
  *d = 1;
  return x;
}

// Normalized coordinate -> pixel coordinate, with d(pixel)/d(normalized) in *d.
template <typename T>
T source_index(T coord, int64_t size, int64_t pad, bool align, T* d) {
  T x, dd = 1;
  if (align) {
    x = ((coord + 1) / 2) * static_cast<T>(size - 1);
    *d = static_cast<T>(size - 1) / 2;
  } else {
    x = ((coord + 1) * static_cast<T>(size) - 1) / 2;
    *d = static_cast<T>(size) / 2;
  }
  if (pad == kBorder) {
    x = clip(x, size, &dd);
    *d *= dd;
  } else if (pad == kReflection) {
    T dr, dc;
    if (align) {
      x = reflect(x, T(0), static_cast<T>(2 * (size - 1)), &dr);
    } else {
      x = reflect(x, T(-1), static_cast<T>(2 * size - 1), &dr);
    }
    x = clip(x, size, &dc);
    *d *= dr * dc;
  }
  // Far-away (or NaN) samples: every corner is outside, so clamping changes nothing but
  // keeps the integer conversion defined.
  if (!(x >= T(-2))) {
    x = -2;
    *d = 0;
  } else if (x > static_cast<T>(size + 1)) {
    x = static_cast<T>(size + 1);
    *d = 0;
  }
  return x;
}

// Bilinear taps of one row of output pixels (structure of arrays). Corner k: 0 = (y0, x0),
// 1 = (y0, x1), 2 = (y1, x0), 3 = (y1, x1). Outside corners get ok = 0, off = 0, w = 0.
template <typename T>
struct Taps {
  std::vector<int64_t> off[4];
  std::vector<T> w[4];
  std::vector<uint8_t> ok[4];
  std::vector<T> tx, ty, dx, dy;
  explicit Taps(int64_t n) : tx(n), ty(n), dx(n), dy(n) {
    for (int k = 0; k < 4; ++k) {
      off[k].resize(n);
      w[k].resize(n);
      ok[k].resize(n);
    }
  }
  void set(int64_t j, T gx, T gy, int64_t H, int64_t W, int64_t sH, int64_t sW, int64_t pad, bool align) {
    const T x = source_index(gx, W, pad, align, &dx[j]);
    const T y = source_index(gy, H, pad, align, &dy[j]);
    const int64_t x0 = static_cast<int64_t>(std::floor(x)), y0 = static_cast<int64_t>(std::floor(y));
    const T fx = x - static_cast<T>(x0), fy = y - static_cast<T>(y0);
    tx[j] = fx;
    ty[j] = fy;
    const T wx[2] = {1 - fx, fx}, wy[2] = {1 - fy, fy};
    for (int k = 0; k < 4; ++k) {
      const int64_t yy = y0 + (k >> 1), xx = x0 + (k & 1);
      const bool in = yy >= 0 && yy < H && xx >= 0 && xx < W;
      ok[k][j] = in;
      off[k][j] = in ? yy * sH + xx * sW : 0;
      w[k][j] = in ? wy[k >> 1] * wx[k & 1] : T(0);
    }
  }
  // Corner value (0 outside; the load at offset 0 is always in bounds).
  template <typename S>
  T value(const S* p, int k, int64_t j) const {
    const T v = static_cast<T>(p[off[k][j]]);
    return ok[k][j] ? v : T(0);
  }
};

// Packed taps of one output pixel for the NCHW forward loops: 4 offsets + 4 weights in one
// cache line half, read once per group of channels; `scale` folds in a per-pixel factor (the
// mask). Outside corners have weight 0 and offset -1: their value must be selected to 0, not
// multiplied by the weight 0 (0 * NaN = NaN: a NaN/Inf in the plane would leak into samples
// whose corners are outside, where F.grid_sample reads zeros).
template <typename T>
struct PackedTap {
  int64_t o[4];
  T w[4];
};

// Value of a packed corner: plane[o], or 0 for an outside corner (o < 0). Loads in bounds
// either way and selects, so the compiler needs no branch.
template <typename T, typename S>
inline T tap_value(const S* p, int64_t o) {
  const T v = static_cast<T>(p[o < 0 ? 0 : o]);
  return o < 0 ? T(0) : v;
}

template <typename T>
void pack_taps(const Taps<T>& tp, int64_t n, const T* scale, PackedTap<T>* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T s = scale ? scale[j] : T(1);
    for (int k = 0; k < 4; ++k) {
      out[j].o[k] = tp.ok[k][j] ? tp.off[k][j] : -1;
      out[j].w[k] = tp.w[k][j] * s;
    }
  }
}

// out_c[j] = sum_k w_k * plane_c[o_k] for NC channels at once (planes `cstride` apart).
// With X (warp_inpaint) also blended_c[j] = out_c[j] + x_c[j] * keep[j].
template <int NC, bool X, typename scalar_t, typename T>
inline void sample_rows(const PackedTap<T>* tp, int64_t n, const scalar_t* ip, int64_t icstride, scalar_t* op,
                        int64_t ocstride, const scalar_t* xp, scalar_t* bp, const T* keep) {
  for (int64_t j = 0; j < n; ++j) {
    const PackedTap<T> t = tp[j];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const scalar_t* p = ip + c * icstride;
      const T v = t.w[0] * tap_value<T>(p, t.o[0]) + t.w[1] * tap_value<T>(p, t.o[1]) +
                  t.w[2] * tap_value<T>(p, t.o[2]) + t.w[3] * tap_value<T>(p, t.o[3]);
      op[c * ocstride + j] = static_cast<scalar_t>(v);
      if constexpr (X) bp[c * ocstride + j] = static_cast<scalar_t>(v + static_cast<T>(xp[c * ocstride + j]) * keep[j]);
    }
  }
}

// All C channels of one output row (NCHW): groups of 4 channels share each tap load.
template <bool X, typename scalar_t, typename T>
void sample_all_channels(const PackedTap<T>* tp, int64_t n, int64_t C, const scalar_t* ip, int64_t icstride,
                         scalar_t* op, int64_t ocstride, const scalar_t* xp, scalar_t* bp, const T* keep) {
  int64_t c = 0;
  for (; c + 4 <= C; c += 4)
    sample_rows<4, X>(tp, n, ip + c * icstride, icstride, op + c * ocstride, ocstride, X ? xp + c * ocstride : xp,
                      X ? bp + c * ocstride : bp, keep);
  for (; c < C; ++c)
    sample_rows<1, X>(tp, n, ip + c * icstride, icstride, op + c * ocstride, ocstride, X ? xp + c * ocstride : xp,
                      X ? bp + c * ocstride : bp, keep);
}

// float32 NCHW forward fast path: taps of one row as int32 offsets (within a plane) and weights
// (mask folded in), structure of arrays, so 8 pixels are sampled with AVX2 gathers. Outside
// corners have offset -1 and weight 0; they are masked out of the gather (the lane reads 0 and
// touches no memory), never loaded and multiplied by 0, so a NaN/Inf in the plane cannot leak
// into them. The build targets baseline x86-64, so the AVX2 loop is compiled with a target
// attribute and chosen at run time.
struct RowTaps32 {
  std::vector<int32_t> o[4];
  std::vector<float> w[4];
  std::vector<float> keep;
  explicit RowTaps32(int64_t n) : keep(n) {
    for (int k = 0; k < 4; ++k) {
      o[k].resize(n);
      w[k].resize(n);
    }
  }
  void fill(const Taps<float>& tp, int64_t n, const float* mask) {
    for (int k = 0; k < 4; ++k)
      for (int64_t j = 0; j < n; ++j) {
        o[k][j] = tp.ok[k][j] ? static_cast<int32_t>(tp.off[k][j]) : -1;
        w[k][j] = mask ? tp.w[k][j] * mask[j] : tp.w[k][j];
      }
    if (mask)
      for (int64_t j = 0; j < n; ++j) keep[j] = 1 - mask[j];
  }
};

// out[j] = sum_k w_k[j] * plane[o_k[j]] (plane[-1] reads as 0); with x: blended[j] = out[j] + x[j] * keep[j].
inline void sample_plane_scalar(const RowTaps32& t, int64_t j, int64_t n, const float* ip, float* op, const float* xp,
                                float* bp) {
  for (; j < n; ++j) {
    const float v = t.w[0][j] * tap_value<float>(ip, t.o[0][j]) + t.w[1][j] * tap_value<float>(ip, t.o[1][j]) +
                    t.w[2][j] * tap_value<float>(ip, t.o[2][j]) + t.w[3][j] * tap_value<float>(ip, t.o[3][j]);
    op[j] = v;
    if (xp) bp[j] = v + xp[j] * t.keep[j];
  }
}

#ifdef LEO_WARP_AVX2
__attribute__((target("avx2,fma"))) void sample_plane_avx2(const RowTaps32& t, int64_t n, const float* ip, float* op,
                                                           const float* xp, float* bp) {
  const __m256i minus1 = _mm256_set1_epi32(-1);
  const __m256 zero = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = zero;
    for (int k = 0; k < 4; ++k) {
      const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.o[k].data() + j));
      // Lanes with idx == -1 (outside corners) are not gathered and keep 0.
      const __m256 in = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, minus1));
      v = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[k].data() + j), _mm256_mask_i32gather_ps(zero, ip, idx, in, 4), v);
    }
    _mm256_storeu_ps(op + j, v);
    if (xp) _mm256_storeu_ps(bp + j, _mm256_fmadd_ps(_mm256_loadu_ps(xp + j), _mm256_loadu_ps(t.keep.data() + j), v));
  }
  sample_plane_scalar(t, j, n, ip, op, xp, bp);
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

inline void sample_plane(const RowTaps32& t, int64_t n, const float* ip, float* op, const float* xp, float* bp) {
#ifdef LEO_WARP_AVX2
  if (cpu_has_avx2()) return sample_plane_avx2(t, n, ip, op, xp, bp);
#endif
  sample_plane_scalar(t, 0, n, ip, op, xp, bp);
}

// torch.linspace(-1, 1, n)[i], computed the way torch does (from both ends).
template <typename T>
T linspace_pm1(int64_t i, int64_t n) {
  if (n == 1) return T(-1);
  const T step = T(2) / static_cast<T>(n - 1);
  return i < n / 2 ? T(-1) + step * static_cast<T>(i) : T(1) - step * static_cast<T>(n - 1 - i);
}

// One output row r of up2(plane) (plane Hc x Wc, contiguous): out[0 .. 2*Wc).
template <typename S, typename T>
void up2_row(const S* plane, int64_t Hc, int64_t Wc, int64_t r, T* out, T* tmp) {
  const int64_t a = r >> 1;
  const int64_t rows[2] = {(r & 1) ? a : a - 1, (r & 1) ? a + 1 : a};
  const T wts[2] = {(r & 1) ? T(0.75) : T(0.25), (r & 1) ? T(0.25) : T(0.75)};
  for (int64_t b = 0; b < Wc; ++b) tmp[b] = 0;
  for (int t = 0; t < 2; ++t) {
    if (rows[t] < 0 || rows[t] >= Hc) continue;
    const S* p = plane + rows[t] * Wc;
    for (int64_t b = 0; b < Wc; ++b) tmp[b] += wts[t] * static_cast<T>(p[b]);
  }
  for (int64_t b = 0; b < Wc; ++b) {
    const T prev = b > 0 ? tmp[b - 1] : T(0), next = b + 1 < Wc ? tmp[b + 1] : T(0);
    out[2 * b] = T(0.25) * prev + T(0.75) * tmp[b];
    out[2 * b + 1] = T(0.75) * tmp[b] + T(0.25) * next;
  }
}

// One row a of up2^T(g) (g Hf x Wf contiguous, Hf = 2*Hc): out[0 .. Wf/2).
template <typename S, typename T>
void up2t_row(const S* g, int64_t Hf, int64_t Wf, int64_t a, T* out, T* tmp) {
  const int64_t rows[4] = {2 * a - 1, 2 * a, 2 * a + 1, 2 * a + 2};
  const T wts[4] = {T(0.25), T(0.75), T(0.75), T(0.25)};
  for (int64_t b = 0; b < Wf; ++b) tmp[b] = 0;
  for (int t = 0; t < 4; ++t) {
    if (rows[t] < 0 || rows[t] >= Hf) continue;
    const S* p = g + rows[t] * Wf;
    for (int64_t b = 0; b < Wf; ++b) tmp[b] += wts[t] * static_cast<T>(p[b]);
  }
  const int64_t Wc = Wf / 2;
  for (int64_t b = 0; b < Wc; ++b) {
    T s = T(0.75) * tmp[2 * b] + T(0.75) * tmp[2 * b + 1];
    if (b > 0) s += T(0.25) * tmp[2 * b - 1];
    if (b + 1 < Wc) s += T(0.25) * tmp[2 * b + 2];
    out[b] = s;
  }
}

void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
}

// --------------------------------------------------------------------------- grid_sample
template <typename scalar_t, bool CL>
void grid_sample_fwd_impl(const at::Tensor& input, const at::Tensor& grid, at::Tensor& out, int64_t pad, bool align) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  const int64_t isN = input.stride(0), isC = input.stride(1), isH = input.stride(2), isW = input.stride(3);
  const int64_t osN = out.stride(0), osC = out.stride(1), osH = out.stride(2), osW = out.stride(3);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grid.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const bool small_planes = H * W < (int64_t(1) << 31) && osW == 1;  // int32 offsets, unit-stride rows
  at::parallel_for(0, N * Ho, grain_for(C * Wo), [&](int64_t begin, int64_t end) {
    Taps<acc_t> tp(Wo);
    std::vector<PackedTap<acc_t>> packed(CL ? 0 : Wo);
    RowTaps32 rt(std::is_same_v<scalar_t, float> && !CL ? Wo : 0);
    std::vector<scalar_t> zero_row(CL ? C : 0, scalar_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, i = r % Ho;
      const scalar_t* grow = g + r * Wo * 2;
      for (int64_t j = 0; j < Wo; ++j)
        tp.set(j, static_cast<acc_t>(grow[2 * j]), static_cast<acc_t>(grow[2 * j + 1]), H, W, isH, isW, pad, align);
      const scalar_t* inb = in + n * isN;
      scalar_t* orow = o + n * osN + i * osH;
      if constexpr (!CL && std::is_same_v<scalar_t, float>) {
        if (small_planes) {
          rt.fill(tp, Wo, nullptr);
          for (int64_t c = 0; c < C; ++c) sample_plane(rt, Wo, inb + c * isC, orow + c * osC, nullptr, nullptr);
          continue;
        }
      }
      if constexpr (!CL) {
        pack_taps(tp, Wo, static_cast<const acc_t*>(nullptr), packed.data());
        sample_all_channels<false>(packed.data(), Wo, C, inb, isC, orow, osC, static_cast<const scalar_t*>(nullptr),
                                   static_cast<scalar_t*>(nullptr), static_cast<const acc_t*>(nullptr));
      } else {
        for (int64_t j = 0; j < Wo; ++j) {
          const scalar_t* p[4];
          acc_t w[4];
          for (int k = 0; k < 4; ++k) {
            p[k] = tp.ok[k][j] ? inb + tp.off[k][j] : zero_row.data();
            w[k] = tp.w[k][j];
          }
          scalar_t* op = orow + j * osW;
          for (int64_t c = 0; c < C; ++c)
            op[c] = static_cast<scalar_t>(w[0] * static_cast<acc_t>(p[0][c]) + w[1] * static_cast<acc_t>(p[1][c]) +
                                          w[2] * static_cast<acc_t>(p[2][c]) + w[3] * static_cast<acc_t>(p[3][c]));
        }
      }
    }
  });
}

void check_grid_sample(const at::Tensor& input, const at::Tensor& grid, int64_t pad) {
  TORCH_CHECK(input.dim() == 4, "grid_sample: input must be 4-D (N, C, H, W)");
  TORCH_CHECK(grid.dim() == 4 && grid.size(3) == 2, "grid_sample: grid must be (N, Ho, Wo, 2)");
  TORCH_CHECK(grid.size(0) == input.size(0), "grid_sample: grid batch must match input");
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "grid_sample: input H and W must be positive");
  TORCH_CHECK(grid.scalar_type() == input.scalar_type(), "grid_sample: grid dtype must match input");
  TORCH_CHECK(pad >= 0 && pad <= 2, "grid_sample: padding_mode must be 0, 1 or 2");
  check_cpu("grid_sample", "input", input);
  check_cpu("grid_sample", "grid", grid);
}

at::Tensor grid_sample_fwd_cpu(const at::Tensor& input_, const at::Tensor& grid_, int64_t pad, bool align) {
  check_grid_sample(input_, grid_, pad);
  const auto fmt = feature_format(input_);
  const at::Tensor input = input_.contiguous(fmt), grid = grid_.contiguous();
  at::Tensor out = at::empty({input.size(0), input.size(1), grid.size(1), grid.size(2)}, input.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_fwd_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      grid_sample_fwd_impl<scalar_t, true>(input, grid, out, pad, align);
    else
      grid_sample_fwd_impl<scalar_t, false>(input, grid, out, pad, align);
  });
  return out;
}

// Input-gradient scatter, shared by grid_sample and warp_inpaint: one task owns channels
// [c0, c1) of one image and walks every output pixel in order (deterministic, race free).
// coords(n, i, tp, scale) fills the taps of output row i (and a per-pixel factor on the
// incoming gradient); grad(c, n, i, j) is the gradient arriving at output pixel (i, j).
template <typename acc_t, bool CL, typename Coords, typename GradAt>
void scatter_input_grad(acc_t* gi, int64_t N, int64_t C, int64_t Ho, int64_t Wo, int64_t gsN, int64_t gsC,
                        Coords coords, GradAt grad) {
  const int64_t cblock = std::max<int64_t>(1, std::min<int64_t>(CL ? 64 : 16, (N * C + 7) / 8));
  const int64_t nblocks = (C + cblock - 1) / cblock;
  at::parallel_for(0, N * nblocks, grain_for(cblock * Ho * Wo), [&](int64_t begin, int64_t end) {
    Taps<acc_t> tp(Wo);
    std::vector<acc_t> scale(Wo), gbuf(CL ? cblock : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nblocks, c0 = (t % nblocks) * cblock, c1 = std::min(C, c0 + cblock);
      acc_t* gin = gi + n * gsN;
      for (int64_t i = 0; i < Ho; ++i) {
        coords(n, i, tp, scale.data());
        if constexpr (!CL) {
          for (int64_t c = c0; c < c1; ++c) {
            acc_t* gp = gin + c * gsC;
            for (int64_t j = 0; j < Wo; ++j) {
              const acc_t gv = grad(c, n, i, j) * scale[j];
              for (int k = 0; k < 4; ++k)
                if (tp.ok[k][j]) gp[tp.off[k][j]] += tp.w[k][j] * gv;
            }
          }
        } else {
          for (int64_t j = 0; j < Wo; ++j) {
            for (int64_t c = c0; c < c1; ++c) gbuf[c - c0] = grad(c, n, i, j) * scale[j];
            for (int k = 0; k < 4; ++k) {
              if (!tp.ok[k][j]) continue;
              acc_t* gp = gin + tp.off[k][j] + c0;
              const acc_t w = tp.w[k][j];
              for (int64_t c = 0; c < c1 - c0; ++c) gp[c] += w * gbuf[c];
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t, bool CL>
void grid_sample_bwd_impl(const at::Tensor& go, const at::Tensor& input, const at::Tensor& grid, at::Tensor& gin_acc,
                          at::Tensor& ggrid, int64_t pad, bool align) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  const int64_t isN = input.stride(0), isC = input.stride(1), isH = input.stride(2), isW = input.stride(3);
  const int64_t gsN = go.stride(0), gsC = go.stride(1), gsH = go.stride(2), gsW = go.stride(3);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grid.const_data_ptr<scalar_t>();
  const scalar_t* gop = go.const_data_ptr<scalar_t>();
  scalar_t* gg = ggrid.mutable_data_ptr<scalar_t>();

  // Pass 1: grad_grid, gathered over channels per output pixel.
  at::parallel_for(0, N * Ho, grain_for(C * Wo), [&](int64_t begin, int64_t end) {
    Taps<acc_t> tp(Wo);
    std::vector<acc_t> ax(Wo), ay(Wo);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, i = r % Ho;
      const scalar_t* grow = g + r * Wo * 2;
      for (int64_t j = 0; j < Wo; ++j) {
        tp.set(j, static_cast<acc_t>(grow[2 * j]), static_cast<acc_t>(grow[2 * j + 1]), H, W, isH, isW, pad, align);
        ax[j] = ay[j] = 0;
      }
      const scalar_t* inb = in + n * isN;
      const scalar_t* grow_o = gop + n * gsN + i * gsH;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* ip = inb + c * isC;
        for (int64_t j = 0; j < Wo; ++j) {
          const acc_t gv = static_cast<acc_t>(grow_o[c * gsC + j * gsW]);
          const acc_t v0 = tp.value(ip, 0, j), v1 = tp.value(ip, 1, j), v2 = tp.value(ip, 2, j), v3 = tp.value(ip, 3, j);
          const acc_t fx = tp.tx[j], fy = tp.ty[j];
          ax[j] += gv * ((1 - fy) * (v1 - v0) + fy * (v3 - v2));
          ay[j] += gv * ((1 - fx) * (v2 - v0) + fx * (v3 - v1));
        }
      }
      scalar_t* ggrow = gg + r * Wo * 2;
      for (int64_t j = 0; j < Wo; ++j) {
        ggrow[2 * j] = static_cast<scalar_t>(ax[j] * tp.dx[j]);
        ggrow[2 * j + 1] = static_cast<scalar_t>(ay[j] * tp.dy[j]);
      }
    }
  });

  // Pass 2: grad_input, scattered by channel blocks.
  auto coords = [&](int64_t n, int64_t i, Taps<acc_t>& tp, acc_t* scale) {
    const scalar_t* grow = g + (n * Ho + i) * Wo * 2;
    for (int64_t j = 0; j < Wo; ++j) {
      tp.set(j, static_cast<acc_t>(grow[2 * j]), static_cast<acc_t>(grow[2 * j + 1]), H, W, isH, isW, pad, align);
      scale[j] = 1;
    }
  };
  auto grad = [&](int64_t c, int64_t n, int64_t i, int64_t j) {
    return static_cast<acc_t>(gop[n * gsN + c * gsC + i * gsH + j * gsW]);
  };
  scatter_input_grad<acc_t, CL>(gin_acc.mutable_data_ptr<acc_t>(), N, C, Ho, Wo, gin_acc.stride(0), gin_acc.stride(1),
                                coords, grad);
}

std::tuple<at::Tensor, at::Tensor> grid_sample_bwd_cpu(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                       const at::Tensor& grid_, int64_t pad, bool align,
                                                       bool /*deterministic: always*/) {
  check_grid_sample(input_, grid_, pad);
  TORCH_CHECK(grad_out_.dim() == 4 && grad_out_.size(0) == input_.size(0) && grad_out_.size(1) == input_.size(1) &&
                  grad_out_.size(2) == grid_.size(1) && grad_out_.size(3) == grid_.size(2),
              "grid_sample backward: grad_out must be (N, C, Ho, Wo)");
  TORCH_CHECK(grad_out_.scalar_type() == input_.scalar_type(), "grid_sample backward: grad_out dtype must match input");
  check_cpu("grid_sample", "grad_out", grad_out_);
  const auto fmt = feature_format(input_);
  const at::Tensor input = input_.contiguous(fmt), grid = grid_.contiguous(), go = grad_out_.contiguous(fmt);
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor gin_acc = at::empty(input.sizes(), input.options().dtype(acc_dtype).memory_format(fmt)).zero_();
  at::Tensor ggrid = at::empty(grid.sizes(), grid.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_bwd_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      grid_sample_bwd_impl<scalar_t, true>(go, input, grid, gin_acc, ggrid, pad, align);
    else
      grid_sample_bwd_impl<scalar_t, false>(go, input, grid, gin_acc, ggrid, pad, align);
  });
  at::Tensor gin = gin_acc.scalar_type() == input.scalar_type() ? gin_acc : gin_acc.to(input.scalar_type());
  return {gin, ggrid};
}

// --------------------------------------------------------------------------- compose_flow
void check_compose(const at::Tensor& coarse, const at::Tensor& fine) {
  TORCH_CHECK(coarse.dim() == 4 && fine.dim() == 4, "compose_flow: coarse and fine must be 4-D");
  TORCH_CHECK(fine.size(0) == coarse.size(0) && fine.size(1) == coarse.size(1) && fine.size(2) == 2 * coarse.size(2) &&
                  fine.size(3) == 2 * coarse.size(3),
              "compose_flow: fine must be (N, K, 2H, 2W) for coarse (N, K, H, W)");
  TORCH_CHECK(coarse.scalar_type() == fine.scalar_type(), "compose_flow: dtypes must match");
  check_cpu("compose_flow", "coarse", coarse);
  check_cpu("compose_flow", "fine", fine);
}

at::Tensor compose_flow_fwd_cpu(const at::Tensor& coarse_, const at::Tensor& fine_) {
  check_compose(coarse_, fine_);
  const at::Tensor coarse = coarse_.contiguous(), fine = fine_.contiguous();
  at::Tensor out = at::empty(fine.sizes(), fine.options());
  const int64_t Hc = coarse.size(2), Wc = coarse.size(3), Hf = 2 * Hc, Wf = 2 * Wc;
  const int64_t planes = coarse.size(0) * coarse.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "compose_flow_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cp = coarse.const_data_ptr<scalar_t>();
    const scalar_t* fp = fine.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, planes * Hf, grain_for(Wf), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(Wf), tmp(Wc);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t p = r / Hf, i = r % Hf;
        up2_row(cp + p * Hc * Wc, Hc, Wc, i, row.data(), tmp.data());
        const scalar_t* f = fp + r * Wf;
        scalar_t* o = op + r * Wf;
        for (int64_t j = 0; j < Wf; ++j) o[j] = static_cast<scalar_t>(static_cast<acc_t>(f[j]) + row[j]);
      }
    });
  });
  return out;
}

// grad_coarse = up2^T(grad_out) into a fresh (N, K, Hf/2, Wf/2) tensor of dtype out_dtype.
template <typename scalar_t>
void up2t_into(const at::Tensor& g, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Hf = g.size(2), Wf = g.size(3), Hc = Hf / 2, Wc = Wf / 2;
  const int64_t planes = g.size(0) * g.size(1);
  const scalar_t* gp = g.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, planes * Hc, grain_for(4 * Wf), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(Wc), tmp(Wf);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t p = r / Hc, a = r % Hc;
      up2t_row(gp + p * Hf * Wf, Hf, Wf, a, row.data(), tmp.data());
      scalar_t* o = op + r * Wc;
      for (int64_t b = 0; b < Wc; ++b) o[b] = static_cast<scalar_t>(row[b]);
    }
  });
}

at::Tensor compose_flow_bwd_cpu(const at::Tensor& grad_out_) {
  TORCH_CHECK(grad_out_.dim() == 4 && grad_out_.size(2) % 2 == 0 && grad_out_.size(3) % 2 == 0,
              "compose_flow backward: grad_out must be (N, K, 2H, 2W)");
  check_cpu("compose_flow", "grad_out", grad_out_);
  const at::Tensor g = grad_out_.contiguous();
  at::Tensor out = at::empty({g.size(0), g.size(1), g.size(2) / 2, g.size(3) / 2}, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "compose_flow_bwd_cpu",
                                  [&] { up2t_into<scalar_t>(g, out); });
  return out;
}

// --------------------------------------------------------------------------- warp_inpaint
void check_warp_inpaint(const at::Tensor& feat, const at::Tensor& x, const at::Tensor& logits, const at::Tensor* skip) {
  TORCH_CHECK(feat.dim() == 4 && feat.size(2) > 0 && feat.size(3) > 0, "warp_inpaint: feat must be (N, C, H, W)");
  TORCH_CHECK(x.sizes() == feat.sizes(), "warp_inpaint: x must have feat's shape");
  TORCH_CHECK(logits.dim() == 4 && logits.size(0) == feat.size(0) && logits.size(1) == 3 &&
                  logits.size(2) == feat.size(2) && logits.size(3) == feat.size(3),
              "warp_inpaint: logits must be (N, 3, H, W)");
  TORCH_CHECK(x.scalar_type() == feat.scalar_type() && logits.scalar_type() == feat.scalar_type(),
              "warp_inpaint: dtypes must match");
  check_cpu("warp_inpaint", "feat", feat);
  check_cpu("warp_inpaint", "x", x);
  check_cpu("warp_inpaint", "logits", logits);
  if (skip) {
    TORCH_CHECK(skip->dim() == 4 && skip->size(0) == feat.size(0) && skip->size(1) == 3 &&
                    2 * skip->size(2) == feat.size(2) && 2 * skip->size(3) == feat.size(3),
                "warp_inpaint: skip must be (N, 3, H/2, W/2)");
    TORCH_CHECK(skip->scalar_type() == feat.scalar_type(), "warp_inpaint: skip dtype must match");
    check_cpu("warp_inpaint", "skip", *skip);
  }
}

// Per-row state of warp_inpaint: taps of the flow grid plus tanh values and the mask.
template <typename T>
struct FlowRow {
  Taps<T> tp;
  std::vector<T> t0, t1, mask;
  explicit FlowRow(int64_t W) : tp(W), t0(W), t1(W), mask(W) {}
  // c0, c1, c2: the composed logits of row i (length W).
  template <typename S>
  void set(const S* c0, const S* c1, const S* c2, int64_t i, int64_t H, int64_t W, int64_t sH, int64_t sW, bool align) {
    const T gy = linspace_pm1<T>(i, H);
    for (int64_t j = 0; j < W; ++j) {
      const T a = std::tanh(static_cast<T>(c0[j])), b = std::tanh(static_cast<T>(c1[j]));
      t0[j] = a;
      t1[j] = b;
      mask[j] = T(1) / (T(1) + std::exp(-static_cast<T>(c2[j])));
      tp.set(j, a + linspace_pm1<T>(j, W), b + gy, H, W, sH, sW, kZeros, align);
    }
  }
};

template <typename scalar_t, bool CL>
void warp_inpaint_fwd_impl(const at::Tensor& feat, const at::Tensor& x, const at::Tensor& logits,
                           const at::Tensor* skip, bool align, at::Tensor& warped, at::Tensor& blended,
                           at::Tensor& composed) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const int64_t sN = feat.stride(0), sC = feat.stride(1), sH = feat.stride(2), sW = feat.stride(3);
  const scalar_t* fp = feat.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* lp = logits.const_data_ptr<scalar_t>();
  const scalar_t* sp = skip ? skip->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* wp = warped.mutable_data_ptr<scalar_t>();
  scalar_t* bp = blended.mutable_data_ptr<scalar_t>();
  scalar_t* cp = composed.mutable_data_ptr<scalar_t>();
  const int64_t Hc = H / 2, Wc = W / 2;
  const bool small_planes = H * W < (int64_t(1) << 31) && sW == 1;  // int32 offsets, unit-stride rows
  at::parallel_for(0, N * H, grain_for(C * W), [&](int64_t begin, int64_t end) {
    FlowRow<acc_t> fr(W);
    std::vector<PackedTap<acc_t>> packed(CL ? 0 : W);
    RowTaps32 rt(std::is_same_v<scalar_t, float> && !CL ? W : 0);
    std::vector<acc_t> comp(3 * W), up(W), tmp(Wc + 1), keep(W);
    std::vector<scalar_t> zero_row(CL ? C : 0, scalar_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, i = r % H;
      // composed = logits (+ up2(skip)), kept in acc_t for the grid; stored in scalar_t.
      for (int64_t k = 0; k < 3; ++k) {
        const scalar_t* l = lp + ((n * 3 + k) * H + i) * W;
        acc_t* cr = comp.data() + k * W;
        if (sp) {
          up2_row(sp + (n * 3 + k) * Hc * Wc, Hc, Wc, i, up.data(), tmp.data());
          for (int64_t j = 0; j < W; ++j) cr[j] = static_cast<acc_t>(l[j]) + up[j];
        } else {
          for (int64_t j = 0; j < W; ++j) cr[j] = static_cast<acc_t>(l[j]);
        }
        scalar_t* co = cp + ((n * 3 + k) * H + i) * W;
        for (int64_t j = 0; j < W; ++j) co[j] = static_cast<scalar_t>(cr[j]);
      }
      fr.set(comp.data(), comp.data() + W, comp.data() + 2 * W, i, H, W, sH, sW, align);
      const auto& tp = fr.tp;
      const acc_t* m = fr.mask.data();
      const int64_t rowoff = n * sN + i * sH;
      if constexpr (!CL && std::is_same_v<scalar_t, float>) {
        if (small_planes) {
          rt.fill(tp, W, m);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = rowoff + c * sC;
            sample_plane(rt, W, fp + n * sN + c * sC, wp + o, xp + o, bp + o);
          }
          continue;
        }
      }
      if constexpr (!CL) {
        pack_taps(tp, W, m, packed.data());
        for (int64_t j = 0; j < W; ++j) keep[j] = 1 - m[j];
        sample_all_channels<true>(packed.data(), W, C, fp + n * sN, sC, wp + rowoff, sC, xp + rowoff, bp + rowoff,
                                  keep.data());
      } else {
        const scalar_t* inb = fp + n * sN;
        for (int64_t j = 0; j < W; ++j) {
          const scalar_t* p[4];
          acc_t w[4];
          const acc_t mj = m[j], im = 1 - m[j];
          for (int k = 0; k < 4; ++k) {
            p[k] = tp.ok[k][j] ? inb + tp.off[k][j] : zero_row.data();
            w[k] = tp.w[k][j] * mj;
          }
          const int64_t o = rowoff + j * sW;
          const scalar_t* xr = xp + o;
          scalar_t* wr = wp + o;
          scalar_t* br = bp + o;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t wv = w[0] * static_cast<acc_t>(p[0][c]) + w[1] * static_cast<acc_t>(p[1][c]) +
                             w[2] * static_cast<acc_t>(p[2][c]) + w[3] * static_cast<acc_t>(p[3][c]);
            wr[c] = static_cast<scalar_t>(wv);
            br[c] = static_cast<scalar_t>(wv + static_cast<acc_t>(xr[c]) * im);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> warp_inpaint_fwd_cpu(const at::Tensor& feat_, const at::Tensor& x_,
                                                                    const at::Tensor& logits_,
                                                                    const std::optional<at::Tensor>& skip_,
                                                                    bool align) {
  check_warp_inpaint(feat_, x_, logits_, skip_ ? &*skip_ : nullptr);
  const auto fmt = feature_format(feat_);
  const at::Tensor feat = feat_.contiguous(fmt), x = x_.contiguous(fmt), logits = logits_.contiguous();
  at::Tensor skip;
  if (skip_) skip = skip_->contiguous();
  at::Tensor warped = at::empty(feat.sizes(), feat.options().memory_format(fmt));
  at::Tensor blended = at::empty(feat.sizes(), feat.options().memory_format(fmt));
  at::Tensor composed = at::empty(logits.sizes(), logits.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "warp_inpaint_fwd_cpu", [&] {
    const at::Tensor* sk = skip_ ? &skip : nullptr;
    if (fmt == at::MemoryFormat::ChannelsLast)
      warp_inpaint_fwd_impl<scalar_t, true>(feat, x, logits, sk, align, warped, blended, composed);
    else
      warp_inpaint_fwd_impl<scalar_t, false>(feat, x, logits, sk, align, warped, blended, composed);
  });
  return {warped, blended, composed};
}

template <typename scalar_t, bool CL>
void warp_inpaint_bwd_impl(const at::Tensor& gw, const at::Tensor& gb, const at::Tensor& gc, const at::Tensor& feat,
                           const at::Tensor& x, const at::Tensor& composed, bool align, at::Tensor& gfeat_acc,
                           at::Tensor& gx, at::Tensor& glogits) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const int64_t sN = feat.stride(0), sC = feat.stride(1), sH = feat.stride(2), sW = feat.stride(3);
  const scalar_t* fp = feat.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* gwp = gw.const_data_ptr<scalar_t>();
  const scalar_t* gbp = gb.const_data_ptr<scalar_t>();
  const scalar_t* gcp = gc.const_data_ptr<scalar_t>();
  const acc_t* cp = composed.const_data_ptr<acc_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  scalar_t* glp = glogits.mutable_data_ptr<scalar_t>();
  auto comp_row = [&](int64_t n, int64_t k, int64_t i) { return cp + ((n * 3 + k) * H + i) * W; };

  // Pass 1 (rows): grad_x, and the flow/mask gradients gathered over channels.
  at::parallel_for(0, N * H, grain_for(2 * C * W), [&](int64_t begin, int64_t end) {
    FlowRow<acc_t> fr(W);
    std::vector<acc_t> ax(W), ay(W), am(W);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, i = r % H;
      fr.set(comp_row(n, 0, i), comp_row(n, 1, i), comp_row(n, 2, i), i, H, W, sH, sW, align);
      const auto& tp = fr.tp;
      const acc_t* m = fr.mask.data();
      for (int64_t j = 0; j < W; ++j) ax[j] = ay[j] = am[j] = 0;
      const int64_t rowoff = n * sN + i * sH;
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* ip = fp + n * sN + c * sC;
        const int64_t o = rowoff + c * sC;
        for (int64_t j = 0; j < W; ++j) {
          const int64_t e = o + j * sW;
          const acc_t gbv = static_cast<acc_t>(gbp[e]);
          const acc_t G = static_cast<acc_t>(gwp[e]) + gbv;
          const acc_t v0 = tp.value(ip, 0, j), v1 = tp.value(ip, 1, j), v2 = tp.value(ip, 2, j), v3 = tp.value(ip, 3, j);
          const acc_t fx = tp.tx[j], fy = tp.ty[j];
          const acc_t s = tp.w[0][j] * v0 + tp.w[1][j] * v1 + tp.w[2][j] * v2 + tp.w[3][j] * v3;
          am[j] += G * s - gbv * static_cast<acc_t>(xp[e]);
          ax[j] += G * ((1 - fy) * (v1 - v0) + fy * (v3 - v2));
          ay[j] += G * ((1 - fx) * (v2 - v0) + fx * (v3 - v1));
          gxp[e] = static_cast<scalar_t>(gbv * (1 - m[j]));
        }
      }
      for (int64_t j = 0; j < W; ++j) {
        const int64_t e0 = ((n * 3 + 0) * H + i) * W + j, e1 = e0 + H * W, e2 = e1 + H * W;
        const acc_t mj = m[j];
        glp[e0] = static_cast<scalar_t>(ax[j] * mj * tp.dx[j] * (1 - fr.t0[j] * fr.t0[j]) + static_cast<acc_t>(gcp[e0]));
        glp[e1] = static_cast<scalar_t>(ay[j] * mj * tp.dy[j] * (1 - fr.t1[j] * fr.t1[j]) + static_cast<acc_t>(gcp[e1]));
        glp[e2] = static_cast<scalar_t>(am[j] * mj * (1 - mj) + static_cast<acc_t>(gcp[e2]));
      }
    }
  });

  // Pass 2 (channel blocks): grad_feat = scatter of (grad_warped + grad_blended) * mask.
  auto coords = [&](int64_t n, int64_t i, Taps<acc_t>& tp, acc_t* scale) {
    const acc_t *c0 = comp_row(n, 0, i), *c1 = comp_row(n, 1, i), *c2 = comp_row(n, 2, i);
    const acc_t gy = linspace_pm1<acc_t>(i, H);
    for (int64_t j = 0; j < W; ++j) {
      tp.set(j, std::tanh(static_cast<acc_t>(c0[j])) + linspace_pm1<acc_t>(j, W), std::tanh(static_cast<acc_t>(c1[j])) + gy,
             H, W, sH, sW, kZeros, align);
      scale[j] = acc_t(1) / (acc_t(1) + std::exp(-static_cast<acc_t>(c2[j])));
    }
  };
  auto grad = [&](int64_t c, int64_t n, int64_t i, int64_t j) {
    const int64_t e = n * sN + c * sC + i * sH + j * sW;
    return static_cast<acc_t>(gwp[e]) + static_cast<acc_t>(gbp[e]);
  };
  scatter_input_grad<acc_t, CL>(gfeat_acc.mutable_data_ptr<acc_t>(), N, C, H, W, gfeat_acc.stride(0),
                                gfeat_acc.stride(1), coords, grad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> warp_inpaint_bwd_cpu(
    const at::Tensor& grad_warped, const at::Tensor& grad_blended, const at::Tensor& grad_composed,
    const at::Tensor& feat_, const at::Tensor& x_, const at::Tensor& composed_, bool has_skip, bool align,
    bool /*deterministic: always*/) {
  // composed may be float32 for half/bfloat16 feat: the glue recomputes it unrounded so the
  // backward samples exactly where the forward did.
  const auto acc_dtype = feat_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(composed_.scalar_type() == feat_.scalar_type() || composed_.scalar_type() == acc_dtype,
              "warp_inpaint backward: composed must have feat's dtype or float32");
  check_warp_inpaint(feat_, x_, composed_.to(feat_.scalar_type()), nullptr);
  TORCH_CHECK(grad_warped.sizes() == feat_.sizes() && grad_blended.sizes() == feat_.sizes(),
              "warp_inpaint backward: grad_warped and grad_blended must have feat's shape");
  TORCH_CHECK(grad_composed.sizes() == composed_.sizes(), "warp_inpaint backward: grad_composed must be (N, 3, H, W)");
  TORCH_CHECK(grad_warped.scalar_type() == feat_.scalar_type() && grad_blended.scalar_type() == feat_.scalar_type() &&
                  grad_composed.scalar_type() == feat_.scalar_type(),
              "warp_inpaint backward: gradient dtypes must match feat");
  TORCH_CHECK(!has_skip || (feat_.size(2) % 2 == 0 && feat_.size(3) % 2 == 0),
              "warp_inpaint backward: has_skip needs even H and W");
  const auto fmt = feature_format(feat_);
  const at::Tensor feat = feat_.contiguous(fmt), x = x_.contiguous(fmt), composed = composed_.to(acc_dtype).contiguous();
  const at::Tensor gw = grad_warped.contiguous(fmt), gb = grad_blended.contiguous(fmt), gc = grad_composed.contiguous();
  at::Tensor gfeat_acc = at::empty(feat.sizes(), feat.options().dtype(acc_dtype).memory_format(fmt)).zero_();
  at::Tensor gx = at::empty(feat.sizes(), feat.options().memory_format(fmt));
  at::Tensor glogits = at::empty(composed.sizes(), gc.options());
  at::Tensor gskip;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "warp_inpaint_bwd_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      warp_inpaint_bwd_impl<scalar_t, true>(gw, gb, gc, feat, x, composed, align, gfeat_acc, gx, glogits);
    else
      warp_inpaint_bwd_impl<scalar_t, false>(gw, gb, gc, feat, x, composed, align, gfeat_acc, gx, glogits);
    if (has_skip) {
      gskip = at::empty({glogits.size(0), 3, glogits.size(2) / 2, glogits.size(3) / 2}, glogits.options());
      up2t_into<scalar_t>(glogits, gskip);
    } else {
      gskip = at::empty({0}, glogits.options());
    }
  });
  at::Tensor gfeat = gfeat_acc.scalar_type() == feat.scalar_type() ? gfeat_acc : gfeat_acc.to(feat.scalar_type());
  return {gfeat, gx, glogits, gskip};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(leo_kernels, m) {
  m.def("_grid_sample_fwd(Tensor input, Tensor grid, int padding_mode, bool align_corners) -> Tensor");
  m.def(
      "_grid_sample_bwd(Tensor grad_out, Tensor input, Tensor grid, int padding_mode, bool align_corners, "
      "bool deterministic) -> (Tensor grad_input, Tensor grad_grid)");
  m.def("_compose_flow_fwd(Tensor coarse, Tensor fine) -> Tensor");
  m.def("_compose_flow_bwd(Tensor grad_out) -> Tensor");
  m.def(
      "_warp_inpaint_fwd(Tensor feat, Tensor x, Tensor logits, Tensor? skip, bool align_corners) "
      "-> (Tensor warped, Tensor blended, Tensor composed)");
  m.def(
      "_warp_inpaint_bwd(Tensor grad_warped, Tensor grad_blended, Tensor grad_composed, Tensor feat, Tensor x, "
      "Tensor composed, bool has_skip, bool align_corners, bool deterministic) "
      "-> (Tensor grad_feat, Tensor grad_x, Tensor grad_logits, Tensor grad_skip)");
}

TORCH_LIBRARY_IMPL(leo_kernels, CPU, m) {
  m.impl("_grid_sample_fwd", &grid_sample_fwd_cpu);
  m.impl("_grid_sample_bwd", &grid_sample_bwd_cpu);
  m.impl("_compose_flow_fwd", &compose_flow_fwd_cpu);
  m.impl("_compose_flow_bwd", &compose_flow_bwd_cpu);
  m.impl("_warp_inpaint_fwd", &warp_inpaint_fwd_cpu);
  m.impl("_warp_inpaint_bwd", &warp_inpaint_bwd_cpu);
}
