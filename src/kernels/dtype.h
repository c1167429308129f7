// Element and block types of weight tensors. Quantized types store rows as a sequence of
// fixed-size blocks along the row (the fastest / "in" dimension), exactly as ggml lays them out.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace mx {

enum class DType : uint8_t {
  F32, F16, BF16,
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,   // 32-element blocks (ggml legacy quants)
  Q4_K, Q5_K, Q6_K,               // 256-element super-blocks (ggml k-quants)
  Q8_0R16, Q4_0R16,               // Q8_0 / Q4_0 with 16 rows interleaved (our cache only; below)
  Q4_KR16, Q5_KR16, Q6_KR16,      // Q4_K / Q5_K / Q6_K with 16 rows interleaved (below)
  Q8_K,                           // activation-side format for k-quant dots (not stored in files)
  I32, I64, U8,                   // only seen in checkpoints for non-weight tensors
  Count
};

// Q8_0R16 holds exactly the values of Q8_0, reordered so that the AVX-512 kernels load 16 rows'
// blocks as ready-made vectors (no transposition in registers) and each 16-row group is one
// sequential stream. Rows come in groups of 16 (rows % 16 == 0), each group nb * 544 bytes
// (nb = cols / 32), groups back to back:
//   [quants of block 0 .. nb-1: 512 bytes each][f16 scales of block 0 .. nb-1: 32 bytes each]
// In a block's 512 bytes, row l's quants 4k .. 4k+3 are at 64 k + 4 l (signed int8, as Q8_0);
// its scale is the l-th f16 of the block's 32 bytes. A row is thus not contiguous: only whole
// groups can be addressed (row(16 g) is group g's start, as the sizes equal Q8_0's).
// Q4_0R16 is the same with Q4_0's 16 quant bytes per block: 256 bytes of quants per block
// (row l's bytes 4m .. 4m+3 at 64 m + 4 l, nibbles as in Q4_0), then the f16 scales.
//
// The k-quant r16 types hold exactly the bytes of 16 rows of Q4_K / Q5_K / Q6_K, reordered per
// super-block so that the kernels load 16 rows as vectors with lane l = row l and multiply them
// with vpdpbusd (exact integer sums, scales applied as integers). A group is nsb = cols / 256
// chunks back to back, one per super-block, each 16 base blocks long. "Plane" below means 64
// bytes whose dword l belongs to row l; (row l, bytes i..i+3) means that row's block bytes.
//   Q4_KR16 chunk (2304 B): [0, 2048) quants: pair p (0..3) at 512 p, vector v (0..7) at
//     + 64 v is the plane of qs[32 p + 4 v .. + 3] (low nibbles: sub-block 2 p, values 4 v ..
//     4 v + 3; high nibbles: sub-block 2 p + 1); 2048: d (16 f16), 2080: dmin (16 f16),
//     2112: the 12 packed scale bytes as 3 planes (scales[0..3], [4..7], [8..11]).
//   Q5_KR16 chunk (2816 B): Q4_KR16's 2304 bytes, then the high bits: for sub-block s and
//     vector v the 64-bit word at 2304 + 64 s + 8 v holds, at bit 4 l + b, bit s of row l's
//     qh[4 v + b] (a byte mask for that vector's 64 values).
//   Q6_KR16 chunk (3360 B): half n (0..1) at 1536 n: ql pair p (0..1) at + 512 p, vector v at
//     + 64 v is the plane of ql[64 n + 32 p + 4 v .. + 3]; then at + 1024 the 8 planes of
//     qh[32 n + 4 v .. + 3]; 3072: scales as 8 pairs (pair i at 3072 + 32 i: row l's
//     scales[2 i], [2 i + 1] at + 2 l); 3328: d (16 f16).
// The row-major type an interleaved type reorders (Q8_0R16 -> Q8_0, Q4_KR16 -> Q4_K, ...), else t.
DType r16_base(DType t);
// The interleaved type of t (Q8_0 -> Q8_0R16, Q4_K -> Q4_KR16, ...), or t when there is none.
DType r16_of(DType t);
inline bool is_r16_k(DType t) {
  return t == DType::Q4_KR16 || t == DType::Q5_KR16 || t == DType::Q6_KR16;
}
inline bool is_r16(DType t) { return t == DType::Q8_0R16 || t == DType::Q4_0R16 || is_r16_k(t); }
struct DTypeInfo {
  std::string_view name;  // lower-case, as printed and parsed ("f32", "q8_0", "q4_k")
  int block_elems;        // elements per block (1 for plain types)
  int block_bytes;        // bytes per block
  bool quantized;
};

const DTypeInfo& dtype_info(DType t);
// Parses names such as "f32", "bf16", "q8_0", "Q4_K". Returns false when unknown.
bool parse_dtype(std::string_view s, DType* out);

// Bytes taken by a row of `n` elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  const DTypeInfo& i = dtype_info(t);
  return static_cast<size_t>(n / i.block_elems) * static_cast<size_t>(i.block_bytes);
}

}  // namespace mx
