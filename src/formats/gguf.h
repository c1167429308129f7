// GGUF, llama.cpp's single-file format (versions 2 and 3), read in place from an mmap:
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key, u32 type, value),
//   n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset),
//   padding to `general.alignment` (default 32), then the data section.
// Strings are u64 length + bytes; arrays are u32 element type + u64 count + elements.
// Everything is validated against the file size before use; tensors are views, never copies.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "formats/loaded_model.h"
#include "formats/mapped_file.h"
#include "formats/tensor.h"
#include "kernels/dtype.h"

namespace mx {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string gguf_type_name(GgufType t);  // "u32", "string", "array", ...

// One metadata value.
struct GgufValue {
  GgufType type = GgufType::U8;
  // Scalars. Integers and bool: `i` holds the value for every type but u64, whose value is in
  // `u` (and in `i` too when it fits). Floats: `f`. Strings: `str`.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string str;
  // Arrays: the element type and count; elements go to the vector of their kind (u64
  // elements are stored as their int64 bit pattern). Nested arrays go to `arrays`.
  GgufType elem_type = GgufType::U8;
  uint64_t count = 0;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  bool is_int() const;    // any integer type or bool
  bool is_float() const;  // f32 or f64
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::string type_name;     // ggml's name, e.g. "q4_K", "iq2_xs"
  bool supported = false;    // ggml_type is one of our DTypes
  DType dtype = DType::F32;  // valid when supported
  std::vector<int64_t> ne;     // ggml order: ne[0] is the contiguous (row) dimension
  std::vector<int64_t> shape;  // ours, outermost first: ne reversed
  uint64_t offset = 0;         // from the start of the data section
  uint64_t nbytes = 0;
};

struct GgufFile {
  std::string path;
  std::shared_ptr<MappedFile> file;
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute file offset of the data section
  std::vector<std::string> keys;  // metadata keys in file order
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensor_infos;  // file order
  std::map<std::string, size_t> tensor_index;

  // Maps and parses `path`; throws mx::Error naming the path and the offending field/tensor.
  static GgufFile open(const std::string& path);

  bool has(const std::string& key) const { return metadata.count(key) != 0; }
  const GgufValue* find(const std::string& key) const;
  // Throws "<path>: missing metadata key '<key>'" when absent.
  const GgufValue& get(const std::string& key) const;

  // Typed getters. Integer getters accept any integer type whose value fits the result (some
  // writers use i32 or u64 for counts); float getters accept f32, f64 and integers. A value of
  // another type, or out of range, throws naming the key, its type and what was expected.
  uint32_t get_u32(const std::string& key) const;
  uint32_t get_u32(const std::string& key, uint32_t def) const;
  int32_t get_i32(const std::string& key) const;
  int32_t get_i32(const std::string& key, int32_t def) const;
  uint64_t get_u64(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  float get_f32(const std::string& key) const;
  float get_f32(const std::string& key, float def) const;
  bool get_bool(const std::string& key) const;
  bool get_bool(const std::string& key, bool def) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  // Arrays: `get_array` returns the raw value (type ARRAY); the others check the element type.
  const GgufValue& get_array(const std::string& key) const;
  const std::vector<std::string>& get_string_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;    // float elements
  std::vector<int64_t> get_int_array(const std::string& key) const;  // integer/bool elements

  bool has_tensor(const std::string& name) const { return tensor_index.count(name) != 0; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // A view into the mmap (shape outermost first, name = the GGUF name). Throws when the
  // tensor is missing or its type is not one this engine decodes.
  Tensor tensor(const std::string& name) const;
};

// Loads a llama.cpp Mixtral GGUF (architecture "llama" with expert_count > 1, or "mixtral"):
// config from `<arch>.*` metadata, tensors under canonical names (see tensor_store.h) as views
// into the mmap, merged expert tensors split per expert, only the experts `opts` owns, and
// the tokenizer from `tokenizer.ggml.*` (plus a sibling tokenizer.model when present).
LoadedModel load_gguf(const std::string& path, const LoadOptions& opts);

}  // namespace mx
