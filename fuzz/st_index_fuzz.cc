// libFuzzer harness: model.safetensors.index.json through load_hf_checkpoint, in a folder that
// holds the tiny fixture's config.json and both shards (symlinked), so a well-formed index goes
// on to open the shards it names and map their tensors.
#include "formats/model_loader.h"
#include "formats/safetensors_checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mx::fuzz::ScratchDir dir;
  static const bool linked = [] {
    for (const char* f : {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
      dir.link(f, mx::fuzz::test_data(std::string("tiny-mixtral/hf/") + f));
    return true;
  }();
  (void)linked;
  dir.write("model.safetensors.index.json", data, size);
  mx::fuzz::expect_clean([&] {
    const mx::LoadedModel m = mx::load_hf_checkpoint(dir.path(), {});
    mx::check_tensors(m, {});
  });
  return 0;
}
