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

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LEO_WARP_AVX2 1
#endif
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

enum Padding : int64_t { kZeros = 0, kBorder = 1, kReflection = 2 };

bool use_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat feature_format(const at::Tensor& t) {
  return use_channels_last(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// An empty output of 8 MB or more, before anything touches it: ask the kernel to back it with
// transparent huge pages (madvise; a no-op where THP is off). A fresh large allocation is otherwise
// faulted in and zero-filled 4 KB page by page on our first writes, which cost more than the
// sampling itself at (8, 64, 256, 256). Only this tensor's whole 2 MB blocks are advised; PyTorch's
// allocator is left alone (process-wide huge pages, THP_MEM_ALLOC_ENABLE, made `leo animate`
// slower; see leo.cli.reuse_freed_memory).
at::Tensor fresh_output(at::Tensor t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t bytes = static_cast<uintptr_t>(t.numel()) * t.element_size(), huge = uintptr_t(2) << 20;
  if (bytes >= (uintptr_t(8) << 20)) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t a = (p + huge - 1) & ~(huge - 1), e = (p + bytes) & ~(huge - 1);
    if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  }
#endif
  return t;
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

// Normalized coordinate -> pixel coordinate, with d(pixel)/d(normalized) in *d. Inlined into the
// per-pixel tap loops (a call per coordinate was 12% of a 1-channel grid_sample).
template <typename T>
[[gnu::always_inline]] inline T source_index(T coord, int64_t size, int64_t pad, bool align, T* d) {
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
      // & rather than &&: no branches (random flows leave the image at random, which predicts badly)
      const bool in = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W);
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
  // Window groups (see classify): per group of 8 pixels its kind and the plane offset of its
  // window; per pixel its column in the window and whether its top row is the window's second.
  std::vector<uint8_t> kind;
  std::vector<int32_t> base, col, lower;
  // Pair taps of scattered (kind 0) groups for the AVX-512 kernels (see pair_taps): per pixel and
  // corner row r (0 top, 1 bottom) the offset of two adjacent in-plane values, their weights
  // (interleaved: 2 per pixel) and per group which of the 16 values are corners (bit 2l: left).
  bool paired = false;
  std::vector<int32_t> pair_off[2];
  std::vector<float> pair_w[2];
  std::vector<uint16_t> pair_mask[2];
  explicit RowTaps32(int64_t n) : keep(n), kind(n / 8 + 1), base(n / 8 + 1), col(n), lower(n) {
    for (int k = 0; k < 4; ++k) {
      o[k].resize(n);
      w[k].resize(n);
    }
  }
  // Taps of n pixels into entries [j0, j0 + n).
  void fill(const Taps<float>& tp, int64_t n, const float* mask, int64_t j0 = 0) {
    for (int k = 0; k < 4; ++k) {
      int32_t* ok = o[k].data() + j0;
      float* wk = w[k].data() + j0;
      for (int64_t j = 0; j < n; ++j) {
        const int32_t in = -static_cast<int32_t>(tp.ok[k][j]);  // all ones inside, else 0: no branch
        ok[j] = (static_cast<int32_t>(tp.off[k][j]) & in) | ~in;
        wk[j] = mask ? tp.w[k][j] * mask[j] : tp.w[k][j];
      }
    }
    if (mask)
      for (int64_t j = 0; j < n; ++j) keep[j0 + j] = 1 - mask[j];
  }
};

// Window groups. Gathers are slow on many x86 cores (and AVX2 has no scatter), so groups of 8
// consecutive pixels whose 4 corners all lie in a small window of the plane are sampled with
// contiguous loads and in-register permutes instead: kind 1 = every top corner in one row y
// (window rows y, y+1), kind 2 = top corners in rows y and y+1 (window rows y .. y+2); in both the
// columns span at most 8 (x .. x+8). Kind 0 groups (scattered or touching the border) take the
// per-pixel path, which selects outside corners to 0. Smooth flows make almost every group a
// window group; random ones few. plane: Hin x Win with row stride rs, unit column stride.
// span: the most columns a window may have (9 for AVX2's one-register permutes, 16 for AVX-512's
// two-register ones).
// Pair taps of the group of 8 pixels at j0. A scattered group costs 4 gathers of 8 values per
// plane; reading each corner row as one 64-bit gather of two adjacent values (x0, x0 + 1) halves
// that. The pair stays in the plane's row (needs Win >= 2): where x0 = Win - 1 (x1 outside) it
// starts one column left and corner 0 is its right value; where x0 = -1 it starts at x1 and
// corner 1 is its left value. Values that are not corners are masked out (never multiplied: a
// NaN there must not leak, as in the masked-gather path).
inline void pair_taps(RowTaps32& t, int64_t j0) {
  for (int r = 0; r < 2; ++r) {
    uint16_t mask = 0;
    for (int l = 0; l < 8; ++l) {
      const int64_t j = j0 + l;
      const int32_t a = t.o[2 * r][j], b = t.o[2 * r + 1][j];  // corners (r, x0) and (r, x1)
      const float wa = t.w[2 * r][j], wb = t.w[2 * r + 1][j];
      const bool in_a = a >= 0, in_b = b >= 0;
      // selects, not branches: both inside: (a, b); only a (x0 = Win - 1): (a - 1, a); only b
      // (x0 = -1): (b, b + 1); neither: nothing read
      t.pair_off[r][j] = in_a ? (in_b ? a : a - 1) : (in_b ? b : 0);
      t.pair_w[r][2 * j] = in_b ? (in_a ? wa : wb) : 0.f;
      t.pair_w[r][2 * j + 1] = in_a ? (in_b ? wb : wa) : 0.f;
      const int bits = in_b ? (in_a ? 3 : 1) : (in_a ? 2 : 0);
      mask |= static_cast<uint16_t>(bits << (2 * l));
    }
    t.pair_mask[r][j0 / 8] = mask;
  }
}

inline void classify(RowTaps32& t, int64_t n, int64_t Hin, int64_t Win, int64_t rs, int64_t span) {
  // Pair taps only where the AVX-512 kernels read them (span 16) and a pair fits in a row.
  t.paired = span == 16 && Win >= 2;
  if (t.paired && static_cast<int64_t>(t.pair_off[0].size()) < n) {
    for (int r = 0; r < 2; ++r) {
      t.pair_off[r].resize(n);
      t.pair_w[r].resize(2 * n);
      t.pair_mask[r].resize(n / 8 + 1);
    }
  }
  for (int64_t g = 0; g * 8 + 8 <= n; ++g) {
    const int64_t j0 = g * 8;
    // Quick reject without divisions (scattered groups, e.g. random flows): every top-left corner
    // of a window group lies within rs + span elements of the others.
    int32_t omin = INT32_MAX, omax = -1;
    for (int l = 0; l < 8; ++l) {
      omin = std::min(omin, t.o[0][j0 + l]);
      omax = std::max(omax, t.o[0][j0 + l]);
    }
    if (omin < 0 || omax - omin > rs + span) {
      t.kind[g] = 0;
      if (t.paired) pair_taps(t, j0);
      continue;
    }
    int64_t ymin = INT64_MAX, ymax = -1, xmin = INT64_MAX, xmax = -1;
    bool ok = true;
    int64_t ys[8], xs[8];
    for (int l = 0; l < 8; ++l) {
      const int64_t o = t.o[0][j0 + l];
      if (o < 0 || t.o[3][j0 + l] < 0) {
        ok = false;
        break;
      }
      ys[l] = o / rs;
      xs[l] = o - ys[l] * rs;
      ymin = std::min(ymin, ys[l]);
      ymax = std::max(ymax, ys[l]);
      xmin = std::min(xmin, xs[l]);
      xmax = std::max(xmax, xs[l]);
    }
    // The window starts at xmin, or further left at the right border (so it stays in the plane).
    const int64_t x0 = ok ? std::min(xmin, Win - span) : 0;
    ok = ok && x0 >= 0 && xmax + 1 - x0 < span && ymax - ymin <= 1 && ymax + 1 < Hin;
    t.kind[g] = ok ? (ymax == ymin ? 1 : 2) : 0;
    if (!ok) {
      if (t.paired) pair_taps(t, j0);
      continue;
    }
    t.base[g] = static_cast<int32_t>(ymin * rs + x0);
    for (int l = 0; l < 8; ++l) {
      t.col[j0 + l] = static_cast<int32_t>(xs[l] - x0);
      t.lower[j0 + l] = ys[l] > ymin ? -1 : 0;
    }
  }
}

// Rows per tile of the float32 NCHW forward: the taps of ~4k pixels (~150 KB) stay in L2 while
// every channel plane streams through them, so each plane is read and written in long
// contiguous runs (one row at a time for all channels would hop between C planes every W pixels).
inline int64_t tile_rows(int64_t H, int64_t W) {
  return std::clamp<int64_t>(4096 / std::max<int64_t>(W, 1), 1, std::max<int64_t>(H, 1));
}

// plane[o], or 0 for o = -1, without a branch (scattered samples leave and enter the image at
// random, which a branch predicts badly): loads plane[0] for o < 0 and clears the value's bits.
inline float tap_value_f32(const float* p, int32_t o) {
  const uint32_t keep = ~static_cast<uint32_t>(o >> 31);
  uint32_t b;
  std::memcpy(&b, p + (o & static_cast<int32_t>(keep)), 4);
  b &= keep;
  float v;
  std::memcpy(&v, &b, 4);
  return v;
}

// out[j] = sum_k w_k[j] * plane[o_k[j]] (plane[-1] reads as 0); with x: blended[j] = out[j] + x[j] * keep[j].
inline void sample_plane_scalar(const RowTaps32& t, int64_t j, int64_t n, const float* ip, float* op, const float* xp,
                                float* bp) {
  for (; j < n; ++j) {
    const float v = t.w[0][j] * tap_value_f32(ip, t.o[0][j]) + t.w[1][j] * tap_value_f32(ip, t.o[1][j]) +
                    t.w[2][j] * tap_value_f32(ip, t.o[2][j]) + t.w[3][j] * tap_value_f32(ip, t.o[3][j]);
    op[j] = v;
    if (xp) bp[j] = v + xp[j] * t.keep[j];
  }
}

#ifdef LEO_WARP_AVX2
// Store 8 outputs v, and with an inpainting target also the blend xp * keep + v.
__attribute__((target("avx2,fma"))) inline void store_sum(const RowTaps32& t, int64_t j, __m256 v, float* op,
                                                          const float* xp, float* bp) {
  _mm256_storeu_ps(op + j, v);
  if (xp) _mm256_storeu_ps(bp + j, _mm256_fmadd_ps(_mm256_loadu_ps(xp + j), _mm256_loadu_ps(t.keep.data() + j), v));
}

// One group of 8 outputs from its four gathered corners: out = sum_k w_k * v_k, stored with store_sum
// (shared by the AVX2 and AVX-512 kernels).
__attribute__((target("avx2,fma"))) inline void store_group(const RowTaps32& t, int64_t j, __m256 v00, __m256 v01,
                                                            __m256 v10, __m256 v11, float* op, const float* xp,
                                                            float* bp) {
  __m256 v = _mm256_mul_ps(_mm256_loadu_ps(t.w[0].data() + j), v00);
  v = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[1].data() + j), v01, v);
  v = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[2].data() + j), v10, v);
  v = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[3].data() + j), v11, v);
  store_sum(t, j, v, op, xp, bp);
}

// Software prefetch. Windows: of group g + 128 (1024 outputs ahead; past the plane's end, of the
// next plane sampled with the same taps): the hardware prefetchers lag at every plane's and row's
// start. Smooth flows, 1 thread: grid_sample 8x64x256x256 82-95 -> 50-54 ms (a copy of its bytes:
// 9 ms), warp_inpaint 123-131 -> 90-99 ms; at 4x64x128x128 11 -> 7.4-8.6 and 16.5-18 -> 13.8-15 ms.
// Scattered groups: the top and bottom corner rows of group g + 16, so the gathers find them in L1
// (a 128x128 plane is twice L1; unprefetched, the gathers wait on L2). Random flows, 4x64x128x128,
// 2 threads, interleaved A/B: warp_inpaint forward 1.47-1.52x, forward+backward 1.25x; grid_sample
// forward 1.51x, forward+backward 1.31x; smooth flows unchanged (0.99-1.03x). Offsets of -1 (outside)
// prefetch the line before the plane, which never faults.
inline void prefetch_ahead(const RowTaps32& t, int64_t g, int64_t ng, const float* ip, const float* next,
                            int64_t rs) {
  constexpr int64_t kScatterAhead = 16;
  const int64_t s = g + kScatterAhead;
  if (s < ng && t.kind[s] == 0) {
    for (int64_t l = 8 * s; l < 8 * s + 8; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(ip + t.o[0][l]), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ip + t.o[2][l]), _MM_HINT_T0);
    }
  }
  int64_t h = g + 128;
  if (h >= ng) {
    h -= ng;
    if (next == nullptr || h >= ng) return;
    ip = next;
  }
  if (t.kind[h] == 0) return;
  const float* p = ip + t.base[h];
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p + rs), _MM_HINT_T0);
}

// The four bilinear corners of window group g (kind 1 or 2; outputs j..j+7) of plane ip, from a
// 9-column window with one-register permutes (kind 2: outputs flagged in lower read one row
// further down). Shared by the AVX2 forward and backward.
__attribute__((target("avx2,fma"))) inline void window_corners_avx2(const RowTaps32& t, int64_t g, int64_t j,
                                                                     const float* ip, int64_t rs, __m256& v00,
                                                                     __m256& v01, __m256& v10, __m256& v11) {
  const float* b = ip + t.base[g];
  const __m256i col = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.col.data() + j));
  v00 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b), col);
  v01 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + 1), col);
  v10 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + rs), col);
  v11 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + rs + 1), col);
  if (t.kind[g] == 2) {
    const __m256 lo = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.lower.data() + j)));
    const __m256 v20 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + 2 * rs), col);
    const __m256 v21 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b + 2 * rs + 1), col);
    v00 = _mm256_blendv_ps(v00, v10, lo);
    v01 = _mm256_blendv_ps(v01, v11, lo);
    v10 = _mm256_blendv_ps(v10, v20, lo);
    v11 = _mm256_blendv_ps(v11, v21, lo);
  }
}

// One plane over the n pixels of a classified RowTaps32 (rs: the plane's row stride; next: the
// plane sampled after it with the same taps, or null).
__attribute__((target("avx2,fma"))) void sample_plane_avx2(const RowTaps32& t, int64_t n, const float* ip,
                                                           const float* next, int64_t rs, float* op, const float* xp,
                                                           float* bp) {
  int64_t j = 0;
  for (int64_t g = 0; j + 8 <= n; ++g, j += 8) {
    prefetch_ahead(t, g, n / 8, ip, next, rs);
    if (t.kind[g] == 0) {
      sample_plane_scalar(t, j, j + 8, ip, op, xp, bp);
      continue;
    }
    __m256 v00, v01, v10, v11;
    window_corners_avx2(t, g, j, ip, rs, v00, v01, v10, v11);
    store_group(t, j, v00, v01, v10, v11, op, xp, bp);
  }
  sample_plane_scalar(t, j, n, ip, op, xp, bp);
}

// The pairs of corner row r (pair_taps) of the 8 pixels at j: one 64-bit gather, 16 floats
// (left, right) per pixel in order.
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline __m512 gather_pairs(const RowTaps32& t, int r, int64_t j,
                                                                                const float* ip) {
  const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.pair_off[r].data() + j));
  return _mm512_castpd_ps(_mm512_mask_i32gather_pd(_mm512_setzero_pd(), 0xFF, idx, ip, 4));
}

// 16 interleaved (left, right) floats -> 8 lefts and 8 rights.
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline void split_pairs(__m512 v, __m256& left, __m256& right) {
  const __m512i a = _mm512_castps_si512(v);
  left = _mm256_castsi256_ps(_mm512_maskz_cvtepi64_epi32(0xFF, a));
  right = _mm256_castsi256_ps(_mm512_maskz_cvtepi64_epi32(0xFF, _mm512_maskz_srli_epi64(0xFF, a, 32)));
}

// The four bilinear corners of group g (outputs j..j+7) of plane ip: pair gathers (pair_taps) or
// masked gathers for scattered groups (kind 0; outside corners read 0), otherwise windows of 16
// columns with two-register permutes (kind 2: outputs flagged in lower read one row further down).
// Shared by the AVX-512 forward and backward.
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline void corners_avx512(const RowTaps32& t, int64_t g,
                                                                                int64_t j, const float* ip,
                                                                                int64_t rs, __m256& v00, __m256& v01,
                                                                                __m256& v10, __m256& v11) {
  if (t.kind[g] == 0 && t.paired) {  // one 64-bit gather per corner row (pair_taps), then selects
    __m256* v[4] = {&v00, &v01, &v10, &v11};
    const __m256i m1 = _mm256_set1_epi32(-1);
    for (int r = 0; r < 2; ++r) {
      __m256 left, right;
      split_pairs(gather_pairs(t, r, j, ip), left, right);
      const __mmask8 a = _mm256_cmpgt_epi32_mask(
                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.o[2 * r].data() + j)), m1),
                     b = _mm256_cmpgt_epi32_mask(
                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.o[2 * r + 1].data() + j)), m1);
      // both corners inside: (left, right); only x0 (= Win - 1): x0 is the right value; only x1 (x0 = -1): left
      const __mmask8 both = a & b;
      *v[2 * r] = _mm256_mask_blend_ps(a & ~b, _mm256_maskz_mov_ps(both, left), right);
      *v[2 * r + 1] = _mm256_mask_blend_ps(b & ~a, _mm256_maskz_mov_ps(both, right), left);
    }
    return;
  }
  if (t.kind[g] == 0) {
    const __m256 z = _mm256_setzero_ps();
    const __m256i m1 = _mm256_set1_epi32(-1);
    __m256* v[4] = {&v00, &v01, &v10, &v11};
    for (int k = 0; k < 4; ++k) {
      const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.o[k].data() + j));
      *v[k] = _mm256_mmask_i32gather_ps(z, _mm256_cmpgt_epi32_mask(idx, m1), idx, ip, 4);
    }
    return;
  }
  const float* b = ip + t.base[g];
  const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.col.data() + j));
  const __m256i c1 = _mm256_add_epi32(c0, _mm256_set1_epi32(1));
  __m256 a = _mm256_loadu_ps(b), e = _mm256_loadu_ps(b + 8);
  v00 = _mm256_permutex2var_ps(a, c0, e);
  v01 = _mm256_permutex2var_ps(a, c1, e);
  a = _mm256_loadu_ps(b + rs);
  e = _mm256_loadu_ps(b + rs + 8);
  v10 = _mm256_permutex2var_ps(a, c0, e);
  v11 = _mm256_permutex2var_ps(a, c1, e);
  if (t.kind[g] == 2) {
    const __m256 lo = _mm256_castsi256_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.lower.data() + j)));
    a = _mm256_loadu_ps(b + 2 * rs);
    e = _mm256_loadu_ps(b + 2 * rs + 8);
    v00 = _mm256_blendv_ps(v00, v10, lo);
    v01 = _mm256_blendv_ps(v01, v11, lo);
    v10 = _mm256_blendv_ps(v10, _mm256_permutex2var_ps(a, c0, e), lo);
    v11 = _mm256_blendv_ps(v11, _mm256_permutex2var_ps(a, c1, e), lo);
  }
}

// sum_k w_k * v_k of a scattered group (kind 0) from its pair taps: one 64-bit gather per corner
// row, non-corner values masked out of the products, then left + right of each pixel.
__attribute__((target("avx2,fma,avx512f,avx512vl"))) inline __m256 pairs_avx512(const RowTaps32& t, int64_t g,
                                                                                int64_t j, const float* ip) {
  __m512 acc = _mm512_setzero_ps();
  for (int r = 0; r < 2; ++r)
    acc = _mm512_mask3_fmadd_ps(gather_pairs(t, r, j, ip), _mm512_loadu_ps(t.pair_w[r].data() + 2 * j), acc,
                                t.pair_mask[r][g]);
  __m256 left, right;
  split_pairs(acc, left, right);
  return _mm256_add_ps(left, right);
}

// The same with AVX-512VL two-register permutes: windows of 16 columns (loads at x and x + 8).
__attribute__((target("avx2,fma,avx512f,avx512vl"))) void sample_plane_avx512(const RowTaps32& t, int64_t n,
                                                                              const float* ip, const float* next,
                                                                              int64_t rs, float* op, const float* xp,
                                                                              float* bp) {
  int64_t j = 0;
  for (int64_t g = 0; j + 8 <= n; ++g, j += 8) {
    prefetch_ahead(t, g, n / 8, ip, next, rs);
    if (t.kind[g] == 0 && t.paired) {
      store_sum(t, j, pairs_avx512(t, g, j, ip), op, xp, bp);
      continue;
    }
    __m256 v00, v01, v10, v11;
    corners_avx512(t, g, j, ip, rs, v00, v01, v10, v11);
    store_group(t, j, v00, v01, v10, v11, op, xp, bp);
  }
  sample_plane_scalar(t, j, n, ip, op, xp, bp);
}

// LEO_WARP_CPU_ISA=avx2 or =scalar caps the kernels used (read once per process), so the tests
// run every path on one machine.
int isa_cap() {
  static const int cap = [] {
    const char* e = std::getenv("LEO_WARP_CPU_ISA");
    if (e == nullptr) return 2;
    const std::string v(e);
    return v == "scalar" ? 0 : v == "avx2" ? 1 : 2;
  }();
  return cap;
}

bool cpu_has_avx512() {
  static const bool ok = isa_cap() >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// The vectorized flow rows also use AVX-512 DQ (64-bit multiplies) and BW (byte stores).
bool cpu_has_avx512_flow() {
  static const bool ok = cpu_has_avx512() && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  return ok;
}

bool cpu_has_avx2() {
  static const bool ok = isa_cap() >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

// t must have been classified with classify_for_cpu.
inline void sample_plane(const RowTaps32& t, int64_t n, const float* ip, const float* next, int64_t rs, float* op,
                         const float* xp, float* bp) {
#ifdef LEO_WARP_AVX2
  if (cpu_has_avx512()) return sample_plane_avx512(t, n, ip, next, rs, op, xp, bp);
  if (cpu_has_avx2()) return sample_plane_avx2(t, n, ip, next, rs, op, xp, bp);
#endif
  sample_plane_scalar(t, 0, n, ip, op, xp, bp);
}

// Columns of a window for the sample_plane kernel this CPU runs (0: no window groups).
inline int64_t window_span() {
#ifdef LEO_WARP_AVX2
  if (cpu_has_avx512()) return 16;
  if (cpu_has_avx2()) return 9;
#endif
  return 0;
}

inline void classify_for_cpu(RowTaps32& t, int64_t n, int64_t Hin, int64_t Win, int64_t rs) {
  if (const int64_t span = window_span()) classify(t, n, Hin, Win, rs, span);
}

// channels_last float32, one output row: out[j, :] = sum_k w_k[j] * scale[j] * in[corner_k(j), :]
// (outside corners point at a zero row, so nothing outside the image is read); with x also
// blended[j, :] = out[j, :] + x[j, :] * (1 - scale[j]). The channel loop is contiguous: AVX2 when
// the CPU has it, else a scalar loop the compiler vectorizes for the baseline target.
template <bool X>
inline void sample_row_cl_scalar(const Taps<float>& tp, const float* scale, int64_t W, int64_t sW, int64_t C,
                                 const float* inb, const float* zero, float* orow, const float* xrow, float* brow) {
  for (int64_t j = 0; j < W; ++j) {
    const float* p[4];
    float w[4];
    const float s = scale ? scale[j] : 1.f;
    for (int k = 0; k < 4; ++k) {
      p[k] = tp.ok[k][j] ? inb + tp.off[k][j] : zero;
      w[k] = tp.w[k][j] * s;
    }
    float* __restrict__ o = orow + j * sW;
    for (int64_t c = 0; c < C; ++c) {
      const float v = w[0] * p[0][c] + w[1] * p[1][c] + w[2] * p[2][c] + w[3] * p[3][c];
      o[c] = v;
      if constexpr (X) brow[j * sW + c] = v + xrow[j * sW + c] * (1.f - s);
    }
  }
}

// Whether a forward writes its outputs with streaming (non-temporal) stores: when they are too big
// to stay in the last-level cache for the next op anyway (together at least 16 MB), a streaming
// store skips reading each output line into the cache before overwriting it, a third of the
// traffic the op moves. LEO_WARP_CPU_STREAM=1 / =0 forces it (tests run both).
bool stream_outputs(int64_t output_bytes) {
  const char* e = std::getenv("LEO_WARP_CPU_STREAM");  // read per call: tests flip it in-process
  if (e != nullptr && *e != '\0') return e[0] == '1';
  return output_bytes >= (int64_t(16) << 20);
}

#ifdef LEO_WARP_AVX2
// Store 8 floats at p: streaming where asked and p is 32-byte aligned (else a plain store).
__attribute__((target("avx2,fma"))) inline void store8(float* p, __m256 v, bool stream) {
  if (stream && (reinterpret_cast<uintptr_t>(p) & 31) == 0)
    _mm256_stream_ps(p, v);
  else
    _mm256_storeu_ps(p, v);
}

template <bool X>
__attribute__((target("avx2,fma"))) void sample_row_cl_avx2(const Taps<float>& tp, const float* scale, int64_t W,
                                                            int64_t sW, int64_t C, const float* inb,
                                                            const float* zero, float* orow, const float* xrow,
                                                            float* brow, bool stream) {
  for (int64_t j = 0; j < W; ++j) {
    const float* p[4];
    float w[4];
    const float s = scale ? scale[j] : 1.f, keep = 1.f - s;
    for (int k = 0; k < 4; ++k) {
      p[k] = tp.ok[k][j] ? inb + tp.off[k][j] : zero;
      w[k] = tp.w[k][j] * s;
    }
    const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(w[1]), w2 = _mm256_set1_ps(w[2]),
                 w3 = _mm256_set1_ps(w[3]), kv = _mm256_set1_ps(keep);
    float* o = orow + j * sW;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      __m256 v = _mm256_mul_ps(w0, _mm256_loadu_ps(p[0] + c));
      v = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p[1] + c), v);
      v = _mm256_fmadd_ps(w2, _mm256_loadu_ps(p[2] + c), v);
      v = _mm256_fmadd_ps(w3, _mm256_loadu_ps(p[3] + c), v);
      store8(o + c, v, stream);
      if constexpr (X) store8(brow + j * sW + c, _mm256_fmadd_ps(_mm256_loadu_ps(xrow + j * sW + c), kv, v), stream);
    }
    for (; c < C; ++c) {
      const float v = w[0] * p[0][c] + w[1] * p[1][c] + w[2] * p[2][c] + w[3] * p[3][c];
      o[c] = v;
      if constexpr (X) brow[j * sW + c] = v + xrow[j * sW + c] * keep;
    }
  }
  if (stream) _mm_sfence();
}
#endif

// stream: write the output row (and blended row) with streaming stores (stream_outputs); only for
// rows of the op's outputs, never for the staged forward's tile buffers, which are read back at once.
template <bool X>
inline void sample_row_cl(const Taps<float>& tp, const float* scale, int64_t W, int64_t sW, int64_t C,
                          const float* inb, const float* zero, float* orow, const float* xrow, float* brow,
                          bool stream = false) {
#ifdef LEO_WARP_AVX2
  if (cpu_has_avx2()) return sample_row_cl_avx2<X>(tp, scale, W, sW, C, inb, zero, orow, xrow, brow, stream);
#endif
  sample_row_cl_scalar<X>(tp, scale, W, sW, C, inb, zero, orow, xrow, brow);
}

// --------------------------------------------------------------------------- NHWC staging
// Scattered (e.g. random) flows under NCHW: every channel plane is gathered at random, 2-4
// gathers per group of 8 outputs and plane, most of them L2 misses. Staged channels_last, the four
// corners of a pixel are four contiguous runs of C values (sample_row_cl), so the NCHW forward
// transposes the features of one image into a scratch NHWC copy, samples each output row into a
// W x C row buffer, and transposes a tile of such rows back into the C output planes (with the
// blend). Both transposes move data through registers in 8 x 8 blocks.
//
// LEO_WARP_CPU_STAGED=1 or =0 forces or forbids the staged path (tests run both); unset,
// use_staging decides.
int staged_override() {
  const char* e = std::getenv("LEO_WARP_CPU_STAGED");  // read per call: tests flip it in-process
  if (e == nullptr || *e == '\0') return -1;
  return e[0] == '1' ? 1 : 0;
}

// The NHWC scratch copy of one image: up to 64 MB kept per calling thread between calls (a fresh one
// would be faulted in page by page on every call, which cost more than the staging saved at batch
// 1); bigger images get a buffer of their own for the call, in `own`.
float* staging_buffer(int64_t n, std::vector<float>& own) {
  constexpr int64_t kKeep = (int64_t(64) << 20) / sizeof(float);
  if (n > kKeep) {
    own.resize(n);
    return own.data();
  }
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

#ifdef LEO_WARP_AVX2
// Transposes the 8 x 8 block r[0..7] (r[k] = row k) in place.
__attribute__((target("avx2,fma"))) inline void transpose8x8(__m256 r[8]) {
  __m256 t[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  __m256 u[8];
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
    r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
  }
}

// dst[p * C + c] = src[c * cs + p] for pixels [p0, p1) and every channel c. Chunks of 512 pixels,
// 8 channels at a time, so 8 planes are read in long runs while the chunk's NHWC rows (128 KB at
// C = 64) stay in L2.
__attribute__((target("avx2,fma"))) void stage_nhwc(const float* src, int64_t cs, int64_t C, int64_t p0, int64_t p1,
                                                   float* dst) {
  const int64_t C8 = C & ~int64_t(7);
  for (int64_t q0 = p0; q0 < p1; q0 += 512) {
    const int64_t q1 = std::min(p1, q0 + 512), q8 = q0 + ((q1 - q0) & ~int64_t(7));
    for (int64_t c = 0; c < C8; c += 8)
      for (int64_t p = q0; p < q8; p += 8) {
        __m256 r[8];
        for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + (c + k) * cs + p);
        transpose8x8(r);
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (p + k) * C + c, r[k]);
      }
    for (int64_t c = C8; c < C; ++c)
      for (int64_t p = q0; p < q8; ++p) dst[p * C + c] = src[c * cs + p];
    for (int64_t p = q8; p < q1; ++p)
      for (int64_t c = 0; c < C; ++c) dst[p * C + c] = src[c * cs + p];
  }
}

// A tile buffer rb (P pixels x C, from sample_row_cl with the mask folded in) into C output planes
// cs apart, at pixels [0, P) of each: warped[c][p] = rb[p][c], and with x also
// blended[c][p] = rb[p][c] + x[c][p] * keep[p]. 8 channels at a time over the whole tile, so each
// plane is written (and x read) in one run of P values. stream: see stream_outputs.
template <bool X>
__attribute__((target("avx2,fma"))) void unstage_tile(const float* rb, int64_t P, int64_t C, const float* keep,
                                                     const float* xp, float* wp, float* bp, int64_t cs,
                                                     bool stream) {
  const int64_t C8 = C & ~int64_t(7), P8 = P & ~int64_t(7), P16 = stream ? (P & ~int64_t(15)) : 0;
  for (int64_t c = 0; c < C8; c += 8) {
    // Streaming: 16 pixels at a time, so each plane gets whole 64-byte lines (two adjacent stores);
    // the write-combining buffers then never hold a partial line for 16 planes at once.
    for (int64_t p = 0; p < P16; p += 16) {
      __m256 r[8], s[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(rb + (p + k) * C + c);
      for (int k = 0; k < 8; ++k) s[k] = _mm256_loadu_ps(rb + (p + 8 + k) * C + c);
      transpose8x8(r);
      transpose8x8(s);
      const __m256 kv = X ? _mm256_loadu_ps(keep + p) : _mm256_setzero_ps();
      const __m256 kw = X ? _mm256_loadu_ps(keep + p + 8) : _mm256_setzero_ps();
      for (int k = 0; k < 8; ++k) {
        const int64_t o = (c + k) * cs + p;
        store8(wp + o, r[k], true);
        store8(wp + o + 8, s[k], true);
        if constexpr (X) {
          store8(bp + o, _mm256_fmadd_ps(_mm256_loadu_ps(xp + o), kv, r[k]), true);
          store8(bp + o + 8, _mm256_fmadd_ps(_mm256_loadu_ps(xp + o + 8), kw, s[k]), true);
        }
      }
    }
    for (int64_t p = P16; p < P8; p += 8) {
      __m256 r[8];
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(rb + (p + k) * C + c);
      transpose8x8(r);
      const __m256 kv = X ? _mm256_loadu_ps(keep + p) : _mm256_setzero_ps();
      for (int k = 0; k < 8; ++k) {
        const int64_t o = (c + k) * cs + p;
        store8(wp + o, r[k], stream);
        if constexpr (X) store8(bp + o, _mm256_fmadd_ps(_mm256_loadu_ps(xp + o), kv, r[k]), stream);
      }
    }
  }
  if (stream) _mm_sfence();  // order the streaming stores before the op returns its outputs
  auto one = [&](int64_t p, int64_t c) {
    const float v = rb[p * C + c];
    wp[c * cs + p] = v;
    if constexpr (X) bp[c * cs + p] = v + xp[c * cs + p] * keep[p];
  };
  for (int64_t c = C8; c < C; ++c)
    for (int64_t p = 0; p < P8; ++p) one(p, c);
  for (int64_t p = P8; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) one(p, c);
}

// Rows per tile of the staged forward: its W x C row buffers (~256 KB) stay in L2.
inline int64_t staged_tile_rows(int64_t W, int64_t C) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, W * C));
}

// The staged forward, shared by grid_sample and warp_inpaint. Per image n: its features (first plane
// src(n), planes cs apart, Hin x Win contiguous) go to the NHWC scratch; then per tile of output rows,
// sample_row(state, n, i, st, row, k) samples output row i (the tile's k-th) from the scratch st into
// `row` (Wo x C), and finish_tile(state, n, i0, i1, tile) writes the tile back. make_state() gives
// each task's scratch.
template <typename Src, typename MakeState, typename SampleRow, typename FinishTile>
void run_staged(int64_t N, int64_t C, int64_t HWin, int64_t cs, int64_t Ho, int64_t Wo, Src src, MakeState make_state,
                SampleRow sample_row, FinishTile finish_tile) {
  std::vector<float> own;
  float* st = staging_buffer(HWin * C, own);
  const int64_t R = staged_tile_rows(Wo, C), ntiles = (Ho + R - 1) / R;
  for (int64_t n = 0; n < N; ++n) {
    at::parallel_for(0, (HWin + 7) / 8, grain_for(8 * C), [&](int64_t b0, int64_t b1) {
      stage_nhwc(src(n), cs, C, 8 * b0, std::min(HWin, 8 * b1), st);
    });
    at::parallel_for(0, ntiles, 1, [&](int64_t t0, int64_t t1) {
      auto state = make_state();
      std::vector<float> tile(R * Wo * C);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t * R, i1 = std::min(Ho, i0 + R);
        for (int64_t i = i0; i < i1; ++i) sample_row(state, n, i, st, tile.data() + (i - i0) * Wo * C, i - i0);
        finish_tile(state, n, i0, i1, tile.data());
      }
    });
  }
}
#endif

// Whether the NCHW float32 forward stages through NHWC: forced by `override` (1 / 0), else for
// batches (N >= 2) and when more than half of the groups of 8 outputs in a sample of rows (every
// 8th of every image) are scattered (kind 0). Measured interleaved, 2 threads, warp_inpaint
// (tiles / staged time): random flows 1.9x at (4,64,128,128), 3.2x at (8,64,256,256); smooth flows
// 2.0x at (4,64,128,128), 1.16x at (8,64,256,256), 1.25-1.35x at (2,64,192,192) and (4,32,64,64),
// 1.0x at (4,128,128,128) and (4,256,32,32); at batch 1 0.7x at (1,64,256,256), so single images
// with smooth flows keep the tiles (grid_sample stages those too). row_taps(s, rt, n, i) fills rt
// with the taps of output row i of image n; make_scratch() gives its per-task state. span:
// window_span() (0: no window kernels, no staging).
template <typename RowTaps, typename MakeScratch>
bool use_staging(int override, int64_t span, int64_t N, int64_t Ho, int64_t Wo, int64_t Hin, int64_t Win, int64_t rs,
                 RowTaps row_taps, MakeScratch make_scratch) {
  if (span == 0 || override == 0) return false;
  if (override == 1 || N >= 2) return true;
  if (Wo < 8) return false;
  auto s = make_scratch();
  RowTaps32 rt(Wo);
  int64_t scattered = 0, groups = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < Ho; i += 8) {
      row_taps(s, rt, n, i);
      classify(rt, Wo, Hin, Win, rs, span);
      for (int64_t g = 0; g < Wo / 8; ++g) scattered += rt.kind[g] == 0;
      groups += Wo / 8;
    }
  return scattered * 2 > groups;
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

#ifdef LEO_WARP_AVX2
// ------------------------------------------------- vectorized flow rows (AVX-512, float32)
// tanh, sigmoid and the bilinear taps of a row, 16 pixels at a time: per pixel two tanh, one exp
// and the taps cost ~20 ns scalar, as much as sampling 64 channels channels_last.
// exp(x) to ~1 ulp: x = n ln2 + r (|r| <= ln2 / 2), e^r by its degree-7 Taylor polynomial,
// times 2^n. max/min take x as their second operand so a NaN passes through.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) inline __m512 exp_avx512(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.7f), _mm512_max_ps(_mm512_set1_ps(-87.3f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// tanh to a few ulp: an odd polynomial below |x| = 0.625 (Cephes' tanhf coefficients), else
// (1 - e) / (1 + e) with e = exp(-2|x|), the sign put back.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) inline __m512 tanh_avx512(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x), z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(-5.70498872745e-3f);
  for (const float c : {2.06390887954e-2f, -5.37397155531e-2f, 1.33314422036e-1f, -3.33332819422e-1f})
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  const __m512 e = exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.f), ax));
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 big = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
  big = _mm512_or_ps(big, _mm512_and_ps(x, _mm512_set1_ps(-0.f)));  // sign of x
  // NaN compares false: it takes the polynomial branch, which keeps it NaN
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_GE_OQ), small, big);
}

// Pixel coordinate of normalized coordinate g along an axis of `size` (zeros padding), with
// d(pixel)/d(g) in *d: source_index's arithmetic, far-away and NaN samples clamped to -2 (d 0).
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) inline __m512 source_index_avx512(
    __m512 g, int64_t size, bool align, __m512* d) {
  const float fs = static_cast<float>(size);
  __m512 x;
  if (align) {
    x = _mm512_mul_ps(_mm512_div_ps(_mm512_add_ps(g, _mm512_set1_ps(1.f)), _mm512_set1_ps(2.f)),
                      _mm512_set1_ps(fs - 1));
    *d = _mm512_set1_ps((fs - 1) / 2);
  } else {
    x = _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(_mm512_add_ps(g, _mm512_set1_ps(1.f)), _mm512_set1_ps(fs)),
                                    _mm512_set1_ps(1.f)),
                      _mm512_set1_ps(2.f));
    *d = _mm512_set1_ps(fs / 2);
  }
  const __mmask16 low = ~_mm512_cmp_ps_mask(x, _mm512_set1_ps(-2.f), _CMP_GE_OQ);  // also NaN
  const __mmask16 high = _mm512_cmp_ps_mask(x, _mm512_set1_ps(fs + 1), _CMP_GT_OQ);
  x = _mm512_mask_blend_ps(low, _mm512_mask_blend_ps(high, x, _mm512_set1_ps(fs + 1)), _mm512_set1_ps(-2.f));
  *d = _mm512_maskz_mov_ps(static_cast<__mmask16>(~(low | high)), *d);
  return x;
}

// Taps::set with zeros padding for pixels [j, j + 16) (lanes outside mask m are not stored) from
// their normalized sampling coordinates gx, gy.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void taps_avx512(
    __m512 gx, __m512 gy, int64_t j, __mmask16 m, int64_t H, int64_t W, int64_t sH, int64_t sW, bool align,
    Taps<float>& tp) {
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 dx, dy;
  const __m512 x = source_index_avx512(gx, W, align, &dx);
  const __m512 y = source_index_avx512(gy, H, align, &dy);
  const __m512 xf = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 yf = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 fx = _mm512_sub_ps(x, xf), fy = _mm512_sub_ps(y, yf);
  _mm512_mask_storeu_ps(tp.tx.data() + j, m, fx);
  _mm512_mask_storeu_ps(tp.ty.data() + j, m, fy);
  _mm512_mask_storeu_ps(tp.dx.data() + j, m, dx);
  _mm512_mask_storeu_ps(tp.dy.data() + j, m, dy);
  const __m512i x0 = _mm512_cvttps_epi32(xf), y0 = _mm512_cvttps_epi32(yf);
  const __m512 wx[2] = {_mm512_sub_ps(one, fx), fx}, wy[2] = {_mm512_sub_ps(one, fy), fy};
  for (int k = 0; k < 4; ++k) {
    const __m512i yy = _mm512_add_epi32(y0, _mm512_set1_epi32(k >> 1)), xx = _mm512_add_epi32(x0, _mm512_set1_epi32(k & 1));
    const __mmask16 in = _mm512_cmpge_epi32_mask(yy, _mm512_setzero_si512()) &
                         _mm512_cmplt_epi32_mask(yy, _mm512_set1_epi32(static_cast<int32_t>(H))) &
                         _mm512_cmpge_epi32_mask(xx, _mm512_setzero_si512()) &
                         _mm512_cmplt_epi32_mask(xx, _mm512_set1_epi32(static_cast<int32_t>(W)));
    _mm512_mask_storeu_ps(tp.w[k].data() + j, m, _mm512_maskz_mul_ps(in, wy[k >> 1], wx[k & 1]));
    // offsets in 64 bits (yy * sH + xx * sW can pass 2^31 in big images), 8 lanes at a time
    for (int h = 0; h < 2; ++h) {
      const __m512i y64 = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(yy, 1) : _mm512_castsi512_si256(yy));
      const __m512i x64 = _mm512_cvtepi32_epi64(h ? _mm512_extracti64x4_epi64(xx, 1) : _mm512_castsi512_si256(xx));
      const __m512i off = _mm512_add_epi64(_mm512_mullo_epi64(y64, _mm512_set1_epi64(sH)),
                                           _mm512_mullo_epi64(x64, _mm512_set1_epi64(sW)));
      const __mmask8 in8 = static_cast<__mmask8>(in >> (8 * h)), m8 = static_cast<__mmask8>(m >> (8 * h));
      _mm512_mask_storeu_epi64(tp.off[k].data() + j + 8 * h, m8, _mm512_maskz_mov_epi64(in8, off));
    }
    // ok[k][j] = in (one byte per pixel)
    const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_maskz_set1_epi32(in, 1));
    _mm_mask_storeu_epi8(tp.ok[k].data() + j, m, bytes);
  }
}

// Pixels [j, j + 16) of a flow row (Taps::set with zeros padding, FlowRow's tanh and mask).
// Lanes past W (the last partial group) are computed from zeros and stored nowhere (masked).
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void flow_row_avx512(
    const float* c0, const float* c1, const float* c2, int64_t i, int64_t H, int64_t W, int64_t sH, int64_t sW,
    bool align, Taps<float>& tp, float* t0, float* t1, float* mask) {
  const float gy = linspace_pm1<float>(i, H);
  const float step = W > 1 ? 2.f / static_cast<float>(W - 1) : 0.f;
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j = 0; j < W; j += 16) {
    const __mmask16 m = W - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (W - j)) - 1);
    const __m512 a = tanh_avx512(_mm512_maskz_loadu_ps(m, c0 + j)), b = tanh_avx512(_mm512_maskz_loadu_ps(m, c1 + j));
    const __m512 one = _mm512_set1_ps(1.f);
    const __m512 mk = _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(),
                                                                                    _mm512_maskz_loadu_ps(m, c2 + j)))));
    _mm512_mask_storeu_ps(t0 + j, m, a);
    _mm512_mask_storeu_ps(t1 + j, m, b);
    _mm512_mask_storeu_ps(mask + j, m, mk);
    // linspace(-1, 1, W)[j] as linspace_pm1 computes it (from both ends)
    const __m512i jj = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(j)), lane);
    const __m512 lo = _mm512_add_ps(_mm512_set1_ps(-1.f), _mm512_mul_ps(_mm512_set1_ps(step), _mm512_cvtepi32_ps(jj)));
    const __m512 hi = _mm512_sub_ps(
        one, _mm512_mul_ps(_mm512_set1_ps(step),
                           _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_set1_epi32(static_cast<int32_t>(W - 1)), jj))));
    __m512 lin = _mm512_mask_blend_ps(_mm512_cmplt_epi32_mask(jj, _mm512_set1_epi32(static_cast<int32_t>(W / 2))), hi, lo);
    if (W == 1) lin = _mm512_set1_ps(-1.f);
    taps_avx512(_mm512_add_ps(a, lin), _mm512_add_ps(b, _mm512_set1_ps(gy)), j, m, H, W, sH, sW, align, tp);
  }
}

// A row of grid_sample taps (zeros padding) from Wo interleaved (x, y) grid coordinates.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))) void grid_row_avx512(
    const float* grow, int64_t Wo, int64_t H, int64_t W, int64_t sH, int64_t sW, bool align, Taps<float>& tp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t j = 0; j < Wo; j += 16) {
    const int64_t n = std::min<int64_t>(16, Wo - j);
    const __mmask16 m = n == 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
    const __mmask16 m0 = n >= 8 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (2 * n)) - 1);
    const __mmask16 m1 = n <= 8 ? __mmask16(0) : static_cast<__mmask16>((1u << (2 * (n - 8))) - 1);
    const __m512 lo = _mm512_maskz_loadu_ps(m0, grow + 2 * j), hi = _mm512_maskz_loadu_ps(m1, grow + 2 * j + 16);
    taps_avx512(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi), j, m, H, W, sH, sW, align,
                tp);
  }
}
#endif

// Taps of one row of Wo output pixels from interleaved float32 (x, y) grid coordinates.
inline void grid_taps_row(const float* grow, int64_t Wo, int64_t H, int64_t W, int64_t sH, int64_t sW, int64_t pad,
                          bool align, Taps<float>& tp) {
#ifdef LEO_WARP_AVX2
  if (pad == kZeros && cpu_has_avx512_flow() && H < (int64_t(1) << 24) && W < (int64_t(1) << 24))
    return grid_row_avx512(grow, Wo, H, W, sH, sW, align, tp);
#endif
  for (int64_t j = 0; j < Wo; ++j) tp.set(j, grow[2 * j], grow[2 * j + 1], H, W, sH, sW, pad, align);
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
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (!CL && H * W < (int64_t(1) << 31) && isW == 1 && osW == 1 && osH == Wo) {
#ifdef LEO_WARP_AVX2
      // Staged whenever the kernels allow it: faster than the tiles at every measured shape, even
      // single images with smooth flows (1.44x at (1,64,256,256)).
      if (isH == W && window_span() != 0 && staged_override() != 0) {
        const std::vector<float> zero_row(C, 0.f);
        const bool stream = stream_outputs(out.numel() * int64_t(sizeof(float)));
        run_staged(
            N, C, H * W, isC, Ho, Wo, [&](int64_t n) { return in + n * isN; }, [&] { return Taps<float>(Wo); },
            [&](Taps<float>& tp, int64_t n, int64_t i, const float* st, float* row, int64_t) {
              grid_taps_row(g + (n * Ho + i) * Wo * 2, Wo, H, W, W * C, C, pad, align, tp);  // NHWC strides
              sample_row_cl<false>(tp, nullptr, Wo, C, C, st, zero_row.data(), row, nullptr, nullptr);
            },
            [&](Taps<float>&, int64_t n, int64_t i0, int64_t i1, const float* tile) {
              unstage_tile<false>(tile, (i1 - i0) * Wo, C, nullptr, nullptr, o + n * osN + i0 * Wo, nullptr, osC, stream);
            });
        return;
      }
#endif
      // Tiles of rows: taps once, then every channel plane in one contiguous run.
      const int64_t R = tile_rows(Ho, Wo), ntiles = (Ho + R - 1) / R;
      at::parallel_for(0, N * ntiles, 1, [&](int64_t begin, int64_t end) {
        Taps<float> tp(Wo);
        RowTaps32 rt(R * Wo);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / ntiles, i0 = (t % ntiles) * R, i1 = std::min(Ho, i0 + R);
          for (int64_t i = i0; i < i1; ++i) {
            const float* grow = g + (n * Ho + i) * Wo * 2;
            grid_taps_row(grow, Wo, H, W, isH, isW, pad, align, tp);
            rt.fill(tp, Wo, nullptr, (i - i0) * Wo);
          }
          const int64_t npx = (i1 - i0) * Wo;
          classify_for_cpu(rt, npx, H, W, isH);
          for (int64_t c = 0; c < C; ++c)
            sample_plane(rt, npx, in + n * isN + c * isC, c + 1 < C ? in + n * isN + (c + 1) * isC : nullptr, isH,
                         o + n * osN + c * osC + i0 * Wo, nullptr, nullptr);
        }
      });
      return;
    }
    if (CL && osC == 1 && isC == 1) {
      std::vector<float> zero_row(C, 0.f);
      const bool stream = stream_outputs(out.numel() * int64_t(sizeof(float)));
      at::parallel_for(0, N * Ho, grain_for(C * Wo), [&](int64_t begin, int64_t end) {
        Taps<float> tp(Wo);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / Ho, i = r % Ho;
          const float* grow = g + r * Wo * 2;
          grid_taps_row(grow, Wo, H, W, isH, isW, pad, align, tp);
          sample_row_cl<false>(tp, nullptr, Wo, osW, C, in + n * isN, zero_row.data(), o + n * osN + i * osH, nullptr,
                               nullptr, stream);
        }
      });
      return;
    }
  }
  at::parallel_for(0, N * Ho, grain_for(C * Wo), [&](int64_t begin, int64_t end) {
    Taps<acc_t> tp(Wo);
    std::vector<PackedTap<acc_t>> packed(CL ? 0 : Wo);
    std::vector<scalar_t> zero_row(CL ? C : 0, scalar_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, i = r % Ho;
      const scalar_t* grow = g + r * Wo * 2;
      for (int64_t j = 0; j < Wo; ++j)
        tp.set(j, static_cast<acc_t>(grow[2 * j]), static_cast<acc_t>(grow[2 * j + 1]), H, W, isH, isW, pad, align);
      const scalar_t* inb = in + n * isN;
      scalar_t* orow = o + n * osN + i * osH;
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
  at::Tensor out = fresh_output(
      at::empty({input.size(0), input.size(1), grid.size(1), grid.size(2)}, input.options().memory_format(fmt)));
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

// --------------------------------------------------------------------------- float32 backward
// Both backward passes for float32, shared by grid_sample and warp_inpaint through a policy P:
//   P::kWarp           warp_inpaint (G = grad_warped + grad_blended, mask, grad_x) or grid_sample
//   P::Row, p.row(W)   per-row state; p.set(row, n, i) fills taps() and scale() (mask or null)
//   p.finish(row, n, i, ax, ay, am)  writes the flow/grid gradients of row i from the sums over
//                      channels ax = sum G dv/dfx, ay = sum G dv/dfy, am = sum (G s - gb x)
// Pass 1 (tiles of rows) gathers ax/ay/am and writes grad_x; pass 2 (channel blocks of one image,
// each walking every pixel in order: deterministic, race free) scatters the input gradient.
// NCHW: pass 1 samples corners through the window groups (AVX-512 or AVX2; scattered groups by
// gathers) or per pixel without AVX2, and stores the taps (offsets, weights times mask) for pass 2.
// On an AVX2-only EPYC the AVX2 pass 1 made warp_inpaint forward+backward at 4x64x128x128 NCHW
// about 15% faster with smooth flows and 10-15% with random ones (same-session A/B).
// channels_last: pass 1 runs over rows with the channel loop contiguous (AVX2); pass 2 is
// scatter_input_grad.

// Per-pixel corner values and the pass-1 update of one pixel (scalar).
template <bool kWarp>
inline void bwd_pixel(float v00, float v01, float v10, float v11, const float w[4], float fx, float fy, float G,
                      float gbv, float xv, float& ax, float& ay, float& am) {
  if constexpr (kWarp) am += G * (w[0] * v00 + w[1] * v01 + w[2] * v10 + w[3] * v11) - gbv * xv;
  ax += G * ((1 - fy) * (v01 - v00) + fy * (v11 - v10));
  ay += G * ((1 - fx) * (v10 - v00) + fx * (v11 - v01));
}

struct BwdTile {
  RowTaps32 rt;  // offsets, unscaled bilinear weights, keep = 1 - mask
  std::vector<float> fx, fy, ax, ay, am;
  explicit BwdTile(int64_t n) : rt(n), fx(n), fy(n), ax(n), ay(n), am(n) {}
};

// gw: grad_out (grid_sample) or grad_warped; gb, xp, gxp: warp_inpaint only. Pixels [j, n).
template <bool kWarp>
inline void bwd_plane_scalar(BwdTile& b, int64_t j, int64_t n, const float* ip, const float* gw, const float* gb,
                             const float* xp, float* gxp) {
  const RowTaps32& t = b.rt;
  for (; j < n; ++j) {
    const float w[4] = {t.w[0][j], t.w[1][j], t.w[2][j], t.w[3][j]};
    const float gbv = kWarp ? gb[j] : 0.f, G = gw[j] + gbv;
    if constexpr (kWarp) gxp[j] = gbv * t.keep[j];
    bwd_pixel<kWarp>(tap_value_f32(ip, t.o[0][j]), tap_value_f32(ip, t.o[1][j]), tap_value_f32(ip, t.o[2][j]),
                     tap_value_f32(ip, t.o[3][j]), w, b.fx[j], b.fy[j], G, gbv, kWarp ? xp[j] : 0.f, b.ax[j],
                     b.ay[j], b.am[j]);
  }
}

#ifdef LEO_WARP_AVX2
// The pass-1 update of the 8 pixels at j from their corner values (shared by the AVX2 and
// AVX-512 kernels).
template <bool kWarp>
__attribute__((target("avx2,fma"))) inline void bwd_group(BwdTile& b, int64_t j, __m256 v00, __m256 v01, __m256 v10,
                                                          __m256 v11, const float* gw, const float* gb,
                                                          const float* xp, float* gxp) {
  const RowTaps32& t = b.rt;
  const __m256 ones = _mm256_set1_ps(1.f);
  const __m256 fx = _mm256_loadu_ps(b.fx.data() + j), fy = _mm256_loadu_ps(b.fy.data() + j);
  __m256 G = _mm256_loadu_ps(gw + j);
  if constexpr (kWarp) {
    const __m256 gbv = _mm256_loadu_ps(gb + j);
    G = _mm256_add_ps(G, gbv);
    _mm256_storeu_ps(gxp + j, _mm256_mul_ps(gbv, _mm256_loadu_ps(t.keep.data() + j)));
    __m256 s = _mm256_mul_ps(_mm256_loadu_ps(t.w[0].data() + j), v00);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[1].data() + j), v01, s);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[2].data() + j), v10, s);
    s = _mm256_fmadd_ps(_mm256_loadu_ps(t.w[3].data() + j), v11, s);
    const __m256 am = _mm256_fmsub_ps(G, s, _mm256_mul_ps(gbv, _mm256_loadu_ps(xp + j)));
    _mm256_storeu_ps(b.am.data() + j, _mm256_add_ps(_mm256_loadu_ps(b.am.data() + j), am));
  }
  const __m256 dxv = _mm256_fmadd_ps(fy, _mm256_sub_ps(v11, v10), _mm256_mul_ps(_mm256_sub_ps(ones, fy), _mm256_sub_ps(v01, v00)));
  const __m256 dyv = _mm256_fmadd_ps(fx, _mm256_sub_ps(v11, v01), _mm256_mul_ps(_mm256_sub_ps(ones, fx), _mm256_sub_ps(v10, v00)));
  _mm256_storeu_ps(b.ax.data() + j, _mm256_fmadd_ps(G, dxv, _mm256_loadu_ps(b.ax.data() + j)));
  _mm256_storeu_ps(b.ay.data() + j, _mm256_fmadd_ps(G, dyv, _mm256_loadu_ps(b.ay.data() + j)));
}

template <bool kWarp>
__attribute__((target("avx2,fma,avx512f,avx512vl"))) void bwd_plane_avx512(BwdTile& b, int64_t n, const float* ip,
                                                                           const float* next, int64_t rs,
                                                                           const float* gw, const float* gb,
                                                                           const float* xp, float* gxp) {
  int64_t j = 0;
  for (int64_t g = 0; j + 8 <= n; ++g, j += 8) {
    prefetch_ahead(b.rt, g, n / 8, ip, next, rs);
    __m256 v00, v01, v10, v11;
    corners_avx512(b.rt, g, j, ip, rs, v00, v01, v10, v11);
    bwd_group<kWarp>(b, j, v00, v01, v10, v11, gw, gb, xp, gxp);
  }
  bwd_plane_scalar<kWarp>(b, j, n, ip, gw, gb, xp, gxp);
}

// AVX2: window groups (kind 1, 2) from permuted window loads; scattered ones (kind 0) by masked
// gathers (outside corners masked out: they read 0 and touch no memory, so a NaN cannot leak).
// Unlike the forward's per-pixel kind-0 path, the gathers paid off here: the backward does more
// work per corner value, and random flows ran 10-15% faster than per pixel on an AVX2 EPYC.
template <bool kWarp>
__attribute__((target("avx2,fma"))) void bwd_plane_avx2(BwdTile& b, int64_t n, const float* ip, const float* next,
                                                        int64_t rs, const float* gw, const float* gb,
                                                        const float* xp, float* gxp) {
  int64_t j = 0;
  for (int64_t g = 0; j + 8 <= n; ++g, j += 8) {
    prefetch_ahead(b.rt, g, n / 8, ip, next, rs);
    __m256 v00, v01, v10, v11;
    if (b.rt.kind[g] == 0) {
      const __m256 z = _mm256_setzero_ps();
      const __m256i m1 = _mm256_set1_epi32(-1);
      __m256* v[4] = {&v00, &v01, &v10, &v11};
      for (int k = 0; k < 4; ++k) {
        const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.rt.o[k].data() + j));
        *v[k] = _mm256_mask_i32gather_ps(z, ip, idx, _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, m1)), 4);
      }
    } else {
      window_corners_avx2(b.rt, g, j, ip, rs, v00, v01, v10, v11);
    }
    bwd_group<kWarp>(b, j, v00, v01, v10, v11, gw, gb, xp, gxp);
  }
  bwd_plane_scalar<kWarp>(b, j, n, ip, gw, gb, xp, gxp);
}
#endif

template <bool kWarp>
inline void bwd_plane(BwdTile& b, int64_t n, const float* ip, const float* next, int64_t rs, const float* gw,
                      const float* gb, const float* xp, float* gxp) {
#ifdef LEO_WARP_AVX2
  if (cpu_has_avx512()) return bwd_plane_avx512<kWarp>(b, n, ip, next, rs, gw, gb, xp, gxp);
  if (cpu_has_avx2()) return bwd_plane_avx2<kWarp>(b, n, ip, next, rs, gw, gb, xp, gxp);
#endif
  bwd_plane_scalar<kWarp>(b, 0, n, ip, gw, gb, xp, gxp);
}

// NCHW float32, both passes. in: (N, C, H, W) contiguous; gw, gb, xp, gxp: (N, C, Ho, Wo)
// contiguous; gin: (N, C, H, W) contiguous, zeroed.
template <class P>
void bwd_f32_nchw(const P& p, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, const float* in,
                  const float* gw, const float* gb, const float* xp, float* gxp, float* gin) {
  constexpr bool kWarp = P::kWarp;
  const int64_t HW = H * W, HWo = Ho * Wo;
  const int64_t R = tile_rows(Ho, Wo), ntiles = (Ho + R - 1) / R;
  // Taps of every output pixel for pass 2: offsets and weights times the mask.
  at::Tensor taps_o = at::empty({4, N * HWo}, at::kInt);
  at::Tensor taps_w = at::empty({4, N * HWo}, at::kFloat);
  int32_t* to = taps_o.mutable_data_ptr<int32_t>();
  float* tw = taps_w.mutable_data_ptr<float>();
  const int64_t span = window_span();
  at::parallel_for(0, N * ntiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<typename P::Row> rows;
    for (int64_t r = 0; r < R; ++r) rows.push_back(p.row());
    BwdTile b(R * Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / ntiles, i0 = (t % ntiles) * R, i1 = std::min(Ho, i0 + R), npx = (i1 - i0) * Wo;
      for (int64_t i = i0; i < i1; ++i) {
        auto& row = rows[i - i0];
        p.set(row, n, i);
        const Taps<float>& tp = row.taps();
        const float* sc = row.scale();
        const int64_t j0 = (i - i0) * Wo;
        b.rt.fill(tp, Wo, nullptr, j0);
        for (int64_t j = 0; j < Wo; ++j) {
          b.fx[j0 + j] = tp.tx[j];
          b.fy[j0 + j] = tp.ty[j];
          b.rt.keep[j0 + j] = sc ? 1.f - sc[j] : 0.f;
        }
        const int64_t gbase = n * HWo + i * Wo;
        for (int k = 0; k < 4; ++k)
          for (int64_t j = 0; j < Wo; ++j) {
            to[k * N * HWo + gbase + j] = b.rt.o[k][j0 + j];
            tw[k * N * HWo + gbase + j] = sc ? b.rt.w[k][j0 + j] * sc[j] : b.rt.w[k][j0 + j];
          }
      }
      if (span) classify(b.rt, npx, H, W, W, span);
      std::fill(b.ax.begin(), b.ax.begin() + npx, 0.f);
      std::fill(b.ay.begin(), b.ay.begin() + npx, 0.f);
      std::fill(b.am.begin(), b.am.begin() + npx, 0.f);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t o = (n * C + c) * HWo + i0 * Wo;
        const float* next = c + 1 < C ? in + (n * C + c + 1) * HW : nullptr;
        bwd_plane<kWarp>(b, npx, in + (n * C + c) * HW, next, W, gw + o, kWarp ? gb + o : nullptr,
                         kWarp ? xp + o : nullptr, kWarp ? gxp + o : nullptr);
      }
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t j0 = (i - i0) * Wo;
        p.finish(rows[i - i0], n, i, b.ax.data() + j0, b.ay.data() + j0, b.am.data() + j0);
      }
    }
  });
  // Pass 2: blocks of 16 channels of one image; each channel walks every pixel in order, in
  // chunks of 4k pixels whose taps stay in L2 while the block's channels scatter them.
  const int64_t cblock = 16, nblocks = (C + cblock - 1) / cblock, chunk = 4096;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nblocks, c0 = (t % nblocks) * cblock, c1 = std::min(C, c0 + cblock);
      for (int64_t q0 = 0; q0 < HWo; q0 += chunk) {
        const int64_t q1 = std::min(HWo, q0 + chunk);
        const int32_t* o0 = to + n * HWo;
        const int32_t* o1 = o0 + N * HWo;
        const int32_t* o2 = o1 + N * HWo;
        const int32_t* o3 = o2 + N * HWo;
        const float* w0 = tw + n * HWo;
        const float* w1 = w0 + N * HWo;
        const float* w2 = w1 + N * HWo;
        const float* w3 = w2 + N * HWo;
        for (int64_t c = c0; c < c1; ++c) {
          float* gf = gin + (n * C + c) * HW;
          const float* ga = gw + (n * C + c) * HWo;
          const float* gbb = kWarp ? gb + (n * C + c) * HWo : nullptr;
          for (int64_t q = q0; q < q1; ++q) {
            const float G = kWarp ? ga[q] + gbb[q] : ga[q];
            if (o0[q] >= 0) gf[o0[q]] += w0[q] * G;
            if (o1[q] >= 0) gf[o1[q]] += w1[q] * G;
            if (o2[q] >= 0) gf[o2[q]] += w2[q] * G;
            if (o3[q] >= 0) gf[o3[q]] += w3[q] * G;
          }
        }
      }
    }
  });
}

// channels_last float32, pass 1 of one output row (AVX2): sums over contiguous channel vectors.
#ifdef LEO_WARP_AVX2
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// kGb = false (staged NCHW backward): gw already holds G = grad_warped + grad_blended, and gb, xp,
// gxp are unused; am then sums only G * s (the caller subtracts the sum of gb * x and writes grad_x).
template <bool kWarp, bool kGb = kWarp>
__attribute__((target("avx2,fma"))) void bwd_row_cl_avx2(const Taps<float>& tp, const float* scale, int64_t Wo,
                                                         int64_t C, const float* inb, const float* zero,
                                                         const float* gw, const float* gb, const float* xp, float* gxp,
                                                         float* ax, float* ay, float* am) {
  const __m256 ones = _mm256_set1_ps(1.f);
  for (int64_t j = 0; j < Wo; ++j) {
    const float* p[4];
    float w[4];
    for (int k = 0; k < 4; ++k) {
      p[k] = tp.ok[k][j] ? inb + tp.off[k][j] : zero;
      w[k] = tp.w[k][j];
    }
    const float fx = tp.tx[j], fy = tp.ty[j], keep = scale ? 1.f - scale[j] : 0.f;
    const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(w[1]), w2 = _mm256_set1_ps(w[2]),
                 w3 = _mm256_set1_ps(w[3]), fxv = _mm256_set1_ps(fx), fyv = _mm256_set1_ps(fy),
                 kv = _mm256_set1_ps(keep), fx1 = _mm256_sub_ps(ones, fxv), fy1 = _mm256_sub_ps(ones, fyv);
    __m256 sax = _mm256_setzero_ps(), say = _mm256_setzero_ps(), sam = _mm256_setzero_ps();
    const int64_t o = j * C;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 v00 = _mm256_loadu_ps(p[0] + c), v01 = _mm256_loadu_ps(p[1] + c), v10 = _mm256_loadu_ps(p[2] + c),
                   v11 = _mm256_loadu_ps(p[3] + c);
      __m256 G = _mm256_loadu_ps(gw + o + c);
      if constexpr (kWarp) {
        __m256 s = _mm256_mul_ps(w0, v00);
        s = _mm256_fmadd_ps(w1, v01, s);
        s = _mm256_fmadd_ps(w2, v10, s);
        s = _mm256_fmadd_ps(w3, v11, s);
        if constexpr (kGb) {
          const __m256 gbv = _mm256_loadu_ps(gb + o + c);
          G = _mm256_add_ps(G, gbv);
          _mm256_storeu_ps(gxp + o + c, _mm256_mul_ps(gbv, kv));
          sam = _mm256_add_ps(sam, _mm256_fmsub_ps(G, s, _mm256_mul_ps(gbv, _mm256_loadu_ps(xp + o + c))));
        } else {
          sam = _mm256_fmadd_ps(G, s, sam);
        }
      }
      sax = _mm256_fmadd_ps(G, _mm256_fmadd_ps(fyv, _mm256_sub_ps(v11, v10), _mm256_mul_ps(fy1, _mm256_sub_ps(v01, v00))), sax);
      say = _mm256_fmadd_ps(G, _mm256_fmadd_ps(fxv, _mm256_sub_ps(v11, v01), _mm256_mul_ps(fx1, _mm256_sub_ps(v10, v00))), say);
    }
    float a = hsum8(sax), y = hsum8(say), m = hsum8(sam);
    for (; c < C; ++c) {
      const float gbv = kGb ? gb[o + c] : 0.f, G = gw[o + c] + gbv;
      if constexpr (kGb) gxp[o + c] = gbv * keep;
      bwd_pixel<kWarp>(p[0][c], p[1][c], p[2][c], p[3][c], w, fx, fy, G, gbv, kGb ? xp[o + c] : 0.f, a, y, m);
    }
    ax[j] = a;
    ay[j] = y;
    am[j] = m;
  }
}
#endif

// channels_last float32 scatter of one pixel's gradient vector into its 4 corners (AVX2).
#ifdef LEO_WARP_AVX2
__attribute__((target("avx2,fma"))) void scatter_cl_avx2(const int32_t* const o[4], const float* const w[4], int64_t q0,
                                                         int64_t q1, int64_t C, int64_t c0, int64_t c1, const float* gw,
                                                         const float* gb, float* gin) {
  for (int64_t q = q0; q < q1; ++q) {
    const float* ga = gw + q * C;
    const float* gbb = gb ? gb + q * C : nullptr;
    for (int k = 0; k < 4; ++k) {
      const int32_t off = o[k][q];
      if (off < 0) continue;
      const float wk = w[k][q];
      const __m256 wv = _mm256_set1_ps(wk);
      float* gf = gin + off;
      int64_t c = c0;
      for (; c + 8 <= c1; c += 8) {
        __m256 G = _mm256_loadu_ps(ga + c);
        if (gbb) G = _mm256_add_ps(G, _mm256_loadu_ps(gbb + c));
        _mm256_storeu_ps(gf + c, _mm256_fmadd_ps(wv, G, _mm256_loadu_ps(gf + c)));
      }
      for (; c < c1; ++c) gf[c] += wk * (gbb ? ga[c] + gbb[c] : ga[c]);
    }
  }
}
#endif

// channels_last float32, both passes (needs AVX2). in: (N, H, W, C) dense; gw, gb, xp, gxp:
// (N, Ho, Wo, C) dense; gin: (N, H, W, C) dense, zeroed. Pass 1 over rows stores the taps; pass 2
// scatters by blocks of 32 channels of one image, each walking every pixel in order.
template <class P>
void bwd_f32_cl(const P& p, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo, const float* in,
                const float* gw, const float* gb, const float* xp, float* gxp, float* gin) {
#ifdef LEO_WARP_AVX2
  constexpr bool kWarp = P::kWarp;
  const int64_t HWo = Ho * Wo, isN = H * W * C;
  at::Tensor taps_o = at::empty({4, N * HWo}, at::kInt);
  at::Tensor taps_w = at::empty({4, N * HWo}, at::kFloat);
  int32_t* to = taps_o.mutable_data_ptr<int32_t>();
  float* tw = taps_w.mutable_data_ptr<float>();
  std::vector<float> zero_row(C, 0.f);
  at::parallel_for(0, N * Ho, grain_for(2 * C * Wo), [&](int64_t begin, int64_t end) {
    auto row = p.row();
    std::vector<float> ax(Wo), ay(Wo), am(Wo);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, i = r % Ho, o = r * Wo * C;
      p.set(row, n, i);
      const Taps<float>& tp = row.taps();
      const float* sc = row.scale();
      bwd_row_cl_avx2<kWarp>(tp, sc, Wo, C, in + n * isN, zero_row.data(), gw + o, kWarp ? gb + o : nullptr,
                             kWarp ? xp + o : nullptr, kWarp ? gxp + o : nullptr, ax.data(), ay.data(), am.data());
      p.finish(row, n, i, ax.data(), ay.data(), am.data());
      for (int k = 0; k < 4; ++k)
        for (int64_t j = 0; j < Wo; ++j) {
          to[k * N * HWo + r * Wo + j] = tp.ok[k][j] ? static_cast<int32_t>(tp.off[k][j]) : -1;
          tw[k * N * HWo + r * Wo + j] = sc ? tp.w[k][j] * sc[j] : tp.w[k][j];
        }
    }
  });
  const int64_t cblock = 32, nblocks = (C + cblock - 1) / cblock;
  at::parallel_for(0, N * nblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / nblocks, c0 = (t % nblocks) * cblock, c1 = std::min(C, c0 + cblock);
      const int32_t* o[4];
      const float* w[4];
      for (int k = 0; k < 4; ++k) {
        o[k] = to + k * N * HWo + n * HWo;
        w[k] = tw + k * N * HWo + n * HWo;
      }
      scatter_cl_avx2(o, w, 0, HWo, C, c0, c1, gw + n * HWo * C, kWarp ? gb + n * HWo * C : nullptr, gin + n * isN);
    }
  });
#endif
}

// NCHW float32 through NHWC scratch copies, one image at a time (the forward's staging, applied to
// the backward): the channels_last row pass and scatter run on the image's features and on
// G = grad_warped + grad_blended transposed into scratch, and the input gradient is transposed back.
// The NCHW kernels do 4 corner loads or 4 branchy scatter-adds per channel and pixel; here each
// corner is one run of C contiguous values. Measured (warp_inpaint backward, 2 threads, AVX-512
// EPYC): see use_staged_bwd.
#ifdef LEO_WARP_AVX2
// dst[p * C + c] = gw[c * cs + p] + gb[c * cs + p] for pixels [p0, p1) (gb may be null), and with
// gb: gbx[p] = sum over c of gb * x, the term of the mask gradient the row pass leaves out.
__attribute__((target("avx2,fma"))) void stage_grad_nhwc(const float* gw, const float* gb, const float* xp,
                                                        int64_t cs, int64_t C, int64_t p0, int64_t p1, float* dst,
                                                        float* gbx) {
  const int64_t C8 = C & ~int64_t(7);
  auto one = [&](int64_t p, int64_t c) {
    const float b = gb ? gb[c * cs + p] : 0.f;
    dst[p * C + c] = gw[c * cs + p] + b;
    if (gb) gbx[p] += b * xp[c * cs + p];
  };
  for (int64_t q0 = p0; q0 < p1; q0 += 512) {
    const int64_t q1 = std::min(p1, q0 + 512), q8 = q0 + ((q1 - q0) & ~int64_t(7));
    if (gb) std::fill(gbx + q0, gbx + q1, 0.f);
    for (int64_t c = 0; c < C8; c += 8)
      for (int64_t p = q0; p < q8; p += 8) {
        __m256 r[8];
        if (gb) {
          __m256 acc = _mm256_loadu_ps(gbx + p);
          for (int k = 0; k < 8; ++k) {
            const int64_t o = (c + k) * cs + p;
            const __m256 b = _mm256_loadu_ps(gb + o);
            r[k] = _mm256_add_ps(_mm256_loadu_ps(gw + o), b);
            acc = _mm256_fmadd_ps(b, _mm256_loadu_ps(xp + o), acc);
          }
          _mm256_storeu_ps(gbx + p, acc);
        } else {
          for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(gw + (c + k) * cs + p);
        }
        transpose8x8(r);
        for (int k = 0; k < 8; ++k) _mm256_storeu_ps(dst + (p + k) * C + c, r[k]);
      }
    for (int64_t c = C8; c < C; ++c)
      for (int64_t p = q0; p < q8; ++p) one(p, c);
    for (int64_t p = q8; p < q1; ++p)
      for (int64_t c = 0; c < C; ++c) one(p, c);
  }
}
#endif

// Whether the NCHW float32 backward stages (needs AVX2): LEO_WARP_CPU_STAGED forces it (1) or the
// NCHW kernels (0), as for the forward; unset, for C >= 8. warp_inpaint backward, staged against
// NCHW kernels (2 threads, AVX-512 EPYC, interleaved, 2026-12-07): 2.3x at (4,64,128,128) random
// flows, 1.8-2.0x smooth, 1.4x at (8,64,256,256) and (1,64,256,256) smooth, 1.9x (1,64,128,128)
// random, 1.3-2.1x at C = 16, 1.2-1.6x at C = 8, 1.5x at (8,128,16,16); but 0.74-0.91x at C = 3.
bool use_staged_bwd(int64_t C) {
#ifdef LEO_WARP_AVX2
  if (!cpu_has_avx2()) return false;
  const int o = staged_override();
  return o == 1 || (o == -1 && C >= 8);
#else
  (void)C;
  return false;
#endif
}

// Whether a float32 NCHW backward with these (N, C, H, W) feature and output-gradient tensors takes
// the staged path. The caller decides, since that path overwrites the input gradient and the others
// accumulate into a zeroed one.
bool staged_bwd_applies(const at::Tensor& in, const at::Tensor& grad) {
  auto planes = [](const at::Tensor& t) {
    return t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(1) == t.size(2) * t.size(3);
  };
  return in.scalar_type() == at::kFloat && !use_channels_last(in) && planes(in) && planes(grad) &&
         in.size(1) * in.size(2) * in.size(3) < (int64_t(1) << 31) && use_staged_bwd(in.size(1));
}

// in: (N, C, H, W) contiguous; gw, gb, xp, gxp: (N, C, Ho, Wo) contiguous; gin: (N, C, H, W)
// contiguous (overwritten, need not be zeroed). p's taps must use the NHWC strides (W * C, C).
template <class P>
void bwd_f32_nchw_staged(const P& p, int64_t N, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                         const float* in, const float* gw, const float* gb, const float* xp, float* gxp, float* gin) {
#ifdef LEO_WARP_AVX2
  constexpr bool kWarp = P::kWarp;
  const int64_t HW = H * W, HWo = Ho * Wo;
  std::vector<float> own;
  float* st_in = staging_buffer(HW * C, own);
  at::Tensor g_t = at::empty({HWo * C}, at::kFloat), gin_t = at::zeros({HW * C}, at::kFloat);
  at::Tensor side = at::empty({2, HWo}, at::kFloat);  // sum of gb * x, and keep = 1 - mask
  at::Tensor taps_o = at::empty({4, HWo}, at::kInt), taps_w = at::empty({4, HWo}, at::kFloat);
  float* st_g = g_t.mutable_data_ptr<float>();
  float* st_gin = gin_t.mutable_data_ptr<float>();
  float* gbx = side.mutable_data_ptr<float>();
  float* keep = gbx + HWo;
  int32_t* to = taps_o.mutable_data_ptr<int32_t>();
  float* tw = taps_w.mutable_data_ptr<float>();
  std::vector<float> zero_row(C, 0.f);
  // Channel blocks of the scatter: 32 when that still gives every thread a block of one image.
  const int64_t nt = at::get_num_threads();
  const int64_t cblock = C >= 32 * nt ? 32 : C >= 16 * nt ? 16 : 8, nblocks = (C + cblock - 1) / cblock;
  for (int64_t n = 0; n < N; ++n) {
    const float* gwn = gw + n * C * HWo;
    const float* gbn = kWarp ? gb + n * C * HWo : nullptr;
    const float* xn = kWarp ? xp + n * C * HWo : nullptr;
    at::parallel_for(0, (HWo + 7) / 8, grain_for(8 * C), [&](int64_t b0, int64_t b1) {
      stage_grad_nhwc(gwn, gbn, xn, HWo, C, 8 * b0, std::min(HWo, 8 * b1), st_g, gbx);
    });
    at::parallel_for(0, (HW + 7) / 8, grain_for(8 * C), [&](int64_t b0, int64_t b1) {
      stage_nhwc(in + n * C * HW, HW, C, 8 * b0, std::min(HW, 8 * b1), st_in);
    });
    // Pass 1: the flow and mask gradients by rows, and each pixel's taps for the scatter.
    at::parallel_for(0, Ho, grain_for(2 * C * Wo), [&](int64_t i0, int64_t i1) {
      auto row = p.row();
      std::vector<float> ax(Wo), ay(Wo), am(Wo);
      for (int64_t i = i0; i < i1; ++i) {
        p.set(row, n, i);
        const Taps<float>& tp = row.taps();
        const float* sc = row.scale();
        const int64_t r = i * Wo;
        bwd_row_cl_avx2<kWarp, false>(tp, sc, Wo, C, st_in, zero_row.data(), st_g + r * C, nullptr, nullptr, nullptr,
                                      ax.data(), ay.data(), am.data());
        if constexpr (kWarp)
          for (int64_t j = 0; j < Wo; ++j) {
            am[j] -= gbx[r + j];
            keep[r + j] = 1.f - sc[j];
          }
        p.finish(row, n, i, ax.data(), ay.data(), am.data());
        for (int k = 0; k < 4; ++k)
          for (int64_t j = 0; j < Wo; ++j) {
            to[k * HWo + r + j] = tp.ok[k][j] ? static_cast<int32_t>(tp.off[k][j]) : -1;
            tw[k * HWo + r + j] = sc ? tp.w[k][j] * sc[j] : tp.w[k][j];
          }
      }
    });
    if constexpr (kWarp)
      at::parallel_for(0, C, grain_for(HWo), [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          const float* b = gbn + c * HWo;
          float* o = gxp + (n * C + c) * HWo;
          for (int64_t q = 0; q < HWo; ++q) o[q] = b[q] * keep[q];
        }
      });
    // Pass 2: scatter G into the zeroed scratch by channel blocks (each walks every pixel in order).
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      const int32_t* o[4] = {to, to + HWo, to + 2 * HWo, to + 3 * HWo};
      const float* w[4] = {tw, tw + HWo, tw + 2 * HWo, tw + 3 * HWo};
      for (int64_t b = b0; b < b1; ++b)
        scatter_cl_avx2(o, w, 0, HWo, C, b * cblock, std::min(C, (b + 1) * cblock), st_g, nullptr, st_gin);
    });
    // Back to NCHW, leaving the scratch zeroed for the next image.
    at::parallel_for(0, (HW + 511) / 512, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t p0 = 512 * b, p1 = std::min(HW, p0 + 512);
        unstage_tile<false>(st_gin + p0 * C, p1 - p0, C, nullptr, nullptr, gin + n * C * HW + p0, nullptr, HW, false);
        std::fill(st_gin + p0 * C, st_gin + p1 * C, 0.f);
      }
    });
  }
#else
  (void)p, (void)N, (void)C, (void)H, (void)W, (void)Ho, (void)Wo, (void)in, (void)gw, (void)gb, (void)xp, (void)gxp,
      (void)gin;
#endif
}

struct GsBwdPolicy {
  static constexpr bool kWarp = false;
  const float* g;
  int64_t H, W, isH, isW, pad;
  bool align;
  int64_t Ho, Wo;
  float* gg;
  struct Row {
    Taps<float> tp;
    explicit Row(int64_t n) : tp(n) {}
    const Taps<float>& taps() const { return tp; }
    const float* scale() const { return nullptr; }
  };
  Row row() const { return Row(Wo); }
  void set(Row& r, int64_t n, int64_t i) const {
    const float* grow = g + (n * Ho + i) * Wo * 2;
    grid_taps_row(grow, Wo, H, W, isH, isW, pad, align, r.tp);
  }
  void finish(const Row& r, int64_t n, int64_t i, const float* ax, const float* ay, const float*) const {
    float* out = gg + (n * Ho + i) * Wo * 2;
    for (int64_t j = 0; j < Wo; ++j) {
      out[2 * j] = ax[j] * r.tp.dx[j];
      out[2 * j + 1] = ay[j] * r.tp.dy[j];
    }
  }
};

template <typename scalar_t, bool CL>
void grid_sample_bwd_impl(const at::Tensor& go, const at::Tensor& input, const at::Tensor& grid, at::Tensor& gin_acc,
                          at::Tensor& ggrid, int64_t pad, bool align, bool staged) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = grid.size(1), Wo = grid.size(2);
  const int64_t isN = input.stride(0), isC = input.stride(1), isH = input.stride(2), isW = input.stride(3);
  const int64_t gsN = go.stride(0), gsC = go.stride(1), gsH = go.stride(2), gsW = go.stride(3);
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* g = grid.const_data_ptr<scalar_t>();
  const scalar_t* gop = go.const_data_ptr<scalar_t>();
  scalar_t* gg = ggrid.mutable_data_ptr<scalar_t>();

  bool pass1_done = false;
  if constexpr (std::is_same_v<scalar_t, float>) {
    const GsBwdPolicy pol{g, H, W, isH, isW, pad, align, Ho, Wo, gg};
    if (!CL && staged) {
      const GsBwdPolicy nhwc{g, H, W, W * C, C, pad, align, Ho, Wo, gg};
      bwd_f32_nchw_staged(nhwc, N, C, H, W, Ho, Wo, in, gop, nullptr, nullptr, nullptr, gin_acc.mutable_data_ptr<float>());
      return;
    }
    if (!CL && isW == 1 && isH == W && gsW == 1 && gsH == Wo && gsC == Ho * Wo && H * W < (int64_t(1) << 31) &&
        gin_acc.is_contiguous()) {
      bwd_f32_nchw(pol, N, C, H, W, Ho, Wo, in, gop, nullptr, nullptr, nullptr, gin_acc.mutable_data_ptr<float>());
      return;
    }
#ifdef LEO_WARP_AVX2
    if (CL && cpu_has_avx2() && isC == 1 && isW == C && isH == W * C && isN == H * W * C && gsC == 1 && gsW == C &&
        gsH == Wo * C && gsN == Ho * Wo * C && H * W * C < (int64_t(1) << 31) &&
        gin_acc.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      bwd_f32_cl(pol, N, C, H, W, Ho, Wo, in, gop, nullptr, nullptr, nullptr, gin_acc.mutable_data_ptr<float>());
      return;
    }
#endif
  }
  // Pass 1: grad_grid, gathered over channels per output pixel.
  if (!pass1_done) at::parallel_for(0, N * Ho, grain_for(C * Wo), [&](int64_t begin, int64_t end) {
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
  const bool staged = staged_bwd_applies(input, go);
  at::Tensor gin_acc = fresh_output(at::empty(input.sizes(), input.options().dtype(acc_dtype).memory_format(fmt)));
  if (!staged) gin_acc.zero_();
  at::Tensor ggrid = at::empty(grid.sizes(), grid.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "grid_sample_bwd_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      grid_sample_bwd_impl<scalar_t, true>(go, input, grid, gin_acc, ggrid, pad, align, staged);
    else
      grid_sample_bwd_impl<scalar_t, false>(go, input, grid, gin_acc, ggrid, pad, align, staged);
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
#ifdef LEO_WARP_AVX2
    if constexpr (std::is_same_v<T, float> && std::is_same_v<S, float>) {
      if (cpu_has_avx512_flow() && H < (int64_t(1) << 24) && W < (int64_t(1) << 24)) {  // exact float indices
        flow_row_avx512(c0, c1, c2, i, H, W, sH, sW, align, tp, t0.data(), t1.data(), mask.data());
        return;
      }
    }
#endif
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
  // Row scratch of one task: composed = logits (+ up2(skip)) of row (n, i), kept in acc_t for the
  // grid and stored in scalar_t, then the taps and mask of the row in fr.
  struct Scratch {
    FlowRow<acc_t> fr;
    std::vector<acc_t> comp, up, tmp;
    Scratch(int64_t W, int64_t Wc) : fr(W), comp(3 * W), up(W), tmp(Wc + 1) {}
  };
  // tH, tW: the strides the row's taps address (feat's, or the NHWC scratch's when staged).
  auto flow_row = [&](Scratch& s, int64_t n, int64_t i, int64_t tH, int64_t tW) {
    for (int64_t k = 0; k < 3; ++k) {
      const scalar_t* l = lp + ((n * 3 + k) * H + i) * W;
      acc_t* cr = s.comp.data() + k * W;
      if (sp) {
        up2_row(sp + (n * 3 + k) * Hc * Wc, Hc, Wc, i, s.up.data(), s.tmp.data());
        for (int64_t j = 0; j < W; ++j) cr[j] = static_cast<acc_t>(l[j]) + s.up[j];
      } else {
        for (int64_t j = 0; j < W; ++j) cr[j] = static_cast<acc_t>(l[j]);
      }
      scalar_t* co = cp + ((n * 3 + k) * H + i) * W;
      for (int64_t j = 0; j < W; ++j) co[j] = static_cast<scalar_t>(cr[j]);
    }
    s.fr.set(s.comp.data(), s.comp.data() + W, s.comp.data() + 2 * W, i, H, W, tH, tW, align);
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (!CL && H * W < (int64_t(1) << 31) && sW == 1 && sH == W) {
#ifdef LEO_WARP_AVX2
      if (use_staging(staged_override(), window_span(), N, H, W, H, W, sH, [&](Scratch& s, RowTaps32& rt, int64_t n, int64_t i) {
            flow_row(s, n, i, sH, sW);
            rt.fill(s.fr.tp, W, nullptr);
          }, [&] { return Scratch(W, Wc); })) {
        // NHWC staging (see stage_nhwc): one image at a time, so the scratch copy stays in cache.
        struct State {
          Scratch s;
          std::vector<float> keep;
        };
        const std::vector<float> zero_row(C, 0.f);
        const bool stream = stream_outputs(2 * warped.numel() * int64_t(sizeof(float)));
        run_staged(
            N, C, H * W, sC, H, W, [&](int64_t n) { return fp + n * sN; },
            [&] { return State{Scratch(W, Wc), std::vector<float>(staged_tile_rows(W, C) * W)}; },
            [&](State& a, int64_t n, int64_t i, const float* st, float* row, int64_t k) {
              flow_row(a.s, n, i, W * C, C);
              sample_row_cl<false>(a.s.fr.tp, a.s.fr.mask.data(), W, C, C, st, zero_row.data(), row, nullptr, nullptr);
              for (int64_t j = 0; j < W; ++j) a.keep[k * W + j] = 1.f - a.s.fr.mask[j];
            },
            [&](State& a, int64_t n, int64_t i0, int64_t i1, const float* tile) {
              const int64_t o = n * sN + i0 * W;
              unstage_tile<true>(tile, (i1 - i0) * W, C, a.keep.data(), xp + o, wp + o, bp + o, sC, stream);
            });
        return;
      }
#endif
      // Tiles of rows: taps (mask folded in) once, then every channel plane in one contiguous run.
      const int64_t R = tile_rows(H, W), ntiles = (H + R - 1) / R;
      at::parallel_for(0, N * ntiles, 1, [&](int64_t begin, int64_t end) {
        Scratch s(W, Wc);
        RowTaps32 rt(R * W);
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / ntiles, i0 = (t % ntiles) * R, i1 = std::min(H, i0 + R);
          for (int64_t i = i0; i < i1; ++i) {
            flow_row(s, n, i, sH, sW);
            rt.fill(s.fr.tp, W, s.fr.mask.data(), (i - i0) * W);
          }
          const int64_t npx = (i1 - i0) * W;
          classify_for_cpu(rt, npx, H, W, sH);
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = n * sN + c * sC + i0 * W;
            sample_plane(rt, npx, fp + n * sN + c * sC, c + 1 < C ? fp + n * sN + (c + 1) * sC : nullptr, sH, wp + o,
                         xp + o, bp + o);
          }
        }
      });
      return;
    }
    if (CL && sC == 1) {
      std::vector<float> zero_row(C, 0.f);
      const bool stream = stream_outputs(2 * warped.numel() * int64_t(sizeof(float)));
      at::parallel_for(0, N * H, grain_for(C * W), [&](int64_t begin, int64_t end) {
        Scratch s(W, Wc);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / H, i = r % H;
          flow_row(s, n, i, sH, sW);
          const int64_t o = n * sN + i * sH;
          sample_row_cl<true>(s.fr.tp, s.fr.mask.data(), W, sW, C, fp + n * sN, zero_row.data(), wp + o, xp + o, bp + o,
                              stream);
        }
      });
      return;
    }
  }
  at::parallel_for(0, N * H, grain_for(C * W), [&](int64_t begin, int64_t end) {
    Scratch s(W, Wc);
    std::vector<PackedTap<acc_t>> packed(CL ? 0 : W);
    std::vector<acc_t> keep(W);
    std::vector<scalar_t> zero_row(CL ? C : 0, scalar_t(0));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, i = r % H;
      flow_row(s, n, i, sH, sW);
      const auto& tp = s.fr.tp;
      const acc_t* m = s.fr.mask.data();
      const int64_t rowoff = n * sN + i * sH;
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
  at::Tensor warped = fresh_output(at::empty(feat.sizes(), feat.options().memory_format(fmt)));
  at::Tensor blended = fresh_output(at::empty(feat.sizes(), feat.options().memory_format(fmt)));
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

struct WiBwdPolicy {
  static constexpr bool kWarp = true;
  const float* cp;  // composed, float32
  const float* gcp;
  float* glp;
  int64_t H, W, sH, sW;
  bool align;
  struct Row {
    FlowRow<float> fr;
    explicit Row(int64_t n) : fr(n) {}
    const Taps<float>& taps() const { return fr.tp; }
    const float* scale() const { return fr.mask.data(); }
  };
  Row row() const { return Row(W); }
  void set(Row& r, int64_t n, int64_t i) const {
    const float* c0 = cp + ((n * 3 + 0) * H + i) * W;
    r.fr.set(c0, c0 + H * W, c0 + 2 * H * W, i, H, W, sH, sW, align);
  }
  void finish(const Row& r, int64_t n, int64_t i, const float* ax, const float* ay, const float* am) const {
    const FlowRow<float>& fr = r.fr;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t e0 = ((n * 3 + 0) * H + i) * W + j, e1 = e0 + H * W, e2 = e1 + H * W;
      const float mj = fr.mask[j];
      glp[e0] = ax[j] * mj * fr.tp.dx[j] * (1 - fr.t0[j] * fr.t0[j]) + gcp[e0];
      glp[e1] = ay[j] * mj * fr.tp.dy[j] * (1 - fr.t1[j] * fr.t1[j]) + gcp[e1];
      glp[e2] = am[j] * mj * (1 - mj) + gcp[e2];
    }
  }
};

template <typename scalar_t, bool CL>
void warp_inpaint_bwd_impl(const at::Tensor& gw, const at::Tensor& gb, const at::Tensor& gc, const at::Tensor& feat,
                           const at::Tensor& x, const at::Tensor& composed, bool align, at::Tensor& gfeat_acc,
                           at::Tensor& gx, at::Tensor& glogits, bool staged) {
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

  bool pass1_done = false;
  if constexpr (std::is_same_v<scalar_t, float>) {
    const WiBwdPolicy pol{cp, gcp, glp, H, W, sH, sW, align};
    if (!CL && staged) {
      const WiBwdPolicy nhwc{cp, gcp, glp, H, W, W * C, C, align};
      bwd_f32_nchw_staged(nhwc, N, C, H, W, H, W, fp, gwp, gbp, xp, gxp, gfeat_acc.mutable_data_ptr<float>());
      return;
    }
    if (!CL && sW == 1 && sH == W && H * W < (int64_t(1) << 31) && gfeat_acc.is_contiguous()) {
      bwd_f32_nchw(pol, N, C, H, W, H, W, fp, gwp, gbp, xp, gxp, gfeat_acc.mutable_data_ptr<float>());
      return;
    }
#ifdef LEO_WARP_AVX2
    if (CL && cpu_has_avx2() && sC == 1 && sW == C && sH == W * C && sN == H * W * C && H * W * C < (int64_t(1) << 31) &&
        gfeat_acc.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      bwd_f32_cl(pol, N, C, H, W, H, W, fp, gwp, gbp, xp, gxp, gfeat_acc.mutable_data_ptr<float>());
      return;
    }
#endif
  }
  // Pass 1 (rows): grad_x, and the flow/mask gradients gathered over channels.
  if (!pass1_done) at::parallel_for(0, N * H, grain_for(2 * C * W), [&](int64_t begin, int64_t end) {
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
  const bool staged = staged_bwd_applies(feat, gw) && staged_bwd_applies(x, gb);
  at::Tensor gfeat_acc = fresh_output(at::empty(feat.sizes(), feat.options().dtype(acc_dtype).memory_format(fmt)));
  if (!staged) gfeat_acc.zero_();
  at::Tensor gx = fresh_output(at::empty(feat.sizes(), feat.options().memory_format(fmt)));
  at::Tensor glogits = at::empty(composed.sizes(), gc.options());
  at::Tensor gskip;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "warp_inpaint_bwd_cpu", [&] {
    if (fmt == at::MemoryFormat::ChannelsLast)
      warp_inpaint_bwd_impl<scalar_t, true>(gw, gb, gc, feat, x, composed, align, gfeat_acc, gx, glogits, staged);
    else
      warp_inpaint_bwd_impl<scalar_t, false>(gw, gb, gc, feat, x, composed, align, gfeat_acc, gx, glogits, staged);
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
