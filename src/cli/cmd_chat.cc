// `mixtral chat`: an interactive conversation in the Mistral v1 instruct format, streamed token
// by token. The KV cache keeps the conversation, so each turn only feeds its new tokens.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/chat_format.h"
#include "runtime/sampling.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {

struct ChatArgs {
  EngineOptions engine;
  std::string system;
  int n = 512, top_k = 0, context = 0;
  float temperature = 0.6f, top_p = 0.9f;
  uint64_t seed = 0;
};

int run(ChatArgs& a) {
  Engine e = open_engine(a.engine);
  const ModelConfig& c = e.model->config;
  const int ctx = a.context > 0 ? a.context : c.max_seq_len;
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, ctx, e.kv_dtype);
  auto fwd = make_forward(e, kv);
  const Tokenizer& tok = *e.tokenizer;
  const SamplingParams sp{a.temperature, a.top_p, a.top_k, a.seed};
  Rng rng(a.seed, 0);
  std::vector<ChatMessage> messages;
  if (!a.system.empty()) messages.push_back({"system", a.system});
  std::vector<int> in_cache;  // tokens whose K/V the slot holds
  const bool tty = ::isatty(0);
  if (tty) std::fprintf(stderr, "chat: type a message; /reset starts over, /exit or Ctrl-D quits\n");
  std::string line;
  while (true) {
    if (tty) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line)) break;
    if (line == "/exit") break;
    if (line == "/reset") {
      messages.resize(a.system.empty() ? 0 : 1);
      in_cache.clear();
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({"user", line});
    std::vector<int> full = encode_chat(tok, messages);
    // Each segment is encoded on its own, so earlier turns' tokens are a prefix of the new ones.
    // An empty cache (first turn, /reset, resync) is no prefix: the slot must start fresh, or
    // after /reset the new turn was appended to the old conversation's K/V.
    const bool prefix = !in_cache.empty() && full.size() > in_cache.size() &&
                        std::equal(in_cache.begin(), in_cache.end(), full.begin());
    if (static_cast<int>(full.size()) >= ctx) {
      std::fprintf(stderr, "chat: the conversation (%zu tokens) no longer fits the context of %d; /reset to start over\n",
                   full.size(), ctx);
      messages.pop_back();
      continue;
    }
    SeqChunk chunk;
    chunk.slot = 0;
    chunk.fresh = !prefix;
    chunk.tokens.assign(full.begin() + (prefix ? static_cast<long>(in_cache.size()) : 0), full.end());
    std::vector<float> logits = fwd({chunk});
    in_cache = full;
    std::vector<int> reply;
    StreamDecoder sd(tok);
    for (int i = 0; i < a.n; ++i) {
      const int t = sample(logits.data(), c.vocab, sp, rng);
      reply.push_back(t);
      if (t == tok.eos_id()) break;
      std::fputs(sd.push(t).c_str(), stdout);
      std::fflush(stdout);
      if (static_cast<int>(in_cache.size()) + 1 >= ctx) break;
      in_cache.push_back(t);
      logits = fwd({{0, {t}, false, false}});
    }
    std::fputs(sd.finish().c_str(), stdout);
    std::fputs("\n", stdout);
    std::fflush(stdout);
    std::vector<int> text_ids = reply;
    if (!text_ids.empty() && text_ids.back() == tok.eos_id()) text_ids.pop_back();
    messages.push_back({"assistant", tok.decode(text_ids)});
    // The next turn re-encodes the reply; resync the cache if its tokens differ.
    const std::vector<int> again = encode_chat(tok, messages);
    if (!(again.size() >= in_cache.size() && std::equal(in_cache.begin(), in_cache.end(), again.begin())))
      in_cache.clear();
  }
  return 0;
}

}  // namespace

Command add_chat(CLI::App& app) {
  auto a = std::make_shared<ChatArgs>();
  CLI::App* sub = app.add_subcommand("chat", "interactive chat (Mistral v1 instruct format), reading turns from stdin");
  add_engine_options(sub, a->engine);
  sub->add_option("--system", a->system, "system prompt, put before the first user message");
  sub->add_option("-n,--max-new-tokens", a->n, "max tokens per reply")->default_val(512);
  sub->add_option("--temperature", a->temperature, "0 for greedy")->default_val(0.6f);
  sub->add_option("--top-p", a->top_p, "nucleus sampling mass")->default_val(0.9f);
  sub->add_option("--top-k", a->top_k, "keep the k most likely tokens (0: off)")->default_val(0);
  sub->add_option("--seed", a->seed, "sampling seed")->default_val(0);
  sub->add_option("--context", a->context, "context length in tokens (default: the model's)");
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
