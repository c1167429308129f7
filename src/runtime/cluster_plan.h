// `mixtral bench --plan`: predicted decode speed of Mixtral-8x7B spread over N hosts (expert
// parallelism, docs/distributed.md), from each host's read bandwidth and int8 peak, the link's
// bandwidth and latency, and the bytes the per-layer expert exchange moves. No model is opened:
// the shape is Mixtral-8x7B's (layers overridable, e.g. 2 for the bench model).
#pragma once
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

// The model's shape (defaults: Mixtral-8x7B).
struct PlanShape {
  int layers = 32, dim = 4096, ffn = 14336, experts = 8, top_k = 2;
  int heads = 32, kv_heads = 8, vocab = 32000;
};

struct PlanInput {
  PlanShape shape;
  std::string cache = "q8";  // q8 (q8_0r16) or q4 (q4_0r16, LM head and wk/wv q8_0r16), as repack writes
  int hosts = 1;             // 1..8, or a multiple of 8 (each expert split over hosts/8 hosts)
  int batch = 1;             // users decoding together, one token each per step
  double read_gbps = 0;      // each host's memory read bandwidth, GB/s (bench's read ceiling)
  double int8_gops = 0;      // each host's int8 multiply-add peak, GOPS (bench's int8 ceiling)
  double link_gbit = 10;     // each host's link, Gbit/s, each direction
  double link_us = 50;       // one-way latency of a message between two hosts, µs
  double msg_us = 10;        // software cost of one message (MPI + TCP) on the host, µs
  int context = 512;         // cached positions per user (KV cache read per step and held)
  int trials = 4096;         // routing draws for the expected per-host load (fixed seed)
  // The hosts share one machine (namespace hosts, tests/cluster/cluster.sh) whose ceilings
  // are read_gbps / int8_gops: every host's bytes and ops add up against them instead of the
  // slowest host setting the pace. Used to check the model against shaped-link runs here.
  bool colocated = false;
};

struct PlanFigure {
  PlanInput in;
  // Bytes (per host unless said otherwise).
  double attn_bytes_layer = 0;   // wq wk wv wo + router: read every layer by every host
  double expert_bytes_layer = 0; // one whole expert of one layer (w1 w3 w2)
  double head_bytes = 0;         // LM head, read once per step by rank 0 only
  double embed_bytes = 0;        // token embeddings: held, one row read per token
  double kv_bytes_step = 0;      // KV cache read per step (all users, all layers)
  double ram_bytes = 0;          // weights held by the busiest host + its KV cache
  double expert_share = 0;       // experts' worth held per host and layer (8/N; N>8: the largest part of one)
  // Routing (uniform, independent top-k per token): expectations over the draws.
  double experts_touched = 0;    // distinct experts run per layer, all hosts
  double host_experts = 0;       // experts' worth read per layer by the slowest host
  double host_pairs = 0;         // (token, expert) rows computed per layer by the slowest host
  double rows_exchanged = 0;     // whole expert output rows moved per layer (N>8: sent in pieces)
  double egress_bytes = 0;       // bytes the busiest host sends per layer
  // Time per decode step, ms.
  double attention_ms = 0, experts_ms = 0, exchange_ms = 0, head_ms = 0, step_ms = 0;
  double tokens_per_s = 0;       // aggregate (batch / step)
};

// The prediction for one configuration; throws mx::Error naming the option for bad input.
PlanFigure predict_cluster(const PlanInput& in);

// Bytes of one row of `cols` weights in the cache type `cache` uses for tensor `what`
// ("expert", "wq", "wk", "wv", "wo", "head", "embed").
double plan_row_bytes(const std::string& cache, const std::string& what, int cols);

// One line per figure, with the assumptions above the table.
std::string plan_to_text(const std::vector<PlanFigure>& figs);
std::string plan_to_json(const std::vector<PlanFigure>& figs);

}  // namespace mx
