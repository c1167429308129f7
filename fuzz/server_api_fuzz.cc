// libFuzzer harness: an HTTP request body through parse_completion_request and
// parse_chat_request (JSON limits, field checks, chat messages into tokens) with the Mistral
// tokenizer and a 4096-token context. Refusals must be ApiError with status 400 whose JSON
// error object serializes; an accepted request must hold vocabulary ids and fit the context.
#include "fuzz_tokenizer.h"
#include "server/api.h"

namespace {

constexpr int kContext = 4096;

template <typename Parse>
void check(Parse&& parse, const mx::Tokenizer& tok) {
  try {
    const mx::server::GenerationRequest r = parse();
    if (r.prompt.empty() || r.max_tokens < 0 || r.prompt.size() + static_cast<size_t>(r.max_tokens) > kContext) {
      std::fprintf(stderr, "accepted a request that does not fit: %zu prompt + %d\n", r.prompt.size(), r.max_tokens);
      std::abort();
    }
    for (int id : r.prompt)
      if (!tok.is_valid(id)) std::abort();
  } catch (const mx::server::ApiError& e) {
    if (e.status != 400) std::abort();
    mx::server::dump(mx::server::error_json(e));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "non-ApiError exception escaped: %s\n", e.what());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const mx::Tokenizer& tok = mx::fuzz::mistral_tokenizer();
  // Computed once, as the server does at start-up (it walks the whole vocabulary).
  static const size_t per_token = mx::server::max_bytes_per_token(tok);
  const std::string body(reinterpret_cast<const char*>(data), size);
  check([&] { return mx::server::parse_completion_request(body, tok, kContext, per_token); }, tok);
  check([&] { return mx::server::parse_chat_request(body, tok, kContext, per_token); }, tok);
  return 0;
}
