// Per-slot KV cache. Each slot (one user's sequence) holds, per layer, K and V rows of
// [n_kv_heads * head_dim] in f32, f16 or bf16, one row per position. Memory grows with the
// context in chunks, so 32 slots of a 32k context are not allocated up front.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

struct KvLayer {
  std::vector<uint8_t> k, v;  // [capacity][kv_dim] in dtype
};

struct KvSlot {
  int length = 0;    // positions written so far
  int capacity = 0;  // positions allocated
  std::vector<KvLayer> layers;
};

class KvCache {
 public:
  KvCache(int n_layers, int kv_dim, int max_ctx, DType dtype);

  DType dtype() const { return dtype_; }
  int kv_dim() const { return kv_dim_; }
  int max_ctx() const { return max_ctx_; }
  size_t row_bytes() const { return row_bytes_; }

  // Creates or resets a slot; slots are small handles, their memory grows on demand.
  void reset(int slot);
  void ensure_slot(int slot);
  int n_slots() const { return static_cast<int>(slots_.size()); }
  int length(int slot) const { return slots_[static_cast<size_t>(slot)].length; }
  // Makes room for positions [0, n); throws mx::Error when n exceeds max_ctx.
  void reserve(int slot, int n);
  void set_length(int slot, int n) { slots_[static_cast<size_t>(slot)].length = n; }
  // Makes slot `to` hold a copy of the first n positions of slot `from` (its own memory, not
  // shared), with room for `capacity` positions: a long context without prefilling it again.
  void copy_prefix(int from, int to, int n, int capacity);

  // Writes f32 K/V rows for one position (converted to the cache dtype).
  void write(int slot, int layer, int pos, const float* k, const float* v);
  const uint8_t* k_rows(int slot, int layer) const { return slots_[static_cast<size_t>(slot)].layers[static_cast<size_t>(layer)].k.data(); }
  const uint8_t* v_rows(int slot, int layer) const { return slots_[static_cast<size_t>(slot)].layers[static_cast<size_t>(layer)].v.data(); }

  size_t bytes_allocated() const;
  // Bytes of K+V for n positions of one slot, over all layers (for memory planning).
  size_t bytes_per_slot(int n_positions) const;

 private:
  int n_layers_, kv_dim_, max_ctx_;
  DType dtype_;
  size_t row_bytes_;
  std::vector<KvSlot> slots_;
};

}  // namespace mx
