// Element-wise and attention kernels of the forward pass, dispatched like matmul (simd_path():
// scalar / AVX2 / AVX-512, MIXTRAL_SIMD to force one). The scalar versions in ops::ref are the
// reference the SIMD paths are tested against; SIMD results differ from them only by float
// rounding (summation order, FMA contraction, a polynomial exp accurate to ~2 ulp).
//
// Every op is a pure function of its inputs: per-row / per-head results do not depend on how
// many rows or heads are processed in one call, so batched and one-at-a-time runs agree.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace mx {

class ThreadPool;

namespace ops {

// out[i] = x[i] * w[i] / sqrt(mean_j(x[j]^2) + eps), i < n. out may alias x.
void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out);

// x[i] = exp(x[i] - max) / sum_j exp(x[j] - max), in place; n >= 1.
void softmax(float* x, int64_t n);

// out[i] = silu(a[i]) * b[i] with silu(v) = v / (1 + exp(-v)). out may alias a or b.
void silu_mul(const float* a, const float* b, int64_t n, float* out);

// out[i] = a[i] + b[i] (out may alias either).
void add(const float* a, const float* b, int64_t n, float* out);
// x[i] *= s.
void scale(float* x, int64_t n, float s);
// y[i] += a * x[i] (weighted sums of expert outputs).
void axpy(float a, const float* x, int64_t n, float* y);

// ---- RoPE
// Pairs rotated by angle pos * theta^(-2i/head_dim), i < head_dim/2:
//   Interleaved: (x[2i], x[2i+1])          (Meta / mistral checkpoints, GGUF)
//   RotateHalf:  (x[i], x[i + head_dim/2])  (Hugging Face checkpoints with permuted q/k rows)
// (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
enum class RopeLayout { Interleaved, RotateHalf };

// cos/sin tables, [n_tokens][head_dim/2] each, for positions pos[t]. Angles are computed in
// double (pos * (1 / theta^(2i/head_dim))) and rounded to float once: positions in the tens of
// thousands lose digits in float. Compute once per step, reuse for every layer and for q and k.
void rope_tables(const int32_t* pos, int64_t n_tokens, int head_dim, double theta, float* cos_out,
                 float* sin_out);
// Rotates n_heads heads of head_dim values in each of n_tokens rows of x (row t starts at
// x + t * row_stride floats; heads are contiguous inside a row). head_dim must be even.
void rope(float* x, int64_t n_tokens, int64_t row_stride, int n_heads, int head_dim,
          const float* cos, const float* sin, RopeLayout layout);

// ---- Attention for one query position
// K or V cache rows of one sequence: row p (position p) starts at data + p * row_stride bytes
// and holds n_kv_heads * head_dim values of `dtype` (F32, F16 or BF16), head g at element
// g * head_dim.
struct KvRows {
  DType dtype = DType::F32;
  const uint8_t* data = nullptr;
  size_t row_stride = 0;
};

// out[h * head_dim + i] = sum_p softmax_p(scale * q_h . K[p, g(h)]) * V[p, g(h)][i]
// over positions p in [0, n_kv), for query heads h whose kv head g(h) = h / (n_heads /
// n_kv_heads) lies in [kv_head_begin, kv_head_end) (-1: n_kv_heads). q and out hold
// n_heads * head_dim floats (all heads; only the selected ones are written). Typically
// scale = 1/sqrt(head_dim). Causal masks / sliding windows: pass the visible rows only
// (data pointing at the first visible position, n_kv = number visible).
// One streaming pass with an online softmax (no n_kv-sized buffers); the query heads of a
// group share each K/V row read. n_kv >= 1.
void attention(const float* q, const KvRows& k, const KvRows& v, int n_kv, int n_heads,
               int n_kv_heads, int head_dim, float scale, float* out, int kv_head_begin = 0,
               int kv_head_end = -1);

// ---- Tiled causal attention for a run of query tokens of one sequence (prefill)
// For each token t < n_tokens (q row t at q + t * row_stride floats, out likewise) and each
// query head of kv head `kv_head`: out = attention(q_t, k, v, n_kv[t], ...) over rows
// [0, n_kv[t]) (n_kv[t] >= 1, every row below max n_kv written). Tiles of tokens x heads share
// each K/V chunk read (flash-attention style, O(tile) memory); the result is bit-identical to
// attention() for each token alone on the same SIMD path.
void attention_tokens(const float* q, int n_tokens, int64_t row_stride, const int* n_kv,
                      const KvRows& k, const KvRows& v, int n_heads, int n_kv_heads, int head_dim,
                      float scale, float* out, int kv_head);

// Scalar references (same contracts).
namespace ref {
void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out);
void softmax(float* x, int64_t n);
void silu_mul(const float* a, const float* b, int64_t n, float* out);
void add(const float* a, const float* b, int64_t n, float* out);
void scale(float* x, int64_t n, float s);
void axpy(float a, const float* x, int64_t n, float* y);
void rope(float* x, int64_t n_tokens, int64_t row_stride, int n_heads, int head_dim,
          const float* cos, const float* sin, RopeLayout layout);
void attention(const float* q, const KvRows& k, const KvRows& v, int n_kv, int n_heads,
               int n_kv_heads, int head_dim, float scale, float* out, int kv_head_begin = 0,
               int kv_head_end = -1);
void attention_tokens(const float* q, int n_tokens, int64_t row_stride, const int* n_kv,
                      const KvRows& k, const KvRows& v, int n_heads, int n_kv_heads, int head_dim,
                      float scale, float* out, int kv_head);
}  // namespace ref

}  // namespace ops
}  // namespace mx
