// libFuzzer harness: a whole GGUF file through GgufFile::open (header, metadata, tensor table),
// the typed metadata getters, every tensor view, load_gguf (config, expert split, vocabulary)
// and, when it loads, the tokenizer rebuilt from the embedded vocabulary.
#include "formats/gguf.h"
#include "formats/model_loader.h"
#include "fuzz_util.h"
#include "runtime/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static mx::fuzz::MemFile file;
  const std::string& path = file.set(data, size);
  mx::fuzz::expect_clean([&] {
    const mx::GgufFile g = mx::GgufFile::open(path);
    for (const std::string& key : g.keys) {
      // The getters must refuse a wrong type or range with mx::Error, whatever the value.
      mx::fuzz::expect_clean([&] { g.get_u32(key); });
      mx::fuzz::expect_clean([&] { g.get_i64(key); });
      mx::fuzz::expect_clean([&] { g.get_f32(key); });
      mx::fuzz::expect_clean([&] { g.get_string(key); });
      mx::fuzz::expect_clean([&] { g.get_f32_array(key); });
      mx::fuzz::expect_clean([&] { g.get_int_array(key); });
    }
    for (const mx::GgufTensorInfo& ti : g.tensor_infos)
      mx::fuzz::expect_clean([&] { mx::fuzz::touch(g.tensor(ti.name)); });
  });
  mx::fuzz::expect_clean([&] {
    const mx::LoadedModel m = mx::load_gguf(path, {});
    mx::check_tensors(m, {});
    for (const auto& [name, t] : m.store.tensors) mx::fuzz::touch(t);
    if (m.tokenizer.model_path.empty() && !m.tokenizer.pieces.empty()) {
      const mx::Tokenizer tok = mx::Tokenizer::load(m.tokenizer);
      const std::vector<int> ids = tok.encode("Hello w\xc3\xa9rld [INST] \xf0\x9f\x98\x80", true);
      tok.decode(ids);
    }
  });
  return 0;
}
