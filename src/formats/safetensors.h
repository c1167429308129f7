// safetensors files: an 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and [begin, end) byte range, then the data. Tensors are views into the mmap.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "formats/mapped_file.h"
#include "formats/tensor.h"

namespace mx {

struct SafetensorsFile {
  std::shared_ptr<MappedFile> file;
  std::map<std::string, Tensor> tensors;  // file's own names
  std::map<std::string, std::string> metadata;
};

// Validates the header fully (length, JSON, dtypes, shapes vs byte ranges, ranges inside the
// file and not overlapping); throws mx::Error naming the path and the tensor.
SafetensorsFile open_safetensors(const std::string& path);

}  // namespace mx
