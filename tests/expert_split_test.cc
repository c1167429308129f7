// An expert split over ranks (formats/expert_split.h): each part binds only its w1/w3 rows and
// w2 rows; with the parts' hidden rows put together (the exchange runtime/expert_parallel.cc
// does), the parts' w2 rows give exactly the whole expert's output, bit for bit, for bf16, q8
// (r16) and q4 weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "formats/model_loader.h"
#include "formats/repack.h"
#include "kernels/thread_pool.h"
#include "model/moe.h"
#include "model/weights.h"
#include "test_util.h"

namespace mx {
namespace {

struct Bound {
  std::shared_ptr<LoadedModel> loaded;
  ModelWeights w;
};

Bound bind_model(const std::string& path, const LoadOptions& lo, ThreadPool& pool) {
  Bound b;
  b.loaded = std::make_shared<LoadedModel>(load_model(path, lo));
  b.w = bind_weights(*b.loaded, lo, &pool);
  return b;
}

// Expert e of layer 1 whole, and split over the ranks e, e+E, ... of n_ranks, on the same rows.
void expect_parts_equal_whole(const std::string& path, int e, int n_ranks) {
  ThreadPool pool(2);
  const Bound whole = bind_model(path, LoadOptions{}, pool);
  const ModelConfig& c = whole.loaded->config;
  const int dim = c.dim, E = c.n_experts, ffn = c.ffn_dim;
  const int n = 5;  // tokens
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n) * dim);
  for (float& v : x) v = nd(rng);
  std::vector<float> h3, h(static_cast<size_t>(n) * ffn), ref(x.size()), got(x.size(), -1.f);
  const ExpertWeights& ew = whole.w.layers[1].experts[static_cast<size_t>(e)];
  ASSERT_FALSE(ew.split);
  expert_hidden(ew, x.data(), n, h3, h.data(), pool);
  expert_output(ew, h.data(), n, ref.data(), pool);

  std::vector<Bound> parts;
  for (int rank = e; rank < n_ranks; rank += E) parts.push_back(bind_model(path, LoadOptions{rank, n_ranks}, pool));
  ASSERT_GE(parts.size(), 2u);
  // Each part's hidden rows, put together.
  std::vector<float> h_full(h.size(), -1.f), part;
  int64_t hid_rows = 0, out_rows = 0;
  for (const Bound& b : parts) {
    const ExpertWeights& pw = b.w.layers[1].experts[static_cast<size_t>(e)];
    ASSERT_TRUE(pw.present && pw.split);
    EXPECT_EQ(pw.w1.rows, pw.hid.hi - pw.hid.lo);
    EXPECT_EQ(pw.w2.rows, pw.out.hi - pw.out.lo);
    EXPECT_EQ(pw.w2.cols, ffn);
    hid_rows += pw.w1.rows;
    out_rows += pw.w2.rows;
    const int64_t w = pw.hid.hi - pw.hid.lo;
    part.assign(static_cast<size_t>(n * w), 0.f);
    expert_hidden(pw, x.data(), n, h3, part.data(), pool);
    for (int t = 0; t < n; ++t)
      std::copy_n(part.data() + t * w, w, h_full.data() + t * ffn + pw.hid.lo);
  }
  EXPECT_EQ(hid_rows, ffn);
  EXPECT_EQ(out_rows, dim);
  EXPECT_EQ(0, std::memcmp(h_full.data(), h.data(), h.size() * sizeof(float))) << path << ": hidden rows differ";
  // Each part's w2 rows over the whole hidden vector.
  for (const Bound& b : parts) {
    const ExpertWeights& pw = b.w.layers[1].experts[static_cast<size_t>(e)];
    const int64_t w = pw.out.hi - pw.out.lo;
    part.assign(static_cast<size_t>(n * w), 0.f);
    expert_output(pw, h_full.data(), n, part.data(), pool);
    for (int t = 0; t < n; ++t) std::copy_n(part.data() + t * w, w, got.data() + t * dim + pw.out.lo);
  }
  EXPECT_EQ(0, std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float))) << path << ": outputs differ";
}

TEST(ExpertSplit, PartsGiveTheWholeExpertBitForBit) {
  const std::string hf = test::data_path("tiny-mixtral/hf");
  expect_parts_equal_whole(hf, 0, 9);   // expert 0 in halves (9 ranks)
  expect_parts_equal_whole(hf, 3, 16);  // halves again, another expert
  expect_parts_equal_whole(hf, 1, 24);  // thirds: 48 + 48 + 32 hidden rows, 32 + 16 + 16 w2 rows
  for (const char* dtype : {"q8", "q4"}) {
    RepackOptions o;
    o.model = hf;
    o.out = test::tmp_dir(std::string("split-") + dtype) + "/cache";
    o.dtype = dtype;
    o.sync = false;
    repack(o);
    expect_parts_equal_whole(o.out, 0, 9);
    expect_parts_equal_whole(o.out, 2, 16);
  }
}

TEST(ExpertSplit, TooManyRanksForTheModelIsAClearError) {
  // The tiny model's dim 64 is 4 groups of 16 rows: 5 parts (40 ranks) cannot be made.
  try {
    load_model(test::data_path("tiny-mixtral/hf"), LoadOptions{0, 40});
    FAIL() << "no error";
  } catch (const std::exception& ex) {
    EXPECT_NE(std::string(ex.what()).find("40 ranks for 8 experts split each expert over 5 ranks; its output size "
                                          "(model dim) 64 has only 4 16-row groups, too few to split over 5 ranks"),
              std::string::npos)
        << ex.what();
  }
  EXPECT_NO_THROW(load_model(test::data_path("tiny-mixtral/hf"), LoadOptions{0, 32}));  // 4 parts
}

}  // namespace
}  // namespace mx
