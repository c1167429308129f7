// `mixtral demo`: batching and feed modes do not change the greedy text, the limits hold,
// prompts are cut and wrapped right, the book prompt has its length, and --json matches the
// schema in docs/demo.md.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/model_loader.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/chat_format.h"
#include "demo/demo_limits.h"
#include "demo/demo_prompts.h"
#include "demo/demo_report.h"
#include "demo/demo_run.h"
#include "demo/demo_view.h"
#include "test_util.h"

namespace mx {
namespace {

const std::string kHf = test::data_path("tiny-mixtral/hf");
const std::string kDemo = std::string(MIXTRAL_SOURCE_DIR) + "/demo/";

// One model for the in-process tests; each run gets its own cache.
struct Tiny {
  ThreadPool pool{2};
  std::shared_ptr<LoadedModel> loaded = std::make_shared<LoadedModel>(load_model(kHf));
  std::unique_ptr<Model> model = make_model(loaded, {}, pool);
  Tokenizer tok = Tokenizer::load(loaded->tokenizer);

  DemoRun run(const std::vector<DemoPrompt>& prompts, const DemoOptions& o) {
    const ModelConfig& c = model->config;
    KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, o.context, DType::F32);
    auto fwd = [&](const std::vector<SeqChunk>& b) { return forward(*model, kv, b, pool); };
    return run_demo(fwd, tok, c.vocab, prompts, o);
  }
};

Tiny& tiny() {
  static Tiny t;
  return t;
}

std::vector<std::string> prompt_texts(const std::string& file) {
  std::vector<std::string> out;
  for (const auto& p : nlohmann::json::parse(test::read_file(kDemo + file))) out.push_back(p["prompt"]);
  return out;
}

std::vector<DemoPrompt> demo_prompts(const std::string& file, bool instruct, int budget = 4000) {
  std::vector<DemoPrompt> out;
  for (const auto& t : prompt_texts(file)) out.push_back(make_demo_prompt(tiny().tok, t, instruct, budget));
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(DemoPromptFiles, ThirtyTwoPromptsEachWithoutTags) {
  for (const char* f : {"prompts-general.json", "prompts-instruct.json"}) {
    const auto texts = prompt_texts(f);
    EXPECT_EQ(texts.size(), 32u) << f;
    for (const auto& t : texts) {
      EXPECT_FALSE(t.empty()) << f;
      EXPECT_FALSE(contains(t, "[INST]") || contains(t, "[/INST]")) << f << ": " << t;
    }
  }
}

// The core promise of batching: 32 users together give each the text it would get alone.
TEST(DemoRun, ThirtyTwoUsersEqualEachAlone) {
  DemoOptions o;
  o.max_new_tokens = 24;
  const auto prompts = demo_prompts("prompts-general.json", false);
  ASSERT_EQ(prompts.size(), 32u);
  const DemoRun all = tiny().run(prompts, o);
  ASSERT_EQ(all.users.size(), 32u);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const DemoRun one = tiny().run({prompts[i]}, o);
    EXPECT_EQ(all.users[i].generated, one.users[0].generated) << "user " << i + 1;
    EXPECT_EQ(all.users[i].text, one.users[0].text) << "user " << i + 1;
    EXPECT_EQ(all.users[i].generated.size(), 24u);
    EXPECT_EQ(all.users[i].text, tiny().tok.decode(all.users[i].generated));
  }
}

TEST(DemoRun, DecodeOnlyAndPrefillCapEqualPrefill) {
  DemoOptions o;
  o.max_new_tokens = 16;
  const auto prompts = demo_prompts("prompts-instruct.json", true);
  const DemoRun prefill = tiny().run(prompts, o);
  o.mode = FeedMode::DecodeOnly;
  const DemoRun decode_only = tiny().run(prompts, o);
  o.mode = FeedMode::PrefillDecode;
  o.prefill_cap = 8;  // the rest of each prompt goes one token per step
  o.prefill_chunk = 3;
  const DemoRun capped = tiny().run(prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(prefill.users[i].generated, decode_only.users[i].generated) << "user " << i + 1;
    EXPECT_EQ(prefill.users[i].generated, capped.users[i].generated) << "user " << i + 1;
  }
  // In decode-only mode prompts are read one token a step: the longest prompt sets the steps.
  int longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, static_cast<int>(p.tokens.size()));
  EXPECT_EQ(decode_only.steps, longest - 1 + 16);
  EXPECT_EQ(prefill.steps, 16);
}

TEST(DemoRun, TimesAndSummaryAreConsistent) {
  DemoOptions o;
  o.max_new_tokens = 8;
  auto prompts = demo_prompts("prompts-general.json", false);
  prompts.resize(4);
  const DemoRun r = tiny().run(prompts, o);
  const DemoSummary s = summarize(r);
  EXPECT_EQ(s.users, 4);
  EXPECT_EQ(s.generated_tokens, 32);
  EXPECT_EQ(s.decode_tokens, 28);
  EXPECT_GT(s.prefill_s, 0);
  EXPECT_LE(s.prefill_s, s.total_s);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_GT(s.per_user[i].ttft_s, 0);
    EXPECT_LE(s.per_user[i].ttft_s, r.users[i].t_done);
    EXPECT_GT(s.per_user[i].decode_tok_s, 0);
    EXPECT_EQ(r.users[i].finish, FinishReason::Length);
  }
  EXPECT_GT(s.decode_tok_s_total, s.decode_tok_s_user_mean);  // 4 users decode at once
}

TEST(DemoLimits, BatchFollowsTheContext) {
  EXPECT_EQ(parse_token_count("4k", "--context"), 4096);
  EXPECT_EQ(parse_token_count("16K", "--context"), 16384);
  EXPECT_EQ(parse_token_count("2048", "--context"), 2048);
  EXPECT_TRUE(contains(error_of([] { parse_token_count("4x", "--context"); }), "--context"));
  EXPECT_TRUE(contains(error_of([] { parse_token_count("", "--prefill-cap"); }), "--prefill-cap"));
  EXPECT_EQ(max_batch_for_context(2048), 32);
  EXPECT_EQ(max_batch_for_context(4096), 32);
  EXPECT_EQ(max_batch_for_context(4097), 16);
  EXPECT_EQ(max_batch_for_context(8192), 16);
  EXPECT_EQ(max_batch_for_context(16384), 8);
  EXPECT_EQ(max_batch_for_context(32768), 4);
  EXPECT_EQ(max_batch_for_context(32769), 0);
  EXPECT_NO_THROW(check_batch_limit(32, 4096));
  EXPECT_NO_THROW(check_batch_limit(4, 32768));
  std::string e = error_of([] { check_batch_limit(5, 32768); });
  EXPECT_TRUE(contains(e, "at most 4 users")) << e;
  EXPECT_TRUE(contains(e, "at most 16k")) << e;
  e = error_of([] { check_batch_limit(33, 4096); });
  EXPECT_TRUE(contains(e, "at most 32 users")) << e;
  EXPECT_TRUE(contains(error_of([] { check_batch_limit(1, 65536); }), "32k")) << e;
}

TEST(DemoLimits, MemoryCheckShowsNumbersAndWhatFits) {
  MemoryPlan plan;
  plan.config = tiny().model->config;
  plan.weights = weights_bytes(tiny().loaded->store);
  EXPECT_GT(plan.weights, 8u << 20);  // the tiny model's ~8.6 MiB of tensors
  const ModelConfig& c = plan.config;
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, 4096, DType::F16);
  plan.kv_bytes_per_position = kv.bytes_per_slot(1);
  EXPECT_EQ(plan.step_tokens(32), 32 * 512 + 32);
  EXPECT_EQ(plan.step_tokens(2), 2 * 512 + 2);  // within the 2048 budget
  plan.longest_prompt = 20;
  EXPECT_EQ(plan.step_tokens(32), 32 * 20 + 32);
  plan.longest_prompt = 0;
  const MemoryNeed n32 = plan.need(32, 4096);
  EXPECT_EQ(n32.kv, kv.bytes_per_slot(4096) * 32);
  EXPECT_NO_THROW(check_memory(plan, 32, 4096, n32.total(), "test"));
  // 1 MiB short of 32 users: 31 fit at 4k.
  std::string e = error_of([&] { check_memory(plan, 32, 4096, n32.total() - (1u << 20), "test"); });
  EXPECT_TRUE(contains(e, "not enough memory for 32 users")) << e;
  EXPECT_TRUE(contains(e, "weights 8.6 MiB")) << e;
  EXPECT_TRUE(contains(e, "KV cache 32.0 MiB")) << e;
  EXPECT_TRUE(contains(e, "--batch 31")) << e;
  // At 32k, 4 users; 16k would fit them.
  const uint64_t at16k = plan.need(4, 16384).total();
  e = error_of([&] { check_memory(plan, 4, 32768, at16k, "test"); });
  EXPECT_TRUE(contains(e, "--context 16k")) << e;
  e = error_of([&] { check_memory(plan, 1, 4096, 1u << 20, "MIXTRAL_DEMO_MEM_LIMIT_MB"); });
  EXPECT_TRUE(contains(e, "weights alone")) << e;
  EXPECT_TRUE(contains(e, "MIXTRAL_DEMO_MEM_LIMIT_MB")) << e;

  ::setenv("MIXTRAL_DEMO_MEM_LIMIT_MB", "12", 1);
  std::string src;
  EXPECT_EQ(available_memory_bytes(&src), 12u << 20);
  EXPECT_EQ(src, "MIXTRAL_DEMO_MEM_LIMIT_MB");
  ::setenv("MIXTRAL_DEMO_MEM_LIMIT_MB", "12x", 1);
  EXPECT_TRUE(contains(error_of([] { available_memory_bytes(nullptr); }), "whole number"));
  ::unsetenv("MIXTRAL_DEMO_MEM_LIMIT_MB");
  EXPECT_GT(available_memory_bytes(&src), 0u);
  EXPECT_TRUE(contains(src, "MemAvailable")) << src;
}

std::string long_text_with_question(const std::string& question, int sentences = 300) {
  std::string t;
  for (int i = 0; i < sentences; ++i) t += "Sentence number " + std::to_string(i) + " of a long preamble. ";
  return t + question;
}

TEST(DemoPrompts, TruncationKeepsTheQuestion) {
  const Tokenizer& tok = tiny().tok;
  const std::string q = "What is the capital of France?";
  const std::string text = long_text_with_question(q);
  const std::vector<int> q_ids = tok.encode(q, false);
  DemoPrompt p = make_demo_prompt(tok, text, false, 100);
  EXPECT_TRUE(p.truncated);
  EXPECT_EQ(p.tokens.size(), 100u);
  EXPECT_GT(p.original_tokens, 1000);
  EXPECT_EQ(p.tokens.front(), tok.bos_id());
  EXPECT_TRUE(contains(tok.decode(p.tokens), q));
  EXPECT_TRUE(std::equal(q_ids.begin() + 1, q_ids.end(), p.tokens.end() - static_cast<long>(q_ids.size() - 1)));
  // Short prompts are left alone.
  p = make_demo_prompt(tok, q, false, 100);
  EXPECT_FALSE(p.truncated);
  EXPECT_EQ(p.tokens, tok.encode(q, true));
  EXPECT_TRUE(contains(error_of([&] { make_demo_prompt(tok, text, false, 1); }), "--max-new-tokens"));
}

TEST(DemoPrompts, InstructTruncationKeepsTheTags) {
  const Tokenizer& tok = tiny().tok;
  const std::string q = "What is the capital of France?";
  const std::string text = long_text_with_question(q);
  DemoPrompt p = make_demo_prompt(tok, text, true, 120);
  EXPECT_TRUE(p.truncated);
  EXPECT_LE(p.tokens.size(), 120u);
  EXPECT_GE(p.tokens.size(), 115u);
  EXPECT_EQ(p.original_tokens, static_cast<int>(encode_instruct(tok, text).size()));
  // Exactly what encode_instruct makes of the kept text: BOS [INST] ... question [/INST].
  const std::string kept = tok.decode(p.tokens);
  EXPECT_EQ(kept.rfind("[INST] ", 0), 0u) << kept;
  EXPECT_TRUE(kept.size() > q.size() + 8 && kept.substr(kept.size() - q.size() - 8) == q + " [/INST]") << kept;
  const std::string body = kept.substr(7, kept.size() - 7 - 8);
  EXPECT_EQ(p.tokens, encode_instruct(tok, body));
  const std::vector<int> close = tok.encode(" [/INST]", false);
  const std::vector<int> whole = encode_instruct(tok, q);
  EXPECT_TRUE(std::equal(whole.end() - 4, whole.end(), p.tokens.end() - 4));  // same closing tokens
  EXPECT_FALSE(close.empty());
  EXPECT_TRUE(contains(error_of([&] { make_demo_prompt(tok, text, true, 8); }), "[INST]"));
}

TEST(DemoPrompts, BookPromptAtFullSize) {
  const Tokenizer& tok = tiny().tok;
  const std::string novel = read_text_file(kDemo + "a-tale-of-two-cities.txt");
  int n = 0;
  const std::string excerpt = first_tokens_text(tok, novel, 16384, &n);
  EXPECT_EQ(n, 16384);
  EXPECT_EQ(tok.encode(excerpt, false).size(), 16384u);
  EXPECT_EQ(excerpt.rfind("It was the best of times,", 0), 0u);
  EXPECT_EQ(novel.compare(0, excerpt.size(), excerpt), 0);  // a prefix of the novel

  const DemoPrompt plain = make_book_prompt(tok, novel, 16384, false, 32768 - 128);
  EXPECT_FALSE(plain.truncated);
  EXPECT_EQ(plain.tokens.front(), tok.bos_id());
  EXPECT_GE(plain.tokens.size(), 16384u + 8);
  EXPECT_LE(plain.tokens.size(), 16384u + 24);
  EXPECT_EQ(plain.text, std::string(kBookQuestion) + "\n\n" + excerpt);

  const DemoPrompt inst = make_book_prompt(tok, novel, 16384, true, 32768 - 128);
  EXPECT_EQ(inst.tokens, encode_instruct(tok, plain.text));
  const std::vector<int> ref = encode_instruct(tok, "x");
  EXPECT_TRUE(std::equal(ref.end() - 4, ref.end(), inst.tokens.end() - 4));  // ends with [/INST]
  EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + 3, inst.tokens.begin()));  // <s>[INST]

  // A 16k context cannot hold it: the excerpt's end goes, the question stays, [/INST] closes.
  const DemoPrompt cut = make_book_prompt(tok, novel, 16384, true, 16384 - 128);
  EXPECT_TRUE(cut.truncated);
  EXPECT_EQ(cut.original_tokens, static_cast<int>(inst.tokens.size()));
  EXPECT_LE(cut.tokens.size(), 16384u - 128);
  EXPECT_GE(cut.tokens.size(), 16384u - 128 - 8);
  EXPECT_EQ(cut.text.rfind(kBookQuestion, 0), 0u);
  EXPECT_TRUE(std::equal(ref.end() - 4, ref.end(), cut.tokens.end() - 4));
}

TEST(DemoPrompts, UsersCycleThroughPrompts) {
  EXPECT_EQ(assign_prompts({"a", "b", "c"}, 7), (std::vector<std::string>{"a", "b", "c", "a", "b", "c", "a"}));
  EXPECT_EQ(assign_prompts({"a", "b", "c"}, 2), (std::vector<std::string>{"a", "b"}));
}

TEST(DemoView, LinesFitTheTerminal) {
  EXPECT_EQ(fit_line("  1 > ", "hello", 40), "  1 > hello");
  EXPECT_EQ(fit_line("  1 > ", "hello\nworld\t\x1b[2J", 40), "  1 > hello world  [2J");
  EXPECT_EQ(fit_line("  1 > ", "abcdefghijklmnopqrstuvwxyz", 16), "  1 > \u2026rstuvwxyz");
  EXPECT_EQ(fit_line("  1 > ", "x", 3), "  1");
  // Wide characters take two columns; é one.
  EXPECT_EQ(fit_line("", "\u4e2d\u6587\u4e2d\u6587", 6), "\u2026\u4e2d\u6587");
  EXPECT_EQ(fit_line("", "caf\u00e9", 4), "caf\u00e9");
}

// --- The CLI --------------------------------------------------------------------------------

// Checks `v` against the JSON Schema subset docs/demo.md uses; returns the first problem.
std::string validate(const nlohmann::json& v, const nlohmann::json& s, const std::string& at) {
  if (s.contains("enum")) {
    bool ok = false;
    for (const auto& e : s["enum"]) ok = ok || e == v;
    if (!ok) return at + ": " + v.dump() + " not in " + s["enum"].dump();
  }
  if (s.contains("type")) {
    const std::vector<std::string> types =
        s["type"].is_array() ? s["type"].get<std::vector<std::string>>() : std::vector<std::string>{s["type"]};
    bool ok = false;
    for (const auto& t : types)
      ok = ok || (t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
           (t == "string" && v.is_string()) || (t == "boolean" && v.is_boolean()) ||
           (t == "null" && v.is_null()) || (t == "integer" && v.is_number_integer()) ||
           (t == "number" && v.is_number());
    if (!ok) return at + ": " + v.dump() + " is not " + s["type"].dump();
  }
  if (s.contains("minimum") && v.is_number() && v.get<double>() < s["minimum"].get<double>())
    return at + ": " + v.dump() + " below the minimum";
  if (v.is_object()) {
    for (const auto& r : s.value("required", nlohmann::json::array()))
      if (!v.contains(r.get<std::string>())) return at + ": missing " + r.get<std::string>();
    for (const auto& [k, item] : v.items()) {
      if (s.contains("properties") && s["properties"].contains(k)) {
        const std::string e = validate(item, s["properties"][k], at + "." + k);
        if (!e.empty()) return e;
      } else if (s.value("additionalProperties", true) == false) {
        return at + ": unexpected field " + k;
      }
    }
  }
  if (v.is_array() && s.contains("items"))
    for (size_t i = 0; i < v.size(); ++i) {
      const std::string e = validate(v[i], s["items"], at + "[" + std::to_string(i) + "]");
      if (!e.empty()) return e;
    }
  return "";
}

nlohmann::json documented_schema() {
  const std::string doc = test::read_file(std::string(MIXTRAL_SOURCE_DIR) + "/docs/demo.md");
  const size_t mark = doc.find("<!-- demo-json-schema -->");
  const size_t open = doc.find("```json\n", mark);
  const size_t close = doc.find("\n```", open + 8);
  if (mark == std::string::npos || open == std::string::npos || close == std::string::npos) return nullptr;
  return nlohmann::json::parse(doc.substr(open + 8, close - open - 8));
}

TEST(DemoCli, JsonMatchesTheDocumentedSchema) {
  const nlohmann::json schema = documented_schema();
  ASSERT_TRUE(schema.is_object()) << "no schema block in docs/demo.md";
  // The validator itself catches what it should.
  EXPECT_NE(validate(nlohmann::json{{"model", 1}}, schema, "$"), "");

  auto r = test::run_cli("demo --model " + kHf + " --json -n 6 --batch 3 --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(validate(j, schema, "$"), "");
  EXPECT_EQ(j["users"].size(), 3u);
  EXPECT_EQ(j["summary"]["users"], 3);
  EXPECT_EQ(j["summary"]["generated_tokens"], 18);
  EXPECT_EQ(j["mode"], "prefill");
  EXPECT_EQ(j["users"][1]["prompt"], prompt_texts("prompts-general.json")[1]);

  // Instruct, decode-only, prompts repeating over 5 users, one cut to fit a small context:
  // still valid, and the same text as prefill mode.
  const std::string dir = test::tmp_dir("demo-json");
  nlohmann::json pf = nlohmann::json::array();
  pf.push_back({{"prompt", "Name a colour."}});
  pf.push_back({{"prompt", long_text_with_question("What is the capital of France?", 40)}});
  {
    std::ofstream(dir + "/p.json") << pf.dump();
  }
  const std::string args = "demo --model " + kHf + " --json -n 5 --batch 5 --instruct --context 256 --prompts " +
                           dir + "/p.json --threads 2";
  r = test::run_cli(args + " --mode decode-only");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json d = nlohmann::json::parse(r.out);
  EXPECT_EQ(validate(d, schema, "$"), "");
  r = test::run_cli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json p = nlohmann::json::parse(r.out);
  ASSERT_EQ(d["users"].size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(d["users"][i]["output_token_ids"], p["users"][i]["output_token_ids"]) << i;
    EXPECT_EQ(d["users"][i]["prompt_index"], i % 2);
    EXPECT_EQ(d["users"][i]["truncated"], i % 2 == 1) << i;
    // Cut to context - max new tokens (251); re-encoding the cut text may come out a token short.
    const int n = d["users"][i]["prompt_tokens"];
    if (i % 2 == 1) {
      EXPECT_TRUE(n <= 251 && n >= 246) << n;
    }
  }
  EXPECT_GT(d["users"][1]["original_prompt_tokens"], 300);
  EXPECT_EQ(d["notes"].size(), 3u);  // prompts repeat; users 2 and 4 cut
  EXPECT_EQ(d["mode"], "decode-only");
  EXPECT_EQ(d["context"], 256);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mx
