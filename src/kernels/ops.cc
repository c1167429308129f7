// Scalar reference ops and the dispatch to the SIMD versions.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/half.h"
#include "kernels/matmul.h"
#include "kernels/ops_internal.h"

namespace mx::ops {

namespace ref {

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv * w[i];
}

void softmax(float* x, int64_t n) {
  float mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] / (1.f + std::exp(-a[i])) * b[i];
}

void add(const float* a, const float* b, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void scale(float* x, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void axpy(float a, const float* x, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void rope(float* x, int64_t n_tokens, int64_t row_stride, int n_heads, int head_dim,
          const float* cos, const float* sin, RopeLayout layout) {
  const int half = head_dim / 2;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* c = cos + t * half;
    const float* s = sin + t * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + t * row_stride + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const int a = layout == RopeLayout::Interleaved ? 2 * i : i;
        const int b = layout == RopeLayout::Interleaved ? 2 * i + 1 : i + half;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c[i] - x1 * s[i];
        v[b] = x0 * s[i] + x1 * c[i];
      }
    }
  }
}

namespace {
void load_row(DType d, const uint8_t* src, float* dst, int n) {
  if (d == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
  } else {
    for (int i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = d == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
}
}  // namespace

void attention(const float* q, const KvRows& k, const KvRows& v, int n_kv, int n_heads,
               int n_kv_heads, int head_dim, float scale, float* out, int kv_head_begin,
               int kv_head_end) {
  if (kv_head_end < 0) kv_head_end = n_kv_heads;
  const int group = n_heads / n_kv_heads, hd = head_dim;
  const size_t kesz = k.dtype == DType::F32 ? 4 : 2, vesz = v.dtype == DType::F32 ? 4 : 2;
  std::vector<float> krow(static_cast<size_t>(hd)), vrow(static_cast<size_t>(hd));
  std::vector<float> acc(static_cast<size_t>(group * hd));
  std::vector<float> m(static_cast<size_t>(group)), l(static_cast<size_t>(group));
  for (int g = kv_head_begin; g < kv_head_end; ++g) {
    std::fill(acc.begin(), acc.end(), 0.f);
    std::fill(m.begin(), m.end(), -INFINITY);
    std::fill(l.begin(), l.end(), 0.f);
    for (int p = 0; p < n_kv; ++p) {
      load_row(k.dtype, k.data + static_cast<size_t>(p) * k.row_stride + g * hd * kesz, krow.data(), hd);
      load_row(v.dtype, v.data + static_cast<size_t>(p) * v.row_stride + g * hd * vesz, vrow.data(), hd);
      for (int j = 0; j < group; ++j) {
        const float* qh = q + static_cast<size_t>(g * group + j) * hd;
        float dot = 0.f;
        for (int i = 0; i < hd; ++i) dot += qh[i] * krow[i];
        dot *= scale;
        float* a = &acc[static_cast<size_t>(j * hd)];
        if (dot > m[j]) {  // online softmax: rescale the running sums when the max grows
          const float r = std::exp(m[j] - dot);
          l[j] *= r;
          for (int i = 0; i < hd; ++i) a[i] *= r;
          m[j] = dot;
        }
        const float w = std::exp(dot - m[j]);
        l[j] += w;
        for (int i = 0; i < hd; ++i) a[i] += w * vrow[i];
      }
    }
    for (int j = 0; j < group; ++j) {
      float* o = out + static_cast<size_t>(g * group + j) * hd;
      const float inv = 1.f / l[j];
      for (int i = 0; i < hd; ++i) o[i] = acc[static_cast<size_t>(j * hd + i)] * inv;
    }
  }
}

void attention_tokens(const float* q, int n_tokens, int64_t row_stride, const int* n_kv,
                      const KvRows& k, const KvRows& v, int n_heads, int n_kv_heads, int head_dim,
                      float scale, float* out, int kv_head) {
  for (int t = 0; t < n_tokens; ++t)
    ref::attention(q + t * row_stride, k, v, n_kv[t], n_heads, n_kv_heads, head_dim, scale,
              out + t * row_stride, kv_head, kv_head + 1);
}

}  // namespace ref

void rope_tables(const int32_t* pos, int64_t n_tokens, int head_dim, double theta, float* cos_out,
                 float* sin_out) {
  const int half = head_dim / 2;
  std::vector<double> freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) freq[i] = 1.0 / std::pow(theta, 2.0 * i / head_dim);
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int i = 0; i < half; ++i) {
      const double a = static_cast<double>(pos[t]) * freq[i];
      cos_out[t * half + i] = static_cast<float>(std::cos(a));
      sin_out[t * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

namespace {

const OpsTable& ref_table() {
  static const OpsTable t = {ref::rmsnorm, ref::softmax, ref::silu_mul, ref::add,
                             ref::scale,   ref::axpy,    ref::rope,     ref::attention,
                             ref::attention_tokens};
  return t;
}

const OpsTable& table() {
  switch (simd_path()) {
    case SimdPath::Avx512: return ops_avx512();
    case SimdPath::Avx2: return ops_avx2();
    case SimdPath::Scalar: break;
  }
  return ref_table();
}

}  // namespace

void rmsnorm(const float* x, const float* w, int64_t n, float eps, float* out) {
  table().rmsnorm(x, w, n, eps, out);
}
void softmax(float* x, int64_t n) { table().softmax(x, n); }
void silu_mul(const float* a, const float* b, int64_t n, float* out) { table().silu_mul(a, b, n, out); }
void add(const float* a, const float* b, int64_t n, float* out) { table().add(a, b, n, out); }
void scale(float* x, int64_t n, float s) { table().scale(x, n, s); }
void axpy(float a, const float* x, int64_t n, float* y) { table().axpy(a, x, n, y); }
void rope(float* x, int64_t n_tokens, int64_t row_stride, int n_heads, int head_dim,
          const float* cos, const float* sin, RopeLayout layout) {
  table().rope(x, n_tokens, row_stride, n_heads, head_dim, cos, sin, layout);
}
void attention(const float* q, const KvRows& k, const KvRows& v, int n_kv, int n_heads,
               int n_kv_heads, int head_dim, float scale, float* out, int kv_head_begin,
               int kv_head_end) {
  table().attention(q, k, v, n_kv, n_heads, n_kv_heads, head_dim, scale, out, kv_head_begin,
                    kv_head_end);
}

void attention_tokens(const float* q, int n_tokens, int64_t row_stride, const int* n_kv,
                      const KvRows& k, const KvRows& v, int n_heads, int n_kv_heads, int head_dim,
                      float scale, float* out, int kv_head) {
  table().attention_tokens(q, n_tokens, row_stride, n_kv, k, v, n_heads, n_kv_heads, head_dim,
                           scale, out, kv_head);
}

}  // namespace mx::ops
