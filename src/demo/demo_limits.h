// The demo's limits: how many users a context allows, and whether weights + KV cache +
// activations fit in the RAM that is available, with what would fit when they do not.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "formats/model_config.h"
#include "formats/tensor_store.h"
#include "runtime/memory_info.h"

namespace mx {

// "4k" -> 4096, "16K" -> 16384, "2048" -> 2048. `what` names the option in the error.
int parse_token_count(const std::string& s, const std::string& what);

// The seed demo's table: a context of at most 4k allows 32 users, 8k 16, 16k 8, 32k 4.
// 0 for a context above 32k.
int max_batch_for_context(int context);
// The largest context (4k, 8k, 16k or 32k) that allows `batch` users; 0 if none does.
int max_context_for_batch(int batch);
// Throws mx::Error saying what fits when batch users do not fit the context.
void check_batch_limit(int batch, int context);

// Memory the demo needs, in bytes.
struct MemoryNeed {
  uint64_t weights = 0, kv = 0, activations = 0;
  uint64_t total() const { return weights + kv + activations; }
};

// Bytes of the mapped (or copied) tensors of a loaded model.
uint64_t weights_bytes(const TensorStore& store);
// Scratch of one forward step of `step_tokens` tokens with `batch` logit rows (the buffers of
// model/forward.cc and moe.cc, in f32), plus a fixed margin for the process itself.
uint64_t activation_bytes(const ModelConfig& c, int step_tokens, int batch, int context);

// The prompt tokens one demo step may carry over all users: every user gets a chunk each step.
inline int demo_step_budget(int batch, int prefill_chunk) { return std::max(2048, batch * prefill_chunk); }

struct MemoryPlan {
  ModelConfig config;
  uint64_t weights = 0;
  uint64_t kv_bytes_per_position = 0;  // one slot, all layers, K and V (KvCache::bytes_per_slot(1))
  int prefill_chunk = 512;
  int longest_prompt = 0;              // tokens; 0: unknown (assume full chunks)
  // The largest forward step for `batch` users: prompt chunks within the step budget, plus
  // one decode token per user.
  int step_tokens(int batch) const;
  MemoryNeed need(int batch, int context) const;
};

// Throws mx::Error showing the numbers and what would fit (a smaller batch at this context,
// or a smaller context for this batch) when plan.need(batch, context) exceeds `available`
// (available_memory_bytes, runtime/memory_info.h).
void check_memory(const MemoryPlan& plan, int batch, int context, uint64_t available,
                  const std::string& source);

}  // namespace mx
