// Block layouts of the quantized types, bit-for-bit those of ggml (llama.cpp's GGUF files),
// plus reference (scalar) decoders and encoders. SIMD dot kernels live in matmul_*.cc.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace mx {

constexpr int QK = 32;    // legacy block size
constexpr int QK_K = 256; // k-quant super-block size
constexpr int K_SCALE_SIZE = 12;

#pragma pack(push, 1)
struct BlockQ8_0 { uint16_t d; int8_t qs[QK]; };                       // x = d * q
struct BlockQ4_0 { uint16_t d; uint8_t qs[QK / 2]; };                  // x = d * (q - 8)
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[QK / 2]; };      // x = d * q + m
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; };   // x = d * (q - 16)
struct BlockQ5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[QK / 2]; };
struct BlockQ4_K { uint16_t d; uint16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { uint16_t d; uint16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; };  // activations only
#pragma pack(pop)

static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

// 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block, packed in 12 bytes:
// sub-blocks 0-3 keep theirs in the low 6 bits of bytes 0-7; 4-7 split theirs between the
// high nibbles of bytes 8-11 and the top 2 bits of bytes 0-7.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Decodes n elements (a multiple of the type's block size) of any DType to f32.
// Plain types (f32/f16/bf16) are accepted too. Interleaved rows are not contiguous: they throw
// std::invalid_argument (use dequantize_rows).
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// The r16 types (dtype.h): one group of 16 rows of the base type (Q8_0, Q4_0, Q4_K, ...,
// contiguous, row_bytes(base, cols) apart) to its interleaved form and back; both sides take
// 16 * row_bytes(base, cols) bytes. cols must be a multiple of the base block. The round trip is exact
// (the same bytes, reordered). t is the interleaved type.
void interleave_r16(DType t, const uint8_t* rows16, int64_t cols, uint8_t* group);
void deinterleave_r16(DType t, const uint8_t* group, int64_t cols, uint8_t* rows16);
// Rows [r0, r0 + n) of a weight tensor as f32, for any DType including the interleaved ones
// (whose rows are decoded through their group). data is the tensor's start, rows are cols wide.
void dequantize_rows(DType t, const uint8_t* data, int64_t cols, int64_t r0, int64_t n, float* dst);

// Encoders for the types we write (repack targets and activation formats): F32, F16, BF16,
// Q8_0, Q4_0, Q5_0, Q5_1 and Q8_K round to nearest exactly as ggml's quantize_row_*_ref do;
// Q4_K, Q5_K and Q6_K search scales as ggml's reference quantizer does (weighted least squares
// per sub-block), then also try the neighbouring sub-block scale codes, which lowers the error
// below that of ggml's encoding (n a multiple of 256 for them; tests/quant_blocks_test.cc).
// Returns false for a type we do not encode.
bool quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace mx
