// Interface between the matmul dispatcher (matmul.cc) and the per-ISA kernel files
// (matmul_scalar.cc, matmul_avx2.cc, matmul_avx512.cc). Not for use outside src/kernels.
//
// A call runs in two steps: prepare() turns the f32 activations into what the path's kernels
// read for this weight dtype (a padded f32 copy, or Q8 blocks quantized once per call), then
// rows() computes y for a range of weight rows and all tokens. Every path quantizes with the
// same arithmetic (quantize_acts below), so paths differ only in float summation order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/mat_view.h"

namespace mx::mmk {

// Grows, never shrinks; 64-byte aligned so kernels may use aligned loads.
// get() returns one buffer of at least `bytes` (earlier contents and pointers are invalid).
class Arena {
 public:
  void* get(size_t bytes);
 private:
  struct Free { void operator()(void* p) const; };
  std::unique_ptr<void, Free> p_;
  size_t cap_ = 0;
};

// Activations prepared for one call. Unused members stay null.
struct Prepared {
  int64_t n_tokens = 0, cols = 0;
  // Activation bytes a kernel reads per token (decides the GEMV row tile: see drive()).
  int64_t act_bytes = 0;
  // Plain weights (f32/f16/bf16): f32 activations, padded with zeros to `xf_stride` floats
  // (and possibly permuted to match how the path widens bf16 pairs).
  const float* xf = nullptr;
  int64_t xf_stride = 0;
  // Quantized weights: Q8 values per token (int8, or int8 + 128 stored as uint8 when the path
  // multiplies unsigned activations with signed weights), padded to q_stride bytes.
  const int8_t* q = nullptr;
  int64_t q_stride = 0;
  // Scale of each activation block (32 or 256 values).
  const float* d = nullptr;
  int64_t d_stride = 0;
  // Legacy *_1 types: d * sum(q) of each 32-block, laid out like `d`.
  const float* sd = nullptr;
  // bias_mul * sum(q) of each block (int32, laid out like `d`): lets kernels multiply unsigned
  // *_0 weights (q + offset) and subtract the offset exactly in the integer accumulator.
  const int32_t* bias = nullptr;
  // k-quants: sum(q) of each 16 values (natural order) and of each 32 values.
  const int16_t* bsum16 = nullptr;
  const int16_t* bsum32 = nullptr;
  int64_t bsum16_stride = 0, bsum32_stride = 0;
};

// How to lay out quantized activations.
struct QuantLayout {
  int block = 32;           // 32 (legacy types, Q8_0-like) or 256 (k-quants, Q8_K-like)
  bool offset128 = false;   // store q + 128 as uint8
  bool want_sd = false;     // legacy *_1 types need d*sum(q)
  bool want_bsums = false;  // k-quants
  int bias_mul = 0;         // != 0: fill Prepared::bias
  // Optional reordering of 16-value chunks inside each span of perm_span values (a multiple of
  // block or vice versa): stored chunk i holds natural chunk perm[i].
  const uint8_t* perm = nullptr;
  int perm_span = 0;
  int pad_bytes = 64;       // q_stride is a multiple of this (>= cols)
};

// Quantizes one block of n (32 or 256) values: q in natural order, *d, and when sum16 is not
// null the sum of each 16 q values. Every implementation must give identical results.
using QuantBlockFn = void (*)(const float* x, int n, int8_t* q, float* d, int32_t* sum16);
void quant_block_scalar(const float* x, int n, int8_t* q, float* d, int32_t* sum16);
void quant_block_avx2(const float* x, int n, int8_t* q, float* d, int32_t* sum16);
void quant_block_avx512(const float* x, int n, int8_t* q, float* d, int32_t* sum16);

// The one activation quantizer (identical values on every path): per block d = amax / 127,
// q = round-to-nearest-even(x * (1 / d)), clamped to [-127, 127]; d = 0 gives q = 0.
// Tokens [t0, t1) only; buffers come from quant_alloc.
struct QuantBuffers {
  int8_t* q; int64_t q_stride;
  float* d; int64_t d_stride;
  float* sd;
  int32_t* bias;
  int16_t* bsum16; int64_t bsum16_stride;
  int16_t* bsum32; int64_t bsum32_stride;
};
QuantBuffers quant_alloc(const QuantLayout& L, int64_t n_tokens, int64_t cols, Arena& arena,
                         Prepared* out);
// Allocates the padded f32 copy (stride rounded up to `pad_floats`).
float* plain_alloc(int64_t n_tokens, int64_t cols, int pad_floats, Arena& arena, Prepared* out);
void quantize_acts(const QuantLayout& L, const float* x, int64_t cols, int64_t t0, int64_t t1,
                   const QuantBuffers& b, QuantBlockFn fn);

// What prepare() asks the dispatcher to fill, token by token (spread over the pool).
struct PrepareJob {
  bool quant = false;
  QuantLayout layout;
  QuantBuffers bufs{};
  QuantBlockFn qfn = quant_block_scalar;
  // Plain weights: copy one token's f32 row to dst (padding / permuting as the path wants).
  void (*fill_plain)(const float* x, int64_t cols, float* dst, int64_t stride) = nullptr;
  float* plain = nullptr;
  int64_t plain_stride = 0;
};
void run_prepare(const PrepareJob& job, const float* x, int64_t cols, int64_t t0, int64_t t1);

// Sizes buffers for dt and tells what to fill.
using PrepareFn = void (*)(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                           PrepareJob* job);
// y[t * ldy + r] for r in [r0, r1), t in [0, n_tokens).
using RowsFn = void (*)(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                        int64_t ldy);

void prepare_scalar(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                    PrepareJob* job);
void rows_scalar(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy);
void prepare_avx2(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                  PrepareJob* job);
void rows_avx2(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
               int64_t ldy);
// The AVX-512 quantized kernels need VNNI; without it this path uses the AVX2 ones.
void prepare_avx512(DType dt, int64_t n_tokens, int64_t cols, Arena& arena, Prepared* out,
                    PrepareJob* job);
void rows_avx512(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                 int64_t ldy);

// The interleaved k-quants (Q4_KR16 / Q5_KR16 / Q6_KR16), rows [r0, r1) in whole 16-row groups,
// with Q8_K-like activations in natural order (block 256, bsums): matmul_kr16_*.cc.
void rows_kr16_avx2(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                    int64_t ldy);
void rows_kr16_avx512(const MatView& w, const Prepared& p, int64_t r0, int64_t r1, float* y,
                      int64_t ldy);

// Padded f32 copy (plain weights on every path but AVX bf16).
void fill_plain_copy(const float* x, int64_t cols, float* dst, int64_t stride);

bool has_vnni();  // avx512vnni per CPUID (cached)

}  // namespace mx::mmk
