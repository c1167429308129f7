// Bad checkpoints give one clear error naming the file and the problem, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/model_loader.h"
#include "formats/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace mx {
namespace {

void write_st(const std::string& path, const std::string& header, const std::string& data,
              int64_t claimed_len = -1) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = claimed_len >= 0 ? static_cast<uint64_t>(claimed_len) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

// Expects load to throw an mx::Error whose message contains every needle.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    FAIL() << "no error";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ReadsTensors) {
  const std::string d = test::tmp_dir("st");
  std::string data(16, '\0');
  const float v[4] = {1, 2, 3, 4};
  std::memcpy(data.data(), v, 16);
  write_st(d + "/a.safetensors", R"({"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})", data);
  SafetensorsFile st = open_safetensors(d + "/a.safetensors");
  ASSERT_EQ(st.tensors.count("x"), 1u);
  EXPECT_EQ(st.tensors["x"].shape, (std::vector<int64_t>{2, 2}));
  // The data section follows the 58-byte header unpadded, so it may be unaligned: copy, not cast.
  float got[4];
  std::memcpy(got, st.tensors["x"].data, sizeof got);
  EXPECT_EQ(got[3], 4.f);
}

TEST(Safetensors, HeaderLongerThanFile) {
  const std::string d = test::tmp_dir("st"), p = d + "/a.safetensors";
  write_st(p, R"({})", "", 1 << 20);
  expect_error([&] { open_safetensors(p); }, {p, "longer than the file"});
}

TEST(Safetensors, TruncatedFile) {
  const std::string d = test::tmp_dir("st"), p = d + "/a.safetensors";
  write_st(p, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0'));
  expect_error([&] { open_safetensors(p); }, {p, "tensor x", "outside"});
  std::ofstream(d + "/tiny.safetensors") << "abc";
  expect_error([&] { open_safetensors(d + "/tiny.safetensors"); }, {"tiny.safetensors"});
}

TEST(Safetensors, OverlappingOffsets) {
  const std::string d = test::tmp_dir("st"), p = d + "/a.safetensors";
  write_st(p,
           R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
           R"("y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
           std::string(16, '\0'));
  expect_error([&] { open_safetensors(p); }, {p, "overlapping"});
}

TEST(Safetensors, ShapeDisagreesWithBytes) {
  const std::string d = test::tmp_dir("st"), p = d + "/a.safetensors";
  write_st(p, R"({"x":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", std::string(16, '\0'));
  expect_error([&] { open_safetensors(p); }, {p, "tensor x", "needs 8 bytes"});
}

TEST(Safetensors, BadJsonAndDtype) {
  const std::string d = test::tmp_dir("st"), p = d + "/a.safetensors";
  write_st(p, R"({"x":)", "");
  expect_error([&] { open_safetensors(p); }, {p, "not valid JSON"});
  write_st(p, R"({"x":{"dtype":"F8","shape":[4],"data_offsets":[0,4]}})", std::string(4, '\0'));
  expect_error([&] { open_safetensors(p); }, {p, "unsupported dtype"});
}

TEST(Safetensors, MissingFile) {
  expect_error([] { open_safetensors("/nonexistent/x.safetensors"); }, {"/nonexistent/x.safetensors", "cannot open"});
}

// A copy of the HF fixture that tests can break.
std::string hf_copy() {
  const std::string d = test::tmp_dir("hf");
  fs::copy(test::data_path("tiny-mixtral/hf"), d, fs::copy_options::recursive);
  for (auto& e : fs::directory_iterator(d)) fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  return d;
}

TEST(Checkpoint, ConfigMissingField) {
  const std::string d = hf_copy();
  nlohmann::json j = nlohmann::json::parse(test::read_file(d + "/config.json"));
  j.erase("num_local_experts");
  std::ofstream(d + "/config.json") << j.dump();
  expect_error([&] { load_model(d); }, {"config.json", "num_local_experts"});
}

TEST(Checkpoint, MissingTensorAndShard) {
  const std::string d = hf_copy();
  nlohmann::json idx = nlohmann::json::parse(test::read_file(d + "/model.safetensors.index.json"));
  fs::remove(d + "/model-00002-of-00002.safetensors");
  expect_error([&] { load_model(d); }, {"model-00002-of-00002.safetensors", "missing"});
  // Point every tensor at shard 1 only: the tensors that lived in shard 2 are now missing.
  for (auto& [k, v] : idx["weight_map"].items()) v = "model-00001-of-00002.safetensors";
  std::ofstream(d + "/model.safetensors.index.json") << idx.dump();
  expect_error([&] { load_model(d); }, {"missing tensor"});
}

TEST(Checkpoint, WrongShapeAndDtype) {
  const std::string d = hf_copy();
  nlohmann::json j = nlohmann::json::parse(test::read_file(d + "/config.json"));
  j["intermediate_size"] = 256;
  std::ofstream(d + "/config.json") << j.dump();
  expect_error([&] { load_model(d); }, {"has shape", "expected [256, 64]"});
}

TEST(Checkpoint, UnrecognizedFolderListsWhatWasLookedFor) {
  const std::string d = test::tmp_dir("empty");
  expect_error([&] { load_model(d); }, {d, "looked for", "config.json", "params.json", ".gguf"});
}

TEST(Checkpoint, UnevenRanksAndPlacements) {
  // 3 ranks of 8 experts: 3+3+2; rank 2 holds 6 and 7 only.
  LoadedModel m = load_model(test::data_path("tiny-mixtral/hf"), {2, 3});
  EXPECT_FALSE(m.store.has("layers.0.experts.5.w1"));
  EXPECT_TRUE(m.store.has("layers.0.experts.6.w1"));
  EXPECT_TRUE(m.store.has("layers.1.experts.7.w2"));
  // More ranks than experts: rank 9 of 16 holds (part of) expert 1 only; too many to split is an error.
  LoadedModel s = load_model(test::data_path("tiny-mixtral/hf"), {9, 16});
  EXPECT_TRUE(s.store.has("layers.0.experts.1.w1"));
  EXPECT_FALSE(s.store.has("layers.0.experts.0.w1"));
  EXPECT_FALSE(s.store.has("layers.0.experts.2.w2"));
  expect_error([] { load_model(test::data_path("tiny-mixtral/hf"), {0, 40}); },
               {"40 ranks for 8 experts", "model dim) 64 has only 4 16-row groups"});
  LoadOptions lo{1, 2};
  lo.owner = {1, 0, 0, 0, 0, 0, 0, 1};
  LoadedModel p = load_model(test::data_path("tiny-mixtral/hf"), lo);
  EXPECT_TRUE(p.store.has("layers.0.experts.0.w1"));
  EXPECT_FALSE(p.store.has("layers.0.experts.1.w1"));
  EXPECT_TRUE(p.store.has("layers.0.experts.7.w1"));
  lo.owner = {0, 1, 0};
  expect_error([&] { load_model(test::data_path("tiny-mixtral/hf"), lo); },
               {"the placement places 3 experts but the model has 8"});
}

TEST(Checkpoint, RankSkipsOtherExperts) {
  LoadedModel m = load_model(test::data_path("tiny-mixtral/mistral"), {1, 2});
  EXPECT_FALSE(m.store.has("layers.0.experts.0.w1"));
  EXPECT_TRUE(m.store.has("layers.0.experts.4.w1"));
  EXPECT_TRUE(m.store.has("layers.1.experts.7.w2"));
}

}  // namespace
}  // namespace mx
