#include "runtime/cluster_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "formats/error.h"
#include "formats/expert_split.h"

namespace mx {

namespace {

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

void check(const PlanInput& in) {
  const PlanShape& s = in.shape;
  if (in.cache != "q8" && in.cache != "q4") fail("--plan-cache: must be q8 or q4, not '" + in.cache + "'");
  if (s.layers < 1 || s.layers > 1024) fail("--layers: must be in [1, 1024], not " + std::to_string(s.layers));
  if (s.experts < 1 || s.top_k < 1 || s.top_k > s.experts)
    fail("plan shape: top_k " + std::to_string(s.top_k) + " of " + std::to_string(s.experts) + " experts is not possible");
  if (s.dim % 32 != 0 || s.ffn % 32 != 0 || s.dim < 32 || s.ffn < 32)
    fail("plan shape: dim and ffn must be positive multiples of 32 (quant blocks)");
  // Past one host per expert, experts are split in 16-row groups of the hidden size (and of
  // dim for w2's rows), as the runtime splits them (formats/expert_split.h).
  const int most = s.experts * static_cast<int>(std::min(s.ffn, s.dim) / kSplitRows);
  if (in.hosts < 1 || in.hosts > most)
    fail("--hosts: " + std::to_string(in.hosts) + " is not possible: give 1 to " + std::to_string(most) +
         " hosts (up to " + std::to_string(s.experts) + " hold whole experts; more split each expert's rows in " +
         std::to_string(kSplitRows) + "-row groups)");
  if (in.batch < 1 || in.batch > 4096) fail("--batch: sizes must be in [1, 4096], not " + std::to_string(in.batch));
  if (!(in.read_gbps > 0) || !std::isfinite(in.read_gbps))
    fail("--read-gbps: a host's read bandwidth must be > 0 GB/s, not " + num(in.read_gbps));
  if (!(in.int8_gops > 0) || !std::isfinite(in.int8_gops))
    fail("--int8-gops: a host's int8 peak must be > 0 GOPS, not " + num(in.int8_gops));
  if (!(in.link_gbit > 0) || !std::isfinite(in.link_gbit))
    fail("--link-gbit: the link's bandwidth must be > 0 Gbit/s, not " + num(in.link_gbit));
  if (!(in.link_us >= 0) || !std::isfinite(in.link_us)) fail("--link-us: latency must be >= 0 µs, not " + num(in.link_us));
  if (!(in.msg_us >= 0) || !std::isfinite(in.msg_us)) fail("--msg-us: must be >= 0 µs, not " + num(in.msg_us));
  if (in.context < 0 || in.context > 1 << 20) fail("--context: must be in [0, 1048576], not " + std::to_string(in.context));
  if (in.trials < 1) fail("plan: trials must be >= 1");
}

}  // namespace

double plan_row_bytes(const std::string& cache, const std::string& what, int cols) {
  // What `repack --dtype q8|q4` writes: q4 keeps the LM head and wk/wv 8-bit; routers stay f32.
  if (what == "gate") return 4.0 * cols;
  const bool eight = cache == "q8" || what == "head" || what == "wk" || what == "wv";
  return static_cast<double>(row_bytes(eight ? DType::Q8_0R16 : DType::Q4_0R16, cols));
}

PlanFigure predict_cluster(const PlanInput& in) {
  check(in);
  const PlanShape& s = in.shape;
  PlanFigure f;
  f.in = in;
  const int hd = s.dim / s.heads, kv_dim = s.kv_heads * hd, q_dim = s.heads * hd;
  const std::string& c = in.cache;
  f.attn_bytes_layer = q_dim * plan_row_bytes(c, "wq", s.dim) + kv_dim * plan_row_bytes(c, "wk", s.dim) +
                       kv_dim * plan_row_bytes(c, "wv", s.dim) + s.dim * plan_row_bytes(c, "wo", q_dim) +
                       s.experts * plan_row_bytes(c, "gate", s.dim);
  f.expert_bytes_layer = 2.0 * s.ffn * plan_row_bytes(c, "expert", s.dim) + s.dim * plan_row_bytes(c, "expert", s.ffn);
  f.head_bytes = s.vocab * plan_row_bytes(c, "head", s.dim);
  f.embed_bytes = s.vocab * plan_row_bytes(c, "embed", s.dim);
  // f16 K and V of every cached position of every user, in every layer.
  const double kv_per_token = 2.0 * s.layers * kv_dim * 2.0;
  f.kv_bytes_step = kv_per_token * in.batch * in.context;

  const double bw = in.read_gbps * 1e9, peak = in.int8_gops * 1e9, link = in.link_gbit * 1e9 / 8;
  const double attn_ops = 2.0 * (2.0 * s.dim * q_dim + 2.0 * s.dim * kv_dim + s.dim * s.experts);
  const double expert_ops = 2.0 * 3.0 * s.dim * s.ffn;  // per (token, expert) pair
  const double row = 4.0 * s.dim;                       // one f32 expert output row
  const double hid_row = 4.0 * s.ffn;                   // one f32 hidden row (split experts)
  const int n = in.hosts;
  const bool split = n > s.experts;

  // Host h's experts: the default contiguous blocks (first E mod N hosts hold one more), or
  // with N > E the runtime's split: host h holds part h / E of expert h mod E, i.e. its share
  // of the hidden rows (w1/w3) and of the output rows (w2), and it swaps hidden rows with the
  // expert's other hosts before w2 (runtime/expert_parallel.cc, run_split_expert).
  std::vector<int> first(n), count(n), parts(n, 1);
  std::vector<double> hid(n, 1.0), out(n, 1.0);  // fractions of the hidden / output rows held
  for (int h = 0, e = 0; h < n; ++h) {
    if (split) {
      first[h] = h % s.experts;
      count[h] = 1;
      parts[h] = (n - first[h] + s.experts - 1) / s.experts;
      const RowSlice hs = expert_rows(s.ffn, parts[h], h / s.experts, "plan: ffn");
      const RowSlice os = expert_rows(s.dim, parts[h], h / s.experts, "plan: dim");
      hid[h] = static_cast<double>(hs.hi - hs.lo) / s.ffn;
      out[h] = static_cast<double>(os.hi - os.lo) / s.dim;
    } else {
      count[h] = s.experts / n + (h < s.experts % n ? 1 : 0);
      first[h] = e;
      e += count[h];
    }
  }
  // w1/w3 follow the hidden share, w2 the output share.
  const double w13_frac = 2.0 * s.ffn * plan_row_bytes(in.cache, "expert", s.dim) / f.expert_bytes_layer;
  std::vector<double> slice(n);
  for (int h = 0; h < n; ++h) slice[h] = w13_frac * hid[h] + (1 - w13_frac) * out[h];
  f.expert_share = split ? *std::max_element(slice.begin(), slice.end()) : count[0];

  // Expected load of the slowest host per layer: uniform routing, each token picking top_k
  // distinct experts independently (fixed seed: the figure is the same on every run).
  std::mt19937_64 rng(20261203);
  std::vector<int> pick(s.experts), cnt(s.experts);
  double sum_max_s = 0, sum_touched = 0, sum_host_experts = 0, sum_host_pairs = 0, sum_rows = 0, sum_link = 0;
  for (int t = 0; t < in.trials; ++t) {
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int b = 0; b < in.batch; ++b) {
      for (int e = 0; e < s.experts; ++e) pick[e] = e;
      for (int j = 0; j < s.top_k; ++j) {  // a partial Fisher-Yates shuffle: k distinct experts
        const int r = j + static_cast<int>(rng() % static_cast<uint64_t>(s.experts - j));
        std::swap(pick[j], pick[r]);
        ++cnt[pick[j]];
      }
    }
    int rows_total = 0;  // whole output rows (a split expert's pieces add up to whole rows)
    for (int e = 0; e < s.experts; ++e) {
      sum_touched += cnt[e] > 0;
      rows_total += cnt[e];
    }
    double worst = -1, worst_experts = 0, worst_pairs = 0, link_bytes = 0, all_secs = 0;
    for (int h = 0; h < n; ++h) {
      double touched = 0, pairs = 0;
      for (int e = first[h]; e < first[h] + count[h]; ++e) {
        touched += cnt[e] > 0 ? slice[h] : 0;
        pairs += cnt[e];
      }
      const double secs = touched * f.expert_bytes_layer / bw + pairs * slice[h] * expert_ops / peak;
      all_secs += secs;
      if (secs > worst) worst = secs, worst_experts = touched, worst_pairs = pairs;
      // Every host sends its rows (its columns of them, when split) to each other host and
      // receives the rest of every row; a split host also sends its hidden rows of each pair to
      // the expert's other hosts and receives theirs.
      const double hid_out = pairs * hid_row * hid[h] * (parts[h] - 1);
      const double hid_in = pairs * hid_row * (1 - hid[h]);
      link_bytes = std::max({link_bytes, pairs * out[h] * (n - 1) * row + hid_out,
                             (rows_total - pairs * out[h]) * row + hid_in});
    }
    sum_max_s += in.colocated ? all_secs : worst;
    sum_host_experts += worst_experts;
    sum_host_pairs += worst_pairs;
    sum_rows += rows_total;
    sum_link += link_bytes;
  }
  const double trials = in.trials;
  f.experts_touched = sum_touched / trials;
  f.host_experts = sum_host_experts / trials;
  f.host_pairs = sum_host_pairs / trials;
  f.rows_exchanged = n > 1 ? sum_rows / trials : 0;
  f.egress_bytes = n > 1 ? sum_link / trials : 0;

  const int L = s.layers;
  // Every host runs attention over the whole batch; on one machine those copies add up.
  f.attention_ms = (in.colocated ? n : 1) *
                   (L * (f.attn_bytes_layer / bw + attn_ops * in.batch / peak) * 1e3 + f.kv_bytes_step / bw * 1e3);
  f.experts_ms = L * sum_max_s / trials * 1e3;
  // Per layer: one latency (all messages travel at once), each peer's message handled in turn,
  // and the busiest host's bytes through its link. Plus rank 0's STEP message once per step.
  // Split experts add a round per layer: the hidden-row swap within each expert's hosts.
  const double split_round = split ? in.link_us + (parts[0] - 1) * in.msg_us : 0;
  if (n > 1)
    f.exchange_ms = (L * (in.link_us + (n - 1) * in.msg_us + split_round + f.egress_bytes / link * 1e6) +
                     (in.link_us + (n - 1) * in.msg_us)) * 1e-3;
  f.head_ms = (f.head_bytes / bw + 2.0 * s.vocab * s.dim * in.batch / peak) * 1e3;
  f.step_ms = f.attention_ms + f.experts_ms + f.exchange_ms + f.head_ms;
  f.tokens_per_s = in.batch / f.step_ms * 1e3;
  // Host 0 holds the most (the first hosts take the odd experts) and the tokenizer-side weights.
  f.ram_bytes = f.embed_bytes + f.head_bytes + L * f.attn_bytes_layer + L * f.expert_share * f.expert_bytes_layer +
                kv_per_token * in.batch * in.context;
  return f;
}

std::string plan_to_text(const std::vector<PlanFigure>& figs) {
  std::ostringstream os;
  if (figs.empty()) return "";
  const PlanInput& in = figs[0].in;
  const PlanShape& s = in.shape;
  char b[512];
  std::snprintf(b, sizeof b,
                "cluster plan: Mixtral %d layers, dim %d, ffn %d, %d experts top-%d, %d/%d heads, vocab %d\n"
                "per host: read %.1f GB/s, int8 %.0f GOPS; link %.3g Gbit/s, %.0f us one way, %.0f us per message; "
                "context %d positions per user%s\n",
                s.layers, s.dim, s.ffn, s.experts, s.top_k, s.heads, s.kv_heads, s.vocab, in.read_gbps, in.int8_gops,
                in.link_gbit, in.link_us, in.msg_us, in.context,
                in.colocated ? "; colocated: all hosts share one machine with these ceilings" : "");
  os << b;
  os << "assumes: routing uniform and independent per token; a step = every layer's attention (all hosts) +\n"
        "  the slowest host's experts + the row exchange, then rank 0's LM head; each part takes bytes/bandwidth\n"
        "  + int8 ops/peak (no overlap); more hosts than experts split each expert's rows as the runtime does\n"
        "  (host h: part h/E of expert h mod E; its hidden rows are swapped within the expert before w2)\n";
  os << "cache hosts  RAM/host  batch  experts/layer  slowest host  exchange/layer   attn    experts  exchange  head   step      tok/s\n";
  os << "                                   (all)      (experts)     (busiest host)  ms      ms       ms        ms     ms\n";
  for (const PlanFigure& f : figs) {
    std::snprintf(b, sizeof b, "%-5s %5d  %6.1f GB %5d  %13.2f  %12.2f  %9.0f KB  %7.1f %8.1f %8.2f %6.1f %7.1f %10.1f\n",
                  f.in.cache.c_str(), f.in.hosts, f.ram_bytes / 1e9, f.in.batch, f.experts_touched, f.host_experts,
                  f.egress_bytes / 1024.0, f.attention_ms, f.experts_ms, f.exchange_ms, f.head_ms, f.step_ms,
                  f.tokens_per_s);
    os << b;
  }
  return os.str();
}

std::string plan_to_json(const std::vector<PlanFigure>& figs) {
  nlohmann::json j = nlohmann::json::array();
  for (const PlanFigure& f : figs)
    j.push_back({{"cache", f.in.cache}, {"hosts", f.in.hosts}, {"batch", f.in.batch}, {"layers", f.in.shape.layers},
                 {"read_gbps", f.in.read_gbps}, {"int8_gops", f.in.int8_gops}, {"link_gbit", f.in.link_gbit},
                 {"link_us", f.in.link_us}, {"msg_us", f.in.msg_us}, {"context", f.in.context}, {"colocated", f.in.colocated},
                 {"ram_gb", f.ram_bytes / 1e9}, {"experts_touched", f.experts_touched},
                 {"host_experts", f.host_experts}, {"host_pairs", f.host_pairs},
                 {"rows_exchanged", f.rows_exchanged}, {"link_bytes_per_layer", f.egress_bytes},
                 {"attention_ms", f.attention_ms}, {"experts_ms", f.experts_ms}, {"exchange_ms", f.exchange_ms},
                 {"head_ms", f.head_ms}, {"step_ms", f.step_ms}, {"tokens_per_s", f.tokens_per_s}});
  return j.dump();
}

}  // namespace mx
