// Module-level checks of the trained model (models/tale-mixtral) against train.py's PyTorch
// Mixtral in f32 (tests/data/tale-modules.json, written by tools/train/dump_modules.py): one
// decoder layer's attention block, MoE block (router choices and output) and the whole layer,
// each fed the reference's own input, so a failure names the module, not just "the model".
// The engine's model functions run in f32 with an f32 KV cache; every value must be within 1e-4.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/model_loader.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"
#include "model/attention.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "model/moe.h"
#include "test_util.h"

namespace mx {
namespace {

constexpr double kTol = 1e-4;

const nlohmann::json& ref() {
  static nlohmann::json j = nlohmann::json::parse(test::read_file(test::data_path("tale-modules.json")));
  return j;
}

std::vector<float> arr(const char* name) { return ref()[name].get<std::vector<float>>(); }

struct Fixture {
  ThreadPool pool{2};
  std::unique_ptr<Model> m;
  int layer = 0, T = 0;
  Fixture() {
    const std::string dir = std::string(MIXTRAL_SOURCE_DIR) + "/models/tale-mixtral";
    m = make_model(std::make_shared<LoadedModel>(load_model(dir)), {}, pool);
    layer = ref()["layer"].get<int>();
    T = static_cast<int>(ref()["tokens"].size());
  }
};

// Largest |got - want| and where, so a failure reports the token and channel.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, int dim,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= worst)) worst = d, at = i;  // NaN counts as worst
  }
  EXPECT_LE(worst, kTol) << what << ": token " << at / dim << " channel " << at % dim << " got "
                         << got[at] << " want " << want[at];
}

// The attention block as forward() runs it: norm, q/k/v, RoPE, cache, attention, wo.
std::vector<float> attention_block(Fixture& f, const std::vector<float>& x) {
  const ModelConfig& c = f.m->config;
  const LayerWeights& lw = f.m->weights.layers[static_cast<size_t>(f.layer)];
  const int dim = c.dim, T = f.T, qdim = c.n_heads * c.head_dim, kvdim = c.n_kv_heads * c.head_dim;
  std::vector<float> h(x.size()), q(static_cast<size_t>(T) * qdim), k(static_cast<size_t>(T) * kvdim),
      v(k.size()), att(q.size()), out(x.size());
  for (int t = 0; t < T; ++t)
    ops::rmsnorm(&x[static_cast<size_t>(t) * dim], lw.attention_norm.data(), dim, c.norm_eps,
                 &h[static_cast<size_t>(t) * dim]);
  const MatView qkv[3] = {lw.wq, lw.wk, lw.wv};
  float* const outs[3] = {q.data(), k.data(), v.data()};
  matmul_multi(qkv, outs, 3, h.data(), T, f.pool);
  std::vector<TokenPos> tp;
  for (int t = 0; t < T; ++t) tp.push_back({0, t});
  const RopeTable rope = make_rope_table(tp, c);
  apply_rope(rope, c, q.data(), c.n_heads, T);
  apply_rope(rope, c, k.data(), c.n_kv_heads, T);
  KvCache kv(c.n_layers, kvdim, T, DType::F32);
  kv.reset(0);
  kv.reserve(0, T);
  for (int t = 0; t < T; ++t)
    kv.write(0, f.layer, t, &k[static_cast<size_t>(t) * kvdim], &v[static_cast<size_t>(t) * kvdim]);
  attention(kv, f.layer, tp, c, q.data(), att.data(), f.pool);
  matmul(lw.wo, att.data(), T, out.data(), f.pool);
  return out;
}

// The MoE block on the residual stream x: norm, route, experts, combine (no residual add).
std::vector<float> moe_block(Fixture& f, const std::vector<float>& x, MoeRouting* routing = nullptr) {
  const ModelConfig& c = f.m->config;
  const LayerWeights& lw = f.m->weights.layers[static_cast<size_t>(f.layer)];
  const int dim = c.dim, T = f.T;
  std::vector<float> h(x.size()), out(x.size());
  for (int t = 0; t < T; ++t)
    ops::rmsnorm(&x[static_cast<size_t>(t) * dim], lw.ffn_norm.data(), dim, c.norm_eps,
                 &h[static_cast<size_t>(t) * dim]);
  const MoeRouting r = route(lw, h.data(), T, c.top_k, f.pool);
  std::vector<float> y(static_cast<size_t>(T) * c.top_k * dim);
  f.m->experts(f.layer, h.data(), dim, r, y.data());
  combine_experts(r, y.data(), dim, out.data());
  if (routing) *routing = r;
  return out;
}

std::vector<float> plus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> s(a.size());
  ops::add(a.data(), b.data(), static_cast<int64_t>(a.size()), s.data());
  return s;
}

TEST(Module, AttentionBlockMatchesPyTorch) {
  Fixture f;
  expect_close(attention_block(f, arr("layer_in")), arr("attn_out"), f.m->config.dim,
               "attention of layer " + std::to_string(f.layer));
}

TEST(Module, MoeRouterAndBlockMatchPyTorch) {
  Fixture f;
  MoeRouting r;
  const std::vector<float> out = moe_block(f, arr("moe_in"), &r);
  // Router: the same two experts per token (ascending) with the same renormalized weights.
  const auto& experts = ref()["experts"];
  const auto& weights = ref()["expert_weights"];
  ASSERT_EQ(r.n_tokens, f.T);
  for (int t = 0; t < f.T; ++t)
    for (int j = 0; j < r.top_k; ++j) {
      const size_t i = static_cast<size_t>(t * r.top_k + j);
      EXPECT_EQ(r.expert[i], experts[t][j].get<int>()) << "token " << t << " choice " << j;
      EXPECT_NEAR(r.weight[i], weights[t][j].get<double>(), kTol) << "token " << t << " choice " << j;
    }
  expect_close(out, arr("moe_out"), f.m->config.dim, "MoE block of layer " + std::to_string(f.layer));
}

TEST(Module, DecoderLayerMatchesPyTorch) {
  Fixture f;
  const std::vector<float> mid = plus(arr("layer_in"), attention_block(f, arr("layer_in")));
  expect_close(mid, arr("moe_in"), f.m->config.dim, "residual after attention");
  expect_close(plus(mid, moe_block(f, mid)), arr("layer_out"), f.m->config.dim,
               "layer " + std::to_string(f.layer) + " output");
}

// The whole model through forward(): the last position's logits (top ones stored) and lse.
TEST(Module, WholeModelLastLogitsMatchPyTorch) {
  Fixture f;
  const ModelConfig& c = f.m->config;
  KvCache kv(c.n_layers, c.n_kv_heads * c.head_dim, f.T, DType::F32);
  SeqChunk s;
  s.tokens = ref()["tokens"].get<std::vector<int>>();
  s.fresh = true;
  const std::vector<float> logits = forward(*f.m, kv, {s}, f.pool);
  ASSERT_EQ(logits.size(), static_cast<size_t>(c.vocab));
  double mx = -INFINITY, sum = 0;
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  for (float v : logits) sum += std::exp(v - mx);
  EXPECT_NEAR(mx + std::log(sum), ref()["last_logits"]["lse"].get<double>(), kTol);
  for (const auto& p : ref()["last_logits"]["top"])
    EXPECT_NEAR(logits[p[0].get<size_t>()], p[1].get<double>(), kTol) << "token " << p[0];
}

}  // namespace
}  // namespace mx
