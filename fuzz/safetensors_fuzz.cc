// libFuzzer harness: a whole .safetensors file (8-byte length, JSON header, data) through
// open_safetensors, then every tensor name through both checkpoint name matchers.
#include "formats/safetensors.h"
#include "formats/safetensors_checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static mx::fuzz::MemFile file;
  const std::string& path = file.set(data, size);
  mx::fuzz::expect_clean([&] {
    mx::SafetensorsFile st = mx::open_safetensors(path);
    for (const auto& entry : st.tensors) {
      const std::string& name = entry.first;  // clang 14 cannot capture a structured binding
      const mx::Tensor& t = entry.second;
      // Every view must lie inside the mapping; reading its ends makes ASan check that.
      if (t.nbytes() > 0) {
        volatile uint8_t first = t.data[0], last = t.data[t.nbytes() - 1];
        (void)first, (void)last;
      }
      int expert = -1;
      mx::fuzz::expect_clean([&] { mx::hf_canonical_name(name, &expert, path); });
      mx::fuzz::expect_clean([&] { mx::mistral_canonical_name(name, &expert, path); });
    }
  });
  return 0;
}
