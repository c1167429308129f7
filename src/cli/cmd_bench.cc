// `mixtral bench`: speed figures beside the ceilings measured in the same run.
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/bench.h"

namespace mx::cli {

namespace {

struct BenchArgs {
  EngineOptions engine;
  int prompt = 512, gen = 128, repeat = 3;
  std::string batches = "1,8,32", depths;
  double kv_budget_mb = 0;
  bool json = false;
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

int run(BenchArgs& a) {
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
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
