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

  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
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
    // Multiply-adds per prompt token: attention projections and router, top-k experts, and the
    // attention scores/values over on average half the prompt. The LM head runs once.
    const double attn_scores = 2.0 * c.n_heads * c.head_dim * (o.prompt / 2.0) * c.n_layers;
    r.prefill_ops_per_token = 2.0 * (wb.attn_params + c.top_k * c.n_layers * wb.expert_params / 1.0 + attn_scores);
    r.prefill_uses_int8 = wb.expert_quantized;
    const double peak = (wb.expert_quantized ? r.int8_gops : r.bf16_gflops) * 1e9;
    r.prefill_roofline_tokens_per_s = peak / r.prefill_ops_per_token;
  }

  for (int b : o.batches) {
    say("decode at batch " + std::to_string(b) + " for " + std::to_string(o.gen) + " steps, " +
        std::to_string(o.repeat) + " runs");
    DecodeFigure f;
    double best_dt = 0, best_comm = 0, best_runs = 0;
    for (int rep = 0; rep < o.repeat; ++rep) {  // each run starts every user afresh
      std::vector<SeqChunk> batch;
      for (int u = 0; u < b; ++u) batch.push_back({u, random_tokens(o.decode_prompt), false, true});
      std::vector<float> lg = forward(m, kv, batch, pool);
      auto next_batch = [&] {
        for (int u = 0; u < b; ++u) {
          batch[static_cast<size_t>(u)].tokens = {argmax(lg.data() + static_cast<size_t>(u) * c.vocab, c.vocab)};
          batch[static_cast<size_t>(u)].fresh = false;
        }
      };
      next_batch();
      lg = forward(m, kv, batch, pool);  // warm-up step
      next_batch();
      expert_layer_runs = 0;
      const double comm0 = ep::comm_stats().seconds;
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < o.gen; ++s) {
        lg = forward(m, kv, batch, pool);
        next_batch();
      }
      const double dt = seconds_since(t0);
      f.runs.push_back(static_cast<double>(b) * o.gen / dt);
      if (rep == 0 || dt < best_dt) {
        best_dt = dt;
        best_comm = (ep::comm_stats().seconds - comm0) / dt;
        best_runs = expert_layer_runs;
      }
    }
    const double dt = best_dt;
    f.batch = b;
    f.tokens_per_s = static_cast<double>(b) * o.gen / dt;
    f.per_user_tokens_per_s = o.gen / dt;
    f.comm_share = best_comm;
    f.experts_per_layer = best_runs / (static_cast<double>(o.gen) * c.n_layers);
    // KV read per step: each user's cache up to its mean position during the run.
    const double mean_pos = o.decode_prompt + 1.5 + o.gen / 2.0;
    const double kv_bytes = 2.0 * b * mean_pos * c.n_layers * row_bytes(o.kv_dtype, int64_t{c.n_kv_heads} * c.head_dim);
    f.bytes_per_step = wb.shared_per_step + f.experts_per_layer * c.n_layers * wb.expert + kv_bytes;
    f.roofline_tokens_per_s = r.read_gbps * 1e9 / f.bytes_per_step * b;
    r.decode.push_back(f);
  }
  (void)max_batch;
  r.kv_bytes = static_cast<double>(kv.bytes_allocated());
  r.peak_rss_mb = peak_rss_mb();
  r.ranks = ep::world().size;
  for (const ep::RankStats& rs : ep::gather_rank_stats())
    r.per_rank.push_back({rs.rank, rs.first_expert, rs.n_experts, rs.peak_rss_mb, rs.expert_mb});
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
  j["decode"] = nlohmann::json::array();
  for (const auto& f : r.decode)
    j["decode"].push_back({{"batch", f.batch},
                           {"tokens_per_s", f.tokens_per_s},
                           {"per_user_tokens_per_s", f.per_user_tokens_per_s},
                           {"roofline_tokens_per_s", f.roofline_tokens_per_s},
                           {"bytes_per_step", f.bytes_per_step},
                           {"experts_per_layer", f.experts_per_layer},
                           {"comm_share", f.comm_share},
                           {"runs", f.runs}});
  j["prefill"]["comm_share"] = r.prefill_comm_share;
  j["ranks"] = r.ranks;
  j["per_rank"] = nlohmann::json::array();
  for (const auto& pr : r.per_rank)
    j["per_rank"].push_back({{"rank", pr.rank}, {"peak_rss_mb", pr.peak_rss_mb}, {"expert_mb", pr.expert_mb},
                             {"first_expert", pr.first_expert}, {"n_experts", pr.n_experts}});
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
  for (const auto& f : r.decode) {
    std::snprintf(buf, sizeof buf,
                  "decode batch %2d: %.1f tok/s total, %.2f tok/s per user, roofline %.1f tok/s -> %.0f%%"
                  " (%.2f experts/layer, %.0f MB/step)%s\n",
                  f.batch, f.tokens_per_s, f.per_user_tokens_per_s, f.roofline_tokens_per_s,
                  pct(f.tokens_per_s, f.roofline_tokens_per_s), f.experts_per_layer, f.bytes_per_step / 1e6,
                  runs(f.runs).c_str());
    os << buf;
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
      std::snprintf(buf, sizeof buf, "  rank %d: experts [%d, %d), expert weights %.0f MB, peak RSS %.0f MB\n", pr.rank,
                    pr.first_expert, pr.first_expert + pr.n_experts, pr.expert_mb, pr.peak_rss_mb);
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
