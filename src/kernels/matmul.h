// y[t, o] = sum_i W[o, i] * x[t, i]  for t < n_tokens, o < W.rows.
//   W: [rows, cols] in any DType (quantized rows are multiplied in their own format);
//   x: [n_tokens, cols] f32 (row stride cols); y: [n_tokens, rows] f32 (row stride rows).
// Determinism contract: y[t, o] depends only on W row o and x row t, never on n_tokens, the
// thread count or the other tokens in the batch. That is what makes batched, threaded and
// MPI-sharded runs give bit-identical results. Kernels keep it by splitting only output rows
// across threads and by giving every (row, token) pair the same operation sequence whether it
// is computed in a one-token GEMV or inside a multi-token GEMM tile. (Results do depend on the
// SIMD path: paths differ in float summation order.)
#pragma once
#include <cstdint>
#include <string>

#include "kernels/mat_view.h"

namespace mx {

class ThreadPool;

enum class SimdPath { Scalar, Avx2, Avx512 };

// Chosen once from CPUID, unless MIXTRAL_SIMD=scalar|avx2|avx512 forces one (capped to what the
// CPU supports). set_simd_path overrides it (tests use it to compare paths).
//   Avx512: avx512f/bw/vl/dq (+ the Avx2 set). Quantized kernels also need avx512vnni; without
//           it they run the Avx2 kernels. bf16 weights are widened exactly to f32 (no vdpbf16ps,
//           which would round activations to bf16).
//   Avx2:   avx2 + fma + f16c.
SimdPath simd_path();
void set_simd_path(SimdPath p);
std::string simd_path_name(SimdPath p);
bool cpu_supports(SimdPath p);
// The path MIXTRAL_SIMD=`env` selects on this CPU (null or unknown: the best supported).
SimdPath simd_path_for_env(const char* env);

// Quantized weights (q8_0, q4_0, q4_1, q5_0, q5_1) are multiplied with activations quantized once
// per call to 8-bit blocks of 32 (Q8_0-like, d = amax/127, round-to-nearest-even); k-quants
// (q4_k, q5_k, q6_k) with 256-blocks (Q8_K-like). Block integer dot products are exact, so the
// paths differ only in float summation order. f32/f16/bf16 weights use f32 activations.
// cols must be a multiple of the weight's block size (any value for f32/f16/bf16).
// Rows are split across the pool; throws std::invalid_argument for unsupported dtypes.
// Performance notes: one token (decode) streams the weights once, row after row; several
// tokens (prefill) reuse L2-resident weight blocks across register tiles of tokens. On the
// AVX-512 path Q8_0 keeps 16 weight rows in the lanes of a vector (exact integer block sums,
// then acc = fma(float(S_b), dw_b * dx_b, acc) per block in order, for every batch size);
// several tokens first transpose row blocks once into an L2-resident packed buffer. Q8_0R16
// (dtype.h) is stored already transposed: its kernels read it in place, with the same
// arithmetic, so it equals Q8_0 bit for bit (the scalar path deinterleaves a group at a time).
// Q4_0R16 goes through the same tiles (exact block sums; AVX2 and AVX-512 agree bit for bit). For
// f32/f16/bf16 weights keep row starts 64-byte aligned: split cache-line loads cost up to a
// third of the decode bandwidth (quantized blocks are insensitive to alignment).
void matmul(const MatView& w, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// ys[m] = ws[m] x for m < n, all with the same x (e.g. an expert's w1 and w3, or wq/wk/wv):
// when the matrices share dtype and cols, activations are quantized once and all rows run in
// one parallel region; results are bit-identical to n separate matmul() calls.
void matmul_multi(const MatView* ws, float* const* ys, int n, const float* x, int64_t n_tokens,
                  ThreadPool& pool);

}  // namespace mx
