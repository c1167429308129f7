// The CLI end to end: commands, JSON outputs, and one clear message per bad input.
#include <gtest/gtest.h>

#include <algorithm>

#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace mx {
namespace {

using test::run_cli;

const std::string kHf = test::data_path("tiny-mixtral/hf");

nlohmann::json expected() {
  return nlohmann::json::parse(test::read_file(test::data_path("tiny-mixtral/expected.json")));
}

TEST(Cli, HelpVersionAndUnknownFlags) {
  auto r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* cmd : {"generate", "chat", "score"}) EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd;
  r = run_cli("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("mixtral"), std::string::npos);
  r = run_cli("generate --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--top-p"), std::string::npos);
  r = run_cli("generate --model " + kHf + " --no-such-flag");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--no-such-flag"), std::string::npos) << r.err;
  r = run_cli("");
  EXPECT_NE(r.exit_code, 0);
}

TEST(Cli, ScoreCasesMatchReferenceOnEveryLayout) {
  const nlohmann::json want = expected();
  for (const char* layout : {"hf", "mistral", "pth", "pt-stacked"}) {
    auto r = run_cli("score --model " + test::data_path(std::string("tiny-mixtral/") + layout) +
                     " --cases " + test::data_path("tiny-mixtral/expected.json"));
    ASSERT_EQ(r.exit_code, 0) << layout << r.err;
    const nlohmann::json got = nlohmann::json::parse(r.out);
    ASSERT_EQ(got.size(), want["cases"].size());
    for (size_t c = 0; c < got.size(); ++c) {
      const auto& wc = want["cases"][c];
      std::vector<int> idx;
      if (wc.contains("positions_index")) idx = wc["positions_index"].get<std::vector<int>>();
      else for (size_t j = 0; j < wc["tokens"].size(); ++j) idx.push_back(static_cast<int>(j));
      for (size_t n = 0; n < idx.size(); ++n) {
        const auto& gp = got[c]["positions"][static_cast<size_t>(idx[n])];
        const auto& wp = wc["positions"][n];
        EXPECT_NEAR(gp["lse"].get<double>(), wp["lse"].get<double>(), 1e-4) << layout;
        EXPECT_NEAR(gp["top"][0][1].get<double>(), wp["top"][0][1].get<double>(), 1e-4) << layout;
        if (wc.contains("next_token_logprob") && n + 1 < idx.size()) {
          EXPECT_NEAR(gp["next_logprob"].get<double>(), wc["next_token_logprob"][n].get<double>(), 1e-4);
        }
      }
      EXPECT_TRUE(got[c]["positions"].back()["next_logprob"].is_null());
    }
  }
}

TEST(Cli, ScoreCompareSummarizesAgreement) {
  const std::string ref = test::data_path("tiny-mixtral/expected.json");
  auto r = run_cli("score --model " + test::data_path("tiny-mixtral/mistral") + " --cases " + ref + " --compare");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json a = nlohmann::json::parse(r.out);
  EXPECT_EQ(a["cases"], 6);
  EXPECT_EQ(a["positions"], 169);
  EXPECT_EQ(a["top1_agreement"], 1.0);
  EXPECT_LT(a["max_abs_dlogit"].get<double>(), 1e-4);
  EXPECT_LT(a["mean_abs_dlogprob"].get<double>(), 1e-4);
  // A quantized file disagrees measurably, so the summary is not a constant.
  r = run_cli("score --model " + test::data_path("tiny-mixtral/gguf/tiny-mixtral-q4_0.gguf") + " --cases " + ref + " --compare");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json q = nlohmann::json::parse(r.out);
  EXPECT_LT(q["top1_agreement"].get<double>(), 1.0);
  EXPECT_GT(q["mean_abs_dlogprob"].get<double>(), 0.01);
  // ... and still accurate: exact arithmetic on this file's weights gives 63.9% and 0.575; the
  // same bounds as tests/model_test.cc (two flipped expert choices of margin).
  EXPECT_GE(q["top1_agreement"].get<double>(), 0.639 - 0.012);
  EXPECT_LE(q["mean_abs_dlogprob"].get<double>(), 0.575 + 0.04);

  r = run_cli("score --model " + test::data_path("tiny-mixtral/mistral") + " --tokens 1,2 --compare");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--compare needs --cases"), std::string::npos) << r.err;
  const std::string dir = test::tmp_dir("cli-compare");
  std::ofstream(dir + "/bad.json") << R"({"cases":[{"tokens":[1,415],"positions":[{"top":[[5,1.0]],"lse":2.0}]}]})";
  r = run_cli("score --model " + test::data_path("tiny-mixtral/mistral") + " --cases " + dir + "/bad.json --compare");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("bad.json: cases[0]: field 'positions' must be a list with one entry per stored position (2)"),
            std::string::npos) << r.err;
}

// `bench --json`: the documented object (README, issue 5), with figures that are measured,
// not constants; and its argument errors.
TEST(Cli, BenchJsonSchemaAndErrors) {
  const std::string model = test::data_path("tiny-mixtral/hf");
  auto r = run_cli("bench --model " + model + " --threads 2 --prompt 16 --gen 4 --batch 1,3 --repeat 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["threads"], 2);
  for (const char* k : {"read_gbps", "int8_gops", "bf16_gflops"}) EXPECT_GT(j["ceilings"][k].get<double>(), 0) << k;
  EXPECT_EQ(j["prefill"]["tokens"], 16);
  EXPECT_GT(j["prefill"]["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["prefill"]["roofline_tokens_per_s"].get<double>(), 0);
  // Each figure is the best of --repeat runs, all of which are listed.
  auto best_of = [](const nlohmann::json& runs) {
    double b = 0;
    for (const auto& v : runs) b = std::max(b, v.get<double>());
    return b;
  };
  ASSERT_EQ(j["prefill"]["runs"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["prefill"]["tokens_per_s"].get<double>(), best_of(j["prefill"]["runs"]));
  ASSERT_EQ(j["decode"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto& d = j["decode"][i];
    EXPECT_EQ(d["batch"], i == 0 ? 1 : 3);
    EXPECT_GT(d["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(d["roofline_tokens_per_s"].get<double>(), 0);
    ASSERT_EQ(d["runs"].size(), 2u);
    EXPECT_NEAR(d["tokens_per_s"].get<double>(), best_of(d["runs"]), 1e-9 * d["tokens_per_s"].get<double>());
    // tokens_per_s is the aggregate over the batch.
    EXPECT_NEAR(d["tokens_per_s"].get<double>(), d["per_user_tokens_per_s"].get<double>() * d["batch"].get<double>(),
                1e-6 * d["tokens_per_s"].get<double>());
  }
  EXPECT_GT(j["ttft_ms"].get<double>(), 0);
  // Peak RSS is the engine's: the tiny model needs far less than the probe's 256 MiB buffer.
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 1);
  EXPECT_LT(j["peak_rss_mb"].get<double>(), 200);
  // One process holds every expert (ranks report their share under mpirun, tests/mpi_test.sh).
  ASSERT_EQ(j["per_rank"].size(), 1u);
  EXPECT_EQ(j["per_rank"][0]["n_experts"], 8);
  EXPECT_EQ(j["per_rank"][0]["experts"], "0-7");
  EXPECT_GT(j["per_rank"][0]["expert_mb"].get<double>(), 0);

  r = run_cli("bench --model " + model + " --batch 1,x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--batch: 'x' is not a number"), std::string::npos) << r.err;
  r = run_cli("bench --model " + model + " --prompt 40000 --gen 2 --batch 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("do not fit the model's context of 32768 tokens"), std::string::npos) << r.err;
  r = run_cli("bench --model " + model + " --repeat 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--repeat must be in [1, 100], not 0"), std::string::npos) << r.err;
}

// `bench --depth`: per depth a prefill figure and decode figures whose roofline counts the KV
// cache read at that depth; a batch whose cache exceeds the budget is skipped, saying why.
TEST(Cli, BenchDepthJsonAndSkips) {
  const std::string model = test::data_path("tiny-mixtral/hf");
  // Tiny model: 2 layers x 2 KV heads x 16 dims in f16 = 256 bytes per position (K and V).
  // Depth 40 (46 positions with --gen 4) for 3 users needs 34.5 KiB, depth 64 (70) 52.5 KiB:
  // a 0.04 MiB (41 KiB) budget fits the first and not the second.
  auto r = run_cli("bench --model " + model + " --threads 2 --prompt 16 --gen 4 --batch 1,3 --repeat 2"
                   " --depth 40,64 --kv-budget-mb 0.04 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_DOUBLE_EQ(j["kv_budget_mb"].get<double>(), 0.04);
  ASSERT_EQ(j["depth"].size(), 2u);
  const double kv_row = 2 * 2 * 2 * 16 * 2;  // K+V, layers, heads, dims, f16 bytes
  for (size_t i = 0; i < 2; ++i) {
    const auto& d = j["depth"][i];
    const int depth = i == 0 ? 40 : 64;
    EXPECT_EQ(d["depth"], depth);
    EXPECT_EQ(d["prefill"]["tokens"], depth);
    EXPECT_EQ(d["prefill"]["runs"].size(), 2u);
    EXPECT_GT(d["prefill"]["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(d["prefill"]["roofline_tokens_per_s"].get<double>(), 0);
    EXPECT_GT(d["ttft_ms"].get<double>(), 0);
    ASSERT_EQ(d["decode"].size(), 2u);
    const auto& b1 = d["decode"][0];
    EXPECT_EQ(b1["batch"], 1);
    EXPECT_FALSE(b1.contains("skipped"));
    EXPECT_EQ(b1["runs"].size(), 2u);
    EXPECT_GT(b1["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(b1["roofline_tokens_per_s"].get<double>(), 0);
    // One token chooses exactly top-k = 2 experts per layer.
    EXPECT_DOUBLE_EQ(b1["experts_per_layer"].get<double>(), 2.0);
    // Timed steps read positions depth + 1 .. depth + gen: on average depth + 1.5 + gen / 2 rows.
    EXPECT_DOUBLE_EQ(b1["kv_bytes_per_step"].get<double>(), kv_row * (depth + 1.5 + 2));
    EXPECT_GT(b1["bytes_per_step"].get<double>(), b1["kv_bytes_per_step"].get<double>());
  }
  // Depth 40 ran 3 users, from copied caches with their own tails: 3x the KV, and their
  // tokens route to more experts than one user's.
  const auto& b3 = j["depth"][0]["decode"][1];
  ASSERT_FALSE(b3.contains("skipped")) << b3;
  EXPECT_EQ(b3["batch"], 3);
  EXPECT_DOUBLE_EQ(b3["kv_bytes_per_step"].get<double>(), 3 * kv_row * (40 + 1.5 + 2));
  EXPECT_GT(b3["experts_per_layer"].get<double>(), 2.0);
  EXPECT_LE(b3["experts_per_layer"].get<double>(), 6.0);
  EXPECT_NEAR(b3["tokens_per_s"].get<double>(), 3 * b3["per_user_tokens_per_s"].get<double>(),
              1e-6 * b3["tokens_per_s"].get<double>());
  // Depth 64 with 3 users does not fit: skipped with the numbers, and no figures.
  const auto& s3 = j["depth"][1]["decode"][1];
  EXPECT_EQ(s3["batch"], 3);
  EXPECT_FALSE(s3.contains("tokens_per_s"));
  EXPECT_NE(s3["skipped"].get<std::string>().find("3 users x 70 positions needs 52.5 KiB; the budget is 41.0 KiB (--kv-budget-mb)"),
            std::string::npos) << s3;
  // Without --depth the list is empty (the fields above are only there when asked for).
  r = run_cli("bench --model " + model + " --prompt 8 --gen 2 --batch 1 --repeat 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out)["depth"].empty());
  // The text form prints the same figures, one line each.
  r = run_cli("bench --model " + model + " --prompt 8 --gen 2 --batch 1,3 --repeat 1 --depth 64 --kv-budget-mb 0.04");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("depth 64: prefill 64 tokens (chunks of 512): "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("depth 64: decode batch  1: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("depth 64: decode batch 3: skipped: the KV cache of 3 users x 68 positions needs 51.0 KiB"), std::string::npos) << r.out;

  r = run_cli("bench --model " + model + " --depth 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--depth 1 must be at least 2"), std::string::npos) << r.err;
  r = run_cli("bench --model " + model + " --depth 32767 --gen 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("fit the model's context of 32768 tokens"), std::string::npos) << r.err;
  r = run_cli("bench --model " + model + " --depth 4k");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--depth: '4k' is not a number"), std::string::npos) << r.err;
}

// `bench --plan`: a cluster prediction without a model (runtime/cluster_plan.h, whose own test
// checks the arithmetic); given ceilings, so nothing is measured.
TEST(Cli, BenchPlanPredictsWithoutAModel) {
  auto r = run_cli("bench --plan --layers 2 --hosts 1,2,16 --batch 1,32 --read-gbps 30 --int8-gops 1000 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 12u);  // q8 and q4 x 3 host counts x 2 batches
  EXPECT_EQ(j[0]["cache"], "q8");
  EXPECT_EQ(j[0]["layers"], 2);
  for (const auto& f : j) EXPECT_GT(f["tokens_per_s"].get<double>(), 0) << f.dump();
  EXPECT_LT(j[4]["ram_gb"].get<double>(), j[0]["ram_gb"].get<double>());  // 16 hosts hold less than 1
  r = run_cli("bench --plan --hosts 4097 --read-gbps 30 --int8-gops 1000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--hosts: 4097 is not possible"), std::string::npos) << r.err;
  r = run_cli("bench --plan --hosts 2,x");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--hosts: 'x' is not a number"), std::string::npos) << r.err;
  r = run_cli("bench --plan --plan-cache q8,bf16 --read-gbps 30 --int8-gops 1000");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--plan-cache: must be q8 or q4, not 'bf16'"), std::string::npos) << r.err;
  r = run_cli("bench --model " + test::data_path("tiny-mixtral/hf") + " --hosts 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--hosts needs --plan"), std::string::npos) << r.err;
}

// A q8_0 GGUF interleaved at load (the default) scores exactly as with --no-interleave.
TEST(Cli, NoInterleaveGivesTheSameQ8Scores) {
  const std::string g = test::data_path("tiny-mixtral/gguf/tiny-mixtral-q8_0.gguf");
  const auto a = run_cli("score --model " + g + " --tokens 1,415,2936,9060,285 --top 3");
  const auto b = run_cli("score --model " + g + " --tokens 1,415,2936,9060,285 --top 3 --no-interleave");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out.find("\"positions\""), std::string::npos);
}

TEST(Cli, ScoreTextAddsBosAndTokensValidate) {
  auto r = run_cli("score --model " + kHf + " --text 'Mistral.ai is a company that' --top 3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"], expected()["cases"][0]["tokens"]);
  EXPECT_EQ(j["positions"][0]["top"].size(), 3u);
  r = run_cli("score --model " + kHf + " --tokens 1,99999");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unknown token id 99999"), std::string::npos) << r.err;
  r = run_cli("score --model " + kHf + " --tokens 1,x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("'x' is not an integer"), std::string::npos) << r.err;
}

TEST(Cli, GreedyGenerateReproducesReference) {
  // The GGUF has no tokenizer.model beside it: its vocabulary comes from the GGUF metadata.
  for (const std::string& model : {kHf, test::data_path("tiny-mixtral/gguf/tiny-mixtral-f16.gguf")}) {
    auto r = run_cli("generate --model " + model + " --temperature 0 -n 24 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto got = nlohmann::json::parse(r.out);
    const auto want = expected()["greedy"];
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i]["prompt"], want[i]["prompt"]);
      EXPECT_EQ(got[i]["prompt_tokens"], want[i]["prompt_tokens"].size());
      EXPECT_EQ(got[i]["tokens"], want[i]["generated"]) << model << " " << i;
    }
  }
}

TEST(Cli, SeededSamplingIsReproducible) {
  const std::string args = "generate --model " + kHf + " --prompt 'Hello' -n 16 --json --seed ";
  auto a = run_cli(args + "7"), b = run_cli(args + "7"), c = run_cli(args + "8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_EQ(nlohmann::json::parse(a.out)[0]["tokens"].size(), 16u);
}

// Text that is not UTF-8 (a Latin-1 prompt here; also a reply cut inside a character) used to
// end `generate --json` after the generation with the JSON library's "invalid UTF-8" error.
TEST(Cli, JsonOutputSurvivesInvalidUtf8) {
  const auto r = run_cli("generate --model " + kHf + " --prompt \"$(printf 'caf\\351')\" -n 2 --temperature 0 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j[0]["prompt"], "caf\xef\xbf\xbd");  // U+FFFD
  EXPECT_EQ(j[0]["tokens"].size(), 2u);
}

TEST(Cli, BadInputsGiveOneClearError) {
  auto r = run_cli("generate --model /nonexistent/model --prompt hi");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/nonexistent/model: no such file"), std::string::npos) << r.err;
  r = run_cli("generate --model " + kHf + " --prompt 'a b c d e f g h' --context 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("does not fit the context of 4 tokens"), std::string::npos) << r.err;
  r = run_cli("generate --model " + kHf + " --prompts-file /nonexistent.json");
  EXPECT_NE(r.err.find("/nonexistent.json: cannot open"), std::string::npos) << r.err;
  r = run_cli("score --model " + kHf + " --kv-dtype q4 --tokens 1");
  EXPECT_NE(r.err.find("--kv-dtype must be f32, f16 or bf16"), std::string::npos) << r.err;
  const std::string d = test::tmp_dir("cli");
  std::system(("echo '{\"cases\": [{\"tokens\": \"oops\"}]}' > " + d + "/c.json").c_str());
  r = run_cli("score --model " + kHf + " --cases " + d + "/c.json");
  EXPECT_NE(r.err.find("cases[0]: field 'tokens' must be a list"), std::string::npos) << r.err;
  std::system(("echo '[{\"prompt\": 3}]' > " + d + "/p.json").c_str());
  r = run_cli("generate --model " + kHf + " --prompts-file " + d + "/p.json");
  EXPECT_NE(r.err.find("entry 0 needs a string field 'prompt'"), std::string::npos) << r.err;
}

TEST(Cli, ChatStreamsRepliesFromStdin) {
  // The reference: the same greedy reply from `generate --instruct`, which prints the prompt
  // and then the reply (chat's first turn is the same [INST] prompt).
  const std::string prompt = "Hello there";
  auto g = run_cli("generate --model " + kHf + " --instruct --prompt '" + prompt + "' -n 8 --temperature 0");
  ASSERT_EQ(g.exit_code, 0) << g.err;
  ASSERT_EQ(g.out.rfind(prompt, 0), 0u) << g.out;
  const std::string reply = g.out.substr(prompt.size());
  ASSERT_GT(reply.size(), 1u);
  const std::string d = test::tmp_dir("chat");
  std::ofstream(d + "/in.txt") << prompt << "\nAnd again\n/reset\n" << prompt << "\n";
  // run_cli feeds /dev/null as stdin, so this one runs through the shell with its own input.
  const std::string cmd = std::string(MIXTRAL_BIN) + " chat --model " + kHf +
                          " --temperature 0 -n 8 < " + d + "/in.txt > " + d + "/out.txt 2>" + d + "/err.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << test::read_file(d + "/err.txt");
  const std::string out = test::read_file(d + "/out.txt");
  std::vector<std::string> lines;
  for (size_t at = 0, nl; (nl = out.find('\n', at)) != std::string::npos; at = nl + 1) lines.push_back(out.substr(at, nl - at + 1));
  ASSERT_EQ(lines.size(), 3u) << out;
  EXPECT_EQ(lines[0], reply);  // first turn: exactly generate's reply
  EXPECT_GT(lines[1].size(), 1u);  // second turn: a reply, with the first in context
  EXPECT_NE(lines[1], reply);
  EXPECT_EQ(lines[2], reply);  // after /reset the conversation starts over
}

}  // namespace
}  // namespace mx
