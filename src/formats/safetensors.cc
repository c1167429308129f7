#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "formats/error.h"
#include "formats/json_input.h"

namespace mx {

namespace {

// Mixtral's tensors have at most 3 dimensions; more is a corrupt header, not a model.
constexpr size_t kMaxDims = 8;

bool st_dtype(const std::string& s, DType* t) {
  static const std::map<std::string, DType> k = {{"F32", DType::F32}, {"F16", DType::F16},
                                                 {"BF16", DType::BF16}, {"I32", DType::I32},
                                                 {"I64", DType::I64}, {"U8", DType::U8}};
  auto it = k.find(s);
  if (it == k.end()) return false;
  *t = it->second;
  return true;
}

}  // namespace

SafetensorsFile open_safetensors(const std::string& path) {
  SafetensorsFile st;
  st.file = MappedFile::open(path);
  const uint8_t* base = st.file->data();
  const size_t size = st.file->size();
  if (size < 8) fail(path + ": not a safetensors file (shorter than its 8-byte header length)");
  uint64_t hlen;
  std::memcpy(&hlen, base, 8);
  if (hlen > size - 8)
    fail(path + ": safetensors header length " + std::to_string(hlen) +
         " is longer than the file (" + std::to_string(size) + " bytes)");
  const char* header = reinterpret_cast<const char*>(base + 8);
  const nlohmann::json j = parse_untrusted_json(header, header + hlen, path + ": safetensors header");
  if (!j.is_object()) fail(path + ": safetensors header is not a JSON object");
  const size_t data_start = 8 + hlen;
  const size_t data_size = size - data_start;
  struct Range {
    uint64_t b, e;
    std::string name;
  };
  std::vector<Range> ranges;
  for (auto& [name, v] : j.items()) {
    if (name == "__metadata__") {
      if (v.is_object())
        for (auto& [k, mv] : v.items())
          if (mv.is_string()) st.metadata[k] = mv.get<std::string>();
      continue;
    }
    if (name.size() > kMaxTensorNameBytes)
      fail(path + ": a tensor name is " + std::to_string(name.size()) + " bytes long, more than the " +
           std::to_string(kMaxTensorNameBytes) + " allowed (it starts " + json_excerpt(name) + ")");
    const std::string where = path + ": tensor " + name;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      fail(where + ": entry needs dtype, shape and data_offsets");
    Tensor t;
    t.name = name;
    if (!v["dtype"].is_string() || !st_dtype(v["dtype"].get<std::string>(), &t.dtype))
      fail(where + ": unsupported dtype " + json_excerpt(v["dtype"]));
    const auto& shp = v["shape"];
    const auto& off = v["data_offsets"];
    if (!shp.is_array() || shp.size() > kMaxDims)
      fail(where + ": shape must be a list of at most " + std::to_string(kMaxDims) + " sizes, not " +
           json_excerpt(shp));
    for (const auto& d : shp) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail(where + ": bad dimension " + json_excerpt(d));
      t.shape.push_back(d.get<int64_t>());
    }
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail(where + ": data_offsets must be two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      fail(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
           ") lie outside the file's data (" + std::to_string(data_size) + " bytes)");
    // Guard the product against overflow before comparing with the byte range.
    uint64_t n = 1;
    for (int64_t d : t.shape) {
      if (d != 0 && n > (uint64_t{1} << 62) / static_cast<uint64_t>(d))
        fail(where + ": shape " + shape_str(t.shape) + " is too large");
      n *= static_cast<uint64_t>(d);
    }
    const uint64_t want = n * static_cast<uint64_t>(dtype_info(t.dtype).block_bytes);
    if (want != e - b)
      fail(where + ": shape " + shape_str(t.shape) + " of " + std::string(dtype_info(t.dtype).name) +
           " needs " + std::to_string(want) + " bytes but data_offsets span " +
           std::to_string(e - b));
    t.data = base + data_start + b;
    ranges.push_back({b, e, name});
    st.tensors[name] = std::move(t);
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.b < b.b; });
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].b < ranges[i - 1].e)
      fail(path + ": tensors " + ranges[i - 1].name + " and " + ranges[i].name +
           " have overlapping data_offsets");
  return st;
}

}  // namespace mx
