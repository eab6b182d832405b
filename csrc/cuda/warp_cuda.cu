// CUDA kernels of the warp ops (grid_sample, compose_flow, warp_inpaint); docs/OPS.md.
// Implements the compiled ops declared in csrc/cpu/warp_cpu.cpp for the CUDA dispatch key.
//
// Design (what PyTorch's own grid_sample kernel does not do):
// - Work items are (output pixel, channel group), so small and large C both fill the GPU.
//   NCHW (any strides): pixel-fastest items, each thread loops over kCPT channels reusing its
//   coordinates. channels_last: channel-fastest items, each thread moves 16 bytes per access.
// - Coordinates, interpolation weights and every accumulation are float32 (double for double).
// - warp_inpaint computes composed logits (incl. the FIR [1,3,3,1] upsampling of skip), tanh, the
//   linspace grid and the sigmoid mask in registers; grid and mask are never written to memory.
// - Backward: per-pixel reductions over channels (grid / mask gradients) go to per-channel-group
//   partial buffers summed in a fixed order (deterministic). Input gradients are scattered with
//   float32 atomics into a float32 buffer (cast once at the end for half types), or, in
//   deterministic mode, gathered: the 4 corner targets of every output pixel are sorted (stable)
//   and each input pixel sums its contributions in that fixed order (bitwise repeatable).
// - Everything runs on the current stream, without host synchronization (CUDA-graph safe).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>
#include "leo_cuda.h"  // CUDA headers, LEO_LAUNCH; host emulation under LEO_CUDA_EMULATE

#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

namespace {

constexpr int kThreads = 256;
constexpr int kCPT = 8;  // channels per thread on the strided (NCHW / generic) path

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// 16-byte vector of VEC elements (a single ld/st.global.v4 for aligned pointers).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, VEC>& v) {
  *reinterpret_cast<Vec<T, VEC>*>(p) = v;
}

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }
// grid (N, Ho, Wo, 2) strides in the same slots: n, c <- coordinate (x/y), h, w.
Strides4 grid_strides_of(const at::Tensor& g) { return {g.stride(0), g.stride(3), g.stride(1), g.stride(2)}; }

// ------------------------------------------------------------------ coordinate math (PyTorch semantics)
template <typename acc_t>
__device__ __forceinline__ acc_t clip_coord(acc_t x, int size, acc_t& g) {
  const acc_t hi = static_cast<acc_t>(size - 1);
  if (x <= acc_t(0)) {
    g = acc_t(0);
    return acc_t(0);
  }
  if (x >= hi) {
    g = acc_t(0);
    return hi;
  }
  g = acc_t(1);
  return x;
}

template <typename acc_t>
__device__ __forceinline__ acc_t reflect_coord(acc_t x, int twice_low, int twice_high, acc_t& g) {
  if (twice_low == twice_high) {
    g = acc_t(0);
    return acc_t(0);
  }
  const acc_t lo = static_cast<acc_t>(twice_low) / 2;
  const acc_t span = static_cast<acc_t>(twice_high - twice_low) / 2;
  acc_t d = x - lo;
  g = acc_t(1);
  if (d < acc_t(0)) {
    g = acc_t(-1);
    d = -d;
  }
  const acc_t flips = floor(d / span);
  const acc_t extra = d - flips * span;
  if (fmod(flips, acc_t(2)) == acc_t(0)) return extra + lo;
  g = -g;
  return span - extra + lo;
}

// Normalized coordinate -> padded pixel coordinate; `mult` = d(pixel)/d(normalized).
template <typename acc_t>
__device__ __forceinline__ acc_t source_coord(acc_t coord, int size, int pad, bool align, acc_t& mult) {
  acc_t x;
  if (align) {
    x = (coord + acc_t(1)) * acc_t(0.5) * static_cast<acc_t>(size - 1);
    mult = static_cast<acc_t>(size - 1) * acc_t(0.5);
  } else {
    x = ((coord + acc_t(1)) * static_cast<acc_t>(size) - acc_t(1)) * acc_t(0.5);
    mult = static_cast<acc_t>(size) * acc_t(0.5);
  }
  if (pad == 1) {  // border
    acc_t g;
    x = clip_coord(x, size, g);
    mult *= g;
  } else if (pad == 2) {  // reflection
    acc_t g1, g2;
    x = align ? reflect_coord(x, 0, 2 * (size - 1), g1) : reflect_coord(x, -1, 2 * size - 1, g1);
    x = clip_coord(x, size, g2);
    mult *= g1 * g2;
  } else {
    // zeros: keep far samples (and NaN) where the int conversion is safe; all corners stay outside.
    x = fmin(fmax(x, acc_t(-2)), static_cast<acc_t>(size) + acc_t(1));
  }
  return x;
}

// The 4 bilinear corners of (ix, iy); k = dy * 2 + dx. Invalid corners get weight 0 and ok=false.
template <typename acc_t>
struct Corners {
  int x0, y0;
  acc_t tx, ty;
  __device__ __forceinline__ void init(acc_t ix, acc_t iy) {
    const acc_t fx = floor(ix), fy = floor(iy);
    x0 = static_cast<int>(fx);
    y0 = static_cast<int>(fy);
    tx = ix - fx;
    ty = iy - fy;
  }
  __device__ __forceinline__ int x(int k) const { return x0 + (k & 1); }
  __device__ __forceinline__ int y(int k) const { return y0 + (k >> 1); }
  __device__ __forceinline__ acc_t wx(int k) const { return (k & 1) ? tx : acc_t(1) - tx; }
  __device__ __forceinline__ acc_t wy(int k) const { return (k >> 1) ? ty : acc_t(1) - ty; }
  __device__ __forceinline__ bool ok(int k, int H, int W) const {
    return x(k) >= 0 && x(k) < W && y(k) >= 0 && y(k) < H;
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t tanh_acc(acc_t x) {
  return tanh(x);
}
template <>
__device__ __forceinline__ float tanh_acc<float>(float x) {
  return tanhf(x);
}

template <typename acc_t>
__device__ __forceinline__ acc_t sigmoid_acc(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp(-x));
}

// IEEE round-to-nearest division even under --use_fast_math (matches torch's host-computed step).
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return a / b; }

// torch.linspace(-1, 1, n)[idx], computed the way torch does (symmetric halves); n == 1 gives -1.
template <typename acc_t>
__device__ __forceinline__ acc_t linspace_at(int idx, int n) {
  if (n == 1) return acc_t(-1);
  const acc_t step = div_rn(acc_t(2), static_cast<acc_t>(n - 1));
  return idx < n / 2 ? acc_t(-1) + step * static_cast<acc_t>(idx) : acc_t(1) - step * static_cast<acc_t>(n - 1 - idx);
}

// up2(src)[n, k, a, b] (FIR [1,3,3,1], factor 2, zero padding), at fine indices a, b.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t up2_at(const scalar_t* __restrict__ base, int a, int b, int hs, int ws, int64_t sh,
                                        int64_t sw) {
  const int ra = a >> 1, rb = b >> 1;
  const int a2 = (a & 1) ? ra + 1 : ra - 1;  // the other tap: even outputs look back, odd ones forward
  const int b2 = (b & 1) ? rb + 1 : rb - 1;
  const bool aok = a2 >= 0 && a2 < hs, bok = b2 >= 0 && b2 < ws;
  acc_t v = acc_t(0.5625) * static_cast<acc_t>(base[ra * sh + rb * sw]);
  if (aok) v += acc_t(0.1875) * static_cast<acc_t>(base[a2 * sh + rb * sw]);
  if (bok) v += acc_t(0.1875) * static_cast<acc_t>(base[ra * sh + b2 * sw]);
  if (aok && bok) v += acc_t(0.0625) * static_cast<acc_t>(base[a2 * sh + b2 * sw]);
  return v;
}

// Work item t -> (pixel p, channel group cg). VEC > 1: channel-fastest (channels_last, coalesced
// 16-byte accesses); VEC == 1: pixel-fastest (NCHW, coalesced along W).
// Flat pixel index p of an (N, Ho, Wo) output -> batch n, row i, column j.
__device__ __forceinline__ void pixel_of(int64_t p, int Ho, int Wo, int64_t& n, int& i, int& j) {
  n = p / (static_cast<int64_t>(Ho) * Wo);
  const int rem = static_cast<int>(p - n * Ho * Wo);
  i = rem / Wo;
  j = rem - i * Wo;
}

// The corners of warp_inpaint's sampling point at pixel (i, j): flow logits (c0, c1) through tanh
// plus the identity grid, zero padding; mx, my: d(pixel coordinate)/d(grid).
template <typename acc_t>
__device__ __forceinline__ Corners<acc_t> flow_corners(acc_t c0, acc_t c1, int i, int j, int H, int W, bool align,
                                                       acc_t& mx, acc_t& my) {
  Corners<acc_t> cr;
  cr.init(source_coord(tanh_acc(c0) + linspace_at<acc_t>(j, W), W, 0, align, mx),
          source_coord(tanh_acc(c1) + linspace_at<acc_t>(i, H), H, 0, align, my));
  return cr;
}

// Bilinear sample of VEC consecutive channels c0.. (innermost, contiguous) of the plane at `base`.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void sample_vec(const scalar_t* base, const Corners<acc_t>& cr, const Strides4& s, int c0,
                                           int H, int W, acc_t (&a)[VEC]) {
#pragma unroll
  for (int e = 0; e < VEC; ++e) a[e] = acc_t(0);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (!cr.ok(k, H, W)) continue;
    const acc_t w = cr.wx(k) * cr.wy(k);
    const Vec<scalar_t, VEC> v = load_vec<scalar_t, VEC>(base + cr.y(k) * s.h + cr.x(k) * s.w + c0);
#pragma unroll
    for (int e = 0; e < VEC; ++e) a[e] += w * static_cast<acc_t>(v.v[e]);
  }
}

// The 4 corner offsets (by strides s) and weights, for sampling channel after channel; corners outside
// get offset 0 and weight 0.
template <typename acc_t>
__device__ __forceinline__ void corner_taps(const Corners<acc_t>& cr, const Strides4& s, int H, int W,
                                            int64_t (&off)[4], acc_t (&w)[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const bool ok = cr.ok(k, H, W);
    off[k] = ok ? cr.y(k) * s.h + cr.x(k) * s.w : 0;
    w[k] = ok ? cr.wx(k) * cr.wy(k) : acc_t(0);
  }
}

template <int VEC>
__device__ __forceinline__ void split_item(int64_t t, int64_t P, int CG, int64_t& p, int& cg) {
  if (VEC > 1) {
    cg = static_cast<int>(t % CG);
    p = t / CG;
  } else {
    p = t % P;
    cg = static_cast<int>(t / P);
  }
}

// ------------------------------------------------------------------ grid_sample
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) grid_sample_fwd_kernel(
    const scalar_t* __restrict__ in, const scalar_t* __restrict__ grid, scalar_t* __restrict__ out, int C, int H,
    int W, int Ho, int Wo, int64_t P, int CG, Strides4 si, Strides4 sg, Strides4 so, int pad, bool align) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P * CG) return;
  int64_t p;
  int cg;
  split_item<VEC>(t, P, CG, p, cg);
  int64_t n;
  int i, j;
  pixel_of(p, Ho, Wo, n, i, j);
  const scalar_t* g = grid + n * sg.n + i * sg.h + j * sg.w;
  acc_t mx, my;
  const acc_t ix = source_coord(static_cast<acc_t>(g[0]), W, pad, align, mx);
  const acc_t iy = source_coord(static_cast<acc_t>(g[sg.c]), H, pad, align, my);
  Corners<acc_t> cr;
  cr.init(ix, iy);
  const scalar_t* ib = in + n * si.n;
  scalar_t* ob = out + n * so.n + i * so.h + j * so.w;
  if constexpr (VEC > 1) {
    const int c0 = cg * VEC;
    acc_t a[VEC];
    sample_vec<scalar_t, acc_t, VEC>(ib, cr, si, c0, H, W, a);
    Vec<scalar_t, VEC> r;
#pragma unroll
    for (int e = 0; e < VEC; ++e) r.v[e] = static_cast<scalar_t>(a[e]);
    store_vec<scalar_t, VEC>(ob + c0, r);
  } else {
    int64_t off[4];
    acc_t w[4];
    corner_taps(cr, si, H, W, off, w);
    const int c1 = min(C, (cg + 1) * kCPT);
    for (int c = cg * kCPT; c < c1; ++c) {
      const scalar_t* ic = ib + c * si.c;
      acc_t a = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (w[k] != acc_t(0)) a += w[k] * static_cast<acc_t>(ic[off[k]]);
      ob[c * so.c] = static_cast<scalar_t>(a);
    }
  }
}

// Backward: writes part[cg][p][0:2] (grid gradient partial of channel group cg), and with `gin`
// scatters input gradients with atomics (gin is the fp32/fp64 accumulation buffer).
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) grid_sample_bwd_kernel(
    const scalar_t* __restrict__ go, const scalar_t* __restrict__ in, const scalar_t* __restrict__ grid,
    typename AccType<scalar_t>::type* __restrict__ gin, typename AccType<scalar_t>::type* __restrict__ part, int C,
    int H, int W, int Ho, int Wo, int64_t P, int CG, Strides4 sgo, Strides4 si, Strides4 sg, Strides4 sa, int pad,
    bool align) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P * CG) return;
  int64_t p;
  int cg;
  split_item<VEC>(t, P, CG, p, cg);
  int64_t n;
  int i, j;
  pixel_of(p, Ho, Wo, n, i, j);
  const scalar_t* g = grid + n * sg.n + i * sg.h + j * sg.w;
  acc_t mx, my;
  const acc_t ix = source_coord(static_cast<acc_t>(g[0]), W, pad, align, mx);
  const acc_t iy = source_coord(static_cast<acc_t>(g[sg.c]), H, pad, align, my);
  Corners<acc_t> cr;
  cr.init(ix, iy);
  const scalar_t* ib = in + n * si.n;
  const scalar_t* gob = go + n * sgo.n + i * sgo.h + j * sgo.w;
  acc_t* ab = gin ? gin + n * sa.n : nullptr;
  acc_t dgx = acc_t(0), dgy = acc_t(0);
  if constexpr (VEC > 1) {
    const int c0 = cg * VEC;
    const Vec<scalar_t, VEC> gv = load_vec<scalar_t, VEC>(gob + c0);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!cr.ok(k, H, W)) continue;
      const acc_t wx = cr.wx(k), wy = cr.wy(k);
      const acc_t sx = (k & 1) ? wy : -wy, sy = (k >> 1) ? wx : -wx;
      const Vec<scalar_t, VEC> v = load_vec<scalar_t, VEC>(ib + cr.y(k) * si.h + cr.x(k) * si.w + c0);
      acc_t* a = ab ? ab + cr.y(k) * sa.h + cr.x(k) * sa.w + c0 * sa.c : nullptr;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t gval = static_cast<acc_t>(gv.v[e]);
        const acc_t val = static_cast<acc_t>(v.v[e]) * gval;
        dgx += sx * val;
        dgy += sy * val;
        if (a) atomicAdd(a + e * sa.c, gval * wx * wy);
      }
    }
  } else {
    const int c1 = min(C, (cg + 1) * kCPT);
    for (int c = cg * kCPT; c < c1; ++c) {
      const acc_t gval = static_cast<acc_t>(gob[c * sgo.c]);
      const scalar_t* ic = ib + c * si.c;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (!cr.ok(k, H, W)) continue;
        const acc_t wx = cr.wx(k), wy = cr.wy(k);
        const acc_t val = static_cast<acc_t>(ic[cr.y(k) * si.h + cr.x(k) * si.w]) * gval;
        dgx += ((k & 1) ? wy : -wy) * val;
        dgy += ((k >> 1) ? wx : -wx) * val;
        if (ab) atomicAdd(ab + c * sa.c + cr.y(k) * sa.h + cr.x(k) * sa.w, gval * wx * wy);
      }
    }
  }
  acc_t* pp = part + (static_cast<int64_t>(cg) * P + p) * 2;
  pp[0] = dgx * mx;
  pp[1] = dgy * my;
}

// Sum the per-channel-group partials of each pixel in a fixed order; write grad_grid (contiguous).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) grid_grad_finalize_kernel(const typename AccType<scalar_t>::type* part,
                                                                      scalar_t* __restrict__ gg, int64_t P, int CG) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  acc_t sx = acc_t(0), sy = acc_t(0);
  for (int cg = 0; cg < CG; ++cg) {
    const acc_t* q = part + (static_cast<int64_t>(cg) * P + p) * 2;
    sx += q[0];
    sy += q[1];
  }
  gg[p * 2] = static_cast<scalar_t>(sx);
  gg[p * 2 + 1] = static_cast<scalar_t>(sy);
}

// Deterministic backward, step 1: pair id 4p+k -> (key = flat target input pixel or T=N*H*W when
// outside, bilinear weight). With INPAINT, `src` is the composed logits and the grid is recomputed.
template <typename scalar_t, bool INPAINT>
__global__ void __launch_bounds__(kThreads) corner_keys_kernel(const scalar_t* __restrict__ src, int64_t* keys,
                                                               typename AccType<scalar_t>::type* wts, int H, int W,
                                                               int Ho, int Wo, int64_t P, Strides4 sg, int pad,
                                                               bool align) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  int64_t n;
  int i, j;
  pixel_of(p, Ho, Wo, n, i, j);
  const scalar_t* g = src + n * sg.n + i * sg.h + j * sg.w;
  acc_t gx = static_cast<acc_t>(g[0]), gy = static_cast<acc_t>(g[sg.c]);
  if (INPAINT) {
    gx = tanh_acc(gx) + linspace_at<acc_t>(j, W);
    gy = tanh_acc(gy) + linspace_at<acc_t>(i, H);
  }
  acc_t mx, my;
  Corners<acc_t> cr;
  cr.init(source_coord(gx, W, pad, align, mx), source_coord(gy, H, pad, align, my));
  const int64_t sentinel = (P / (static_cast<int64_t>(Ho) * Wo)) * H * W;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const bool ok = cr.ok(k, H, W);
    keys[p * 4 + k] = ok ? (n * H + cr.y(k)) * W + cr.x(k) : sentinel;
    wts[p * 4 + k] = cr.wx(k) * cr.wy(k);
  }
}

// Deterministic backward, step 2: each (input pixel, channel group) sums its contributions in the
// sorted order. grid_sample: go * w. warp_inpaint: (gw + gb) * sigmoid(composed[:, 2]) * w.
template <typename scalar_t, typename comp_t, bool INPAINT>
__global__ void __launch_bounds__(kThreads) gather_kernel(
    const int64_t* __restrict__ starts, const int64_t* __restrict__ perm,
    const typename AccType<scalar_t>::type* __restrict__ wts, const scalar_t* __restrict__ go,
    const scalar_t* __restrict__ gb, const comp_t* __restrict__ comp, scalar_t* __restrict__ gin, int C, int H,
    int W, int Ho, int Wo, int64_t T, int CG, Strides4 sgo, Strides4 sgb, Strides4 sc, Strides4 sa) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (item >= T * CG) return;
  const int64_t t = item % T;
  const int cg = static_cast<int>(item / T);
  const int c0 = cg * kCPT, c1 = min(C, c0 + kCPT);
  acc_t acc[kCPT];
#pragma unroll
  for (int e = 0; e < kCPT; ++e) acc[e] = acc_t(0);
  const int64_t beg = starts[t], end = starts[t + 1];
  for (int64_t s = beg; s < end; ++s) {
    const int64_t q = perm[s];
    acc_t w = wts[q];
    const int64_t p = q >> 2;
    int64_t n;
    int i, j;
    pixel_of(p, Ho, Wo, n, i, j);
    const scalar_t* gp = go + n * sgo.n + i * sgo.h + j * sgo.w;
    const scalar_t* bp = gb + n * sgb.n + i * sgb.h + j * sgb.w;
    if (INPAINT) w *= sigmoid_acc(static_cast<acc_t>(comp[n * sc.n + 2 * sc.c + i * sc.h + j * sc.w]));
#pragma unroll
    for (int e = 0; e < kCPT; ++e) {
      const int c = c0 + e;
      if (c >= c1) break;
      acc_t g = static_cast<acc_t>(gp[c * sgo.c]);
      if (INPAINT) g += static_cast<acc_t>(bp[c * sgb.c]);
      acc[e] += w * g;
    }
  }
  const int64_t n = t / (static_cast<int64_t>(H) * W);
  const int rem = static_cast<int>(t - n * H * W);
  const int y = rem / W, x = rem - (rem / W) * W;
  scalar_t* ap = gin + n * sa.n + y * sa.h + x * sa.w;
#pragma unroll
  for (int e = 0; e < kCPT; ++e) {
    const int c = c0 + e;
    if (c >= c1) break;
    ap[c * sa.c] = static_cast<scalar_t>(acc[e]);
  }
}

// ------------------------------------------------------------------ compose_flow
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) compose_fwd_kernel(const scalar_t* __restrict__ coarse,
                                                               const scalar_t* __restrict__ fine,
                                                               scalar_t* __restrict__ out, int K, int Hc, int Wc,
                                                               int64_t Q, Strides4 sc, Strides4 sf, Strides4 so) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= Q) return;
  const int H = 2 * Hc, W = 2 * Wc;
  const int b = static_cast<int>(q % W);
  const int a = static_cast<int>((q / W) % H);
  const int k = static_cast<int>((q / (static_cast<int64_t>(W) * H)) % K);
  const int64_t n = q / (static_cast<int64_t>(W) * H * K);
  acc_t v = static_cast<acc_t>(fine[n * sf.n + k * sf.c + a * sf.h + b * sf.w]);
  v += up2_at<scalar_t, acc_t>(coarse + n * sc.n + k * sc.c, a, b, Hc, Wc, sc.h, sc.w);
  out[n * so.n + k * so.c + a * so.h + b * so.w] = static_cast<scalar_t>(v);
}

// Adjoint of up2: per axis out[r] = .25 g[2r-1] + .75 g[2r] + .75 g[2r+1] + .25 g[2r+2] (g outside = 0).
template <typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads) compose_bwd_kernel(const in_t* __restrict__ g, out_t* __restrict__ out,
                                                               int K, int Hc, int Wc, int64_t Q, Strides4 sg,
                                                               Strides4 so) {
  using acc_t = typename AccType<out_t>::type;
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (q >= Q) return;
  const int H = 2 * Hc, W = 2 * Wc;
  const int rb = static_cast<int>(q % Wc);
  const int ra = static_cast<int>((q / Wc) % Hc);
  const int k = static_cast<int>((q / (static_cast<int64_t>(Wc) * Hc)) % K);
  const int64_t n = q / (static_cast<int64_t>(Wc) * Hc * K);
  const in_t* base = g + n * sg.n + k * sg.c;
  const acc_t wt[4] = {acc_t(0.25), acc_t(0.75), acc_t(0.75), acc_t(0.25)};
  acc_t acc = acc_t(0);
#pragma unroll
  for (int da = 0; da < 4; ++da) {
    const int a = 2 * ra - 1 + da;
    if (a < 0 || a >= H) continue;
#pragma unroll
    for (int db = 0; db < 4; ++db) {
      const int b = 2 * rb - 1 + db;
      if (b < 0 || b >= W) continue;
      acc += wt[da] * wt[db] * static_cast<acc_t>(base[a * sg.h + b * sg.w]);
    }
  }
  out[n * so.n + k * so.c + ra * so.h + rb * so.w] = static_cast<out_t>(acc);
}

// ------------------------------------------------------------------ warp_inpaint
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kThreads) warp_inpaint_fwd_kernel(
    const scalar_t* __restrict__ feat, const scalar_t* __restrict__ x, const scalar_t* __restrict__ logits,
    const scalar_t* __restrict__ skip, scalar_t* __restrict__ warped, scalar_t* __restrict__ blended,
    scalar_t* __restrict__ composed, int C, int H, int W, int64_t P, int CG, Strides4 sf, Strides4 sx, Strides4 sl,
    Strides4 ss, Strides4 sw, Strides4 sb, Strides4 so, bool align) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P * CG) return;
  int64_t p;
  int cg;
  split_item<VEC>(t, P, CG, p, cg);
  int64_t n;
  int i, j;
  pixel_of(p, H, W, n, i, j);
  // Composed logits, grid and mask live only in registers.
  const scalar_t* lb = logits + n * sl.n + i * sl.h + j * sl.w;
  acc_t c[3];
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    c[k] = static_cast<acc_t>(lb[k * sl.c]);
    if (skip) c[k] += up2_at<scalar_t, acc_t>(skip + n * ss.n + k * ss.c, i, j, H / 2, W / 2, ss.h, ss.w);
  }
  if (cg == 0) {
    scalar_t* ob = composed + n * so.n + i * so.h + j * so.w;
#pragma unroll
    for (int k = 0; k < 3; ++k) ob[k * so.c] = static_cast<scalar_t>(c[k]);
  }
  const acc_t m = sigmoid_acc(c[2]);
  acc_t mx, my;
  const Corners<acc_t> cr = flow_corners(c[0], c[1], i, j, H, W, align, mx, my);
  const scalar_t* fb = feat + n * sf.n;
  const scalar_t* xb = x + n * sx.n + i * sx.h + j * sx.w;
  scalar_t* wb = warped + n * sw.n + i * sw.h + j * sw.w;
  scalar_t* bb = blended + n * sb.n + i * sb.h + j * sb.w;
  if constexpr (VEC > 1) {
    const int c0 = cg * VEC;
    acc_t a[VEC];
    sample_vec<scalar_t, acc_t, VEC>(fb, cr, sf, c0, H, W, a);
    const Vec<scalar_t, VEC> xv = load_vec<scalar_t, VEC>(xb + c0);
    Vec<scalar_t, VEC> rw, rb;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const acc_t wv = a[e] * m;
      rw.v[e] = static_cast<scalar_t>(wv);
      rb.v[e] = static_cast<scalar_t>(wv + static_cast<acc_t>(xv.v[e]) * (acc_t(1) - m));
    }
    store_vec<scalar_t, VEC>(wb + c0, rw);
    store_vec<scalar_t, VEC>(bb + c0, rb);
  } else {
    int64_t off[4];
    acc_t w[4];
    corner_taps(cr, sf, H, W, off, w);
    const int c1 = min(C, (cg + 1) * kCPT);
    for (int ch = cg * kCPT; ch < c1; ++ch) {
      const scalar_t* fc = fb + ch * sf.c;
      acc_t a = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (w[k] != acc_t(0)) a += w[k] * static_cast<acc_t>(fc[off[k]]);
      const acc_t wv = a * m;
      wb[ch * sw.c] = static_cast<scalar_t>(wv);
      bb[ch * sb.c] = static_cast<scalar_t>(wv + static_cast<acc_t>(xb[ch * sx.c]) * (acc_t(1) - m));
    }
  }
}

// Backward: writes grad_x, part[cg][p][0:3] = (d/d grid_x, d/d grid_y in pixels->normalized, d/d mask),
// and with `gfeat` scatters feature gradients with atomics (fp32/fp64 buffer).
template <typename scalar_t, typename comp_t, int VEC>
__global__ void __launch_bounds__(kThreads) warp_inpaint_bwd_kernel(
    const scalar_t* __restrict__ gw, const scalar_t* __restrict__ gb, const scalar_t* __restrict__ feat,
    const scalar_t* __restrict__ x, const comp_t* __restrict__ comp,
    typename AccType<scalar_t>::type* __restrict__ gfeat, scalar_t* __restrict__ gx_out,
    typename AccType<scalar_t>::type* __restrict__ part, int C, int H, int W, int64_t P, int CG, Strides4 sgw,
    Strides4 sgb, Strides4 sf, Strides4 sx, Strides4 sc, Strides4 sa, Strides4 sd, bool align) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= P * CG) return;
  int64_t p;
  int cg;
  split_item<VEC>(t, P, CG, p, cg);
  int64_t n;
  int i, j;
  pixel_of(p, H, W, n, i, j);
  const comp_t* cb = comp + n * sc.n + i * sc.h + j * sc.w;
  const acc_t m = sigmoid_acc(static_cast<acc_t>(cb[2 * sc.c]));
  acc_t mx, my;
  const Corners<acc_t> cr =
      flow_corners(static_cast<acc_t>(cb[0]), static_cast<acc_t>(cb[sc.c]), i, j, H, W, align, mx, my);
  const scalar_t* fb = feat + n * sf.n;
  const scalar_t* gwb = gw + n * sgw.n + i * sgw.h + j * sgw.w;
  const scalar_t* gbb = gb + n * sgb.n + i * sgb.h + j * sgb.w;
  const scalar_t* xb = x + n * sx.n + i * sx.h + j * sx.w;
  scalar_t* db = gx_out + n * sd.n + i * sd.h + j * sd.w;
  acc_t* ab = gfeat ? gfeat + n * sa.n : nullptr;
  acc_t px = acc_t(0), py = acc_t(0), dm = acc_t(0);
  if constexpr (VEC > 1) {
    const int c0 = cg * VEC;
    const Vec<scalar_t, VEC> gwv = load_vec<scalar_t, VEC>(gwb + c0);
    const Vec<scalar_t, VEC> gbv = load_vec<scalar_t, VEC>(gbb + c0);
    const Vec<scalar_t, VEC> xv = load_vec<scalar_t, VEC>(xb + c0);
    acc_t gsum[VEC], samp[VEC];
    Vec<scalar_t, VEC> dx;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      gsum[e] = static_cast<acc_t>(gwv.v[e]) + static_cast<acc_t>(gbv.v[e]);
      samp[e] = acc_t(0);
      dx.v[e] = static_cast<scalar_t>(static_cast<acc_t>(gbv.v[e]) * (acc_t(1) - m));
    }
    store_vec<scalar_t, VEC>(db + c0, dx);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (!cr.ok(k, H, W)) continue;
      const acc_t wx = cr.wx(k), wy = cr.wy(k);
      const acc_t sx_ = (k & 1) ? wy : -wy, sy_ = (k >> 1) ? wx : -wx;
      const Vec<scalar_t, VEC> v = load_vec<scalar_t, VEC>(fb + cr.y(k) * sf.h + cr.x(k) * sf.w + c0);
      acc_t* a = ab ? ab + cr.y(k) * sa.h + cr.x(k) * sa.w + c0 * sa.c : nullptr;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const acc_t val = static_cast<acc_t>(v.v[e]);
        const acc_t gs = gsum[e] * m;
        samp[e] += wx * wy * val;
        px += sx_ * gs * val;
        py += sy_ * gs * val;
        if (a) atomicAdd(a + e * sa.c, gs * wx * wy);
      }
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) dm += gsum[e] * samp[e] - static_cast<acc_t>(gbv.v[e]) * static_cast<acc_t>(xv.v[e]);
  } else {
    const int c1 = min(C, (cg + 1) * kCPT);
    for (int ch = cg * kCPT; ch < c1; ++ch) {
      const acc_t gbv = static_cast<acc_t>(gbb[ch * sgb.c]);
      const acc_t gsum = static_cast<acc_t>(gwb[ch * sgw.c]) + gbv;
      const acc_t gs = gsum * m;
      db[ch * sd.c] = static_cast<scalar_t>(gbv * (acc_t(1) - m));
      const scalar_t* fc = fb + ch * sf.c;
      acc_t samp = acc_t(0);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (!cr.ok(k, H, W)) continue;
        const acc_t wx = cr.wx(k), wy = cr.wy(k);
        const acc_t val = static_cast<acc_t>(fc[cr.y(k) * sf.h + cr.x(k) * sf.w]);
        samp += wx * wy * val;
        px += ((k & 1) ? wy : -wy) * gs * val;
        py += ((k >> 1) ? wx : -wx) * gs * val;
        if (ab) atomicAdd(ab + ch * sa.c + cr.y(k) * sa.h + cr.x(k) * sa.w, gs * wx * wy);
      }
      dm += gsum * samp - gbv * static_cast<acc_t>(xb[ch * sx.c]);
    }
  }
  acc_t* pp = part + (static_cast<int64_t>(cg) * P + p) * 3;
  pp[0] = px * mx;
  pp[1] = py * my;
  pp[2] = dm;
}

// Fixed-order sum of the partials, chained through tanh / sigmoid, plus grad_composed.
// out: contiguous (N, 3, H, W) in the accumulation precision.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) logits_grad_kernel(const typename AccType<scalar_t>::type* __restrict__ part,
                                                               const scalar_t* __restrict__ comp,
                                                               const scalar_t* __restrict__ gcomp,
                                                               typename AccType<scalar_t>::type* __restrict__ out,
                                                               int H, int W, int64_t P, int CG, Strides4 sc,
                                                               Strides4 sg) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  acc_t s[3] = {acc_t(0), acc_t(0), acc_t(0)};
  for (int cg = 0; cg < CG; ++cg) {
    const acc_t* q = part + (static_cast<int64_t>(cg) * P + p) * 3;
    s[0] += q[0];
    s[1] += q[1];
    s[2] += q[2];
  }
  int64_t n;
  int i, j;
  pixel_of(p, H, W, n, i, j);
  const scalar_t* cb = comp + n * sc.n + i * sc.h + j * sc.w;
  const scalar_t* gcb = gcomp + n * sg.n + i * sg.h + j * sg.w;
  const acc_t t0 = tanh_acc(static_cast<acc_t>(cb[0]));
  const acc_t t1 = tanh_acc(static_cast<acc_t>(cb[sc.c]));
  const acc_t m = sigmoid_acc(static_cast<acc_t>(cb[2 * sc.c]));
  acc_t* ob = out + n * 3 * H * W + static_cast<int64_t>(i) * W + j;
  const int64_t plane = static_cast<int64_t>(H) * W;
  ob[0] = s[0] * (acc_t(1) - t0 * t0) + static_cast<acc_t>(gcb[0]);
  ob[plane] = s[1] * (acc_t(1) - t1 * t1) + static_cast<acc_t>(gcb[sg.c]);
  ob[2 * plane] = s[2] * m * (acc_t(1) - m) + static_cast<acc_t>(gcb[2 * sg.c]);
}

// ------------------------------------------------------------------ host side
inline unsigned blocks_for(int64_t items) { return static_cast<unsigned>((items + kThreads - 1) / kThreads); }

at::MemoryFormat format_of(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast))
    return at::MemoryFormat::ChannelsLast;
  return at::MemoryFormat::Contiguous;
}

bool deterministic_mode(bool flag) { return flag || at::globalContext().deterministicAlgorithms(); }

// 16-byte vector accesses along C: unit channel stride, other strides and base pointer aligned.
bool vec_ok(const at::Tensor& t, int vec) {
  if (t.size(1) % vec != 0 || t.stride(1) != 1) return false;
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int d : {0, 2, 3})
    if (t.size(d) > 1 && t.stride(d) % vec != 0) return false;
  return true;
}

bool all_vec_ok(std::initializer_list<const at::Tensor*> ts, int vec) {
  if (vec <= 1) return false;
  for (const at::Tensor* t : ts)
    if (!vec_ok(*t, vec)) return false;
  return true;
}

void check_cuda(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
#ifndef LEO_CUDA_EMULATE
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor");
#endif
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ", ref.scalar_type(), ", got ",
              t.scalar_type());
}

void check_pad(const char* op, int64_t pad) {
  TORCH_CHECK(pad >= 0 && pad <= 2, op, ": padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), got ", pad);
}

template <typename scalar_t>
constexpr int vec_width() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

// Deterministic input gradient (sort-then-gather). `coords` is the grid (or composed logits with
// INPAINT), with strides in grid slot order.
template <typename scalar_t, typename comp_t, bool INPAINT>
at::Tensor deterministic_grad_input(const at::Tensor& coords, Strides4 scoords, const at::Tensor& go,
                                    const at::Tensor& gb, const at::Tensor& comp, int64_t N, int C, int H, int W,
                                    int Ho, int Wo, int pad, bool align, at::MemoryFormat fmt,
                                    const at::TensorOptions& opts) {
  using acc_t = typename AccType<scalar_t>::type;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t P = N * Ho * Wo;
  const int64_t T = N * H * W;
  at::Tensor keys = at::empty({P * 4}, opts.dtype(at::kLong));
  at::Tensor wts = at::empty({P * 4}, opts.dtype(c10::CppTypeToScalarType<acc_t>::value));
  LEO_LAUNCH(blocks_for(P), stream, corner_keys_kernel<comp_t, INPAINT>)(
      coords.data_ptr<comp_t>(), keys.data_ptr<int64_t>(), wts.data_ptr<acc_t>(), H, W, Ho, Wo, P, scoords, pad,
      align);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor sorted_keys = std::get<0>(sorted);
  at::Tensor perm = std::get<1>(sorted).contiguous();
  at::Tensor starts = at::searchsorted(sorted_keys, at::arange(T + 1, opts.dtype(at::kLong))).contiguous();
  at::Tensor gin = at::empty({N, C, H, W}, opts.memory_format(fmt));
  const int CG = (C + kCPT - 1) / kCPT;
  LEO_LAUNCH(blocks_for(T * CG), stream, gather_kernel<scalar_t, comp_t, INPAINT>)(
      starts.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), wts.data_ptr<acc_t>(), go.data_ptr<scalar_t>(),
      gb.data_ptr<scalar_t>(), comp.data_ptr<comp_t>(), gin.data_ptr<scalar_t>(), C, H, W, Ho, Wo, T, CG,
      strides_of(go), strides_of(gb), strides_of(comp), strides_of(gin));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gin;
}

at::Tensor grid_sample_fwd_cuda(const at::Tensor& input, const at::Tensor& grid, int64_t padding_mode,
                                bool align_corners) {
  const char* op = "_grid_sample_fwd";
  check_cuda(op, "input", input, 4);
  check_cuda(op, "grid", grid, 4);
  check_like(op, "grid", grid, input);
  check_pad(op, padding_mode);
  TORCH_CHECK(grid.size(0) == input.size(0) && grid.size(3) == 2, op, ": grid must be (N, Ho, Wo, 2) with N = ",
              input.size(0), ", got ", grid.sizes());
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0);
  const int C = input.size(1), H = input.size(2), W = input.size(3);
  const int Ho = grid.size(1), Wo = grid.size(2);
  at::Tensor out = at::empty({N, C, Ho, Wo}, input.options().memory_format(format_of(input)));
  const int64_t P = N * Ho * Wo;
  if (P == 0 || C == 0) return out;
  if (H == 0 || W == 0) return out.zero_();
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "leo_grid_sample_fwd", [&] {
    constexpr int V = vec_width<scalar_t>();
    if (all_vec_ok({&input, &out}, V)) {
      const int CG = C / V;
      LEO_LAUNCH(blocks_for(P * CG), stream, grid_sample_fwd_kernel<scalar_t, V>)(
          input.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C, H, W, Ho, Wo, P, CG,
          strides_of(input), grid_strides_of(grid), strides_of(out), static_cast<int>(padding_mode), align_corners);
    } else {
      const int CG = (C + kCPT - 1) / kCPT;
      LEO_LAUNCH(blocks_for(P * CG), stream, grid_sample_fwd_kernel<scalar_t, 1>)(
          input.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C, H, W, Ho, Wo, P, CG,
          strides_of(input), grid_strides_of(grid), strides_of(out), static_cast<int>(padding_mode), align_corners);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> grid_sample_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                        const at::Tensor& grid, int64_t padding_mode,
                                                        bool align_corners, bool deterministic) {
  const char* op = "_grid_sample_bwd";
  check_cuda(op, "input", input, 4);
  check_cuda(op, "grid", grid, 4);
  check_cuda(op, "grad_out", grad_out, 4);
  check_like(op, "grid", grid, input);
  check_like(op, "grad_out", grad_out, input);
  check_pad(op, padding_mode);
  TORCH_CHECK(grid.size(0) == input.size(0) && grid.size(3) == 2, op, ": grid must be (N, Ho, Wo, 2) with N = ",
              input.size(0), ", got ", grid.sizes());
  TORCH_CHECK(grad_out.size(0) == input.size(0) && grad_out.size(1) == input.size(1) &&
                  grad_out.size(2) == grid.size(1) && grad_out.size(3) == grid.size(2),
              op, ": grad_out must be (N, C, Ho, Wo), got ", grad_out.sizes());
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t N = input.size(0);
  const int C = input.size(1), H = input.size(2), W = input.size(3);
  const int Ho = grid.size(1), Wo = grid.size(2);
  const int64_t P = N * Ho * Wo;
  const at::MemoryFormat fmt = format_of(input);
  if (P == 0 || C == 0 || H == 0 || W == 0)
    return {at::zeros(input.sizes(), input.options().memory_format(fmt)), at::zeros_like(grid)};
  const bool det = deterministic_mode(deterministic);
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor grad_input, grad_grid = at::empty({N, Ho, Wo, 2}, grid.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "leo_grid_sample_bwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const auto acc_opts = input.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    constexpr int V = vec_width<scalar_t>();
    const bool vec = all_vec_ok({&input, &grad_out}, V);
    const int CG = vec ? C / V : (C + kCPT - 1) / kCPT;
    at::Tensor part = at::empty({CG, P, 2}, acc_opts);
    at::Tensor gin_acc;
    if (!det) gin_acc = at::zeros({N, C, H, W}, acc_opts.memory_format(fmt));
    acc_t* gin_ptr = det ? nullptr : gin_acc.data_ptr<acc_t>();
    const Strides4 sa = det ? Strides4{0, 0, 0, 0} : strides_of(gin_acc);
    if (vec) {
      LEO_LAUNCH(blocks_for(P * CG), stream, grid_sample_bwd_kernel<scalar_t, V>)(
          grad_out.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), gin_ptr,
          part.data_ptr<acc_t>(), C, H, W, Ho, Wo, P, CG, strides_of(grad_out), strides_of(input),
          grid_strides_of(grid), sa, static_cast<int>(padding_mode), align_corners);
    } else {
      LEO_LAUNCH(blocks_for(P * CG), stream, grid_sample_bwd_kernel<scalar_t, 1>)(
          grad_out.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), grid.data_ptr<scalar_t>(), gin_ptr,
          part.data_ptr<acc_t>(), C, H, W, Ho, Wo, P, CG, strides_of(grad_out), strides_of(input),
          grid_strides_of(grid), sa, static_cast<int>(padding_mode), align_corners);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    LEO_LAUNCH(blocks_for(P), stream, grid_grad_finalize_kernel<scalar_t>)(
        part.data_ptr<acc_t>(), grad_grid.data_ptr<scalar_t>(), P, CG);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (det) {
      grad_input = deterministic_grad_input<scalar_t, scalar_t, false>(grid, grid_strides_of(grid), grad_out, grad_out, grid,
                                                             N, C, H, W, Ho, Wo, static_cast<int>(padding_mode),
                                                             align_corners, fmt, input.options());
    } else {
      grad_input = gin_acc.scalar_type() == input.scalar_type() ? gin_acc : gin_acc.to(input.scalar_type());
    }
  });
  return {grad_input, grad_grid};
}

template <typename out_t, typename in_t>
void launch_compose_bwd(const at::Tensor& g, at::Tensor& out) {
  const int64_t Q = out.numel();
  if (Q == 0) return;
  const int K = out.size(1), Hc = out.size(2), Wc = out.size(3);
  LEO_LAUNCH(blocks_for(Q), c10::cuda::getCurrentCUDAStream(), compose_bwd_kernel<in_t, out_t>)(
      g.data_ptr<in_t>(), out.data_ptr<out_t>(), K, Hc, Wc, Q, strides_of(g), strides_of(out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor compose_flow_fwd_cuda(const at::Tensor& coarse, const at::Tensor& fine) {
  const char* op = "_compose_flow_fwd";
  check_cuda(op, "coarse", coarse, 4);
  check_cuda(op, "fine", fine, 4);
  check_like(op, "coarse", coarse, fine);
  TORCH_CHECK(fine.size(0) == coarse.size(0) && fine.size(1) == coarse.size(1) && fine.size(2) == 2 * coarse.size(2) &&
                  fine.size(3) == 2 * coarse.size(3),
              op, ": fine must be (N, K, 2H, 2W) for coarse ", coarse.sizes(), ", got ", fine.sizes());
  c10::cuda::CUDAGuard guard(fine.device());
  at::Tensor out = at::empty(fine.sizes(), fine.options().memory_format(format_of(fine)));
  const int64_t Q = out.numel();
  if (Q == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fine.scalar_type(), "leo_compose_flow_fwd", [&] {
    LEO_LAUNCH(blocks_for(Q), c10::cuda::getCurrentCUDAStream(), compose_fwd_kernel<scalar_t>)(
        coarse.data_ptr<scalar_t>(), fine.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), coarse.size(1),
        coarse.size(2), coarse.size(3), Q, strides_of(coarse), strides_of(fine), strides_of(out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor compose_flow_bwd_cuda(const at::Tensor& grad_out) {
  const char* op = "_compose_flow_bwd";
  check_cuda(op, "grad_out", grad_out, 4);
  TORCH_CHECK(grad_out.size(2) % 2 == 0 && grad_out.size(3) % 2 == 0, op, ": grad_out spatial sizes must be even, got ",
              grad_out.sizes());
  c10::cuda::CUDAGuard guard(grad_out.device());
  at::Tensor out = at::empty({grad_out.size(0), grad_out.size(1), grad_out.size(2) / 2, grad_out.size(3) / 2},
                             grad_out.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "leo_compose_flow_bwd",
                                  [&] { launch_compose_bwd<scalar_t, scalar_t>(grad_out, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> warp_inpaint_fwd_cuda(const at::Tensor& feat, const at::Tensor& x,
                                                                     const at::Tensor& logits,
                                                                     const std::optional<at::Tensor>& skip,
                                                                     bool align_corners) {
  const char* op = "_warp_inpaint_fwd";
  check_cuda(op, "feat", feat, 4);
  check_cuda(op, "x", x, 4);
  check_cuda(op, "logits", logits, 4);
  check_like(op, "x", x, feat);
  check_like(op, "logits", logits, feat);
  TORCH_CHECK(x.sizes() == feat.sizes(), op, ": x must have feat's shape ", feat.sizes(), ", got ", x.sizes());
  const int64_t N = feat.size(0);
  const int C = feat.size(1), H = feat.size(2), W = feat.size(3);
  TORCH_CHECK(logits.size(0) == N && logits.size(1) == 3 && logits.size(2) == H && logits.size(3) == W, op,
              ": logits must be (N, 3, H, W), got ", logits.sizes());
  const bool has_skip = skip.has_value() && skip->defined();
  if (has_skip) {
    check_cuda(op, "skip", *skip, 4);
    check_like(op, "skip", *skip, feat);
    TORCH_CHECK(H % 2 == 0 && W % 2 == 0 && skip->size(0) == N && skip->size(1) == 3 && skip->size(2) == H / 2 &&
                    skip->size(3) == W / 2,
                op, ": skip must be (N, 3, H/2, W/2) with even H, W, got ", skip->sizes());
  }
  c10::cuda::CUDAGuard guard(feat.device());
  const at::MemoryFormat fmt = format_of(feat);
  at::Tensor warped = at::empty({N, C, H, W}, feat.options().memory_format(fmt));
  at::Tensor blended = at::empty({N, C, H, W}, feat.options().memory_format(fmt));
  at::Tensor composed = at::empty({N, 3, H, W}, logits.options());
  const int64_t P = N * H * W;
  if (P == 0) return {warped, blended, composed};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "leo_warp_inpaint_fwd", [&] {
    constexpr int V = vec_width<scalar_t>();
    const scalar_t* skp = has_skip ? skip->data_ptr<scalar_t>() : nullptr;
    const Strides4 ss = has_skip ? strides_of(*skip) : Strides4{0, 0, 0, 0};
    if (C > 0 && all_vec_ok({&feat, &x, &warped, &blended}, V)) {
      const int CG = C / V;
      LEO_LAUNCH(blocks_for(P * CG), stream, warp_inpaint_fwd_kernel<scalar_t, V>)(
          feat.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), skp,
          warped.data_ptr<scalar_t>(), blended.data_ptr<scalar_t>(), composed.data_ptr<scalar_t>(), C, H, W, P, CG,
          strides_of(feat), strides_of(x), strides_of(logits), ss, strides_of(warped), strides_of(blended),
          strides_of(composed), align_corners);
    } else {
      const int CG = std::max((C + kCPT - 1) / kCPT, 1);  // C == 0 still writes composed
      LEO_LAUNCH(blocks_for(P * CG), stream, warp_inpaint_fwd_kernel<scalar_t, 1>)(
          feat.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), logits.data_ptr<scalar_t>(), skp,
          warped.data_ptr<scalar_t>(), blended.data_ptr<scalar_t>(), composed.data_ptr<scalar_t>(), C, H, W, P, CG,
          strides_of(feat), strides_of(x), strides_of(logits), ss, strides_of(warped), strides_of(blended),
          strides_of(composed), align_corners);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {warped, blended, composed};
}

// comp_t: dtype of `composed` (feat's, or float32 when the caller keeps the exact float32 logits
// for half/bfloat16 features so the backward samples where the forward did).
template <typename scalar_t, typename comp_t>
void warp_inpaint_bwd_impl(const at::Tensor& grad_warped, const at::Tensor& grad_blended,
                           const at::Tensor& grad_composed, const at::Tensor& feat, const at::Tensor& x,
                           const at::Tensor& composed, bool has_skip, bool align, bool det, at::Tensor& grad_feat,
                           at::Tensor& grad_x, at::Tensor& grad_logits, at::Tensor& grad_skip) {
  using acc_t = typename AccType<scalar_t>::type;
  const int64_t N = feat.size(0);
  const int C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const int64_t P = N * H * W;
  const at::MemoryFormat fmt = format_of(feat);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_opts = feat.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  constexpr int V = vec_width<scalar_t>();
  const bool vec = C > 0 && all_vec_ok({&feat, &x, &grad_warped, &grad_blended, &grad_x}, V);
  const int CG = vec ? C / V : std::max((C + kCPT - 1) / kCPT, 1);
  at::Tensor part = at::empty({CG, P, 3}, acc_opts);
  at::Tensor gfeat_acc;
  if (!det) gfeat_acc = at::zeros({N, C, H, W}, acc_opts.memory_format(fmt));
  acc_t* gptr = det ? nullptr : gfeat_acc.data_ptr<acc_t>();
  const Strides4 sa = det ? Strides4{0, 0, 0, 0} : strides_of(gfeat_acc);
  if (vec) {
    LEO_LAUNCH(blocks_for(P * CG), stream, warp_inpaint_bwd_kernel<scalar_t, comp_t, V>)(
        grad_warped.data_ptr<scalar_t>(), grad_blended.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), composed.data_ptr<comp_t>(), gptr, grad_x.data_ptr<scalar_t>(), part.data_ptr<acc_t>(),
        C, H, W, P, CG, strides_of(grad_warped), strides_of(grad_blended), strides_of(feat), strides_of(x),
        strides_of(composed), sa, strides_of(grad_x), align);
  } else {
    LEO_LAUNCH(blocks_for(P * CG), stream, warp_inpaint_bwd_kernel<scalar_t, comp_t, 1>)(
        grad_warped.data_ptr<scalar_t>(), grad_blended.data_ptr<scalar_t>(), feat.data_ptr<scalar_t>(),
        x.data_ptr<scalar_t>(), composed.data_ptr<comp_t>(), gptr, grad_x.data_ptr<scalar_t>(), part.data_ptr<acc_t>(),
        C, H, W, P, CG, strides_of(grad_warped), strides_of(grad_blended), strides_of(feat), strides_of(x),
        strides_of(composed), sa, strides_of(grad_x), align);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // grad_composed in composed's dtype (a small (N, 3, H, W) tensor).
  const at::Tensor gcomp = grad_composed.scalar_type() == composed.scalar_type()
                               ? grad_composed
                               : grad_composed.to(composed.scalar_type());
  at::Tensor gl = at::empty({N, 3, H, W}, acc_opts);
  LEO_LAUNCH(blocks_for(P), stream, logits_grad_kernel<comp_t>)(
      part.data_ptr<acc_t>(), composed.data_ptr<comp_t>(), gcomp.data_ptr<comp_t>(), gl.data_ptr<acc_t>(), H, W, P,
      CG, strides_of(composed), strides_of(gcomp));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (det) {
    grad_feat = deterministic_grad_input<scalar_t, comp_t, true>(composed, strides_of(composed), grad_warped,
                                                                 grad_blended, composed, N, C, H, W, H, W, 0, align,
                                                                 fmt, feat.options());
  } else {
    grad_feat = gfeat_acc.scalar_type() == feat.scalar_type() ? gfeat_acc : gfeat_acc.to(feat.scalar_type());
  }
  if (has_skip) {
    grad_skip = at::empty({N, 3, H / 2, W / 2}, feat.options());
    launch_compose_bwd<scalar_t, acc_t>(gl, grad_skip);  // from the float32 logits gradient
  } else {
    grad_skip = at::empty({0}, feat.options());
  }
  grad_logits = gl.scalar_type() == feat.scalar_type() ? gl : gl.to(feat.scalar_type());
}

// Gradients have feat's dtype (the logits' dtype). composed may be feat's dtype or float32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> warp_inpaint_bwd_cuda(
    const at::Tensor& grad_warped, const at::Tensor& grad_blended, const at::Tensor& grad_composed,
    const at::Tensor& feat, const at::Tensor& x, const at::Tensor& composed, bool has_skip, bool align_corners,
    bool deterministic) {
  const char* op = "_warp_inpaint_bwd";
  check_cuda(op, "feat", feat, 4);
  check_cuda(op, "x", x, 4);
  check_cuda(op, "composed", composed, 4);
  check_cuda(op, "grad_warped", grad_warped, 4);
  check_cuda(op, "grad_blended", grad_blended, 4);
  check_cuda(op, "grad_composed", grad_composed, 4);
  for (auto& pr : {std::make_pair("x", &x), std::make_pair("grad_warped", &grad_warped),
                   std::make_pair("grad_blended", &grad_blended)})
    check_like(op, pr.first, *pr.second, feat);
  const bool comp_f32 = composed.scalar_type() == at::kFloat && feat.scalar_type() != at::kFloat;
  TORCH_CHECK(composed.device() == feat.device() && (composed.scalar_type() == feat.scalar_type() || comp_f32), op,
              ": composed must be on feat's device with feat's dtype or float32, got ", composed.scalar_type(), " on ",
              composed.device());
  TORCH_CHECK(grad_composed.device() == feat.device() &&
                  (grad_composed.scalar_type() == feat.scalar_type() ||
                   grad_composed.scalar_type() == composed.scalar_type()),
              op, ": grad_composed must have feat's or composed's dtype, got ", grad_composed.scalar_type());
  TORCH_CHECK(!comp_f32 || feat.scalar_type() != at::kDouble, op, ": float64 feat needs float64 composed");
  const int64_t N = feat.size(0);
  const int C = feat.size(1), H = feat.size(2), W = feat.size(3);
  TORCH_CHECK(x.sizes() == feat.sizes() && grad_warped.sizes() == feat.sizes() && grad_blended.sizes() == feat.sizes(),
              op, ": x, grad_warped and grad_blended must have feat's shape ", feat.sizes());
  TORCH_CHECK(composed.size(0) == N && composed.size(1) == 3 && composed.size(2) == H && composed.size(3) == W &&
                  grad_composed.sizes() == composed.sizes(),
              op, ": composed and grad_composed must be (N, 3, H, W), got ", composed.sizes(), " and ",
              grad_composed.sizes());
  TORCH_CHECK(!has_skip || (H % 2 == 0 && W % 2 == 0), op, ": has_skip needs even H and W, got ", H, "x", W);
  c10::cuda::CUDAGuard guard(feat.device());
  const at::MemoryFormat fmt = format_of(feat);
  const int64_t P = N * H * W;
  const bool det = deterministic_mode(deterministic);
  at::Tensor grad_feat, grad_x = at::empty({N, C, H, W}, x.options().memory_format(format_of(x)));
  at::Tensor grad_logits, grad_skip;
  if (P == 0) {
    grad_feat = at::zeros({N, C, H, W}, feat.options().memory_format(fmt));
    grad_logits = at::zeros({N, 3, H, W}, feat.options());
    grad_skip = has_skip ? at::zeros({N, 3, H / 2, W / 2}, feat.options()) : at::empty({0}, feat.options());
    return {grad_feat, grad_x, grad_logits, grad_skip};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "leo_warp_inpaint_bwd", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (comp_f32) {
        warp_inpaint_bwd_impl<scalar_t, float>(grad_warped, grad_blended, grad_composed, feat, x, composed, has_skip,
                                               align_corners, det, grad_feat, grad_x, grad_logits, grad_skip);
        return;
      }
    }
    {
      warp_inpaint_bwd_impl<scalar_t, scalar_t>(grad_warped, grad_blended, grad_composed, feat, x, composed,
                                                has_skip, align_corners, det, grad_feat, grad_x, grad_logits,
                                                grad_skip);
    }
  });
  return {grad_feat, grad_x, grad_logits, grad_skip};
}

}  // namespace

#ifndef LEO_CUDA_EMULATE
TORCH_LIBRARY_IMPL(leo_kernels, CUDA, m) {
  m.impl("_grid_sample_fwd", &grid_sample_fwd_cuda);
  m.impl("_grid_sample_bwd", &grid_sample_bwd_cuda);
  m.impl("_compose_flow_fwd", &compose_flow_fwd_cuda);
  m.impl("_compose_flow_bwd", &compose_flow_bwd_cuda);
  m.impl("_warp_inpaint_fwd", &warp_inpaint_fwd_cuda);
  m.impl("_warp_inpaint_bwd", &warp_inpaint_bwd_cuda);
}
#else
TORCH_LIBRARY(leo_warp_cuda_emu, m) {  // same kernels and host code, run on CPU tensors
  m.def("_grid_sample_fwd", &grid_sample_fwd_cuda);
  m.def("_grid_sample_bwd", &grid_sample_bwd_cuda);
  m.def("_compose_flow_fwd", &compose_flow_fwd_cuda);
  m.def("_compose_flow_bwd", &compose_flow_bwd_cuda);
  m.def("_warp_inpaint_fwd", &warp_inpaint_fwd_cuda);
  m.def("_warp_inpaint_bwd", &warp_inpaint_bwd_cuda);
}
#endif
