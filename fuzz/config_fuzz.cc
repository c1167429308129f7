// libFuzzer harness: one JSON text through every small-JSON reader of the loaders: config.json
// (read_hf_config), params.json (read_params_json), the weight-cache manifest
// (parse_cache_manifest) and the cache's tokenizer.json (tokenizer_vocab_from_json). Each reads
// the fields it knows, so one corpus serves all four.
#include "formats/config_files.h"
#include "formats/loaded_model.h"
#include "formats/weight_cache.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static mx::fuzz::MemFile file;
  const std::string& path = file.set(data, size);
  const std::string text(reinterpret_cast<const char*>(data), size);
  mx::fuzz::expect_clean([&] { mx::read_hf_config(path).validate(path); });
  mx::fuzz::expect_clean([&] { mx::read_params_json(path).validate(path); });
  mx::CacheManifest manifest;
  bool accepted = false;
  mx::fuzz::expect_clean([&] {
    manifest = mx::parse_cache_manifest(text, "manifest.json");
    accepted = true;
  });
  if (accepted) {
    // An accepted manifest must survive being written back and re-read, as repack does.
    try {
      mx::parse_cache_manifest(mx::manifest_to_json(manifest), "manifest.json (rewritten)");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "accepted manifest does not round-trip: %s\n", e.what());
      std::abort();
    }
  }
  mx::fuzz::expect_clean([&] {
    mx::TokenizerSource t;
    mx::tokenizer_vocab_from_json(text, "tokenizer.json", &t);
  });
  return 0;
}
