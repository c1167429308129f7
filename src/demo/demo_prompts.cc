#include "demo/demo_prompts.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "formats/error.h"
#include "runtime/chat_format.h"

namespace mx {

const char* const kBookQuestion = "Which book is the following excerpt from?";

namespace {

// A cut may land inside a character split over byte tokens; starting on a UTF-8 continuation
// byte would decode to U+FFFD, so such tokens are dropped from the front.
size_t skip_continuation_bytes(const Tokenizer& tok, const std::vector<int>& ids, size_t from) {
  while (from < ids.size()) {
    const int b = tok.byte_value(ids[from]);
    if (b < 0x80 || b > 0xBF) break;
    ++from;
  }
  return from;
}

std::string too_small(int max_tokens, const std::string& what) {
  return "the context leaves room for only " + std::to_string(max_tokens) + " prompt tokens, too few for " +
         what + "; use a larger --context or a smaller --max-new-tokens";
}

}  // namespace

DemoPrompt make_demo_prompt(const Tokenizer& tok, const std::string& text, bool instruct,
                            int max_tokens) {
  DemoPrompt p;
  p.text = text;
  p.tokens = instruct ? encode_instruct(tok, text) : tok.encode(text, true);
  p.original_tokens = static_cast<int>(p.tokens.size());
  if (p.original_tokens <= max_tokens) return p;
  p.truncated = true;
  if (!instruct) {
    if (max_tokens < 2) fail(too_small(max_tokens, "BOS and one token of text"));
    // BOS, then the last max_tokens - 1 tokens of the text.
    std::vector<int> body(p.tokens.begin() + 1, p.tokens.end());
    size_t from = skip_continuation_bytes(tok, body, body.size() - static_cast<size_t>(max_tokens - 1));
    if (from >= body.size()) from = body.size() - 1;
    std::vector<int> out{p.tokens.front()};
    out.insert(out.end(), body.begin() + static_cast<long>(from), body.end());
    p.tokens = std::move(out);
    return p;
  }
  // Instruct: cut the user text, then wrap it, so the tags are always whole. Re-encoding the cut
  // text can differ from the cut tokens by a token or two at the edges, so shrink until it fits.
  const std::vector<int> body = tok.encode(text, false);
  const int overhead = p.original_tokens - static_cast<int>(body.size());
  int keep = max_tokens - overhead;
  for (int iter = 0; iter < 64; ++iter) {
    if (keep < 1) fail(too_small(max_tokens, "the [INST] ... [/INST] wrapper and one token of text"));
    size_t from = body.size() - static_cast<size_t>(std::min<size_t>(static_cast<size_t>(keep), body.size()));
    from = skip_continuation_bytes(tok, body, from);
    if (from >= body.size()) from = body.size() - 1;
    const std::string cut(tok.decode(std::vector<int>(body.begin() + static_cast<long>(from), body.end())));
    std::vector<int> wrapped = encode_instruct(tok, cut);
    const int over = static_cast<int>(wrapped.size()) - max_tokens;
    if (over <= 0) {
      p.tokens = std::move(wrapped);
      return p;
    }
    keep -= over;
  }
  fail(too_small(max_tokens, "this prompt"));
}

std::string first_tokens_text(const Tokenizer& tok, const std::string& text, int n, int* n_out) {
  if (n < 1) fail("an excerpt needs at least one token");
  // Tokenize only a prefix that surely holds n tokens (English averages ~4 bytes a token),
  // ending at a space or newline so that its last word is whole.
  size_t len = std::min(text.size(), static_cast<size_t>(n) * 6 + 4096);
  std::vector<int> ids;
  while (true) {
    size_t end = len;
    if (end < text.size()) {
      const size_t ws = text.find_last_of(" \n", end);
      if (ws != std::string::npos && ws > 0) end = ws;
    }
    ids = tok.encode(std::string_view(text).substr(0, end), false);
    if (static_cast<int>(ids.size()) > n || len >= text.size()) break;
    len = std::min(text.size(), len * 2);
  }
  if (static_cast<int>(ids.size()) <= n) {
    if (n_out) *n_out = static_cast<int>(ids.size());
    return tok.decode(ids);
  }
  // The decoded text of ids[0, m) re-encodes to the same m tokens unless the cut splits a word
  // in a way BPE merges differently; try m = n first, then step back to a cut that round-trips.
  for (int m = n; m > 0 && m > n - 256; --m) {
    const std::vector<int> head(ids.begin(), ids.begin() + m);
    const std::string s = tok.decode(head);
    if (tok.encode(s, false) == head) {
      if (n_out) *n_out = m;
      return s;
    }
  }
  const std::vector<int> head(ids.begin(), ids.begin() + n);
  if (n_out) *n_out = n;
  return tok.decode(head);
}

DemoPrompt make_book_prompt(const Tokenizer& tok, const std::string& novel, int excerpt_tokens,
                            bool instruct, int max_tokens) {
  const auto build = [&](int n, int* got) {
    const std::string excerpt = first_tokens_text(tok, novel, n, got);
    DemoPrompt p;
    p.text = std::string(kBookQuestion) + "\n\n" + excerpt;
    p.tokens = instruct ? encode_instruct(tok, p.text) : tok.encode(p.text, true);
    p.original_tokens = static_cast<int>(p.tokens.size());
    return p;
  };
  int got = 0;
  DemoPrompt p = build(excerpt_tokens, &got);
  const int full = p.original_tokens;
  int n = got;
  for (int iter = 0; iter < 64 && static_cast<int>(p.tokens.size()) > max_tokens; ++iter) {
    // The question sits at the front, so the excerpt's end is what goes.
    n -= static_cast<int>(p.tokens.size()) - max_tokens;
    if (n < 1) fail(too_small(max_tokens, "the book question and an excerpt"));
    p = build(n, &got);
    n = got;
  }
  if (static_cast<int>(p.tokens.size()) > max_tokens) fail(too_small(max_tokens, "the book prompt"));
  p.truncated = full != static_cast<int>(p.tokens.size());
  p.original_tokens = full;
  return p;
}

std::vector<std::string> assign_prompts(const std::vector<std::string>& prompts, int batch) {
  if (prompts.empty()) fail("no prompts");
  std::vector<std::string> out;
  for (int i = 0; i < batch; ++i) out.push_back(prompts[static_cast<size_t>(i) % prompts.size()]);
  return out;
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path + ": read error");
  return ss.str();
}

}  // namespace mx
