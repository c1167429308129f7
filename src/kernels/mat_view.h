// What the kernels need to know about a weight matrix: rows of `cols` elements in `dtype`.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace mx {

struct MatView {
  DType dtype = DType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0;
  size_t stride = 0;  // bytes between rows
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * stride; }
};

}  // namespace mx
