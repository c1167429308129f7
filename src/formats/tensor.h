// A read-only view of a weight tensor living in an mmapped file (or an owned buffer).
// Shapes are outermost-first, as in PyTorch: a linear layer's weight is [out, in] and each of
// the `out` rows is stored contiguously in `dtype` (quantized types: blocks along `in`).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

// Longest tensor name (or GGUF metadata key) a loader accepts. Real names are under 100 bytes;
// the bound keeps names short enough to quote whole in error messages.
constexpr size_t kMaxTensorNameBytes = 1024;

struct Tensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // outermost first
  const uint8_t* data = nullptr;
  std::string name;  // for error messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
  int64_t rows() const { return cols() == 0 ? 0 : numel() / cols(); }
  size_t row_stride() const { return row_bytes(dtype, cols()); }
  size_t nbytes() const { return static_cast<size_t>(rows()) * row_stride(); }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_stride(); }

  // Rows [r0, r0+n) of a 2-D (or flattened) tensor as a new 2-D view; no copy.
  Tensor slice_rows(int64_t r0, int64_t n) const {
    Tensor t = *this;
    t.shape = {n, cols()};
    t.data = row(r0);
    return t;
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

// The one rule for the interleaved layouts (dtype.h): a Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K tensor
// named `name` is stored and run as its r16 type when it is a 2-D matrix of whole 16-row groups, except
// the embedding table, whose single rows are looked up. Returns d when it is not.
inline DType r16_storage(DType d, const std::string& name, const std::vector<int64_t>& shape) {
  if (name == "tok_embeddings" || shape.size() != 2 || shape[0] % 16 != 0 || shape[0] == 0) return d;
  return r16_of(d);
}

}  // namespace mx
