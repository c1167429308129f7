// `mixtral score`: the accuracy tool. Logits after every input token, as JSON, in f32 with an
// f32 KV cache unless told otherwise.
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "formats/config_files.h"
#include "formats/error.h"
#include "runtime/reference_agreement.h"
#include "runtime/scoring.h"
#include "runtime/tokenizer.h"

namespace mx::cli {

namespace {

struct ScoreArgs {
  EngineOptions engine;
  std::string tokens, text, cases;
  int top = 10;
  bool compare = false;
};

std::vector<int> parse_token_list(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(part, &used);
      if (used != part.size()) throw std::invalid_argument(part);
      out.push_back(static_cast<int>(v));
    } catch (const std::exception&) {
      fail("--tokens: '" + part + "' is not an integer token id");
    }
  }
  return out;
}

void check_ids(const std::vector<int>& ids, int vocab, const std::string& where) {
  for (int id : ids)
    if (id < 0 || id >= vocab)
      fail(where + ": unknown token id " + std::to_string(id) + " (vocabulary has " +
           std::to_string(vocab) + " tokens)");
}

int run(ScoreArgs& a) {
  const int given = !a.tokens.empty() + !a.text.empty() + !a.cases.empty();
  if (given != 1) fail("give exactly one of --tokens, --text or --cases");
  if (a.top < 1) fail("--top must be >= 1");
  if (a.compare && a.cases.empty()) fail("--compare needs --cases FILE with reference positions");
  Engine e = open_engine(a.engine);
  const int vocab = e.model->config.vocab;
  if (!a.cases.empty()) {
    const nlohmann::json j = read_json_file(a.cases);
    if (a.compare) {
      const ReferenceAgreement g = compare_with_reference(*e.model, j, e.kv_dtype, *e.pool, a.cases);
      std::printf("%s\n", agreement_to_json(g).dump().c_str());
      return 0;
    }
    if (!j.contains("cases") || !j["cases"].is_array()) fail(a.cases + ": missing list field 'cases'");
    std::string out = "[";
    for (size_t i = 0; i < j["cases"].size(); ++i) {
      const auto& c = j["cases"][i];
      const std::string where = a.cases + ": cases[" + std::to_string(i) + "]";
      std::vector<int> ids;
      try {
        ids = c.at("tokens").get<std::vector<int>>();
      } catch (const std::exception&) {
        fail(where + ": field 'tokens' must be a list of integers");
      }
      check_ids(ids, vocab, where);
      const ScoreResult r = score_tokens(*e.model, ids, a.top, e.kv_dtype, *e.pool);
      out += (i ? "," : "") + score_to_json(r);
    }
    std::printf("%s]\n", out.c_str());
    return 0;
  }
  std::vector<int> ids = !a.text.empty() ? e.tokenizer->encode(a.text, true) : parse_token_list(a.tokens);
  check_ids(ids, vocab, "--tokens");
  const ScoreResult r = score_tokens(*e.model, ids, a.top, e.kv_dtype, *e.pool);
  std::printf("%s\n", score_to_json(r).c_str());
  return 0;
}

}  // namespace

Command add_score(CLI::App& app) {
  auto args = std::make_shared<ScoreArgs>();
  CLI::App* sub = app.add_subcommand("score", "print the logits after each token as JSON");
  add_engine_options(sub, args->engine, "f32");
  sub->add_option("--tokens", args->tokens, "comma-separated token ids, e.g. 1,415,2936");
  sub->add_option("--text", args->text, "text to tokenize (BOS is added)");
  sub->add_option("--cases", args->cases, "a JSON file shaped like expected.json: {\"cases\":[{\"tokens\":[...]}]}");
  sub->add_option("--top", args->top, "how many top [id, logit] pairs per position")->default_val(10);
  sub->add_flag("--compare", args->compare,
                "with --cases: compare against the file's reference positions (top, lse) and print "
                "top-1 agreement and mean/max |Δ log p|, |Δ lse|, |Δ logit| as one JSON object");
  return {sub, [args] { return run(*args); }};
}

}  // namespace mx::cli
