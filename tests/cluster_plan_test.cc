// The cluster model of `mixtral bench --plan` (runtime/cluster_plan.h): bytes against hand
// arithmetic, the exchange time for a routing with no randomness, monotonicity, bad input.
#include <gtest/gtest.h>

#include <string>

#include "runtime/cluster_plan.h"

using mx::PlanFigure;
using mx::PlanInput;
using mx::predict_cluster;

namespace {

PlanInput base() {
  PlanInput in;
  in.read_gbps = 40;
  in.int8_gops = 1500;
  return in;
}

std::string error_of(const PlanInput& in) {
  try {
    predict_cluster(in);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(ClusterPlan, BytesMatchTheRepackedCache) {
  const PlanFigure q8 = predict_cluster(base());
  // q8_0r16: 34 bytes per 32 weights. One expert of one layer: w1, w3 (14336 x 4096), w2 (4096 x 14336).
  EXPECT_DOUBLE_EQ(q8.expert_bytes_layer, 3.0 * 14336 * 4096 / 32 * 34);  // 187.2 MB (expert-*.bin / layers)
  // wq, wo 4096 x 4096; wk, wv 1024 x 4096; the f32 router 8 x 4096.
  EXPECT_DOUBLE_EQ(q8.attn_bytes_layer, (2.0 * 4096 + 2 * 1024) * 4096 / 32 * 34 + 8 * 4096 * 4);
  EXPECT_DOUBLE_EQ(q8.head_bytes, 32000.0 * 4096 / 32 * 34);
  PlanInput in = base();
  in.cache = "q4";  // q4_0r16: 18 bytes per 32, but the LM head and wk/wv stay q8_0r16
  const PlanFigure q4 = predict_cluster(in);
  EXPECT_DOUBLE_EQ(q4.expert_bytes_layer, 3.0 * 14336 * 4096 / 32 * 18);
  EXPECT_DOUBLE_EQ(q4.attn_bytes_layer, 2.0 * 4096 * 4096 / 32 * 18 + 2.0 * 1024 * 4096 / 32 * 34 + 8 * 4096 * 4);
  EXPECT_DOUBLE_EQ(q4.head_bytes, q8.head_bytes);
  // One host holds everything: ~49.7 GB of q8 weights plus its KV cache.
  const double kv = 2.0 * 32 * 1024 * 2 * 512;
  EXPECT_DOUBLE_EQ(q8.ram_bytes, 2 * q8.head_bytes + 32 * (q8.attn_bytes_layer + 8 * q8.expert_bytes_layer) + kv);
}

TEST(ClusterPlan, ExchangeTimeMatchesHandArithmetic) {
  // Every token picks all 8 experts: no randomness. 2 hosts hold 4 experts each, so each sends
  // its 4 rows of 4096 f32 (64 KiB) to the other and receives 4: per layer 50 us latency,
  // 1 message x 10 us, 65536 B at 1 Gbit/s (125e6 B/s) = 524.288 us; twice (2 layers), plus the
  // step message (60 us).
  PlanInput in = base();
  in.shape.top_k = 8;
  in.shape.layers = 2;
  in.hosts = 2;
  in.link_gbit = 1;
  in.link_us = 50;
  in.msg_us = 10;
  const PlanFigure f = predict_cluster(in);
  EXPECT_DOUBLE_EQ(f.egress_bytes, 65536);
  EXPECT_DOUBLE_EQ(f.rows_exchanged, 8);
  EXPECT_NEAR(f.exchange_ms, (2 * (50 + 10 + 524.288) + 60) * 1e-3, 1e-12);
  EXPECT_DOUBLE_EQ(f.host_experts, 4);
  in.hosts = 1;
  EXPECT_EQ(predict_cluster(in).exchange_ms, 0);  // one host exchanges nothing
}

TEST(ClusterPlan, Batch1RoutingExpectations) {
  // Top-2 of 8 at batch 1: both experts on the same host of N (8/N experts each) with
  // probability (8/N - 1)/7, so the slowest host reads 1 + (8/N - 1)/7 experts.
  for (int n : {1, 2, 4, 8}) {
    PlanInput in = base();
    in.hosts = n;
    const PlanFigure f = predict_cluster(in);
    EXPECT_DOUBLE_EQ(f.experts_touched, 2.0);
    EXPECT_NEAR(f.host_experts, 1 + (8.0 / n - 1) / 7, 0.03) << n << " hosts";
  }
  // At batch 32 nearly every expert runs: 8 (1 - 0.75^32) = 7.9992.
  PlanInput in = base();
  in.batch = 32;
  EXPECT_NEAR(predict_cluster(in).experts_touched, 8 * (1 - 1.0042e-4), 0.01);
  // 16 hosts: each holds half of one expert's hidden rows.
  in.hosts = 16;
  in.batch = 1;
  const PlanFigure f16 = predict_cluster(in);
  EXPECT_DOUBLE_EQ(f16.expert_share, 0.5);
  EXPECT_DOUBLE_EQ(f16.host_experts, 0.5);
  EXPECT_DOUBLE_EQ(f16.rows_exchanged, 2);  // 2 pairs, each sent as 2 half rows
}

TEST(ClusterPlan, SplitExpertsExchangeAsTheRuntimeDoes) {
  // 16 hosts, every token picks all 8 experts (no randomness), batch 1: host h holds half of
  // expert h mod 8's hidden rows (7168) and output rows (2048). Per layer it sends its 2048
  // output floats to 15 hosts (122880 B) and its 7168 hidden floats to its expert's other host
  // (28672 B): 151552 B, and receives as much. Latency: the row exchange (50 + 15 x 10 us) and
  // the hidden swap (50 + 1 x 10 us); 151552 B at 1 Gbit/s = 1212.416 us; 2 layers + the
  // step message (50 + 15 x 10 us).
  PlanInput in = base();
  in.shape.top_k = 8;
  in.shape.layers = 2;
  in.hosts = 16;
  in.link_gbit = 1;
  in.link_us = 50;
  in.msg_us = 10;
  const PlanFigure f = predict_cluster(in);
  EXPECT_DOUBLE_EQ(f.egress_bytes, 151552);
  EXPECT_DOUBLE_EQ(f.rows_exchanged, 8);
  EXPECT_NEAR(f.exchange_ms, (2 * (200 + 60 + 1212.416) + 200) * 1e-3, 1e-12);
  EXPECT_DOUBLE_EQ(f.expert_share, 0.5);
  // 12 hosts: experts 0-3 in halves, 4-7 whole; the slowest hosts hold whole experts.
  in.hosts = 12;
  const PlanFigure f12 = predict_cluster(in);
  EXPECT_DOUBLE_EQ(f12.host_experts, 1.0);
  EXPECT_DOUBLE_EQ(f12.expert_share, 1.0);  // RAM: hosts 4-7 hold a whole expert
}

TEST(ClusterPlan, MonotoneInBandwidthAndPeak) {
  for (const char* cache : {"q8", "q4"})
    for (int hosts : {1, 2, 3, 4, 8, 16})
      for (int batch : {1, 32}) {
        PlanInput in = base();
        in.cache = cache, in.hosts = hosts, in.batch = batch;
        double prev = 0;
        for (double gbps : {5.0, 10.0, 20.0, 40.0, 80.0}) {
          in.read_gbps = gbps;
          const double t = predict_cluster(in).tokens_per_s;
          EXPECT_GT(t, prev) << cache << " " << hosts << " hosts, batch " << batch << ", " << gbps << " GB/s";
          prev = t;
        }
        in.read_gbps = 40;
        const double slow_peak = predict_cluster(in).tokens_per_s;
        in.int8_gops = 3000;
        EXPECT_GT(predict_cluster(in).tokens_per_s, slow_peak);
        const double fast_link = predict_cluster(in).tokens_per_s;
        in.link_gbit = 1;
        if (hosts > 1) {
          EXPECT_LT(predict_cluster(in).tokens_per_s, fast_link);
        }
        in.link_gbit = 10;
        in.link_us = 500;
        if (hosts > 1) {
          EXPECT_LT(predict_cluster(in).tokens_per_s, fast_link);
        }
      }
  // More hosts: fewer bytes per host, so a faster step on a fast link.
  PlanInput one = base(), two = base();
  two.hosts = 2;
  EXPECT_LT(predict_cluster(one).tokens_per_s, predict_cluster(two).tokens_per_s);
  EXPECT_LT(predict_cluster(two).ram_bytes, predict_cluster(one).ram_bytes);
}

TEST(ClusterPlan, BadInputNamesTheOption) {
  PlanInput in = base();
  in.hosts = 12;  // experts 0-3 split in two, 4-7 whole: possible
  EXPECT_EQ(error_of(in), "(no error)");
  in.hosts = 8 * 256 + 1;  // dim 4096 is 256 groups of 16 output rows: one more host than that
  EXPECT_NE(error_of(in).find("--hosts: 2049 is not possible: give 1 to 2048 hosts"), std::string::npos) << error_of(in);
  in.hosts = 0;
  EXPECT_NE(error_of(in).find("--hosts"), std::string::npos);
  in = base();
  in.cache = "q5";
  EXPECT_NE(error_of(in).find("--plan-cache: must be q8 or q4, not 'q5'"), std::string::npos) << error_of(in);
  in = base();
  in.read_gbps = -1;
  EXPECT_NE(error_of(in).find("--read-gbps"), std::string::npos) << error_of(in);
  in = base();
  in.int8_gops = 0;
  EXPECT_NE(error_of(in).find("--int8-gops"), std::string::npos) << error_of(in);
  in = base();
  in.link_gbit = 0;
  EXPECT_NE(error_of(in).find("--link-gbit"), std::string::npos) << error_of(in);
  in = base();
  in.link_us = -5;
  EXPECT_NE(error_of(in).find("--link-us"), std::string::npos) << error_of(in);
  in = base();
  in.shape.layers = 0;
  EXPECT_NE(error_of(in).find("--layers"), std::string::npos) << error_of(in);
  in = base();
  in.batch = 0;
  EXPECT_NE(error_of(in).find("--batch"), std::string::npos) << error_of(in);
  in = base();
  in.context = -1;
  EXPECT_NE(error_of(in).find("--context"), std::string::npos) << error_of(in);
}

TEST(ClusterPlan, ColocatedHostsAddUpOnOneMachine) {
  // Namespace hosts on one machine: every host's attention and experts take the one machine's
  // bandwidth, so the experts cost what one host pays for all of them, and attention N times.
  PlanInput one = base();
  one.shape.top_k = 8;  // every expert runs: no randomness
  PlanInput four = one;
  four.hosts = 4;
  four.colocated = true;
  const PlanFigure a = predict_cluster(one), b = predict_cluster(four);
  EXPECT_NEAR(b.experts_ms, a.experts_ms, 1e-9 * a.experts_ms);
  EXPECT_NEAR(b.attention_ms, 4 * a.attention_ms, 1e-9 * a.attention_ms);
  EXPECT_DOUBLE_EQ(b.head_ms, a.head_ms);
  four.colocated = false;  // separate hosts: the slowest host's 2 experts
  EXPECT_NEAR(predict_cluster(four).experts_ms, a.experts_ms / 4, 1e-9 * a.experts_ms);
  one.colocated = true;  // one host is the same either way
  EXPECT_DOUBLE_EQ(predict_cluster(one).step_ms, a.step_ms);
}
