// `mixtral bench`: prefill and decode speed next to the ceilings measured in the same run.
// Rooflines: decode = read bandwidth ÷ bytes read per step (shared weights once, each expert
// once however many tokens chose it, plus the KV cache); prefill = peak multiply-add rate ÷
// operations per token.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

class ThreadPool;
struct Model;

struct BenchOptions {
  int prompt = 512;
  int gen = 128;
  std::vector<int> batches = {1, 8, 32};
  int decode_prompt = 32;  // prompt tokens each decode user starts from
  // Each figure is the best of this many runs, as each ceiling is the best of its probe's runs:
  // on a shared (virtual) machine single runs of either vary by tens of percent.
  int repeat = 3;
  DType kv_dtype = DType::F16;
  // Long context (--depth): for each N, the prefill of an N-token prompt and decode at each
  // batch size with N tokens already in every user's cache.
  std::vector<int> depths;
  // Bytes the KV cache of one depth's decode may take; 0: 80% of MemAvailable less the weights.
  // A batch whose cache does not fit is reported as skipped, with the numbers.
  double kv_budget_bytes = 0;
};

struct DecodeFigure {
  int batch = 0;
  double tokens_per_s = 0, per_user_tokens_per_s = 0, roofline_tokens_per_s = 0;
  double bytes_per_step = 0, experts_per_layer = 0;
  double comm_share = 0;  // share of step time inside the MPI expert exchange (rank 0)
  double kv_bytes_per_step = 0;  // the part of bytes_per_step that is the KV cache
  std::vector<double> runs;  // aggregate tokens/s of every run (tokens_per_s is the best)
  std::string skipped;       // why it was not measured (depth figures only); empty if it was
};

// The figures at one context depth: prefill of `depth` tokens (in chunks of kDepthChunk, as
// a server would), time to its first token, and decode from `depth` cached tokens.
struct DepthFigure {
  int depth = 0;
  double prefill_tokens_per_s = 0, prefill_roofline_tokens_per_s = 0, prefill_ops_per_token = 0;
  double ttft_ms = 0;
  std::vector<double> prefill_runs;
  std::vector<DecodeFigure> decode;
};

struct RankFigure {
  int rank = 0, first_expert = 0, n_experts = 0;
  std::string experts;  // "0-3", "0-4 7", "1 rows 64-127" (ep::RankStats::experts)
  double peak_rss_mb = 0, expert_mb = 0;
};

struct BenchResult {
  int threads = 0;
  double read_gbps = 0, int8_gops = 0, bf16_gflops = 0;
  std::string int8_kernel, bf16_kernel, simd;
  int prefill_tokens = 0;
  double prefill_tokens_per_s = 0, prefill_roofline_tokens_per_s = 0, prefill_ops_per_token = 0;
  bool prefill_uses_int8 = false;
  std::vector<double> prefill_runs;  // tokens/s of every run (prefill_tokens_per_s is the best)
  std::vector<DecodeFigure> decode;
  double prefill_comm_share = 0;
  double ttft_ms = 0, peak_rss_mb = 0;
  int ranks = 1;
  std::vector<RankFigure> per_rank;  // under MPI: every rank's memory and experts
  std::vector<DepthFigure> depth;
  double kv_budget_bytes = 0;    // what a depth's KV cache may take (BenchOptions::kv_budget_bytes)
  std::string kv_budget_source;  // where that figure came from
  double weight_bytes = 0, kv_bytes = 0;  // this process's mapped weights; most KV allocated at once
};

// Prompt tokens per forward step when prefilling a long context (the scheduler's default
// prefill chunk, and the anchors' default micro-batch).
constexpr int kDepthChunk = 512;

// Ceilings first, then prefill/TTFT, then each batch size, then each depth. progress() gets a line per phase.
BenchResult run_bench(Model& m, ThreadPool& pool, const BenchOptions& o,
                      const std::function<void(const std::string&)>& progress = {});
std::string bench_to_json(const BenchResult& r);
std::string bench_to_text(const BenchResult& r);
double peak_rss_mb();

}  // namespace mx
