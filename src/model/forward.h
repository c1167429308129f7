// One forward step over a batch that mixes sequences of different lengths: prefill chunks and
// single-token decode steps go through the same call.
//
// Data flow per layer, for the T tokens of the whole batch ([T, dim] activations):
//   h = rmsnorm(x) → q,k,v = h·Wq,Wk,Wv → rope(q,k) → write k,v to each token's slot/position
//   → causal attention per token over its slot's cache → x += attn·Wo
//   h = rmsnorm(x) → route → experts grouped over the batch → x += combine
// then final rmsnorm and the LM head for the tokens whose logits are wanted.
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "formats/loaded_model.h"
#include "model/kv_cache.h"
#include "model/moe.h"
#include "model/weights.h"

namespace mx {

class ThreadPool;

struct SeqChunk;

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::shared_ptr<LoadedModel> source;  // keeps the mapped files alive
  ExpertRunner experts;                 // local by default; MPI replaces it
  // Called by forward() once the batch is validated and the cache slots are reserved, before
  // the first layer (kv.length(slot) is then each chunk's start). Under MPI, rank 0 uses it to
  // send the step to the other ranks (runtime/expert_parallel.cc); empty otherwise.
  std::function<void(const KvCache&, const std::vector<SeqChunk>&)> before_step;
  // Ranks other than 0 only need the cache and the expert exchange: no final norm, no LM head.
  bool skip_logits = false;
};

// Binds weights and sets the local expert runner (which uses `pool`).
std::unique_ptr<Model> make_model(std::shared_ptr<LoadedModel> loaded, const LoadOptions& opts,
                                  ThreadPool& pool);

// A run of consecutive tokens of one sequence, starting at the slot's current length, or at
// `start` when that is given (a reused or copied prefix).
struct SeqChunk {
  int slot = 0;
  std::vector<int> tokens;
  bool all_logits = false;  // logits after every token (scoring), else only after the last
  bool fresh = false;       // starts a new sequence: the slot's cache is reset first
  // >= 0: the chunk starts at this position, keeping the slot's first `start` positions (a
  // cached prefix) and overwriting the rest; must be <= the slot's length.
  int start = -1;
  // >= 0: the slot first becomes a copy of this slot's first `start` positions (choices that
  // share a prompt). Copies are made before any chunk of the step is applied.
  int copy_from = -1;
};

// Applies each chunk's fresh/start/copy_from to its slot (forward() does this first; MPI
// followers do it from rank 0's message).
void apply_chunk_starts(KvCache& kv, const std::vector<SeqChunk>& batch);

// Appends every chunk's tokens to its slot's cache and returns logits: for each chunk in order,
// tokens.size() rows when all_logits, else one row; each row is [vocab] (nothing when
// m.skip_logits). Throws mx::Error for an unknown token id or a sequence over the context.
std::vector<float> forward(Model& m, KvCache& kv, const std::vector<SeqChunk>& batch,
                           ThreadPool& pool);

}  // namespace mx
