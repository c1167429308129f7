// Checkpoints stored as safetensors: the HuggingFace folder (config.json, one or many shards
// with model.safetensors.index.json) and the mistral-inference folder (params.json plus
// consolidated.safetensors). Tensors are renamed to canonical names; nothing is copied.
#pragma once
#include <string>

#include "formats/loaded_model.h"

namespace mx {

LoadedModel load_hf_checkpoint(const std::string& dir, const LoadOptions& opts);
LoadedModel load_mistral_checkpoint(const std::string& dir, const LoadOptions& opts);

}  // namespace mx
