// `mixtral generate`: complete prompts (by default the reference example's four) as one batch.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/error.h"
#include "runtime/chat_format.h"
#include "runtime/scheduler.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {

// The four prompts of the reference implementation's example.
const std::vector<std::string> kReferencePrompts = {
    "Mistral.ai is a company that",
    "Simply put, the theory of relativity states that ",
    "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
    "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => "
    "menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
};

struct GenerateArgs {
  EngineOptions engine;
  std::string prompt, prompts_file;
  bool instruct = false, json = false;
  int n = 64, top_k = 0, context = 0;
  float temperature = 0.6f, top_p = 0.9f;
  uint64_t seed = 0;
};

int run(GenerateArgs& a) {
  if (!a.prompt.empty() && !a.prompts_file.empty()) fail("give --prompt or --prompts-file, not both");
  if (a.n < 1) fail("-n must be >= 1");
  std::vector<std::string> prompts;
  if (!a.prompt.empty()) {
    prompts = {a.prompt};
  } else if (!a.prompts_file.empty()) {
    prompts = read_prompts_file(a.prompts_file);
  } else {
    prompts = kReferencePrompts;
  }
  Engine e = open_engine(a.engine);
  const ModelConfig& c = e.model->config;
  const int ctx = a.context > 0 ? a.context : c.max_seq_len;
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, ctx, e.kv_dtype);
  SchedulerOptions so;
  so.max_users = static_cast<int>(std::min<size_t>(prompts.size(), 32));
  Scheduler sched(make_forward(e, kv), c.vocab, e.tokenizer->eos_id(), ctx, so);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Request r;
    r.prompt = a.instruct ? encode_instruct(*e.tokenizer, prompts[i]) : e.tokenizer->encode(prompts[i], true);
    r.max_new_tokens = a.n;
    r.sampling = {a.temperature, a.top_p, a.top_k, a.seed};
    try {
      sched.submit(std::move(r));
    } catch (const Error& ex) {
      fail("prompt " + std::to_string(i + 1) + ": " + ex.what());
    }
  }
  while (sched.busy()) sched.step();
  nlohmann::json out = nlohmann::json::array();
  for (int id = 0; id < sched.n_users(); ++id) {
    const UserState& u = sched.user(id);
    std::vector<int> gen = u.generated;
    if (!gen.empty() && gen.back() == e.tokenizer->eos_id()) gen.pop_back();
    const std::string text = e.tokenizer->decode(gen);
    if (a.json) {
      out.push_back({{"prompt", prompts[static_cast<size_t>(id)]},
                     {"prompt_tokens", u.req.prompt.size()},
                     {"tokens", u.generated},
                     {"text", text},
                     {"finish_reason", finish_reason_name(u.finish)}});
    } else {
      std::printf("%s%s\n", prompts[static_cast<size_t>(id)].c_str(), text.c_str());
      if (id + 1 < sched.n_users()) std::printf("=====================\n");
    }
  }
  // A prompt in another encoding, or output cut inside a UTF-8 character, is not valid UTF-8:
  // print U+FFFD for such bytes rather than fail after the whole generation.
  if (a.json) std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  return 0;
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* sub = app.add_subcommand("generate", "complete prompts (default: the reference example's four)");
  add_engine_options(sub, a->engine);
  sub->add_option("--prompt,-p", a->prompt, "prompt text");
  sub->add_option("--prompts-file", a->prompts_file,
                  "JSON list of strings or of {\"prompt\": ...} objects; all run as one batch");
  sub->add_flag("--instruct", a->instruct, "wrap each prompt as [INST] prompt [/INST]");
  sub->add_option("-n,--max-new-tokens", a->n, "new tokens per prompt")->default_val(64);
  sub->add_option("--temperature", a->temperature, "0 for greedy")->default_val(0.6f);
  sub->add_option("--top-p", a->top_p, "nucleus sampling mass")->default_val(0.9f);
  sub->add_option("--top-k", a->top_k, "keep the k most likely tokens (0: off)")->default_val(0);
  sub->add_option("--seed", a->seed, "sampling seed")->default_val(0);
  sub->add_option("--context", a->context, "context length in tokens (default: the model's)");
  sub->add_flag("--json", a->json, "print a JSON list of results");
  return {sub, [a] { return run(*a); }};
}

}  // namespace mx::cli
