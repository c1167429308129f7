#include "formats/gguf.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <limits>

#include "formats/error.h"
#include "formats/file_probe.h"

namespace fs = std::filesystem;

namespace mx {

namespace {

// ggml's type ids with their block geometry. Types we do not decode are still listed so that
// their byte ranges can be checked and a file holding them gets a clear "unsupported" error.
struct GgmlType {
  uint32_t id;
  const char* name;
  int block_elems;
  int block_bytes;
  bool ours;
  DType dtype;
};
constexpr GgmlType kGgmlTypes[] = {
    {0, "f32", 1, 4, true, DType::F32},          {1, "f16", 1, 2, true, DType::F16},
    {2, "q4_0", 32, 18, true, DType::Q4_0},      {3, "q4_1", 32, 20, true, DType::Q4_1},
    {6, "q5_0", 32, 22, true, DType::Q5_0},      {7, "q5_1", 32, 24, true, DType::Q5_1},
    {8, "q8_0", 32, 34, true, DType::Q8_0},      {9, "q8_1", 32, 36, false, DType::F32},
    {10, "q2_K", 256, 84, false, DType::F32},    {11, "q3_K", 256, 110, false, DType::F32},
    {12, "q4_K", 256, 144, true, DType::Q4_K},   {13, "q5_K", 256, 176, true, DType::Q5_K},
    {14, "q6_K", 256, 210, true, DType::Q6_K},   {15, "q8_K", 256, 292, true, DType::Q8_K},
    {16, "iq2_xxs", 256, 66, false, DType::F32}, {17, "iq2_xs", 256, 74, false, DType::F32},
    {18, "iq3_xxs", 256, 98, false, DType::F32}, {19, "iq1_s", 256, 50, false, DType::F32},
    {20, "iq4_nl", 32, 18, false, DType::F32},   {21, "iq3_s", 256, 110, false, DType::F32},
    {22, "iq2_s", 256, 82, false, DType::F32},   {23, "iq4_xs", 256, 136, false, DType::F32},
    {24, "i8", 1, 1, false, DType::F32},         {25, "i16", 1, 2, false, DType::F32},
    {26, "i32", 1, 4, true, DType::I32},         {27, "i64", 1, 8, true, DType::I64},
    {28, "f64", 1, 8, false, DType::F32},        {29, "iq1_m", 256, 56, false, DType::F32},
    {30, "bf16", 1, 2, true, DType::BF16},       {34, "tq1_0", 256, 54, false, DType::F32},
    {35, "tq2_0", 256, 66, false, DType::F32},   {39, "mxfp4", 32, 17, false, DType::F32},
};

const GgmlType* ggml_type(uint32_t id) {
  for (const GgmlType& t : kGgmlTypes)
    if (t.id == id) return &t;
  return nullptr;
}

constexpr int kMaxDims = 4;         // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;   // nested arrays: real files use none; bounds the recursion

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::F64); }

// Bytes of a scalar of type t (0 for string/array, whose size is variable).
size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;
  }
}

// Smallest encoding of one element: lets a count be rejected before anything is allocated.
size_t min_encoded_size(GgufType t) {
  if (t == GgufType::STRING) return 8;
  if (t == GgufType::ARRAY) return 12;
  return scalar_size(t);
}

// Bounds-checked little-endian cursor over the mapped bytes.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  void need(size_t len, const std::string& what) const {
    if (len > remaining())
      fail(path_ + ": truncated file: " + what + " at offset " + std::to_string(pos_) +
           " needs " + std::to_string(len) + " bytes, only " + std::to_string(remaining()) +
           " left");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (length)");
    if (len > remaining())
      fail(path_ + ": " + what + " at offset " + std::to_string(pos_ - 8) + " claims " +
           std::to_string(len) + " bytes, but only " + std::to_string(remaining()) +
           " remain in the file");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& path_;
};

class Parser {
 public:
  Parser(Reader& r, const std::string& path) : r_(r), path_(path) {}

  GgufValue value(GgufType type, const std::string& what, int depth) {
    GgufValue v;
    v.type = type;
    switch (type) {
      case GgufType::U8: v.i = r_.read<uint8_t>(what); break;
      case GgufType::I8: v.i = r_.read<int8_t>(what); break;
      case GgufType::U16: v.i = r_.read<uint16_t>(what); break;
      case GgufType::I16: v.i = r_.read<int16_t>(what); break;
      case GgufType::U32: v.i = r_.read<uint32_t>(what); break;
      case GgufType::I32: v.i = r_.read<int32_t>(what); break;
      case GgufType::I64: v.i = r_.read<int64_t>(what); break;
      case GgufType::U64: v.u = r_.read<uint64_t>(what); v.i = static_cast<int64_t>(v.u); break;
      case GgufType::F32: v.f = r_.read<float>(what); break;
      case GgufType::F64: v.f = r_.read<double>(what); break;
      case GgufType::BOOL: {
        const uint8_t b = r_.read<uint8_t>(what);
        if (b > 1) fail(path_ + ": " + what + " is a bool with invalid value " + std::to_string(b));
        v.i = b;
        break;
      }
      case GgufType::STRING: v.str = r_.read_string(what); break;
      case GgufType::ARRAY: array(v, what, depth); break;
    }
    if (type != GgufType::U64) v.u = static_cast<uint64_t>(v.i);
    return v;
  }

 private:
  void array(GgufValue& v, const std::string& what, int depth) {
    if (depth >= kMaxArrayDepth)
      fail(path_ + ": " + what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    const uint32_t et = r_.read<uint32_t>(what + " (array element type)");
    if (!known_value_type(et))
      fail(path_ + ": " + what + ": unknown array element type " + std::to_string(et));
    v.elem_type = static_cast<GgufType>(et);
    v.count = r_.read<uint64_t>(what + " (array length)");
    const size_t min = min_encoded_size(v.elem_type);
    if (v.count > r_.remaining() / min)
      fail(path_ + ": " + what + ": array of " + std::to_string(v.count) + " " +
           gguf_type_name(v.elem_type) + " elements cannot fit in the " +
           std::to_string(r_.remaining()) + " bytes left in the file");
    const size_t n = static_cast<size_t>(v.count);
    switch (v.elem_type) {
      case GgufType::STRING:
        v.strings.reserve(n);
        for (size_t k = 0; k < n; ++k) v.strings.push_back(r_.read_string(what + "[" + std::to_string(k) + "]"));
        break;
      case GgufType::ARRAY:
        v.arrays.reserve(n);
        for (size_t k = 0; k < n; ++k)
          v.arrays.push_back(value(GgufType::ARRAY, what + "[" + std::to_string(k) + "]", depth + 1));
        break;
      case GgufType::F32: case GgufType::F64:
        v.floats.reserve(n);
        for (size_t k = 0; k < n; ++k) v.floats.push_back(value(v.elem_type, what, depth).f);
        break;
      default:
        v.ints.reserve(n);
        for (size_t k = 0; k < n; ++k) v.ints.push_back(value(v.elem_type, what, depth).i);
        break;
    }
  }

  Reader& r_;
  const std::string& path_;
};

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

}  // namespace

std::string gguf_type_name(GgufType t) {
  static const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                 "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "type" + std::to_string(i);
}

bool GgufValue::is_int() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64:
      return true;
    default:
      return false;
  }
}

bool GgufValue::is_float() const { return type == GgufType::F32 || type == GgufType::F64; }

GgufFile GgufFile::open(const std::string& path) {
  GgufFile g;
  g.path = path;
  g.file = MappedFile::open(path);
  Reader r(g.file->data(), g.file->size(), path);
  Parser parser(r, path);

  if (g.file->size() < 4 || std::memcmp(g.file->data(), "GGUF", 4) != 0)
    fail(path + ": not a GGUF file (bad magic; expected \"GGUF\")");
  r.read<uint32_t>("magic");
  g.version = r.read<uint32_t>("version");
  if (g.version != 2 && g.version != 3) {
    if (g.version == 1) fail(path + ": GGUF version 1 is not supported (re-convert the model)");
    if (__builtin_bswap32(g.version) == 2 || __builtin_bswap32(g.version) == 3)
      fail(path + ": big-endian GGUF files are not supported");
    fail(path + ": unsupported GGUF version " + std::to_string(g.version) + " (expected 2 or 3)");
  }
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Smallest possible entries: key (8-byte length) + type + 1-byte value; name + n_dims +
  // type + offset. Anything larger than the file could hold is corrupt.
  if (n_kv > r.remaining() / 13)
    fail(path + ": metadata count " + std::to_string(n_kv) + " cannot fit in a file of " +
         std::to_string(g.file->size()) + " bytes");
  if (n_tensors > r.remaining() / 24)
    fail(path + ": tensor count " + std::to_string(n_tensors) + " cannot fit in a file of " +
         std::to_string(g.file->size()) + " bytes");

  g.keys.reserve(static_cast<size_t>(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = r.read_string("metadata key #" + std::to_string(k));
    if (key.size() > kMaxTensorNameBytes)
      fail(path + ": metadata key #" + std::to_string(k) + " is " + std::to_string(key.size()) +
           " bytes long, more than the " + std::to_string(kMaxTensorNameBytes) + " allowed");
    const std::string what = "metadata '" + key + "'";
    const uint32_t type = r.read<uint32_t>(what + " (type)");
    if (!known_value_type(type))
      fail(path + ": " + what + " has unknown value type " + std::to_string(type));
    GgufValue v = parser.value(static_cast<GgufType>(type), what, 0);
    if (!g.metadata.emplace(key, std::move(v)).second)
      fail(path + ": metadata key '" + key + "' appears twice");
    g.keys.push_back(key);
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    if (!a->is_int() || a->u == 0 || a->u > (uint64_t{1} << 30) || (a->u & (a->u - 1)) != 0)
      fail(path + ": general.alignment must be a power of two (got " +
           (a->is_int() ? std::to_string(a->u) : gguf_type_name(a->type)) + ")");
    g.alignment = a->u;
  }

  g.tensor_infos.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = r.read_string("name of tensor #" + std::to_string(k));
    if (t.name.size() > kMaxTensorNameBytes)
      fail(path + ": name of tensor #" + std::to_string(k) + " is " + std::to_string(t.name.size()) +
           " bytes long, more than the " + std::to_string(kMaxTensorNameBytes) + " allowed");
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = r.read<uint32_t>(what + " (n_dims)");
    if (n_dims < 1 || n_dims > kMaxDims)
      fail(path + ": " + what + " has " + std::to_string(n_dims) + " dimensions (expected 1.." +
           std::to_string(kMaxDims) + ")");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.read<uint64_t>(what + " (ne[" + std::to_string(d) + "])");
      if (ne > static_cast<uint64_t>(INT64_MAX) || !mul_ok(numel, ne, &numel) ||
          numel > static_cast<uint64_t>(INT64_MAX))
        fail(path + ": " + what + " has an impossible size (ne[" + std::to_string(d) +
             "] = " + std::to_string(ne) + ")");
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    t.ggml_type = r.read<uint32_t>(what + " (type)");
    t.offset = r.read<uint64_t>(what + " (offset)");
    const GgmlType* gt = ggml_type(t.ggml_type);
    if (gt == nullptr)
      fail(path + ": " + what + " has unknown ggml type id " + std::to_string(t.ggml_type));
    t.type_name = gt->name;
    t.supported = gt->ours;
    t.dtype = gt->dtype;
    if (t.ne[0] % gt->block_elems != 0)
      fail(path + ": " + what + ": row length ne[0] = " + std::to_string(t.ne[0]) +
           " is not a multiple of the " + gt->name + " block size " +
           std::to_string(gt->block_elems));
    if (!mul_ok(numel / static_cast<uint64_t>(gt->block_elems),
                static_cast<uint64_t>(gt->block_bytes), &t.nbytes))
      fail(path + ": " + what + " has an impossible byte size");
    if (t.offset % g.alignment != 0)
      fail(path + ": " + what + " data offset " + std::to_string(t.offset) +
           " is not a multiple of the alignment " + std::to_string(g.alignment));
    if (!g.tensor_index.emplace(t.name, g.tensor_infos.size()).second)
      fail(path + ": tensor '" + t.name + "' appears twice");
    g.tensor_infos.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t end_of_infos = r.pos();
  g.data_offset = (end_of_infos + g.alignment - 1) / g.alignment * g.alignment;
  const uint64_t size = g.file->size();
  // Zero-byte tensors too: tensor() forms a pointer from the offset, which must stay inside
  // the mapping whatever the tensor's size.
  for (const GgufTensorInfo& t : g.tensor_infos) {
    if (g.data_offset > size || t.offset > size - g.data_offset ||
        t.nbytes > size - g.data_offset - t.offset)
      fail(path + ": tensor '" + t.name + "' data [" + std::to_string(g.data_offset + t.offset) +
           ", +" + std::to_string(t.nbytes) + ") lies outside the file (size " +
           std::to_string(size) + "; truncated?)");
  }
  // Tensors must not share bytes: a corrupt offset table could otherwise alias weights.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& t : g.tensor_infos)
    if (t.nbytes != 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo* a = by_offset[k - 1];
    const GgufTensorInfo* b = by_offset[k];
    if (a->offset + a->nbytes > b->offset)
      fail(path + ": tensors '" + a->name + "' and '" + b->name + "' overlap in the file");
  }
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) fail(path + ": missing metadata key '" + key + "'");
  return *v;
}

namespace {

[[noreturn]] void wrong_type(const GgufFile& g, const std::string& key, const GgufValue& v,
                             const std::string& expected) {
  std::string got = gguf_type_name(v.type);
  if (v.type == GgufType::ARRAY) got += " of " + gguf_type_name(v.elem_type);
  fail(g.path + ": metadata key '" + key + "' has type " + got + ", expected " + expected);
}

// The integer value of v within [lo, hi] (compared exactly, whatever the signedness).
template <typename T>
T int_in_range(const GgufFile& g, const std::string& key, const GgufValue& v, const char* expected) {
  if (!v.is_int()) wrong_type(g, key, v, expected);
  const bool neg = v.type != GgufType::U64 && v.i < 0;
  bool ok;
  if (neg) {
    ok = std::numeric_limits<T>::is_signed && v.i >= static_cast<int64_t>(std::numeric_limits<T>::min());
  } else {
    ok = v.u <= static_cast<uint64_t>(std::numeric_limits<T>::max());
  }
  if (!ok)
    fail(g.path + ": metadata key '" + key + "' = " + (neg ? std::to_string(v.i) : std::to_string(v.u)) +
         " is out of range for " + expected);
  return neg ? static_cast<T>(v.i) : static_cast<T>(v.u);
}

}  // namespace

uint32_t GgufFile::get_u32(const std::string& key) const {
  return int_in_range<uint32_t>(*this, key, get(key), "u32");
}
uint32_t GgufFile::get_u32(const std::string& key, uint32_t def) const {
  return has(key) ? get_u32(key) : def;
}
int32_t GgufFile::get_i32(const std::string& key) const {
  return int_in_range<int32_t>(*this, key, get(key), "i32");
}
int32_t GgufFile::get_i32(const std::string& key, int32_t def) const {
  return has(key) ? get_i32(key) : def;
}
uint64_t GgufFile::get_u64(const std::string& key) const {
  return int_in_range<uint64_t>(*this, key, get(key), "u64");
}
int64_t GgufFile::get_i64(const std::string& key) const {
  return int_in_range<int64_t>(*this, key, get(key), "i64");
}

float GgufFile::get_f32(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.is_float()) return static_cast<float>(v.f);
  if (v.is_int()) return v.type == GgufType::U64 ? static_cast<float>(v.u) : static_cast<float>(v.i);
  wrong_type(*this, key, v, "a number");
}
float GgufFile::get_f32(const std::string& key, float def) const {
  return has(key) ? get_f32(key) : def;
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type == GgufType::BOOL) return v.i != 0;
  if (v.is_int() && v.u <= 1) return v.u == 1;
  wrong_type(*this, key, v, "bool");
}
bool GgufFile::get_bool(const std::string& key, bool def) const {
  return has(key) ? get_bool(key) : def;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::STRING) wrong_type(*this, key, v, "string");
  return v.str;
}
std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
  return has(key) ? get_string(key) : def;
}

const GgufValue& GgufFile::get_array(const std::string& key) const {
  const GgufValue& v = get(key);
  if (v.type != GgufType::ARRAY) wrong_type(*this, key, v, "array");
  return v;
}

const std::vector<std::string>& GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (v.elem_type != GgufType::STRING) wrong_type(*this, key, v, "array of string");
  return v.strings;
}

std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (v.elem_type != GgufType::F32 && v.elem_type != GgufType::F64)
    wrong_type(*this, key, v, "array of f32");
  return std::vector<float>(v.floats.begin(), v.floats.end());
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (v.elem_type == GgufType::STRING || v.elem_type == GgufType::ARRAY ||
      v.elem_type == GgufType::F32 || v.elem_type == GgufType::F64)
    wrong_type(*this, key, v, "array of integers");
  return v.ints;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensor_infos[it->second];
}

Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (t == nullptr) fail(path + ": missing tensor '" + name + "'");
  if (!t->supported)
    fail(path + ": tensor '" + name + "' has ggml type " + t->type_name +
         ", which this engine does not support (supported: f32, f16, bf16, q8_0, q4_0, q4_1, "
         "q5_0, q5_1, q4_K, q5_K, q6_K)");
  // open() checked this range; checked again so no pointer is ever formed outside the map.
  if (data_offset > file->size() || t->offset > file->size() - data_offset ||
      t->nbytes > file->size() - data_offset - t->offset)
    fail(path + ": tensor '" + name + "' data lies outside the file");
  Tensor out;
  out.dtype = t->dtype;
  out.shape = t->shape;
  out.data = file->data() + data_offset + t->offset;
  out.name = name;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Mixtral loader

namespace {

struct ModelKeys {
  const GgufFile& g;
  std::vector<std::string> prefixes;  // "<arch>.", then the other spellings llama.cpp used

  // The first prefix under which `suffix` exists, else the architecture's own (for errors).
  std::string key(const std::string& suffix) const {
    for (const std::string& p : prefixes)
      if (g.has(p + suffix)) return p + suffix;
    return prefixes[0] + suffix;
  }
  bool has(const std::string& suffix) const { return g.has(key(suffix)); }
  int get_int(const std::string& suffix) const {
    const std::string k = key(suffix);
    const uint32_t v = g.get_u32(k);
    if (v > static_cast<uint32_t>(INT_MAX)) fail(g.path + ": metadata key '" + k + "' is too large");
    return static_cast<int>(v);
  }
  int get_int(const std::string& suffix, int def) const { return has(suffix) ? get_int(suffix) : def; }
};

ModelConfig read_config(const GgufFile& g, const ModelKeys& k) {
  const std::string& path = g.path;
  ModelConfig c;
  if (!k.has("expert_count"))
    fail(path + ": missing metadata key '" + k.key("expert_count") +
         "': not a Mixtral (mixture-of-experts) model");
  c.dim = k.get_int("embedding_length");
  c.n_layers = k.get_int("block_count");
  c.n_heads = k.get_int("attention.head_count");
  c.n_kv_heads = k.get_int("attention.head_count_kv", c.n_heads);  // llama.cpp's default
  c.ffn_dim = k.get_int("feed_forward_length");
  c.n_experts = k.get_int("expert_count");
  c.top_k = k.get_int("expert_used_count");
  if (c.n_heads <= 0) fail(path + ": metadata key '" + k.key("attention.head_count") + "' must be > 0");
  if (k.has("attention.key_length")) {
    c.head_dim = k.get_int("attention.key_length");
    if (k.has("attention.value_length") && k.get_int("attention.value_length") != c.head_dim)
      fail(path + ": attention.value_length differs from attention.key_length; not supported");
  } else {
    if (c.dim % c.n_heads != 0)
      fail(path + ": embedding_length " + std::to_string(c.dim) + " is not a multiple of head_count " +
           std::to_string(c.n_heads));
    c.head_dim = c.dim / c.n_heads;
  }
  if (k.has("rope.dimension_count") && k.get_int("rope.dimension_count") != c.head_dim)
    fail(path + ": " + k.key("rope.dimension_count") + " = " +
         std::to_string(k.get_int("rope.dimension_count")) + " differs from head_dim " +
         std::to_string(c.head_dim) + "; partial rotary embeddings are not supported");
  // Mixtral GGUFs always carry freq_base; when absent, fall back to Mixtral's 1e6 for MoE
  // models and llama.cpp's own 10000 otherwise.
  c.rope_theta = g.get_f32(k.key("rope.freq_base"), c.n_experts > 1 ? 1e6f : 10000.0f);
  c.norm_eps = g.get_f32(k.key("attention.layer_norm_rms_epsilon"), 1e-5f);
  c.max_seq_len = k.get_int("context_length", c.max_seq_len);
  c.sliding_window = k.get_int("attention.sliding_window", 0);
  c.rope_interleaved = true;  // convert_hf_to_gguf.py un-permutes q/k back to pair layout
  return c;
}

TokenizerSource read_tokenizer(const GgufFile& g, int vocab) {
  const std::string& path = g.path;
  TokenizerSource t;
  const fs::path sp = fs::path(path).parent_path() / "tokenizer.model";
  if (is_regular_path(sp)) t.model_path = sp.string();
  if (g.has("tokenizer.ggml.tokens")) t.pieces = g.get_string_array("tokenizer.ggml.tokens");
  const size_t n = t.pieces.size();
  if (g.has("tokenizer.ggml.scores")) {
    t.scores = g.get_f32_array("tokenizer.ggml.scores");
    if (t.scores.size() != n)
      fail(path + ": tokenizer.ggml.scores has " + std::to_string(t.scores.size()) +
           " entries, but tokenizer.ggml.tokens has " + std::to_string(n));
  }
  if (g.has("tokenizer.ggml.token_type")) {
    const std::vector<int64_t> types = g.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n)
      fail(path + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) +
           " entries, but tokenizer.ggml.tokens has " + std::to_string(n));
    t.types.reserve(n);
    for (int64_t v : types) {
      if (v < INT32_MIN || v > INT32_MAX) fail(path + ": tokenizer.ggml.token_type value out of range");
      t.types.push_back(static_cast<int32_t>(v));
    }
  }
  auto id = [&](const char* key, int def) {
    const uint32_t v = g.get_u32(key, static_cast<uint32_t>(def));
    if (v >= static_cast<uint32_t>(vocab))
      fail(path + ": " + key + " = " + std::to_string(v) + " is outside the vocabulary of " +
           std::to_string(vocab));
    return static_cast<int>(v);
  };
  t.bos_id = id("tokenizer.ggml.bos_token_id", 1);
  t.eos_id = id("tokenizer.ggml.eos_token_id", 2);
  t.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
  t.add_dummy_prefix = g.get_bool("tokenizer.ggml.add_space_prefix", true);
  t.chat_template = g.get_string("tokenizer.chat_template", "");
  return t;
}

class TensorMapper {
 public:
  TensorMapper(const GgufFile& g, TensorStore& store) : g_(g), store_(store) {}

  // Checks that `gname` exists with `shape` (outermost first) and a weight dtype.
  Tensor get(const std::string& gname, const std::string& canon, const std::vector<int64_t>& shape) const {
    const GgufTensorInfo* ti = g_.find_tensor(gname);
    if (ti == nullptr) fail(g_.path + ": missing tensor '" + gname + "' (for " + canon + ")");
    Tensor t = g_.tensor(gname);  // throws first when the type is one we cannot decode
    if (ti->shape != shape)
      fail(g_.path + ": tensor '" + gname + "' has shape " + shape_str(ti->shape) + ", expected " +
           shape_str(shape) + " (for " + canon + ")");
    if (t.dtype == DType::I32 || t.dtype == DType::I64 || t.dtype == DType::U8 || t.dtype == DType::Q8_K)
      fail(g_.path + ": tensor '" + gname + "' has type " + ti->type_name + ", not a weight type");
    return t;
  }
  void put(const std::string& canon, Tensor t) { store_.tensors[canon] = std::move(t); }
  void take(const std::string& gname, const std::string& canon, const std::vector<int64_t>& shape) {
    put(canon, get(gname, canon, shape));
  }

 private:
  const GgufFile& g_;
  TensorStore& store_;
};

}  // namespace

LoadedModel load_gguf(const std::string& path, const LoadOptions& opts) {
  // owns_expert divides by n_ranks: refuse nonsense before it can trap.
  if (opts.n_ranks < 1 || opts.rank < 0 || opts.rank >= opts.n_ranks)
    fail(path + ": bad rank " + std::to_string(opts.rank) + " of " + std::to_string(opts.n_ranks));
  GgufFile g = GgufFile::open(path);
  const std::string arch = g.get_string("general.architecture");
  if (arch != "llama" && arch != "mixtral")
    fail(path + ": GGUF architecture '" + arch + "' is not supported (expected llama or mixtral)");
  ModelKeys keys{g, {arch + "."}};
  for (const char* p : {"llama.", "mixtral."})
    if (keys.prefixes[0] != p) keys.prefixes.emplace_back(p);

  LoadedModel m;
  m.path = path;
  m.layout = "gguf";
  m.config = read_config(g, keys);
  ModelConfig& c = m.config;

  // Vocabulary: the token list is what llama.cpp itself uses; embeddings are the fallback.
  if (g.has("tokenizer.ggml.tokens")) {
    const size_t n = g.get_string_array("tokenizer.ggml.tokens").size();
    if (n > static_cast<size_t>(INT_MAX)) fail(path + ": tokenizer.ggml.tokens is too large");
    c.vocab = static_cast<int>(n);
    if (keys.has("vocab_size") && keys.get_int("vocab_size") != c.vocab)
      fail(path + ": " + keys.key("vocab_size") + " = " + std::to_string(keys.get_int("vocab_size")) +
           " but tokenizer.ggml.tokens has " + std::to_string(c.vocab) + " entries");
  } else if (keys.has("vocab_size")) {
    c.vocab = keys.get_int("vocab_size");
  } else if (const GgufTensorInfo* te = g.find_tensor("token_embd.weight")) {
    if (te->shape.size() == 2 && te->shape[0] <= INT_MAX) c.vocab = static_cast<int>(te->shape[0]);
  }
  m.tokenizer = read_tokenizer(g, c.vocab > 0 ? c.vocab : INT_MAX);
  c.bos_id = m.tokenizer.bos_id;
  c.eos_id = m.tokenizer.eos_id;
  c.validate(path);

  m.store.source = path;
  m.store.files.push_back(g.file);
  TensorMapper tm(g, m.store);
  const int64_t dim = c.dim, ffn = c.ffn_dim, E = c.n_experts, vocab = c.vocab;
  const int64_t q_rows = int64_t{c.n_heads} * c.head_dim, kv_rows = int64_t{c.n_kv_heads} * c.head_dim;

  tm.take("token_embd.weight", "tok_embeddings", {vocab, dim});
  tm.take("output_norm.weight", "norm", {dim});
  if (g.has_tensor("output.weight")) {
    tm.take("output.weight", "output", {vocab, dim});
  } else {
    tm.put("output", m.store.tensors.at("tok_embeddings"));  // tied embeddings
  }

  struct ExpertProj {
    const char* merged;    // blk.N.<merged>.weight: [E, rows, cols]
    const char* single;    // blk.N.<single>.E.weight: [rows, cols] (pre-2024 llama.cpp)
    const char* canon;
    int64_t rows, cols;
  };
  const ExpertProj projs[] = {
      {"ffn_gate_exps", "ffn_gate", "w1", ffn, dim},
      {"ffn_up_exps", "ffn_up", "w3", ffn, dim},
      {"ffn_down_exps", "ffn_down", "w2", dim, ffn},
  };

  for (int l = 0; l < c.n_layers; ++l) {
    const std::string B = "blk." + std::to_string(l) + ".";
    const std::string L = "layers." + std::to_string(l) + ".";
    tm.take(B + "attn_norm.weight", L + "attention_norm", {dim});
    tm.take(B + "ffn_norm.weight", L + "ffn_norm", {dim});
    tm.take(B + "attn_q.weight", L + "attention.wq", {q_rows, dim});
    tm.take(B + "attn_k.weight", L + "attention.wk", {kv_rows, dim});
    tm.take(B + "attn_v.weight", L + "attention.wv", {kv_rows, dim});
    tm.take(B + "attn_output.weight", L + "attention.wo", {dim, q_rows});
    tm.take(B + "ffn_gate_inp.weight", L + "gate", {E, dim});
    for (const ExpertProj& p : projs) {
      const std::string merged = B + p.merged + ".weight";
      if (g.has_tensor(merged)) {
        Tensor all = tm.get(merged, L + "experts.*." + p.canon, {E, p.rows, p.cols});
        all.shape = {E * p.rows, p.cols};  // flatten so that slice_rows can cut one expert out
        for (int e = 0; e < c.n_experts; ++e) {
          if (!opts.owns_expert(e, c.n_experts)) continue;
          Tensor t = all.slice_rows(e * p.rows, p.rows);
          t.name = merged + "[expert " + std::to_string(e) + "]";
          tm.put(L + "experts." + std::to_string(e) + "." + p.canon, std::move(t));
        }
      } else {
        for (int e = 0; e < c.n_experts; ++e) {
          if (!opts.owns_expert(e, c.n_experts)) continue;
          const std::string canon = L + "experts." + std::to_string(e) + "." + p.canon;
          const std::string single = B + p.single + "." + std::to_string(e) + ".weight";
          if (!g.has_tensor(single))
            fail(path + ": missing tensor '" + merged + "' (or per-expert '" + single + "')");
          tm.take(single, canon, {p.rows, p.cols});
        }
      }
    }
  }
  return m;
}

}  // namespace mx
