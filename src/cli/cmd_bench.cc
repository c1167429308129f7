// `mixtral bench`: speed figures beside the ceilings measured in the same run.
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "kernels/ceilings.h"
#include "kernels/thread_pool.h"
#include "runtime/bench.h"
#include "runtime/cluster_plan.h"

namespace mx::cli {

namespace {

struct BenchArgs {
  EngineOptions engine;
  int prompt = 512, gen = 128, repeat = 3;
  std::string batches = "1,8,32", depths;
  double kv_budget_mb = 0;
  bool json = false;
  // --plan: predict a cluster instead of running the model (runtime/cluster_plan.h).
  bool plan = false;
  std::string hosts = "1,2,4,8,16", caches = "q8,q4";
  PlanInput p;
  std::vector<CLI::Option*> plan_only;  // options that mean nothing without --plan
};

// "1,8,32" -> {1, 8, 32}; `what` names the option in the error.
std::vector<int> parse_list(const std::string& s, const std::string& what) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      size_t used = 0;
      v.push_back(std::stoi(part, &used));
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::exception&) {
      fail(what + ": '" + part + "' is not a number");
    }
  }
  return v;
}

// Ceilings this host measures unless --read-gbps / --int8-gops give them (e.g. another host's).
int run_plan(BenchArgs& a) {
  const std::vector<int> hosts = parse_list(a.hosts, "--hosts");
  const std::vector<int> batches = parse_list(a.batches, "--batch");
  if (hosts.empty()) fail("--hosts needs at least one host count");
  if (batches.empty()) fail("--batch needs at least one size");
  std::vector<std::string> caches;
  std::stringstream ss(a.caches);
  for (std::string c; std::getline(ss, c, ',');) caches.push_back(c);
  if (caches.empty()) fail("--plan-cache needs q8, q4 or both");
  PlanInput p = a.p;
  // Checked before any measuring, so a typo fails at once.
  for (const std::string& c : caches) {
    PlanInput t = p;
    t.cache = c, t.read_gbps = t.int8_gops = 1, t.trials = 1;
    for (int h : hosts)
      for (int b : batches) t.hosts = h, t.batch = b, predict_cluster(t);
  }
  if (p.read_gbps == 0 || p.int8_gops == 0) {
    ThreadPool pool(a.engine.threads);
    if (!a.json) std::fprintf(stderr, "bench --plan: measuring this host's ceilings (%d threads)\n", pool.size());
    if (p.read_gbps == 0) p.read_gbps = measure_read_bandwidth_gbps(pool);
    if (p.int8_gops == 0) p.int8_gops = measure_int8_gops(pool);
  }
  std::vector<PlanFigure> figs;
  for (const std::string& c : caches)
    for (int h : hosts)
      for (int b : batches) {
        p.cache = c, p.hosts = h, p.batch = b;
        figs.push_back(predict_cluster(p));
      }
  std::printf("%s", a.json ? (plan_to_json(figs) + "\n").c_str() : plan_to_text(figs).c_str());
  return 0;
}

int run(BenchArgs& a) {
  if (a.plan) return run_plan(a);
  for (const CLI::Option* opt : a.plan_only)
    if (opt->count() > 0) fail(opt->get_name() + " needs --plan (it describes a predicted cluster)");
  BenchOptions o;
  o.prompt = a.prompt;
  o.gen = a.gen;
  o.repeat = a.repeat;
  o.batches = parse_list(a.batches, "--batch");
  if (o.batches.empty()) fail("--batch needs at least one size");
  o.depths = parse_list(a.depths, "--depth");
  if (a.kv_budget_mb < 0) fail("--kv-budget-mb must be >= 0");
  o.kv_budget_bytes = a.kv_budget_mb * 1048576.0;
  Engine e = open_engine(a.engine);
  o.kv_dtype = e.kv_dtype;
  const BenchResult r = run_bench(*e.model, *e.pool, o, [&](const std::string& s) {
    if (!a.json) std::fprintf(stderr, "bench: %s\n", s.c_str());
  });
  std::printf("%s\n", a.json ? bench_to_json(r).c_str() : bench_to_text(r).c_str());
  return 0;
}

}  // namespace

Command add_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  CLI::App* sub = app.add_subcommand("bench", "prefill/decode speed against measured bandwidth and compute ceilings");
  add_engine_options(sub, a->engine);
  sub->add_option("--prompt", a->prompt, "prefill length in tokens")->default_val(512);
  sub->add_option("--gen", a->gen, "decode steps per batch size")->default_val(128);
  sub->add_option("--batch", a->batches, "comma-separated decode batch sizes")->default_str("1,8,32");
  sub->add_option("--repeat", a->repeat,
                  "runs of each figure; the best is reported, as for the ceilings (all are listed)")
      ->default_val(3);
  sub->add_option("--depth", a->depths,
                  "comma-separated context depths N: prefill of N tokens, and decode at each --batch size "
                  "with N tokens in every user's cache");
  sub->add_option("--kv-budget-mb", a->kv_budget_mb,
                  "KV cache a depth's decode may take (MiB); a batch needing more is skipped "
                  "(default: 80% of MemAvailable less the weights)");
  sub->add_flag("--json", a->json, "print one JSON object");
  sub->add_flag("--plan", a->plan,
                "predict decode tokens/s of Mixtral-8x7B over N hosts (expert parallelism) from the ceilings, "
                "the link and the exchange bytes, instead of running a model (docs/distributed.md)");
  auto plan_only = [&](CLI::Option* opt) { a->plan_only.push_back(opt); };
  plan_only(sub->add_option("--hosts", a->hosts, "--plan: comma-separated host counts (past 8, experts are split over hosts as under mpirun)")
                ->default_str("1,2,4,8,16"));
  plan_only(sub->add_option("--plan-cache", a->caches, "--plan: caches to predict, q8 (q8_0r16) and/or q4 (q4_0r16)")
                ->default_str("q8,q4"));
  plan_only(sub->add_option("--layers", a->p.shape.layers, "--plan: layers (32: Mixtral-8x7B; 2: the bench model)")
                ->default_val(32));
  plan_only(sub->add_option("--link-gbit", a->p.link_gbit, "--plan: each host's link, Gbit/s")->default_val(10));
  plan_only(sub->add_option("--link-us", a->p.link_us, "--plan: one-way link latency, microseconds")->default_val(50));
  plan_only(sub->add_option("--msg-us", a->p.msg_us, "--plan: software cost of one MPI message, microseconds")
                ->default_val(10));
  plan_only(sub->add_option("--read-gbps", a->p.read_gbps,
                            "--plan: each host's read bandwidth, GB/s (default: measure this host)"));
  plan_only(sub->add_option("--int8-gops", a->p.int8_gops, "--plan: each host's int8 peak, GOPS (default: measure this host)"));
  plan_only(sub->add_option("--context", a->p.context, "--plan: cached positions per user (KV cache read and held)")
                ->default_val(512));
  plan_only(sub->add_flag("--colocated", a->p.colocated,
                          "--plan: the hosts share this one machine (namespace hosts of tests/cluster/cluster.sh): "
                          "their work adds up against one set of ceilings"));
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
