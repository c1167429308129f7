#include "runtime/bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "formats/error.h"
#include "kernels/ceilings.h"
#include "kernels/matmul.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/expert_parallel.h"
#include "runtime/memory_info.h"
#include "runtime/sampling.h"

namespace mx {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double mat_bytes(const MatView& v) { return static_cast<double>(v.rows) * static_cast<double>(v.stride); }

// Bytes of the weights every token reads (attention, router, LM head; norms are tiny) and of one
// expert in one layer.
struct WeightBytes {
  double shared_per_step = 0;  // read once per decode step
  double expert = 0;           // one expert of one layer
  double total = 0;            // everything this process maps
  bool expert_quantized = false;
  double attn_params = 0, expert_params = 0, head_params = 0;
};

WeightBytes weight_bytes(const Model& m) {
  WeightBytes b;
  const ModelWeights& w = m.weights;
  b.shared_per_step = mat_bytes(w.output);
  b.total = mat_bytes(w.output) + mat_bytes(w.tok_embeddings);
  b.head_params = static_cast<double>(w.output.rows) * w.output.cols;
  for (const LayerWeights& lw : w.layers) {
    for (const MatView* v : {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.gate}) {
      b.shared_per_step += mat_bytes(*v);
      b.total += mat_bytes(*v);
      b.attn_params += static_cast<double>(v->rows) * v->cols;
    }
    for (const ExpertWeights& e : lw.experts) {
      if (!e.present) continue;
      b.expert = mat_bytes(e.w1) + mat_bytes(e.w3) + mat_bytes(e.w2);
      b.total += b.expert;
      b.expert_quantized = dtype_info(e.w1.dtype).quantized;
      b.expert_params = 3.0 * static_cast<double>(e.w1.rows) * e.w1.cols;
    }
  }
  return b;
}

}  // namespace

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

BenchResult run_bench(Model& m, ThreadPool& pool, const BenchOptions& o,
                      const std::function<void(const std::string&)>& progress) {
  const ModelConfig& c = m.config;
  if (o.prompt < 1 || o.gen < 1) fail("--prompt and --gen must be >= 1");
  if (o.repeat < 1 || o.repeat > 100) fail("--repeat must be in [1, 100], not " + std::to_string(o.repeat));
  for (int b : o.batches)
    if (b < 1) fail("--batch sizes must be >= 1");
  if (o.prompt + 1 > c.max_seq_len || o.decode_prompt + o.gen + 1 > c.max_seq_len)
    fail("--prompt " + std::to_string(o.prompt) + " / --gen " + std::to_string(o.gen) +
         " do not fit the model's context of " + std::to_string(c.max_seq_len) +
         " tokens (prefill needs prompt + 1, decode " + std::to_string(o.decode_prompt) + " + gen + 1)");
  for (int d : o.depths)
    if (d < 2 || d + o.gen + 2 > c.max_seq_len)
      fail("--depth " + std::to_string(d) + " must be at least 2 and, with --gen " + std::to_string(o.gen) +
           " + 2, fit the model's context of " + std::to_string(c.max_seq_len) + " tokens");
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  BenchResult r;
  r.threads = pool.size();
  r.simd = simd_path_name(simd_path());
  say("measuring ceilings (read bandwidth, int8 and bf16 peaks)");
  r.read_gbps = measure_read_bandwidth_gbps(pool);
  r.int8_gops = measure_int8_gops(pool);
  r.bf16_gflops = measure_bf16_gflops(pool);
  // The bandwidth probe's 256 MiB buffer is freed by now; reset the peak (VmHWM) so that peak
  // RSS measures the engine, not the probe (Linux: writing 5 to clear_refs resets it).
  { std::ofstream("/proc/self/clear_refs") << "5"; }
  r.int8_kernel = int8_gops_kernel_name();
  r.bf16_kernel = bf16_gflops_kernel_name();
  const WeightBytes wb = weight_bytes(m);
  r.weight_bytes = wb.total;
  // Multiply-adds per prompt token of a P-token prefill with the last token's logits: every
  // layer but the last runs attention projections and router, top-k experts and attention
  // scores/values over on average half the prompt; the last runs only its K and V projections
  // for all tokens (forward() trims it to the wanted row), plus one whole layer for the last
  // token. The LM head runs once.
  const auto prefill_ops_per_token = [&](int P) {
    const double L = c.n_layers, per_layer_attn = L > 0 ? wb.attn_params / L : 0;
    const double kv_proj = 2.0 * c.dim * c.n_kv_heads * c.head_dim;
    const double scores = 2.0 * c.n_heads * c.head_dim * (P / 2.0);
    const double full_layer = per_layer_attn + c.top_k * wb.expert_params + scores;
    const double body = L > 0 ? (L - 1) * full_layer + kv_proj + full_layer / P : 0;
    return 2.0 * body;
  };
  if (o.kv_budget_bytes > 0) {
    r.kv_budget_bytes = o.kv_budget_bytes;
    r.kv_budget_source = "--kv-budget-mb";
  } else {
    // Mapped weights count as reclaimable page cache in MemAvailable, yet evicting them would
    // turn decode into disk reads: they are taken off, with a 20% margin for everything else.
    std::string src;
    r.kv_budget_bytes = std::max(0.0, 0.8 * static_cast<double>(available_memory_bytes(&src)) - wb.total);
    r.kv_budget_source = "80% of " + src + " less the weights; --kv-budget-mb sets it";
  }

  // Count the distinct experts each step runs, per layer, by watching the router's choices.
  double expert_layer_runs = 0;
  ExpertRunner inner = m.experts;
  m.experts = [&](int layer, const float* x, int dim, const MoeRouting& rt, float* y) {
    std::set<int> used(rt.expert.begin(), rt.expert.end());
    expert_layer_runs += static_cast<double>(used.size());
    inner(layer, x, dim, rt, y);
  };
  struct Restore {
    Model& m;
    ExpertRunner inner;
    ~Restore() { m.experts = inner; }
  } restore{m, inner};

  const int ctx = std::max(o.prompt + 2, o.decode_prompt + o.gen + 1);
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, ctx, o.kv_dtype);
  Rng rng(1234, 0);
  auto random_tokens = [&](int n) {
    std::vector<int> t{c.bos_id};
    while (static_cast<int>(t.size()) < n) t.push_back(3 + static_cast<int>(rng.next() % static_cast<uint64_t>(c.vocab - 3)));
    return t;
  };

  // Prefill: one user, the whole prompt in one step; TTFT adds the first decode step.
  say("prefill of " + std::to_string(o.prompt) + " tokens");
  {
    const std::vector<int> prompt = random_tokens(o.prompt);
    // Warm-up over 64 tokens: enough that every expert of every layer is routed to (with 8
    // tokens ~10% of them were not), so no mmap page faults land in the timed prefill.
    forward(m, kv, {{0, std::vector<int>(prompt.begin(), prompt.begin() + std::min(64, o.prompt)), false, true}}, pool);
    double best = 0;
    for (int rep = 0; rep < o.repeat; ++rep) {
      const double comm0 = ep::comm_stats().seconds;
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<float> lg = forward(m, kv, {{0, prompt, false, true}}, pool);
      const double tp = seconds_since(t0);
      const double share = (ep::comm_stats().seconds - comm0) / tp;
      const int next = argmax(lg.data(), c.vocab);
      forward(m, kv, {{0, {next}, false, false}}, pool);
      const double ttft = seconds_since(t0) * 1e3;
      r.prefill_runs.push_back(o.prompt / tp);
      if (o.prompt / tp > best) {
        best = o.prompt / tp;
        r.prefill_comm_share = share;
      }
      if (rep == 0 || ttft < r.ttft_ms) r.ttft_ms = ttft;
    }
    r.prefill_tokens_per_s = best;
    r.prefill_tokens = o.prompt;
    r.prefill_ops_per_token = prefill_ops_per_token(o.prompt);
    r.prefill_uses_int8 = wb.expert_quantized;
    const double peak = (wb.expert_quantized ? r.int8_gops : r.bf16_gflops) * 1e9;
    r.prefill_roofline_tokens_per_s = peak / r.prefill_ops_per_token;
  }

  // Each user's next token from a step's logits (one row per chunk, in order).
  auto next_tokens = [&](std::vector<SeqChunk>& batch, const std::vector<float>& lg) {
    for (size_t u = 0; u < batch.size(); ++u) {
      batch[u].tokens = {argmax(lg.data() + u * static_cast<size_t>(c.vocab), c.vocab)};
      batch[u].fresh = false;
    }
  };
  // One run of a decode figure from `batch` (each user's next token): a warm-up step, then
  // o.gen timed steps.
  struct Timed {
    double dt = 0, comm_share = 0, expert_runs = 0;
  };
  auto decode_run = [&](KvCache& cache, std::vector<SeqChunk>& batch) {
    next_tokens(batch, forward(m, cache, batch, pool));  // warm-up step
    expert_layer_runs = 0;
    const double comm0 = ep::comm_stats().seconds;
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < o.gen; ++s) next_tokens(batch, forward(m, cache, batch, pool));
    Timed t;
    t.dt = seconds_since(t0);
    t.comm_share = (ep::comm_stats().seconds - comm0) / t.dt;
    t.expert_runs = expert_layer_runs;
    return t;
  };
  // The figure from the best run; `mean_pos` is each user's mean cache length over the run.
  auto finish_decode = [&](DecodeFigure& f, const Timed& best, double mean_pos) {
    const int b = f.batch;
    f.tokens_per_s = static_cast<double>(b) * o.gen / best.dt;
    f.per_user_tokens_per_s = o.gen / best.dt;
    f.comm_share = best.comm_share;
    f.experts_per_layer = best.expert_runs / (static_cast<double>(o.gen) * c.n_layers);
    // KV read per step: K and V of every cached position of every user, in every layer.
    f.kv_bytes_per_step = 2.0 * b * mean_pos * c.n_layers * row_bytes(o.kv_dtype, int64_t{c.n_kv_heads} * c.head_dim);
    f.bytes_per_step = wb.shared_per_step + f.experts_per_layer * c.n_layers * wb.expert + f.kv_bytes_per_step;
    f.roofline_tokens_per_s = r.read_gbps * 1e9 / f.bytes_per_step * b;
  };

  for (int b : o.batches) {
    say("decode at batch " + std::to_string(b) + " for " + std::to_string(o.gen) + " steps, " +
        std::to_string(o.repeat) + " runs");
    DecodeFigure f;
    f.batch = b;
    Timed best;
    for (int rep = 0; rep < o.repeat; ++rep) {  // each run starts every user afresh
      std::vector<SeqChunk> batch;
      for (int u = 0; u < b; ++u) batch.push_back({u, random_tokens(o.decode_prompt), false, true});
      next_tokens(batch, forward(m, kv, batch, pool));
      const Timed t = decode_run(kv, batch);
      f.runs.push_back(static_cast<double>(b) * o.gen / t.dt);
      if (rep == 0 || t.dt < best.dt) best = t;
    }
    // Timed steps run at positions decode_prompt + 1 .. decode_prompt + gen.
    finish_decode(f, best, o.decode_prompt + 1.5 + o.gen / 2.0);
    r.decode.push_back(f);
  }
  r.kv_bytes = static_cast<double>(kv.bytes_allocated());

  // Long context. Users beyond the first get their cache by copying the first user's prompt
  // (less its last `tail` positions) and then prefilling `tail` random tokens of their own, so
  // their tokens, and the experts those choose, differ as in a real batch. Under MPI the other
  // ranks hold their own copies of the cache, which rank 0 cannot copy: there every user is
  // prefilled in full.
  const bool can_copy = ep::world().size == 1;
  for (int depth : o.depths) {
    DepthFigure d;
    d.depth = depth;
    const int dctx = depth + o.gen + 2;
    KvCache dkv(c.n_layers, c.n_kv_heads * c.head_dim, dctx, o.kv_dtype);
    // The whole context is allocated up front, as the anchors' caches are, so no run pays for
    // growing it.
    dkv.reserve(0, dctx);
    const std::vector<int> prompt = random_tokens(depth);
    auto prefill = [&](int slot, const std::vector<int>& toks, int n) {
      dkv.set_length(slot, 0);
      std::vector<float> lg;
      for (int at = 0; at < n; at += kDepthChunk)
        lg = forward(m, dkv, {{slot, std::vector<int>(toks.begin() + at, toks.begin() + std::min(n, at + kDepthChunk)), false, false}}, pool);
      return lg;
    };
    say("depth " + std::to_string(depth) + ": prefill in chunks of " + std::to_string(kDepthChunk) + ", " +
        std::to_string(o.repeat) + " runs");
    int first = 0;
    for (int rep = 0; rep < o.repeat; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<float> lg = prefill(0, prompt, depth);
      const double tp = seconds_since(t0);
      first = argmax(lg.data(), c.vocab);
      forward(m, dkv, {{0, {first}, false, false}}, pool);
      const double ttft = seconds_since(t0) * 1e3;
      d.prefill_runs.push_back(depth / tp);
      d.prefill_tokens_per_s = std::max(d.prefill_tokens_per_s, depth / tp);
      if (rep == 0 || ttft < d.ttft_ms) d.ttft_ms = ttft;
    }
    d.prefill_ops_per_token = prefill_ops_per_token(depth);
    d.prefill_roofline_tokens_per_s = (wb.expert_quantized ? r.int8_gops : r.bf16_gflops) * 1e9 / d.prefill_ops_per_token;

    const int tail = std::min(32, depth - 1);
    std::vector<int> firsts{first};  // each prepared user's token after its `depth` tokens
    for (int b : o.batches) {
      DecodeFigure f;
      f.batch = b;
      const double need = static_cast<double>(b) * static_cast<double>(dkv.bytes_per_slot(dctx));
      if (need > r.kv_budget_bytes) {
        f.skipped = "the KV cache of " + std::to_string(b) + " users x " + std::to_string(dctx) + " positions needs " +
                    format_bytes(static_cast<uint64_t>(need)) + "; the budget is " +
                    format_bytes(static_cast<uint64_t>(r.kv_budget_bytes)) + " (" + r.kv_budget_source + ")";
        say("depth " + std::to_string(depth) + ": decode at batch " + std::to_string(b) + " skipped: " + f.skipped);
        d.decode.push_back(f);
        continue;
      }
      if (b > static_cast<int>(firsts.size())) {
        const int from = static_cast<int>(firsts.size());
        say("depth " + std::to_string(depth) + ": preparing " + std::to_string(b - from) + " more users' caches");
        for (int u = from; u < b; ++u) {
          if (can_copy) {
            dkv.copy_prefix(0, u, depth - tail, dctx);
          } else {
            dkv.reserve(u, dctx);
            prefill(u, prompt, depth - tail);
          }
        }
        // The tails, as many users per step as fit in one prefill chunk.
        const int per_step = std::max(1, kDepthChunk / tail);
        for (int u0 = from; u0 < b; u0 += per_step) {
          std::vector<SeqChunk> batch;
          for (int u = u0; u < std::min(b, u0 + per_step); ++u) {
            const std::vector<int> t = random_tokens(tail + 1);  // drop the BOS it starts with
            batch.push_back({u, std::vector<int>(t.begin() + 1, t.end()), false, false});
          }
          const std::vector<float> lg = forward(m, dkv, batch, pool);
          for (size_t i = 0; i < batch.size(); ++i) firsts.push_back(argmax(lg.data() + i * static_cast<size_t>(c.vocab), c.vocab));
        }
      }
      say("depth " + std::to_string(depth) + ": decode at batch " + std::to_string(b) + " for " + std::to_string(o.gen) +
          " steps, " + std::to_string(o.repeat) + " runs");
      Timed best;
      for (int rep = 0; rep < o.repeat; ++rep) {  // each run rolls every user back to `depth`
        std::vector<SeqChunk> batch;
        for (int u = 0; u < b; ++u) {
          dkv.set_length(u, depth);
          batch.push_back({u, {firsts[static_cast<size_t>(u)]}, false, false});
        }
        const Timed t = decode_run(dkv, batch);
        f.runs.push_back(static_cast<double>(b) * o.gen / t.dt);
        if (rep == 0 || t.dt < best.dt) best = t;
      }
      finish_decode(f, best, depth + 1.5 + o.gen / 2.0);
      d.decode.push_back(f);
    }
    r.kv_bytes = std::max(r.kv_bytes, static_cast<double>(kv.bytes_allocated() + dkv.bytes_allocated()));
    r.depth.push_back(d);
  }
  r.peak_rss_mb = peak_rss_mb();
  r.ranks = ep::world().size;
  for (const ep::RankStats& rs : ep::gather_rank_stats())
    r.per_rank.push_back({rs.rank, rs.first_expert, rs.n_experts, rs.experts, rs.peak_rss_mb, rs.expert_mb});
  return r;
}

std::string bench_to_json(const BenchResult& r) {
  nlohmann::json j;
  j["threads"] = r.threads;
  j["simd"] = r.simd;
  j["ceilings"] = {{"read_gbps", r.read_gbps}, {"int8_gops", r.int8_gops}, {"bf16_gflops", r.bf16_gflops}};
  j["prefill"] = {{"tokens", r.prefill_tokens},
                  {"tokens_per_s", r.prefill_tokens_per_s},
                  {"roofline_tokens_per_s", r.prefill_roofline_tokens_per_s},
                  {"peak", r.prefill_uses_int8 ? "int8" : "bf16"},
                  {"runs", r.prefill_runs}};
  auto decode_json = [](const DecodeFigure& f) {
    if (!f.skipped.empty()) return nlohmann::json{{"batch", f.batch}, {"skipped", f.skipped}};
    return nlohmann::json{{"batch", f.batch},
                          {"tokens_per_s", f.tokens_per_s},
                          {"per_user_tokens_per_s", f.per_user_tokens_per_s},
                          {"roofline_tokens_per_s", f.roofline_tokens_per_s},
                          {"bytes_per_step", f.bytes_per_step},
                          {"kv_bytes_per_step", f.kv_bytes_per_step},
                          {"experts_per_layer", f.experts_per_layer},
                          {"comm_share", f.comm_share},
                          {"runs", f.runs}};
  };
  j["decode"] = nlohmann::json::array();
  for (const auto& f : r.decode) j["decode"].push_back(decode_json(f));
  j["depth"] = nlohmann::json::array();
  for (const auto& d : r.depth) {
    nlohmann::json dj = {{"depth", d.depth},
                         {"prefill", {{"tokens", d.depth},
                                      {"chunk", kDepthChunk},
                                      {"tokens_per_s", d.prefill_tokens_per_s},
                                      {"roofline_tokens_per_s", d.prefill_roofline_tokens_per_s},
                                      {"peak", r.prefill_uses_int8 ? "int8" : "bf16"},
                                      {"runs", d.prefill_runs}}},
                         {"ttft_ms", d.ttft_ms},
                         {"decode", nlohmann::json::array()}};
    for (const auto& f : d.decode) dj["decode"].push_back(decode_json(f));
    j["depth"].push_back(dj);
  }
  j["kv_budget_mb"] = r.kv_budget_bytes / 1048576.0;
  j["prefill"]["comm_share"] = r.prefill_comm_share;
  j["ranks"] = r.ranks;
  j["per_rank"] = nlohmann::json::array();
  for (const auto& pr : r.per_rank)
    j["per_rank"].push_back({{"rank", pr.rank}, {"peak_rss_mb", pr.peak_rss_mb}, {"expert_mb", pr.expert_mb},
                             {"first_expert", pr.first_expert}, {"n_experts", pr.n_experts},
                             {"experts", pr.experts}});
  j["ttft_ms"] = r.ttft_ms;
  j["peak_rss_mb"] = r.peak_rss_mb;
  j["weight_mb"] = r.weight_bytes / 1048576.0;
  j["kv_mb"] = r.kv_bytes / 1048576.0;
  return j.dump();
}

std::string bench_to_text(const BenchResult& r) {
  std::ostringstream os;
  char buf[256];
  auto pct = [](double a, double b) { return b > 0 ? 100.0 * a / b : 0.0; };
  auto runs = [](const std::vector<double>& v) {
    if (v.size() < 2) return std::string();
    std::string s = " [best of";
    char b[32];
    for (double x : v) {
      std::snprintf(b, sizeof b, " %.1f", x);
      s += b;
    }
    return s + "]";
  };
  std::snprintf(buf, sizeof buf, "threads %d, kernels %s\n", r.threads, r.simd.c_str());
  os << buf;
  std::snprintf(buf, sizeof buf, "ceilings: read %.1f GB/s | int8 %.0f GOPS (%s) | bf16 %.0f GFLOPS (%s)\n",
                r.read_gbps, r.int8_gops, r.int8_kernel.c_str(), r.bf16_gflops, r.bf16_kernel.c_str());
  os << buf;
  std::snprintf(buf, sizeof buf, "prefill %d tokens: %.1f tok/s, roofline %.1f tok/s (%s peak) -> %.0f%%%s\n",
                r.prefill_tokens, r.prefill_tokens_per_s, r.prefill_roofline_tokens_per_s,
                r.prefill_uses_int8 ? "int8" : "bf16", pct(r.prefill_tokens_per_s, r.prefill_roofline_tokens_per_s),
                runs(r.prefill_runs).c_str());
  os << buf;
  std::snprintf(buf, sizeof buf, "time to first token: %.1f ms\n", r.ttft_ms);
  os << buf;
  auto decode_line = [&](const std::string& where, const DecodeFigure& f) {
    if (!f.skipped.empty()) {
      os << where << "decode batch " << f.batch << ": skipped: " << f.skipped << "\n";
      return;
    }
    std::snprintf(buf, sizeof buf,
                  "decode batch %2d: %.1f tok/s total, %.2f tok/s per user, roofline %.1f tok/s -> %.0f%%"
                  " (%.2f experts/layer, %.0f MB/step of which KV %.0f MB)%s\n",
                  f.batch, f.tokens_per_s, f.per_user_tokens_per_s, f.roofline_tokens_per_s,
                  pct(f.tokens_per_s, f.roofline_tokens_per_s), f.experts_per_layer, f.bytes_per_step / 1e6,
                  f.kv_bytes_per_step / 1e6, runs(f.runs).c_str());
    os << where << buf;
  };
  for (const auto& f : r.decode) decode_line("", f);
  for (const auto& d : r.depth) {
    const std::string where = "depth " + std::to_string(d.depth) + ": ";
    std::snprintf(buf, sizeof buf, "prefill %d tokens (chunks of %d): %.1f tok/s, roofline %.1f tok/s (%s peak) -> %.0f%%%s\n",
                  d.depth, kDepthChunk, d.prefill_tokens_per_s, d.prefill_roofline_tokens_per_s,
                  r.prefill_uses_int8 ? "int8" : "bf16", pct(d.prefill_tokens_per_s, d.prefill_roofline_tokens_per_s),
                  runs(d.prefill_runs).c_str());
    os << where << buf;
    std::snprintf(buf, sizeof buf, "time to first token: %.1f ms\n", d.ttft_ms);
    os << where << buf;
    for (const auto& f : d.decode) decode_line(where, f);
  }
  if (r.ranks > 1) {
    std::snprintf(buf, sizeof buf, "MPI: %d ranks; expert exchange share of step time: prefill %.1f%%", r.ranks,
                  100 * r.prefill_comm_share);
    os << buf;
    for (const auto& f : r.decode) {
      std::snprintf(buf, sizeof buf, ", batch %d %.1f%%", f.batch, 100 * f.comm_share);
      os << buf;
    }
    os << "\n";
    for (const auto& pr : r.per_rank) {
      std::snprintf(buf, sizeof buf, "  rank %d: experts %s, expert weights %.0f MB, peak RSS %.0f MB\n", pr.rank,
                    pr.experts.c_str(), pr.expert_mb, pr.peak_rss_mb);
      os << buf;
    }
  }
  const double budget = 1.05 * r.weight_bytes / 1048576.0 + r.kv_bytes / 1048576.0 + 300;
  std::snprintf(buf, sizeof buf, "peak RSS %.0f MB (weights %.0f MB, KV %.0f MB; budget 1.05*weights+KV+300 = %.0f MB) -> %s\n",
                r.peak_rss_mb, r.weight_bytes / 1048576.0, r.kv_bytes / 1048576.0, budget,
                r.peak_rss_mb <= budget ? "within" : "OVER");
  os << buf;
  return os.str();
}

}  // namespace mx
