#include "model/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "formats/error.h"
#include "kernels/half.h"

namespace mx {

KvCache::KvCache(int n_layers, int kv_dim, int max_ctx, DType dtype)
    : n_layers_(n_layers), kv_dim_(kv_dim), max_ctx_(max_ctx), dtype_(dtype) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    fail("KV cache dtype must be f32, f16 or bf16, not " + std::string(dtype_info(dtype).name));
  row_bytes_ = mx::row_bytes(dtype, kv_dim);
}

void KvCache::ensure_slot(int slot) {
  if (slot >= static_cast<int>(slots_.size())) slots_.resize(static_cast<size_t>(slot) + 1);
  KvSlot& s = slots_[static_cast<size_t>(slot)];
  if (s.layers.empty()) s.layers.resize(static_cast<size_t>(n_layers_));
}

void KvCache::reset(int slot) {
  ensure_slot(slot);
  KvSlot& s = slots_[static_cast<size_t>(slot)];
  s.length = 0;
  s.capacity = 0;
  for (auto& l : s.layers) {
    std::vector<uint8_t>().swap(l.k);
    std::vector<uint8_t>().swap(l.v);
  }
}

void KvCache::reserve(int slot, int n) {
  ensure_slot(slot);
  if (n > max_ctx_)
    fail("sequence of " + std::to_string(n) + " tokens exceeds the context of " +
         std::to_string(max_ctx_) + " tokens");
  KvSlot& s = slots_[static_cast<size_t>(slot)];
  if (n <= s.capacity) return;
  // Grow geometrically in 256-position steps, capped at the context.
  int cap = std::max(256, s.capacity);
  while (cap < n) cap *= 2;
  cap = std::min(cap, max_ctx_);
  for (auto& l : s.layers) {
    l.k.resize(static_cast<size_t>(cap) * row_bytes_);
    l.v.resize(static_cast<size_t>(cap) * row_bytes_);
  }
  s.capacity = cap;
}

namespace {
void store_row(DType d, const float* src, uint8_t* dst, int n) {
  if (d == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
  } else if (d == DType::F16) {
    auto* o = reinterpret_cast<uint16_t*>(dst);
    for (int i = 0; i < n; ++i) o[i] = f32_to_f16(src[i]);
  } else {
    auto* o = reinterpret_cast<uint16_t*>(dst);
    for (int i = 0; i < n; ++i) o[i] = f32_to_bf16(src[i]);
  }
}
}  // namespace

void KvCache::write(int slot, int layer, int pos, const float* k, const float* v) {
  KvLayer& l = slots_[static_cast<size_t>(slot)].layers[static_cast<size_t>(layer)];
  store_row(dtype_, k, l.k.data() + static_cast<size_t>(pos) * row_bytes_, kv_dim_);
  store_row(dtype_, v, l.v.data() + static_cast<size_t>(pos) * row_bytes_, kv_dim_);
}

void KvCache::copy_prefix(int from, int to, int n, int capacity) {
  if (from == to || n > length(from) || n > capacity)
    fail("copy_prefix: cannot copy " + std::to_string(n) + " positions of slot " + std::to_string(from) +
         " (holding " + std::to_string(length(from)) + ") to slot " + std::to_string(to));
  reset(to);
  reserve(to, capacity);
  const KvSlot& src = slots_[static_cast<size_t>(from)];
  KvSlot& dst = slots_[static_cast<size_t>(to)];
  const size_t bytes = static_cast<size_t>(n) * row_bytes_;
  for (size_t l = 0; l < dst.layers.size(); ++l) {
    std::memcpy(dst.layers[l].k.data(), src.layers[l].k.data(), bytes);
    std::memcpy(dst.layers[l].v.data(), src.layers[l].v.data(), bytes);
  }
  dst.length = n;
}

size_t KvCache::bytes_allocated() const {
  size_t n = 0;
  for (const auto& s : slots_)
    for (const auto& l : s.layers) n += l.k.size() + l.v.size();
  return n;
}

size_t KvCache::bytes_per_slot(int n_positions) const {
  return 2 * static_cast<size_t>(n_layers_) * static_cast<size_t>(n_positions) * row_bytes_;
}

}  // namespace mx
