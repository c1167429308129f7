// One way in: `--model PATH` may be a folder or a file in any supported layout; the layout is
// detected from the contents, and every tensor is checked against the config.
#pragma once
#include <string>

#include "formats/loaded_model.h"

namespace mx {

// Detects and loads; throws mx::Error listing what was looked for when nothing matches.
LoadedModel load_model(const std::string& path, const LoadOptions& opts = {});
// Name of the detected layout without loading ("hf", "mistral", "pth", "pt-stacked", "gguf",
// "cache"), or throws the same error as load_model.
std::string detect_layout(const std::string& path);
// Checks presence, shape and dtype class of every canonical tensor this rank needs.
void check_tensors(const LoadedModel& m, const LoadOptions& opts);

}  // namespace mx
