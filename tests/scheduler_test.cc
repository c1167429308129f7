// The scheduler's prefix cache on the tiny model: a reused prefix gives bit-identical logits
// and tokens to a cold prefill, a multi-turn chat prefills only each turn's new tokens, and
// choices that share a prompt copy its KV instead of prefilling it again.
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "formats/model_loader.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "runtime/scheduler.h"
#include "test_util.h"

namespace mx {
namespace {

// A model, a KV cache and a scheduler over them; every logits row the model returns is kept by
// the position of the token it follows, so runs of one user can be compared position by
// position.
struct Rig {
  ThreadPool pool{2};
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> kv;
  std::unique_ptr<Scheduler> sched;
  std::map<int, std::vector<float>> rows;
  int prefilled = 0;  // prompt tokens sent to the model

  explicit Rig(SchedulerOptions o, DType kv_dtype = DType::F32) {
    auto lm = std::make_shared<LoadedModel>(load_model(test::data_path("tiny-mixtral/hf")));
    model = make_model(lm, {}, pool);
    const ModelConfig& c = model->config;
    kv = std::make_unique<KvCache>(c.n_layers, c.n_kv_heads * c.head_dim, 512, kv_dtype);
    auto fwd = [this](const std::vector<SeqChunk>& batch) {
      std::vector<float> out = forward(*model, *kv, batch, pool);
      const size_t V = static_cast<size_t>(model->config.vocab);
      for (size_t i = 0; i < batch.size(); ++i)
        rows[kv->length(batch[i].slot) - 1].assign(out.begin() + static_cast<long>(i * V),
                                                                    out.begin() + static_cast<long>((i + 1) * V));
      return out;
    };
    sched = std::make_unique<Scheduler>(fwd, c.vocab, 2, 512, o);
  }
  // Runs until idle (bounded); returns the generated tokens of `id`.
  std::vector<int> run(int id) {
    for (int i = 0; i < 2000 && sched->busy(); ++i) prefilled += sched->step().prompt_tokens;
    EXPECT_FALSE(sched->busy());
    return sched->user(id).generated;
  }
};

Request greedy(std::vector<int> prompt, int n) {
  Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = n;
  r.sampling.temperature = 0;
  r.stop_at_eos = false;
  return r;
}

std::vector<int> prompt_of(int n, int salt) {
  std::vector<int> p = {1};
  for (int i = 1; i < n; ++i) p.push_back(100 + (i * 37 + salt * 101) % 900);
  return p;
}

TEST(PrefixCache, ReusedPrefixIsBitIdenticalToColdPrefill) {
  for (const int chunk : {3, 512}) {
    SchedulerOptions o;
    o.max_users = 2;
    o.prefill_chunk = chunk;
    Rig warm(o), cold(o);
    const std::vector<int> p1 = prompt_of(20, 1);
    const int a = warm.sched->submit(greedy(p1, 6));
    const std::vector<int> gen = warm.run(a);
    // The next turn: the first prompt, the reply and new tokens.
    std::vector<int> p2 = p1;
    p2.insert(p2.end(), gen.begin(), gen.end());
    for (int t : {28792, 28747, 415, 2936}) p2.push_back(t);
    warm.rows.clear();
    const int b = warm.sched->submit(greedy(p2, 8));
    const std::vector<int> warm_gen = warm.run(b);
    // The KV held p1 and all but the last generated token (which was never fed).
    EXPECT_EQ(warm.sched->user(b).reused, static_cast<int>(p1.size() + gen.size()) - 1) << chunk;
    const int c = cold.sched->submit(greedy(p2, 8));
    EXPECT_EQ(cold.run(c), warm_gen) << chunk;
    EXPECT_EQ(cold.sched->user(c).reused, 0);
    // Every logits row of the second turn equals the cold run's at the same position: the
    // last prompt token's and the 7 decode steps' (and chunk ends both runs have).
    int compared = 0;
    for (const auto& [pos, row] : warm.rows) {
      const auto it = cold.rows.find(pos);
      if (it == cold.rows.end()) continue;
      ASSERT_EQ(row, it->second) << "position " << pos << " chunk " << chunk;
      ++compared;
    }
    EXPECT_GE(compared, 8) << chunk;
    EXPECT_TRUE(warm.rows.count(static_cast<int>(p2.size()) - 1)) << chunk;

    // A prompt that leaves the cached sequence inside it (an edited last turn): the slot's
    // tail past the shared part must be overwritten, not attended to.
    std::vector<int> p3(p2.begin(), p2.begin() + static_cast<long>(p1.size()) + 2);
    for (int t : {415, 2936, 9060}) p3.push_back(t);
    warm.rows.clear();
    const int d = warm.sched->submit(greedy(p3, 5));
    const std::vector<int> warm3 = warm.run(d);
    EXPECT_EQ(warm.sched->user(d).reused, static_cast<int>(p1.size()) + 2) << chunk;
    Rig cold3(o);
    const int e = cold3.sched->submit(greedy(p3, 5));
    EXPECT_EQ(cold3.run(e), warm3) << chunk;
    const int last = static_cast<int>(p3.size()) - 1;
    ASSERT_TRUE(warm.rows.count(last) && cold3.rows.count(last));
    EXPECT_EQ(warm.rows.at(last), cold3.rows.at(last)) << chunk;
  }
}

TEST(PrefixCache, TenTurnChatPrefillsOnlyEachTurnsNewTokens) {
  SchedulerOptions o;
  o.max_users = 2;
  o.prefill_chunk = 8;
  Rig rig(o, DType::F16);
  std::vector<int> prompt = prompt_of(12, 3);
  int expected_reused = 0;
  for (int turn = 0; turn < 10; ++turn) {
    // Another user with an unrelated prompt runs alongside and must not evict the chat.
    const int chat = rig.sched->submit(greedy(prompt, 5));
    const int other = rig.sched->submit(greedy(prompt_of(10, 50 + turn), 3));
    rig.prefilled = 0;
    const std::vector<int> gen = rig.run(chat);
    const int other_prefilled = static_cast<int>(rig.sched->user(other).req.prompt.size()) - rig.sched->user(other).reused;
    EXPECT_EQ(rig.sched->user(chat).reused, expected_reused) << "turn " << turn;
    EXPECT_EQ(rig.prefilled - other_prefilled, static_cast<int>(prompt.size()) - expected_reused) << "turn " << turn;
    // Next turn: this reply and 4 new tokens. The KV holds all but the reply's last token.
    expected_reused = static_cast<int>(prompt.size() + gen.size()) - 1;
    prompt.insert(prompt.end(), gen.begin(), gen.end());
    for (int t : {733, 16289, 28793, 100 + turn}) prompt.push_back(t);
  }
  // Each later turn prefilled 5 tokens: the previous reply's last one and the 4 new ones.
  const PrefixCacheStats& s = rig.sched->prefix_stats();
  EXPECT_EQ(s.requests, 20);
  EXPECT_EQ(s.hits, 9);
}

TEST(PrefixCache, DisabledCacheNeverReuses) {
  SchedulerOptions o;
  o.max_users = 1;
  o.prefix_cache = false;
  Rig rig(o);
  const std::vector<int> p = prompt_of(16, 4);
  rig.run(rig.sched->submit(greedy(p, 2)));
  const int b = rig.sched->submit(greedy(p, 2));
  rig.prefilled = 0;
  rig.run(b);
  EXPECT_EQ(rig.sched->user(b).reused, 0);
  EXPECT_EQ(rig.prefilled, 16);
}

TEST(PrefixCache, ChoicesCopyTheirLeadersPrompt) {
  SchedulerOptions o;
  o.max_users = 3;
  o.prefill_chunk = 4;
  Rig rig(o);
  SchedulerOptions cold = o;
  cold.prefix_cache = false;
  Rig solo(cold);
  const std::vector<int> p = prompt_of(14, 5);
  Request r = greedy(p, 6);
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 1;
  std::vector<int> ids;
  for (int i = 0; i < 3; ++i) {
    Request ri = r;
    ri.sampling.seed = 7;
    ri.prompt_leader = i == 0 ? -1 : ids[0];
    ids.push_back(rig.sched->submit(ri));
  }
  rig.run(ids[0]);
  // The leader prefilled the prompt, each other choice only its last token.
  EXPECT_EQ(rig.prefilled, 14 + 1 + 1);
  EXPECT_EQ(rig.sched->user(ids[1]).reused, 13);
  EXPECT_EQ(rig.sched->user(ids[2]).reused, 13);
  // Each choice samples what it would alone, cold, with its own stream (user i has stream i).
  std::vector<std::vector<int>> gens;
  for (int i = 0; i < 3; ++i) {
    Request ri = r;
    ri.sampling.seed = 7;
    const int id = solo.sched->submit(ri);
    ASSERT_EQ(id, i);
    gens.push_back(solo.run(id));
    EXPECT_EQ(gens.back(), rig.sched->user(ids[static_cast<size_t>(i)]).generated) << i;
  }
  EXPECT_TRUE(gens[0] != gens[1] || gens[0] != gens[2]);  // the streams differ
}

}  // namespace
}  // namespace mx
