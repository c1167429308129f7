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
};

struct DecodeFigure {
  int batch = 0;
  double tokens_per_s = 0, per_user_tokens_per_s = 0, roofline_tokens_per_s = 0;
  double bytes_per_step = 0, experts_per_layer = 0;
  double comm_share = 0;  // share of step time inside the MPI expert exchange (rank 0)
  std::vector<double> runs;  // aggregate tokens/s of every run (tokens_per_s is the best)
};

struct RankFigure {
  int rank = 0, first_expert = 0, n_experts = 0;
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
  double weight_bytes = 0, kv_bytes = 0;  // this process's mapped weights; KV allocated at the end
};

// Ceilings first, then prefill/TTFT, then each batch size. progress() gets a line per phase.
BenchResult run_bench(Model& m, ThreadPool& pool, const BenchOptions& o,
                      const std::function<void(const std::string&)>& progress = {});
std::string bench_to_json(const BenchResult& r);
std::string bench_to_text(const BenchResult& r);
double peak_rss_mb();

}  // namespace mx
