// What every checkpoint loader returns: the config, the tensors under canonical names
// (see tensor_store.h), and where the tokenizer comes from.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/tensor_store.h"

namespace mx {

// Which experts this process needs. By default rank r of N owns a contiguous block of experts,
// the first E%N ranks one more than the rest (3 ranks of 8: 0-2, 3-5, 6-7); `owner` (expert ->
// rank, from a placement file) overrides that. Loaders skip (never map or copy) the tensors of
// experts this rank does not own.
struct LoadOptions {
  int rank = 0;
  int n_ranks = 1;
  // Row-major Q8_0 / Q4_0 matrices (a GGUF, or a cache from before the r16 layouts) are
  // interleaved into memory of their own when the model is bound, as repack stores them.
  bool interleave = true;
  std::vector<int> owner{};  // empty: the default blocks; else one rank per expert
  // More ranks than experts (default placement only): expert e is split over ranks e, e+E,
  // e+2E, ...; rank r holds part r / E of expert r % E (formats/expert_split.h).
  bool splits(int n_experts) const { return owner.empty() && n_ranks > n_experts && n_experts > 0; }
  int expert_parts(int e, int n_experts) const {
    return splits(n_experts) ? (n_ranks - e + n_experts - 1) / n_experts : 1;
  }
  int part(int n_experts) const { return splits(n_experts) ? rank / n_experts : 0; }
  bool owns_expert(int e, int n_experts) const {
    return splits(n_experts) ? rank % n_experts == e : expert_owner(e, n_experts) == rank;
  }
  // The rank holding expert e (with a split: the rank holding its first part).
  int expert_owner(int e, int n_experts) const {
    if (!owner.empty()) return e < static_cast<int>(owner.size()) ? owner[static_cast<size_t>(e)] : -1;
    if (splits(n_experts)) return e;
    const int per = n_experts / n_ranks, extra = n_experts % n_ranks;
    // Ranks below `extra` hold per+1 experts, starting at r*(per+1).
    const int big = extra * (per + 1);
    return e < big ? e / (per + 1) : extra + (e - big) / std::max(per, 1);
  }
};

// A SentencePiece model file, or the vocabulary embedded in a GGUF file.
struct TokenizerSource {
  std::string model_path;            // tokenizer.model, when one exists
  std::vector<std::string> pieces;   // else: GGUF tokenizer.ggml.tokens
  std::vector<float> scores;         //       tokenizer.ggml.scores
  std::vector<int32_t> types;        //       tokenizer.ggml.token_type (1 normal, 2 unknown,
                                     //       3 control, 4 user defined, 5 unused, 6 byte)
  int bos_id = 1, eos_id = 2, unk_id = 0;
  bool add_dummy_prefix = true;
  std::string chat_template;         // informational (GGUF tokenizer.chat_template)
};

struct LoadedModel {
  std::string path;    // what the user passed
  std::string layout;  // "hf", "mistral", "pth", "pt-stacked", "gguf", "cache"
  ModelConfig config;
  TensorStore store;
  TokenizerSource tokenizer;
};

}  // namespace mx
