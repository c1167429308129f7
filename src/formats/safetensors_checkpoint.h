// Checkpoints stored as safetensors: the HuggingFace folder (config.json, one or many shards
// with model.safetensors.index.json) and the mistral-inference folder (params.json plus
// consolidated.safetensors). Tensors are renamed to canonical names; nothing is copied.
#pragma once
#include <string>

#include "formats/loaded_model.h"

namespace mx {

// A checkpoint's tensor name as its canonical name (tensor_store.h), or "" for a tensor the
// engine does not use; *expert is the expert index of expert tensors, else -1. Names are
// matched by hand in linear time; an expert index that is not a number below 10000 throws
// mx::Error naming `file` and the tensor.
std::string hf_canonical_name(const std::string& name, int* expert, const std::string& file);
std::string mistral_canonical_name(const std::string& name, int* expert, const std::string& file);

LoadedModel load_hf_checkpoint(const std::string& dir, const LoadOptions& opts);
LoadedModel load_mistral_checkpoint(const std::string& dir, const LoadOptions& opts);

}  // namespace mx
