// Regression tests for the hostile inputs a fuzzing campaign found (issue 13): each builds a
// small bad file and expects one clear mx::Error naming the file and the problem, never a
// crash, a hang or a message that copies the bad value whole.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/config_files.h"
#include "formats/error.h"
#include "formats/json_input.h"
#include "formats/model_loader.h"
#include "formats/pickle.h"
#include "formats/repack.h"
#include "formats/safetensors.h"
#include "formats/safetensors_checkpoint.h"
#include "formats/torch_checkpoint.h"
#include "formats/weight_cache.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace mx {
namespace {

// Deep enough that serializing or recursing over the value overflowed the stack (the Release
// build died at ~88k levels).
constexpr int kDeep = 200000;

std::string deep_array(int levels) { return std::string(levels, '[') + std::string(levels, ']'); }
std::string deep_object(int levels) {
  std::string s;
  s.reserve(static_cast<size_t>(levels) * 7);
  for (int i = 0; i < levels; ++i) s += "{\"a\":";
  s += "1";
  s += std::string(levels, '}');
  return s;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

void write_st(const std::string& path, const std::string& header, const std::string& data = "") {
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  write_file(path, bytes + header + data);
}

// Runs f, which must throw mx::Error containing every needle; returns the message.
template <typename F>
std::string expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    ADD_FAILURE() << "no error (expected \"" << needles.back() << "\")";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "\"" << n << "\" not in: " << msg.substr(0, 400);
    return msg;
  }
  return "";
}

std::string tiny(const std::string& rel) { return test::data_path("tiny-mixtral/" + rel); }

// ---- A: deeply nested JSON ---------------------------------------------------------------

TEST(HostileJson, DeepValuesInSafetensorsHeader) {
  const std::string d = test::tmp_dir("hostile-st");
  const std::string p = d + "/a.safetensors";
  for (const std::string& deep : {deep_array(kDeep), deep_object(kDeep)}) {
    write_st(p, R"({"x":{"dtype":)" + deep + R"(,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'));
    const std::string msg = expect_error([&] { open_safetensors(p); }, {p, "nested deeper than 64"});
    EXPECT_LT(msg.size(), 600u);
    write_st(p, R"({"x":{"dtype":"F32","shape":[)" + deep + R"(],"data_offsets":[0,4]}})", std::string(4, '\0'));
    expect_error([&] { open_safetensors(p); }, {p, "nested deeper than 64"});
  }
}

TEST(HostileJson, DeepValuesInConfigFiles) {
  const std::string d = test::tmp_dir("hostile-config");
  nlohmann::json cfg = nlohmann::json::parse(test::read_file(tiny("hf/config.json")));
  std::string text = cfg.dump();
  const std::string key = "\"model_type\":\"mixtral\"";
  ASSERT_NE(text.find(key), std::string::npos);
  text.replace(text.find(key), key.size(), "\"model_type\":" + deep_array(kDeep));
  write_file(d + "/config.json", text);
  expect_error([&] { read_hf_config(d + "/config.json"); }, {d + "/config.json", "nested deeper than 64"});

  std::string params = test::read_file(tiny("mistral/params.json"));
  const std::string dim = "\"dim\": 64";
  ASSERT_NE(params.find(dim), std::string::npos);
  params.replace(params.find(dim), dim.size(), "\"dim\": " + deep_object(kDeep));
  write_file(d + "/params.json", params);
  expect_error([&] { read_params_json(d + "/params.json"); }, {d + "/params.json", "nested deeper than 64"});
}

TEST(HostileJson, DeepValuesInCacheManifestAndVocabulary) {
  // Structure is checked after parsing, so the deep value alone must already be refused.
  const std::string manifest = R"({"format":"mixtral-weight-cache","version":1,"config":{"dim":)" +
                               deep_array(kDeep) + "}}";
  expect_error([&] { parse_cache_manifest(manifest, "/c/manifest.json"); },
               {"/c/manifest.json", "nested deeper than 64"});
  TokenizerSource t;
  expect_error([&] { tokenizer_vocab_from_json(R"({"pieces":)" + deep_object(kDeep) + "}", "/c/tokenizer.json", &t); },
               {"/c/tokenizer.json", "nested deeper than 64"});
  // 64 levels are still JSON we read (the limit is not off by one the other way).
  EXPECT_NO_THROW(parse_untrusted_json(deep_array(kMaxJsonDepth), "x"));
  EXPECT_THROW(parse_untrusted_json(deep_array(kMaxJsonDepth + 1), "x"), Error);
}

TEST(HostileJson, ErrorMessagesQuoteOnlyAnExcerpt) {
  const std::string d = test::tmp_dir("hostile-msg");
  const std::string p = d + "/a.safetensors";
  // Large but shallow values: a 100k-character dtype, a shape entry that is a 50k-element list.
  write_st(p, R"({"x":{"dtype":")" + std::string(100000, 'Q') + R"(","shape":[1],"data_offsets":[0,4]}})",
           std::string(4, '\0'));
  std::string msg = expect_error([&] { open_safetensors(p); }, {p, "unsupported dtype \"QQQ", "..."});
  EXPECT_LT(msg.size(), 300u);
  std::string list = "[";
  for (int i = 0; i < 50000; ++i) list += (i ? ",7" : "7");
  list += "]";
  write_st(p, R"({"x":{"dtype":"F32","shape":[)" + list + R"(],"data_offsets":[0,4]}})", std::string(4, '\0'));
  msg = expect_error([&] { open_safetensors(p); }, {p, "tensor x", "bad dimension [7,7"});
  EXPECT_LT(msg.size(), 300u);
  // The same for config.json's model_type, and the excerpt helper on a value built in code.
  write_file(d + "/config.json", R"({"model_type": )" + list + "}");
  msg = expect_error([&] { read_hf_config(d + "/config.json"); }, {d + "/config.json", "model_type is [7,7"});
  EXPECT_LT(msg.size(), 300u);
  // A pickle GLOBAL's module and name are as long as the file makes them.
  const std::string pkl = "\x80\x02" "c" + std::string(100000, 'm') + "\n" + std::string(100000, 'n') + "\n.";
  msg = expect_error([&] { unpickle({reinterpret_cast<const uint8_t*>(pkl.data()), pkl.size()}, "p.pkl"); },
                     {"p.pkl: refusing pickle global 'mmm", "... nnn"});
  EXPECT_LT(msg.size(), 300u);
  nlohmann::json deep = 1;
  for (int i = 0; i < 1000; ++i) deep = nlohmann::json::array({deep});
  EXPECT_LE(json_excerpt(deep).size(), kJsonExcerptChars + 3);
}

// ---- B: tensor names never reach a backtracking regex ---------------------------------------

TEST(HostileNames, LongTensorNamesAreLinearToMatch) {
  int expert = 7;
  const std::string x(1 << 20, 'x');
  EXPECT_EQ(hf_canonical_name("model.layers.0." + x + ".weight", &expert, "f"), "");
  EXPECT_EQ(expert, -1);
  EXPECT_EQ(mistral_canonical_name("layers.0." + x + ".weight", &expert, "f"), "");
  EXPECT_EQ(mistral_canonical_name("layers.0.feed_forward.experts.3." + x + ".weight", &expert, "f"), "");
  // The matcher still maps the real names.
  EXPECT_EQ(hf_canonical_name("model.layers.12.block_sparse_moe.experts.5.w2.weight", &expert, "f"),
            "layers.12.experts.5.w2");
  EXPECT_EQ(expert, 5);
  EXPECT_EQ(mistral_canonical_name("layers.3.attention.wq.weight", &expert, "f"), "layers.3.attention.wq");
  EXPECT_EQ(expert, -1);
  EXPECT_EQ(hf_canonical_name("model.layers..self_attn.q_proj.weight", &expert, "f"), "");
  EXPECT_EQ(hf_canonical_name("model.layers.0.self_attn.q_proj.weightx", &expert, "f"), "");

  // In a file, a name that long is refused before any matching, with its length named.
  const std::string d = test::tmp_dir("hostile-names");
  const std::string name = "model.layers.0." + std::string(30000, 'x') + ".weight";
  write_st(d + "/a.safetensors", R"({")" + name + R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           std::string(4, '\0'));
  const std::string msg =
      expect_error([&] { open_safetensors(d + "/a.safetensors"); }, {d + "/a.safetensors", "30022 bytes long"});
  EXPECT_LT(msg.size(), 400u);
}

// ---- D: FIFOs and other non-files are refused, not waited on ------------------------------

void make_fifo(const std::string& path) { ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << path; }

TEST(HostileFiles, FifosAreRefusedNotOpenedForever) {
  {  // params.json
    const std::string d = test::tmp_dir("fifo-params");
    make_fifo(d + "/params.json");
    fs::copy_file(tiny("mistral/consolidated.safetensors"), d + "/consolidated.safetensors");
    expect_error([&] { load_model(d); }, {d + "/params.json", "not a regular file"});
  }
  {  // consolidated.safetensors
    const std::string d = test::tmp_dir("fifo-consolidated");
    fs::copy_file(tiny("mistral/params.json"), d + "/params.json");
    make_fifo(d + "/consolidated.safetensors");
    expect_error([&] { load_model(d); }, {d + "/consolidated.safetensors", "not a regular file"});
  }
  {  // a shard the HF index names, and config.json
    const std::string d = test::tmp_dir("fifo-shard");
    fs::copy_file(tiny("hf/config.json"), d + "/config.json");
    write_file(d + "/model.safetensors.index.json", R"({"weight_map": {"lm_head.weight": "shard.safetensors"}})");
    make_fifo(d + "/shard.safetensors");
    expect_error([&] { load_model(d); }, {d + "/shard.safetensors", "not a regular file"});
    fs::remove(d + "/config.json");
    make_fifo(d + "/config.json");
    expect_error([&] { load_model(d); }, {d + "/config.json", "not a regular file"});
  }
  {  // tokenizer.model next to a checkpoint (SentencePiece would block reading it)
    const std::string d = test::tmp_dir("fifo-tokenizer");
    fs::copy_file(tiny("mistral/params.json"), d + "/params.json");
    fs::copy_file(tiny("mistral/consolidated.safetensors"), d + "/consolidated.safetensors");
    make_fifo(d + "/tokenizer.model");
    expect_error([&] { load_model(d); }, {d + "/tokenizer.model", "not a regular file"});
  }
  {  // tokenizer.model next to a .pth checkpoint
    const std::string d = test::tmp_dir("fifo-pth-tokenizer");
    fs::copy_file(tiny("pth/params.json"), d + "/params.json");
    fs::copy_file(tiny("pth/consolidated.00.pth"), d + "/consolidated.00.pth");
    make_fifo(d + "/tokenizer.model");
    expect_error([&] { load_model(d); }, {d + "/tokenizer.model", "not a regular file"});
  }
  EXPECT_THROW(read_regular_file("/dev/null", 100), Error);  // a device is not a file either
}

// A dangling symlink named like a checkpoint file is not one: it is skipped, where the folder
// scan used to report "cannot list folder: No such file or directory" when it came last.
TEST(HostileFiles, DanglingPthSymlinkIsSkipped) {
  const std::string d = test::tmp_dir("dangling-pth");
  fs::copy_file(tiny("pth/params.json"), d + "/params.json");
  fs::copy_file(tiny("pth/consolidated.00.pth"), d + "/consolidated.00.pth");
  fs::create_symlink(d + "/nowhere", d + "/zz-broken.pth");
  EXPECT_EQ(load_torch_checkpoint(d, {}).store.files.size(), 1u);
  fs::remove(d + "/consolidated.00.pth");
  expect_error([&] { load_torch_checkpoint(d, {}); }, {d, "no .pth or .pt checkpoint files"});
}

TEST(HostileFiles, IndexNamesOnlyFilesInTheCheckpointFolder) {
  const std::string d = test::tmp_dir("hostile-index");
  fs::copy_file(tiny("hf/config.json"), d + "/config.json");
  write_file(d + "/model.safetensors.index.json", R"({"weight_map": {"lm_head.weight": "../../etc/passwd"}})");
  expect_error([&] { load_model(d); }, {d + "/model.safetensors.index.json", "not a plain file name"});
}

// A shard name longer than the filesystem allows (fuzz/corpus/st_index/name-too-long): the
// existence check used to throw std::filesystem_error past the loader's own errors.
TEST(HostileFiles, IndexNamingAnOverlongShardIsAnErrorNamingIt) {
  const std::string d = test::tmp_dir("hostile-index-long");
  fs::copy_file(tiny("hf/config.json"), d + "/config.json");
  const std::string name(300, 'x');
  write_file(d + "/model.safetensors.index.json", R"({"weight_map": {"lm_head.weight": ")" + name + R"("}})");
  expect_error([&] { load_model(d); }, {d + "/" + name, "cannot be checked", "File name too long"});
}

// A file name that is not UTF-8 in the checkpoint folder (every file there is fingerprinted
// into the cache manifest) made repack end in the JSON library's "invalid UTF-8" type_error.
TEST(HostileFiles, RepackSurvivesNonUtf8FileNames) {
  const std::string d = test::tmp_dir("latin1-names");
  for (const char* f : {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                        "model-00002-of-00002.safetensors", "tokenizer.model"})
    fs::copy_file(tiny(std::string("hf/") + f), d + "/" + f);
  write_file(d + "/notes-caf\xe9.txt", "x");
  RepackOptions o;
  o.model = d;
  o.out = test::tmp_dir("latin1-names-cache") + "/c";
  o.threads = 1;
  o.sync = false;
  ASSERT_NO_THROW(repack(o));
  const CacheManifest m = read_cache_manifest(o.out);
  bool found = false;
  for (const auto& f : m.source_files) found |= f.name == "notes-caf\xef\xbf\xbd.txt";  // U+FFFD
  EXPECT_TRUE(found);
  EXPECT_NO_THROW(load_model(o.out));
}

// ---- E: numbers out of range are named, with their file and field -------------------------

TEST(HostileNumbers, ConfigIntegersAreRangeCheckedBeforeNarrowing) {
  const std::string d = test::tmp_dir("hostile-numbers");
  std::string cfg = test::read_file(tiny("hf/config.json"));
  const std::string vocab = "\"vocab_size\": 32000";
  ASSERT_NE(cfg.find(vocab), std::string::npos);
  cfg.replace(cfg.find(vocab), vocab.size(), "\"vocab_size\": 2147483648");
  write_file(d + "/config.json", cfg);
  expect_error([&] { read_hf_config(d + "/config.json"); },
               {d + "/config.json: vocab_size 2147483648 out of range [1, 16777216]"});

  std::string params = test::read_file(tiny("mistral/params.json"));
  const std::string pv = "\"vocab_size\": 32000";
  ASSERT_NE(params.find(pv), std::string::npos);
  for (const char* bad : {"2147483648", "18446744073709551615", "-5", "3.5"}) {
    std::string p = params;
    p.replace(p.find(pv), pv.size(), std::string("\"vocab_size\": ") + bad);
    write_file(d + "/params.json", p);
    expect_error([&] { read_params_json(d + "/params.json"); }, {d + "/params.json: vocab_size", bad});
  }
  std::string p = params;
  p.replace(p.find("\"num_experts\": 8"), 16, "\"num_experts\": 4294967304");
  write_file(d + "/params.json", p);
  expect_error([&] { read_params_json(d + "/params.json"); }, {d + "/params.json: moe.num_experts 4294967304 out of range"});
}

TEST(HostileNumbers, ExpertIndexOverflowNamesFileAndTensor) {
  int expert = -1;
  expect_error([&] { mistral_canonical_name("layers.0.feed_forward.experts.4294967296.w1.weight", &expert, "f.st"); },
               {"f.st: tensor layers.0.feed_forward.experts.4294967296.w1.weight", "expert index 4294967296"});
  expect_error([&] { hf_canonical_name("model.layers.0.block_sparse_moe.experts.99999999999999.w3.weight", &expert, "g.st"); },
               {"g.st: tensor model.layers.0.block_sparse_moe.experts.99999999999999.w3.weight", "expert index"});
  // End to end: the loader names the file; an index that fits but exceeds the config too.
  const std::string d = test::tmp_dir("hostile-expert");
  fs::copy_file(tiny("mistral/params.json"), d + "/params.json");
  const std::string name = "layers.0.feed_forward.experts.4294967296.w1.weight";
  write_st(d + "/consolidated.safetensors", R"({")" + name + R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           std::string(4, '\0'));
  expect_error([&] { load_model(d); }, {d + "/consolidated.safetensors: tensor " + name, "expert index"});
  const std::string name9 = "layers.0.feed_forward.experts.9.w1.weight";
  write_st(d + "/consolidated.safetensors", R"({")" + name9 + R"(":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           std::string(4, '\0'));
  expect_error([&] { load_model(d); }, {d + "/consolidated.safetensors: tensor " + name9, "outside the 8 experts"});
}

}  // namespace
}  // namespace mx
