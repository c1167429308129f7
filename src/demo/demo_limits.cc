#include "demo/demo_limits.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "formats/error.h"

namespace mx {

namespace {
constexpr int kContexts[] = {4096, 8192, 16384, 32768};
constexpr int kUsers[] = {32, 16, 8, 4};
constexpr uint64_t kMiB = 1024ull * 1024;
// The process itself: code, tokenizer, thread stacks, allocator slack.
constexpr uint64_t kProcessMargin = 64 * kMiB;
}  // namespace

int parse_token_count(const std::string& s, const std::string& what) {
  std::string t = s;
  uint64_t mult = 1;
  if (!t.empty() && (t.back() == 'k' || t.back() == 'K')) {
    mult = 1024;
    t.pop_back();
  }
  if (t.empty() || t.size() > 9) fail(what + " must be a token count like 4096 or 16k, not '" + s + "'");
  for (char c : t)
    if (!std::isdigit(static_cast<unsigned char>(c)))
      fail(what + " must be a token count like 4096 or 16k, not '" + s + "'");
  const uint64_t v = std::stoull(t) * mult;
  if (v > (1u << 30)) fail(what + " of '" + s + "' is too large");
  return static_cast<int>(v);
}

int max_batch_for_context(int context) {
  for (int i = 0; i < 4; ++i)
    if (context <= kContexts[i]) return kUsers[i];
  return 0;
}

int max_context_for_batch(int batch) {
  int best = 0;
  for (int i = 0; i < 4; ++i)
    if (batch <= kUsers[i]) best = kContexts[i];
  return best;
}

void check_batch_limit(int batch, int context) {
  if (batch < 1) fail("--batch must be at least 1");
  if (context < 1) fail("--context must be at least 1 token");
  const int limit = max_batch_for_context(context);
  if (limit == 0)
    fail("a context of " + std::to_string(context) + " tokens is over the demo's largest, 32k (32768)");
  if (batch <= limit) return;
  std::string msg = "a batch of " + std::to_string(batch) + " users does not fit a context of " +
                    std::to_string(context) + " tokens: this context allows at most " +
                    std::to_string(limit) + " users (4k: 32, 8k: 16, 16k: 8, 32k: 4)";
  const int ctx = max_context_for_batch(batch);
  if (ctx > 0) {
    msg += "; " + std::to_string(batch) + " users fit a context of at most " + std::to_string(ctx / 1024) + "k";
  } else {
    msg += "; no context allows more than 32 users";
  }
  fail(msg);
}

uint64_t weights_bytes(const TensorStore& store) {
  uint64_t n = 0;
  for (const auto& [name, t] : store.tensors) n += t.nbytes();
  return n;
}

uint64_t activation_bytes(const ModelConfig& c, int step_tokens, int batch, int context) {
  const uint64_t T = static_cast<uint64_t>(std::max(step_tokens, batch));
  const uint64_t dim = c.dim, q = static_cast<uint64_t>(c.n_heads) * c.head_dim,
                 kv = static_cast<uint64_t>(c.n_kv_heads) * c.head_dim, ffn = c.ffn_dim;
  // forward.cc: x, h, tmp, q, att, k, v, the experts' outputs y; moe.cc: router logits and,
  // per expert, xs/out [n, dim] and h1/h3 [n, ffn] with n <= T; rope tables; the LM head's
  // normed rows and logits for each user's last token.
  uint64_t floats = T * (3 * dim + 2 * q + 2 * kv + static_cast<uint64_t>(c.top_k) * dim +
                         static_cast<uint64_t>(c.n_experts) + 2 * dim + 2 * ffn + c.head_dim);
  floats += static_cast<uint64_t>(batch) * (static_cast<uint64_t>(c.vocab) + dim);
  // Attention scores of one query over the whole context, per head, for a few threads.
  floats += static_cast<uint64_t>(context) * static_cast<uint64_t>(c.n_heads) * 4;
  return floats * 4 + kProcessMargin;
}

int MemoryPlan::step_tokens(int batch) const {
  const int chunk = longest_prompt > 0 ? std::min(prefill_chunk, longest_prompt) : prefill_chunk;
  const int64_t prompt = std::min<int64_t>(demo_step_budget(batch, prefill_chunk),
                                           static_cast<int64_t>(batch) * chunk);
  return static_cast<int>(prompt) + batch;
}

MemoryNeed MemoryPlan::need(int batch, int context) const {
  MemoryNeed m;
  m.weights = weights;
  m.kv = kv_bytes_per_position * static_cast<uint64_t>(context) * static_cast<uint64_t>(batch);
  m.activations = activation_bytes(config, step_tokens(batch), batch, context);
  return m;
}

void check_memory(const MemoryPlan& plan, int batch, int context, uint64_t available,
                  const std::string& source) {
  const MemoryNeed m = plan.need(batch, context);
  if (m.total() <= available) return;
  std::ostringstream msg;
  msg << "not enough memory for " << batch << " users at a context of " << context
      << " tokens: need " << format_bytes(m.total()) << " (weights " << format_bytes(m.weights)
      << " + KV cache " << format_bytes(m.kv) << " + activations " << format_bytes(m.activations)
      << ") but " << format_bytes(available) << " is available (" << source << ")";
  int fit_batch = 0;
  for (int b = batch - 1; b >= 1; --b)
    if (plan.need(b, context).total() <= available) {
      fit_batch = b;
      break;
    }
  int fit_ctx = 0;
  for (int i = 3; i >= 0; --i) {
    const int c = kContexts[i];
    if (c < context && batch <= max_batch_for_context(c) && plan.need(batch, c).total() <= available) {
      fit_ctx = c;
      break;
    }
  }
  if (fit_batch > 0) msg << "; at this context at most --batch " << fit_batch << " fits";
  if (fit_ctx > 0) msg << "; " << batch << " users fit with --context " << fit_ctx / 1024 << "k";
  if (fit_batch == 0 && fit_ctx == 0) {
    const MemoryNeed one = plan.need(1, std::min(context, 4096));
    if (one.total() > available) {
      msg << "; not even one user at a 4k context fits (" << format_bytes(one.total()) << ": the weights alone take "
          << format_bytes(m.weights) << ")";
    } else {
      msg << "; try fewer users and a smaller context";
    }
  }
  fail(msg.str());
}

}  // namespace mx
