// What every checkpoint loader returns: the config, the tensors under canonical names
// (see tensor_store.h), and where the tokenizer comes from.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/tensor_store.h"

namespace mx {

// Which experts this process needs. Rank r of N owns experts [r*E/N, (r+1)*E/N); loaders skip
// (never map or copy) the tensors of experts outside `owns`.
struct LoadOptions {
  int rank = 0;
  int n_ranks = 1;
  // Row-major Q8_0 / Q4_0 matrices (a GGUF, or a cache from before the r16 layouts) are
  // interleaved into memory of their own when the model is bound, as repack stores them.
  bool interleave = true;
  bool owns_expert(int e, int n_experts) const {
    const int per = n_experts / n_ranks;
    return e >= rank * per && e < (rank + 1) * per;
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
