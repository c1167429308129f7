// libFuzzer harness: the Mistral tokenizer (tests/data's tokenizer.model) on arbitrary bytes.
// The input is encoded as text (with and without BOS), decoded back, and also read as a list
// of 16-bit token ids, valid or not, fed to decode() and to the StreamDecoder, whose pieces
// must add up to decode() of the same ids (its documented contract).
#include <cstring>

#include "fuzz_tokenizer.h"
#include "runtime/chat_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const mx::Tokenizer& tok = mx::fuzz::mistral_tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  mx::fuzz::expect_clean([&] {
    for (bool bos : {false, true}) {
      const std::vector<int> ids = tok.encode(text, bos);
      for (int id : ids)
        if (!tok.is_valid(id)) std::abort();  // encode must only produce vocabulary ids
      tok.decode(ids);
    }
    // Two chat turns split at the first NUL, as the server's chat endpoint encodes them.
    const size_t cut = text.find('\0');
    std::vector<mx::ChatMessage> msgs{{"user", std::string(text.substr(0, cut))}};
    if (cut != std::string_view::npos) msgs.push_back({"assistant", std::string(text.substr(cut + 1))});
    mx::encode_chat(tok, msgs);
  });

  // The same bytes as token ids; ids past the vocabulary must be refused, not read.
  std::vector<int> ids(size / 2);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint16_t v;
    std::memcpy(&v, data + 2 * i, 2);
    ids[i] = v;
  }
  bool valid = true;
  for (int id : ids) valid = valid && tok.is_valid(id);
  std::string whole;
  bool decoded = false;
  mx::fuzz::expect_clean([&] {
    whole = tok.decode(ids);
    decoded = true;
  });
  if (decoded != valid) {
    std::fprintf(stderr, "decode %s ids outside the vocabulary\n", decoded ? "accepted" : "refused valid");
    std::abort();
  }
  if (valid) {
    mx::StreamDecoder sd(tok);
    std::string streamed;
    for (int id : ids) streamed += sd.push(id);
    streamed += sd.finish();
    if (streamed != whole) {
      std::fprintf(stderr, "StreamDecoder gave %zu bytes, decode() %zu\n", streamed.size(), whole.size());
      std::abort();
    }
  }
  return 0;
}
