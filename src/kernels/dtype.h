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
// The row-major type an interleaved type reorders (Q8_0R16 -> Q8_0, Q4_0R16 -> Q4_0), else t.
DType r16_base(DType t);
// The interleaved type of t (Q8_0 -> Q8_0R16, Q4_0 -> Q4_0R16), or t when there is none.
DType r16_of(DType t);
inline bool is_r16(DType t) { return t == DType::Q8_0R16 || t == DType::Q4_0R16; }
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
