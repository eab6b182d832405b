// CUDA attention core for temporal_attention (docs/OPS.md): forward and backward.
//
// Layout: q, k, v, out contiguous (B, heads, L, d); lse (B, heads, L) float32.
// Work split (short sequences, many batches): one warp owns QPW query rows (or key rows in
// the dK/dV kernel); a block of 4 warps streams the other side of the sequence through shared
// memory in tiles of 32 rows, one row per lane. Each lane computes one score (a dot product over
// d from shared memory), the warp does the online-softmax update with shuffles, and every lane
// accumulates d/32 output elements. All arithmetic (scores, exp, sums, accumulators) is float32
// whatever the storage dtype. Rotary embedding is applied while tiles are staged into shared
// memory (cos/sin tables computed once per call in float64 and stored as float32), and the
// gradients of roped rows are rotated back through a per-warp row buffer before the store.
// No atomics: dQ and dK/dV come from separate kernels, so results are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "leo_cuda.h"  // CUDA headers, LEO_LAUNCH; host emulation under LEO_CUDA_EMULATE

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Element c of a (rotary-embedded when rope) row at time index pos.
template <typename T, int D>
__device__ __forceinline__ float load_rope(const T* row, int pos, int c, bool rope, const float* cos_t,
                                           const float* sin_t) {
  const float x = to_f(row[c]);
  if (!rope) return x;
  constexpr int H = D / 2;
  const int i = c < H ? c : c - H;
  const float cs = cos_t[pos * H + i], sn = sin_t[pos * H + i];
  return c < H ? x * cs - to_f(row[c + H]) * sn : to_f(row[c - H]) * sn + x * cs;
}

// Gradient with respect to the un-rotated row: R^T g, element c (g is a float row in smem).
template <int D>
__device__ __forceinline__ float unrope(const float* g, int pos, int c, const float* cos_t, const float* sin_t) {
  constexpr int H = D / 2;
  const int i = c < H ? c : c - H;
  const float cs = cos_t[pos * H + i], sn = sin_t[pos * H + i];
  return c < H ? g[c] * cs + g[c + H] * sn : g[c] * cs - g[c - H] * sn;
}

// Stage R rows from pos0 of two (L, D) slices at base into shared tiles, zeros past L: rows of a
// rotary-embedded when rope (q or k), rows of b as they are (v or dO). PA, PB: the tiles' row pitches.
template <typename T, int D, int R, int PA, int PB>
__device__ __forceinline__ void stage_rows(float (*as)[PA], float (*bs)[PB], const T* __restrict__ a,
                                           const T* __restrict__ b, size_t base, int pos0, int L, bool rope,
                                           const float* cos_t, const float* sin_t) {
  for (int idx = threadIdx.x; idx < R * D; idx += kThreads) {
    const int r = idx / D, c = idx % D, pos = pos0 + r;
    const bool ok = pos < L;
    const size_t off = base + static_cast<size_t>(pos) * D;
    as[r][c] = ok ? load_rope<T, D>(a + off, pos, c, rope, cos_t, sin_t) : 0.f;
    bs[r][c] = ok ? to_f(b[off + c]) : 0.f;
  }
}

// Store one warp's gradient row g * mul (lane holds elements lane + 32 e) to dst, rotated back
// through the warp's row buffer when the rows were roped. Called by all lanes of the warp.
template <typename T, int D, int EPL>
__device__ __forceinline__ void store_grad_row(T* __restrict__ dst, const float (&g)[EPL], float mul, float* rowbuf,
                                               int pos, int lane, bool rope, const float* cos_t, const float* sin_t) {
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const int c = lane + 32 * e;
    if (c < D) rowbuf[c] = g[e] * mul;
  }
  __syncwarp();
#pragma unroll
  for (int e = 0; e < EPL; ++e) {
    const int c = lane + 32 * e;
    if (c < D) dst[c] = static_cast<T>(rope ? unrope<D>(rowbuf, pos, c, cos_t, sin_t) : rowbuf[c]);
  }
  __syncwarp();
}

template <typename T, int D, int QPW>
__global__ void __launch_bounds__(kThreads)
    attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                    float* __restrict__ lse, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int L,
                    float scale, bool rope) {
  constexpr int QB = kWarps * QPW;
  constexpr int EPL = (D + 31) / 32;
  __shared__ float Qs[QB][D];
  __shared__ float Ks[kTile][D + 1];  // +1: lane j reads row j, conflict-free
  __shared__ float Vs[kTile][D];
  const int bh = blockIdx.x;
  const int q0 = blockIdx.y * QB;
  const size_t base = static_cast<size_t>(bh) * L * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  for (int idx = tid; idx < QB * D; idx += kThreads) {
    const int r = idx / D, c = idx % D, pos = q0 + r;
    Qs[r][c] = pos < L ? load_rope<T, D>(q + base + static_cast<size_t>(pos) * D, pos, c, rope, cos_t, sin_t) : 0.f;
  }
  float m[QPW], l[QPW], acc[QPW][EPL];
#pragma unroll
  for (int i = 0; i < QPW; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[i][e] = 0.f;
  }

  for (int t0 = 0; t0 < L; t0 += kTile) {
    __syncthreads();  // Qs written / previous tile consumed
    stage_rows<T, D, kTile>(Ks, Vs, k, v, base, t0, L, rope, cos_t, sin_t);
    __syncthreads();
    const bool kvalid = t0 + lane < L;
    const int nk = min(kTile, L - t0);
#pragma unroll
    for (int i = 0; i < QPW; ++i) {
      const int r = warp * QPW + i;
      float s = 0.f;
#pragma unroll 16
      for (int c = 0; c < D; ++c) s += Qs[r][c] * Ks[lane][c];
      s = kvalid ? s * scale : -INFINITY;
      const float mn = fmaxf(m[i], warp_max(s));
      const float p = kvalid ? expf(s - mn) : 0.f;
      const float corr = expf(m[i] - mn);  // 0 on the first tile (m = -inf)
      l[i] = l[i] * corr + warp_sum(p);
      m[i] = mn;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[i][e] *= corr;
      for (int j = 0; j < nk; ++j) {
        const float pj = __shfl_sync(kFull, p, j);
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          const int c = lane + 32 * e;
          if (c < D) acc[i][e] += pj * Vs[j][c];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < QPW; ++i) {
    const int pos = q0 + warp * QPW + i;
    if (pos >= L) continue;
    const float inv = 1.f / l[i];
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const int c = lane + 32 * e;
      if (c < D) out[base + static_cast<size_t>(pos) * D + c] = static_cast<T>(acc[i][e] * inv);
    }
    if (lane == 0) lse[static_cast<size_t>(bh) * L + pos] = m[i] + logf(l[i]);
  }
}

// delta[row] = sum_c dO[row, c] * O[row, c]; one warp per row.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_delta_kernel(const T* __restrict__ out, const T* __restrict__ dout, float* __restrict__ delta,
                          int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float s = 0.f;
  for (int c = lane; c < D; c += 32) s += to_f(out[row * D + c]) * to_f(dout[row * D + c]);
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

template <typename T, int D, int QPW>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                       const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                       T* __restrict__ dq, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int L,
                       float scale, bool rope) {
  constexpr int QB = kWarps * QPW;
  constexpr int EPL = (D + 31) / 32;
  __shared__ float Qs[QB][D];
  __shared__ float dOs[QB][D];
  __shared__ float Ks[kTile][D + 1];
  __shared__ float Vs[kTile][D + 1];
  __shared__ float rowbuf[kWarps][D];
  const int bh = blockIdx.x;
  const int q0 = blockIdx.y * QB;
  const size_t base = static_cast<size_t>(bh) * L * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  stage_rows<T, D, QB>(Qs, dOs, q, dout, base, q0, L, rope, cos_t, sin_t);
  float lse_r[QPW], del_r[QPW], acc[QPW][EPL];
#pragma unroll
  for (int i = 0; i < QPW; ++i) {
    const int pos = q0 + warp * QPW + i;
    lse_r[i] = pos < L ? lse[static_cast<size_t>(bh) * L + pos] : 0.f;
    del_r[i] = pos < L ? delta[static_cast<size_t>(bh) * L + pos] : 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[i][e] = 0.f;
  }

  for (int t0 = 0; t0 < L; t0 += kTile) {
    __syncthreads();
    stage_rows<T, D, kTile>(Ks, Vs, k, v, base, t0, L, rope, cos_t, sin_t);
    __syncthreads();
    const bool kvalid = t0 + lane < L;
    const int nk = min(kTile, L - t0);
#pragma unroll
    for (int i = 0; i < QPW; ++i) {
      const int r = warp * QPW + i;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int c = 0; c < D; ++c) {
        s += Qs[r][c] * Ks[lane][c];
        dp += dOs[r][c] * Vs[lane][c];
      }
      const float p = kvalid ? expf(s * scale - lse_r[i]) : 0.f;
      const float ds = p * (dp - del_r[i]);
      for (int j = 0; j < nk; ++j) {
        const float dsj = __shfl_sync(kFull, ds, j);
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          const int c = lane + 32 * e;
          if (c < D) acc[i][e] += dsj * Ks[j][c];
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < QPW; ++i) {
    const int pos = q0 + warp * QPW + i;
    if (pos >= L) continue;  // warp-uniform
    store_grad_row<T, D>(dq + base + static_cast<size_t>(pos) * D, acc[i], scale, rowbuf[warp], pos, lane, rope,
                         cos_t, sin_t);
  }
}

template <typename T, int D, int KPW>
__global__ void __launch_bounds__(kThreads)
    attn_bwd_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta,
                         T* __restrict__ dk, T* __restrict__ dv, const float* __restrict__ cos_t,
                         const float* __restrict__ sin_t, int L, float scale, bool rope) {
  constexpr int KB = kWarps * KPW;
  constexpr int EPL = (D + 31) / 32;
  __shared__ float Ks[KB][D];
  __shared__ float Vs[KB][D];
  __shared__ float Qs[kTile][D + 1];
  __shared__ float dOs[kTile][D + 1];
  __shared__ float lse_s[kTile];
  __shared__ float del_s[kTile];
  __shared__ float rowbuf[kWarps][D];
  const int bh = blockIdx.x;
  const int k0 = blockIdx.y * KB;
  const size_t base = static_cast<size_t>(bh) * L * D;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  stage_rows<T, D, KB>(Ks, Vs, k, v, base, k0, L, rope, cos_t, sin_t);
  float adk[KPW][EPL], adv[KPW][EPL];
#pragma unroll
  for (int i = 0; i < KPW; ++i)
#pragma unroll
    for (int e = 0; e < EPL; ++e) adk[i][e] = adv[i][e] = 0.f;

  for (int t0 = 0; t0 < L; t0 += kTile) {
    __syncthreads();
    stage_rows<T, D, kTile>(Qs, dOs, q, dout, base, t0, L, rope, cos_t, sin_t);
    if (tid < kTile) {
      const int pos = t0 + tid;
      lse_s[tid] = pos < L ? lse[static_cast<size_t>(bh) * L + pos] : 0.f;
      del_s[tid] = pos < L ? delta[static_cast<size_t>(bh) * L + pos] : 0.f;
    }
    __syncthreads();
    const bool qvalid = t0 + lane < L;
    const int nq = min(kTile, L - t0);
#pragma unroll
    for (int i = 0; i < KPW; ++i) {
      const int r = warp * KPW + i;
      float s = 0.f, dp = 0.f;
#pragma unroll 16
      for (int c = 0; c < D; ++c) {
        s += Qs[lane][c] * Ks[r][c];
        dp += dOs[lane][c] * Vs[r][c];
      }
      const float p = qvalid ? expf(s * scale - lse_s[lane]) : 0.f;
      const float ds = p * (dp - del_s[lane]);
      for (int j = 0; j < nq; ++j) {
        const float pj = __shfl_sync(kFull, p, j);
        const float dsj = __shfl_sync(kFull, ds, j);
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          const int c = lane + 32 * e;
          if (c < D) {
            adv[i][e] += pj * dOs[j][c];
            adk[i][e] += dsj * Qs[j][c];
          }
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < KPW; ++i) {
    const int pos = k0 + warp * KPW + i;
    if (pos >= L) continue;  // warp-uniform
    const size_t off = base + static_cast<size_t>(pos) * D;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const int c = lane + 32 * e;
      if (c < D) dv[off + c] = static_cast<T>(adv[i][e]);
    }
    store_grad_row<T, D>(dk + off, adk[i], scale, rowbuf[warp], pos, lane, rope, cos_t, sin_t);
  }
}

// --------------------------------------------------------------------------- host side
#define LEO_ATTN_DISPATCH(dtype, d, ...)                                                     \
  [&] {                                                                                      \
    switch (dtype) {                                                                         \
      case at::kFloat: {                                                                     \
        using T = float;                                                                     \
        LEO_ATTN_DISPATCH_D(d, __VA_ARGS__);                                                 \
        break;                                                                               \
      }                                                                                      \
      case at::kHalf: {                                                                      \
        using T = at::Half;                                                                  \
        LEO_ATTN_DISPATCH_D(d, __VA_ARGS__);                                                 \
        break;                                                                               \
      }                                                                                      \
      case at::kBFloat16: {                                                                  \
        using T = at::BFloat16;                                                              \
        LEO_ATTN_DISPATCH_D(d, __VA_ARGS__);                                                 \
        break;                                                                               \
      }                                                                                      \
      default:                                                                               \
        TORCH_CHECK(false, "temporal_attention (cuda): q must be float32, float16 or bfloat16, got ", dtype); \
    }                                                                                        \
  }()

#define LEO_ATTN_CASE_D(val, ...)            \
  case val: {                                \
    constexpr int kD = val;                  \
    constexpr int kRows = kD == 128 ? 2 : 4; \
    __VA_ARGS__;                             \
    break;                                   \
  }

#define LEO_ATTN_DISPATCH_D(d, ...)                                                           \
  switch (d) {                                                                                \
    LEO_ATTN_CASE_D(16, __VA_ARGS__)                                                          \
    LEO_ATTN_CASE_D(32, __VA_ARGS__)                                                          \
    LEO_ATTN_CASE_D(64, __VA_ARGS__)                                                          \
    LEO_ATTN_CASE_D(128, __VA_ARGS__)                                                         \
    default:                                                                                  \
      TORCH_CHECK(false, "temporal_attention (cuda): head dim must be 16, 32, 64 or 128, got ", d); \
  }

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#ifndef LEO_CUDA_EMULATE
  TORCH_CHECK(q.is_cuda(), "temporal_attention (cuda): q must be a CUDA tensor");
#endif
  TORCH_CHECK(q.dim() == 4, "temporal_attention (cuda): q must be 4-D (B, heads, L, d), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "temporal_attention (cuda): k and v must have q's shape ", q.sizes());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(),
              "temporal_attention (cuda): q, k, v must be on one device");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "temporal_attention (cuda): q, k, v must share a dtype");
  TORCH_CHECK(q.size(2) >= 1 && q.size(2) <= 4096, "temporal_attention (cuda): L must be in [1, 4096], got ",
              q.size(2));
}

// (cos, sin) tables (L, d/2) float32, angles p * 10000^(-2i/d) computed in float64.
std::pair<at::Tensor, at::Tensor> rope_tables(int64_t L, int64_t d, const at::Tensor& like, bool rope) {
  if (!rope) {
    auto dummy = at::empty({1}, like.options().dtype(at::kFloat));
    return {dummy, dummy};
  }
  auto opts = like.options().dtype(at::kDouble);
  auto inv = at::pow(10000.0, at::arange(d / 2, opts) * (-2.0 / static_cast<double>(d)));
  auto ang = at::arange(L, opts).unsqueeze(1) * inv.unsqueeze(0);
  return {ang.cos().to(at::kFloat).contiguous(), ang.sin().to(at::kFloat).contiguous()};
}

std::tuple<at::Tensor, at::Tensor> temporal_attention_fwd_cuda(const at::Tensor& q_, const at::Tensor& k_,
                                                               const at::Tensor& v_, bool rope) {
  check_qkv(q_, k_, v_);
  c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), d = q.size(3);
  auto out = at::empty_like(q);
  auto lse = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  auto [cos_t, sin_t] = rope_tables(L, d, q, rope);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  LEO_ATTN_DISPATCH(q.scalar_type(), d, {
    const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>((L + kWarps * kRows - 1) / (kWarps * kRows)));
    LEO_LAUNCH(grid, stream, attn_fwd_kernel<T, kD, kRows>)(
        q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), out.data_ptr<T>(), lse.data_ptr<float>(),
        cos_t.data_ptr<float>(), sin_t.data_ptr<float>(), static_cast<int>(L), scale, rope);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_bwd_cuda(const at::Tensor& grad_out_,
                                                                           const at::Tensor& q_, const at::Tensor& k_,
                                                                           const at::Tensor& v_, const at::Tensor& out_,
                                                                           const at::Tensor& lse_, bool rope) {
  check_qkv(q_, k_, v_);
  TORCH_CHECK(grad_out_.sizes() == q_.sizes() && out_.sizes() == q_.sizes(),
              "temporal_attention (cuda): grad_out and out must have q's shape");
  TORCH_CHECK(grad_out_.scalar_type() == q_.scalar_type() && out_.scalar_type() == q_.scalar_type(),
              "temporal_attention (cuda): grad_out and out must have q's dtype");
  TORCH_CHECK(lse_.scalar_type() == at::kFloat && lse_.numel() == q_.numel() / q_.size(3),
              "temporal_attention (cuda): lse must be float32 (B, heads, L)");
  c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto dout = grad_out_.contiguous(), out = out_.contiguous(), lse = lse_.contiguous();
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), d = q.size(3);
  auto dq = at::empty_like(q), dk = at::empty_like(q), dv = at::empty_like(q);
  if (q.numel() == 0) return {dq, dk, dv};
  auto delta = at::empty({B, H, L}, q.options().dtype(at::kFloat));
  auto [cos_t, sin_t] = rope_tables(L, d, q, rope);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t rows = B * H * L;
  LEO_ATTN_DISPATCH(q.scalar_type(), d, {
    LEO_LAUNCH(static_cast<unsigned>((rows + kWarps - 1) / kWarps), stream, attn_bwd_delta_kernel<T, kD>)(
        out.data_ptr<T>(), dout.data_ptr<T>(), delta.data_ptr<float>(), rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(static_cast<unsigned>(B * H), static_cast<unsigned>((L + kWarps * kRows - 1) / (kWarps * kRows)));
    LEO_LAUNCH(grid, stream, attn_bwd_dq_kernel<T, kD, kRows>)(
        q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), dout.data_ptr<T>(), lse.data_ptr<float>(),
        delta.data_ptr<float>(), dq.data_ptr<T>(), cos_t.data_ptr<float>(), sin_t.data_ptr<float>(),
        static_cast<int>(L), scale, rope);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    LEO_LAUNCH(grid, stream, attn_bwd_dkdv_kernel<T, kD, kRows>)(
        q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(), dout.data_ptr<T>(), lse.data_ptr<float>(),
        delta.data_ptr<float>(), dk.data_ptr<T>(), dv.data_ptr<T>(), cos_t.data_ptr<float>(),
        sin_t.data_ptr<float>(), static_cast<int>(L), scale, rope);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv};
}

}  // namespace

#ifndef LEO_CUDA_EMULATE
TORCH_LIBRARY_IMPL(leo_kernels, CUDA, m) {
  m.impl("_temporal_attention_fwd", &temporal_attention_fwd_cuda);
  m.impl("_temporal_attention_bwd", &temporal_attention_bwd_cuda);
}
#else
TORCH_LIBRARY(leo_attention_cuda_emu, m) {  // same kernels and host code, run on CPU tensors
  m.def("_temporal_attention_fwd", &temporal_attention_fwd_cuda);
  m.def("_temporal_attention_bwd", &temporal_attention_bwd_cuda);
}
#endif
