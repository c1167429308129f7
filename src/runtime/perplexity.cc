#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "kernels/half.h"
#include "model/forward.h"

namespace mx {

namespace {

constexpr char kMagic[8] = {'M', 'X', 'L', 'O', 'G', 'P', '1', '\0'};
constexpr size_t kHeaderBytes = 8 + 4 * 4;

size_t row_bytes(int vocab) { return 4 + 4 + 2 * static_cast<size_t>(vocab); }

struct Sums {
  double nll = 0, nll2 = 0, nll_base = 0, nll_base2 = 0, nll_nll_base = 0, kld = 0, kld2 = 0,
         p_diff = 0, p_diff2 = 0, p_diff4 = 0;
  size_t same_top = 0, count = 0;
};

// llama-perplexity's mean_and_uncertainty.
MeanErr mean_err(double sum, double sum2, size_t n) {
  if (n < 1) return {};
  const double f = sum / static_cast<double>(n);
  double df = sum2 / static_cast<double>(n) - f * f;
  df = df > 0 && n > 10 ? std::sqrt(df / static_cast<double>(n - 1)) : 0.;
  return {f, df};
}

double covariance(double a, double b, double ab, size_t n) {
  if (n < 10) return 0;
  const double dn = static_cast<double>(n);
  return (ab / dn - (a / dn) * (b / dn)) / (dn - 1);
}

// llama-perplexity's percentile: linear between the neighbouring sorted values.
double percentile(const std::vector<float>& v, double fraction) {
  if (fraction <= 0) return v.front();
  if (fraction >= 1) return v.back();
  double p = fraction * static_cast<double>(v.size() - 1);
  const size_t ip = static_cast<size_t>(p);
  p -= static_cast<double>(ip);
  return (1 - p) * v[ip] + p * v[std::min(ip + 1, v.size() - 1)];
}

double median(const std::vector<float>& v) {
  const size_t n = v.size();
  return n % 2 == 0 ? 0.5 * (v[n / 2] + v[n / 2 - 1]) : v[n / 2];
}

// Log-sum-exp of one row of logits in double, and its argmax (lowest id on ties).
double row_lse(const float* lg, int vocab, int* top) {
  int im = 0;
  for (int i = 1; i < vocab; ++i)
    if (lg[i] > lg[im]) im = i;
  const double mx = lg[im];
  double s = 0;
  for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(lg[i]) - mx);
  *top = im;
  return mx + std::log(s);
}

void write_all(std::ofstream& out, const void* p, size_t n, const std::string& path) {
  out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
  if (!out) fail(path + ": write failed (disk full?)");
}

}  // namespace

PerplexityPlan plan_perplexity(int n_tokens, int ctx, int max_chunks, int model_ctx,
                               const std::string& what) {
  // ctx/2 context positions and at least a few scored ones per chunk.
  if (ctx < 8) fail("--ctx " + std::to_string(ctx) + " is too small (at least 8)");
  if (ctx > model_ctx)
    fail("--ctx " + std::to_string(ctx) + " is larger than the model's context of " +
         std::to_string(model_ctx) + " tokens");
  if (max_chunks == 0) fail("--chunks must be at least 1 (or omitted for all)");
  // llama-perplexity refuses fewer than 2*ctx tokens; so do we, so that both always run.
  if (n_tokens < 2 * ctx)
    fail(what + ": tokenizes to only " + std::to_string(n_tokens) + " tokens; perplexity with --ctx " +
         std::to_string(ctx) + " needs at least " + std::to_string(2 * ctx) +
         " (as llama-perplexity) — give a longer text or a smaller --ctx");
  PerplexityPlan p;
  p.ctx = ctx;
  p.n_chunk = n_tokens / ctx;
  if (max_chunks > 0) p.n_chunk = std::min(p.n_chunk, max_chunks);
  p.first = ctx / 2;
  p.scored = ctx - 1 - p.first;
  return p;
}

std::vector<int> chunk_tokens(const std::vector<int>& tokens, const PerplexityPlan& p, int i,
                              int bos) {
  const auto b = tokens.begin() + static_cast<ptrdiff_t>(i) * p.ctx;
  std::vector<int> c(b, b + p.ctx);
  c[0] = bos;
  return c;
}

LogitsFile read_logits_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path + ": cannot open the base logits file");
  const auto size = static_cast<size_t>(in.tellg());
  in.seekg(0);
  char magic[8] = {};
  uint32_t h[4] = {};
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(h), sizeof h);
  if (!in || std::memcmp(magic, kMagic, 8) != 0)
    fail(path + ": not a base logits file made by `mixtral perplexity --save-logits` (bad magic)");
  LogitsFile f;
  f.path = path;
  f.ctx = static_cast<int>(h[0]);
  f.vocab = static_cast<int>(h[1]);
  f.n_chunk = static_cast<int>(h[2]);
  f.scored = static_cast<int>(h[3]);
  if (f.ctx < 8 || f.ctx > (1 << 24) || f.vocab < 1 || f.vocab > (1 << 24) || f.n_chunk < 1 ||
      f.n_chunk > (1 << 24) || f.scored != f.ctx - 1 - f.ctx / 2)
    fail(path + ": header is inconsistent (ctx " + std::to_string(h[0]) + ", vocab " +
         std::to_string(h[1]) + ", chunks " + std::to_string(h[2]) + ", rows per chunk " +
         std::to_string(h[3]) + ")");
  const size_t n_tok = static_cast<size_t>(f.ctx) * static_cast<size_t>(f.n_chunk);
  f.rows_offset = kHeaderBytes + 4 * n_tok;
  const size_t want = f.rows_offset + static_cast<size_t>(f.n_chunk) * static_cast<size_t>(f.scored) *
                                          row_bytes(f.vocab);
  if (size != want)
    fail(path + ": is " + std::to_string(size) + " bytes but its header describes " +
         std::to_string(want) + " (truncated or not a base logits file)");
  f.tokens.resize(n_tok);
  in.read(reinterpret_cast<char*>(f.tokens.data()), static_cast<std::streamsize>(4 * n_tok));
  if (!in) fail(path + ": cannot read its token list");
  return f;
}

void check_logits_match(const LogitsFile& f, int vocab, int ctx, const std::vector<int>& tokens,
                        int n_chunk, const std::string& text_path) {
  if (f.vocab != vocab)
    fail(f.path + ": base logits have a vocabulary of " + std::to_string(f.vocab) +
         " but this model's is " + std::to_string(vocab) + " — they cannot be compared");
  if (f.ctx != ctx)
    fail(f.path + ": base logits were saved with --ctx " + std::to_string(f.ctx) +
         "; run with --ctx " + std::to_string(f.ctx) + " (this run has " + std::to_string(ctx) + ")");
  if (n_chunk > f.n_chunk)
    fail(f.path + ": holds " + std::to_string(f.n_chunk) + " chunks but this run scores " +
         std::to_string(n_chunk) + "; pass --chunks " + std::to_string(f.n_chunk) +
         " or save the base with more");
  const size_t n = static_cast<size_t>(n_chunk) * static_cast<size_t>(ctx);
  for (size_t i = 0; i < n; ++i)
    if (f.tokens[i] != tokens[i])
      fail(f.path + ": token " + std::to_string(i) + " differs from " + text_path + " (base has id " +
           std::to_string(f.tokens[i]) + ", this run has " + std::to_string(tokens[i]) +
           "): the base logits were made from another text or tokenizer");
}

PerplexityResult run_perplexity(Model& m, const std::vector<int>& tokens, int bos,
                                const PerplexityOptions& o, const std::string& text_path,
                                ThreadPool& pool) {
  if (!o.save_logits.empty() && !o.kl_base.empty())
    fail("give --save-logits or --kl-base, not both");
  const int vocab = m.config.vocab;
  PerplexityResult r;
  r.n_tokens = static_cast<int>(tokens.size());
  const PerplexityPlan p = plan_perplexity(r.n_tokens, o.ctx, o.max_chunks, m.config.max_seq_len, text_path);
  r.plan = p;

  std::unique_ptr<LogitsFile> base;
  std::ifstream base_in;
  if (!o.kl_base.empty()) {
    base = std::make_unique<LogitsFile>(read_logits_header(o.kl_base));
    check_logits_match(*base, vocab, p.ctx, tokens, p.n_chunk, text_path);
    base_in.open(o.kl_base, std::ios::binary);
    base_in.seekg(static_cast<std::streamoff>(base->rows_offset));
    r.has_kl = true;
  }
  std::ofstream save;
  if (!o.save_logits.empty()) {
    save.open(o.save_logits, std::ios::binary | std::ios::trunc);
    if (!save) fail(o.save_logits + ": cannot create the logits file");
    const uint32_t h[4] = {static_cast<uint32_t>(p.ctx), static_cast<uint32_t>(vocab),
                           static_cast<uint32_t>(p.n_chunk), static_cast<uint32_t>(p.scored)};
    write_all(save, kMagic, 8, o.save_logits);
    write_all(save, h, sizeof h, o.save_logits);
    write_all(save, tokens.data(), 4 * static_cast<size_t>(p.n_chunk) * p.ctx, o.save_logits);
  }

  // One cache of exactly ctx positions, reset for every chunk.
  KvCache kv(m.config.n_layers, m.config.n_kv_heads * m.config.head_dim, p.ctx, o.kv_dtype);
  Sums s;
  std::vector<float> kld_values, p_diff_values;
  std::vector<uint8_t> row(row_bytes(vocab));
  std::vector<double> base_lp(static_cast<size_t>(vocab));
  for (int c = 0; c < p.n_chunk; ++c) {
    SeqChunk chunk;
    chunk.slot = 0;
    chunk.fresh = true;
    chunk.all_logits = true;
    chunk.tokens = chunk_tokens(tokens, p, c, bos);
    const std::vector<float> logits = forward(m, kv, {chunk}, pool);
    for (int j = p.first; j < p.ctx - 1; ++j) {
      const float* lg = logits.data() + static_cast<size_t>(j) * vocab;
      const int next = tokens[static_cast<size_t>(c) * p.ctx + j + 1];
      int top = 0;
      const double lse = row_lse(lg, vocab, &top);
      const double nll = lse - lg[next];
      s.nll += nll;
      s.nll2 += nll * nll;
      ++s.count;
      if (save.is_open()) {
        const int32_t t = top;
        const float fn = static_cast<float>(nll);
        std::memcpy(row.data(), &t, 4);
        std::memcpy(row.data() + 4, &fn, 4);
        auto* h = reinterpret_cast<uint16_t*>(row.data() + 8);
        for (int i = 0; i < vocab; ++i) h[i] = f32_to_f16(static_cast<float>(lg[i] - lse));
        write_all(save, row.data(), row.size(), o.save_logits);
      }
      if (base) {
        base_in.read(reinterpret_cast<char*>(row.data()), static_cast<std::streamsize>(row.size()));
        if (!base_in) fail(o.kl_base + ": read failed in chunk " + std::to_string(c));
        int32_t btop;
        float bnll;
        std::memcpy(&btop, row.data(), 4);
        std::memcpy(&bnll, row.data() + 4, 4);
        const auto* h = reinterpret_cast<const uint16_t*>(row.data() + 8);
        double bmax = -INFINITY;
        for (int i = 0; i < vocab; ++i) {
          base_lp[static_cast<size_t>(i)] = f16_to_f32(h[i]);
          bmax = std::max(bmax, base_lp[static_cast<size_t>(i)]);
        }
        double bs = 0;
        for (int i = 0; i < vocab; ++i) bs += std::exp(base_lp[static_cast<size_t>(i)] - bmax);
        const double blse = bmax + std::log(bs);  // renormalizes the f16-rounded distribution
        double kld = 0;
        for (int i = 0; i < vocab; ++i) {
          const double lpb = base_lp[static_cast<size_t>(i)] - blse;
          kld += std::exp(lpb) * (lpb - (lg[i] - lse));
        }
        const double nb = bnll;
        s.nll_base += nb;
        s.nll_base2 += nb * nb;
        s.nll_nll_base += nll * nb;
        s.kld += kld;
        s.kld2 += kld * kld;
        s.same_top += top == btop;
        const double pd = std::exp(-nll) - std::exp(-nb);
        s.p_diff += pd;
        s.p_diff2 += pd * pd;
        s.p_diff4 += pd * pd * pd * pd;
        kld_values.push_back(static_cast<float>(kld));
        p_diff_values.push_back(static_cast<float>(pd));
      }
    }
    if (o.progress) {
      const MeanErr le = mean_err(s.nll, s.nll2, s.count);
      o.progress(c + 1, p.n_chunk, std::exp(le.mean), std::exp(le.mean) * le.err);
    }
  }
  if (save.is_open()) {
    save.close();
    if (!save) fail(o.save_logits + ": write failed");
  }

  r.count = s.count;
  // llama-perplexity's final estimate: sqrt(var / (n-1)) of the NLL, times PPL.
  const double n = static_cast<double>(s.count);
  const double mean = s.nll / n;
  const double var = s.nll2 / n - mean * mean;
  r.ppl.mean = std::exp(mean);
  r.ppl.err = var > 0 && s.count > 1 ? std::sqrt(var / (n - 1)) * r.ppl.mean : 0;
  if (!base) return r;

  KlReport& k = r.kl;
  const MeanErr lp = mean_err(s.nll, s.nll2, s.count);
  const MeanErr lb = mean_err(s.nll_base, s.nll_base2, s.count);
  const double cov = covariance(s.nll, s.nll_base, s.nll_nll_base, s.count);
  k.ppl = {std::exp(lp.mean), std::exp(lp.mean) * lp.err};
  k.ppl_base = {std::exp(lb.mean), std::exp(lb.mean) * lb.err};
  k.cor = lp.err > 0 && lb.err > 0 ? cov / (lp.err * lb.err) : 0;
  const double ratio_err = std::sqrt(std::max(0.0, lp.err * lp.err + lb.err * lb.err - 2 * cov));
  k.ln_ratio = {lp.mean - lb.mean, ratio_err};
  k.ppl_ratio = {std::exp(k.ln_ratio.mean), std::exp(k.ln_ratio.mean) * ratio_err};
  const double ppl_cov = k.ppl.mean * k.ppl_base.mean * cov;
  k.ppl_diff = {k.ppl.mean - k.ppl_base.mean,
                std::sqrt(std::max(0.0, k.ppl.err * k.ppl.err + k.ppl_base.err * k.ppl_base.err - 2 * ppl_cov))};
  k.kld = mean_err(s.kld, s.kld2, s.count);
  k.p_diff = mean_err(s.p_diff, s.p_diff2, s.count);
  const MeanErr mse = mean_err(s.p_diff2, s.p_diff4, s.count);
  k.rms_p_diff = {std::sqrt(mse.mean), mse.mean > 0 ? 0.5 / std::sqrt(mse.mean) * mse.err : 0};
  const double st = static_cast<double>(s.same_top) / n;
  k.same_top = {st, s.count > 1 ? std::sqrt(st * (1 - st) / (n - 1)) : 0};
  std::sort(kld_values.begin(), kld_values.end());
  std::sort(p_diff_values.begin(), p_diff_values.end());
  k.kld_max = kld_values.back();
  k.kld_999 = percentile(kld_values, 0.999);
  k.kld_99 = percentile(kld_values, 0.99);
  k.kld_median = median(kld_values);
  k.kld_10 = percentile(kld_values, 0.10);
  k.kld_5 = percentile(kld_values, 0.05);
  k.kld_1 = percentile(kld_values, 0.01);
  k.kld_min = kld_values.front();
  k.p_diff_pct = {{"max", p_diff_values.back()},
                  {"99.9%", percentile(p_diff_values, 0.999)},
                  {"99.0%", percentile(p_diff_values, 0.99)},
                  {"95.0%", percentile(p_diff_values, 0.95)},
                  {"90.0%", percentile(p_diff_values, 0.90)},
                  {"75.0%", percentile(p_diff_values, 0.75)},
                  {"median", median(p_diff_values)},
                  {"25.0%", percentile(p_diff_values, 0.25)},
                  {"10.0%", percentile(p_diff_values, 0.10)},
                  {"5.0%", percentile(p_diff_values, 0.05)},
                  {"1.0%", percentile(p_diff_values, 0.01)},
                  {"0.1%", percentile(p_diff_values, 0.001)},
                  {"min", p_diff_values.front()}};
  return r;
}

std::string perplexity_report(const PerplexityResult& r) {
  char b[256];
  std::string out;
  auto line = [&](const char* fmt, auto... v) {
    std::snprintf(b, sizeof b, fmt, v...);
    out += b;
  };
  line("chunks: %d of %d tokens (%zu scored)\n", r.plan.n_chunk, r.plan.ctx, r.count);
  line("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl.mean, r.ppl.err);
  if (!r.has_kl) return out;
  const KlReport& k = r.kl;
  line("\n====== Perplexity statistics ======\n");
  line("Mean PPL(Q)                   : %10.6f ± %10.6f\n", k.ppl.mean, k.ppl.err);
  line("Mean PPL(base)                : %10.6f ± %10.6f\n", k.ppl_base.mean, k.ppl_base.err);
  line("Cor(ln(PPL(Q)), ln(PPL(base))): %6.2f%%\n", 100.0 * k.cor);
  line("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", k.ln_ratio.mean, k.ln_ratio.err);
  line("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", k.ppl_ratio.mean, k.ppl_ratio.err);
  line("Mean PPL(Q)-PPL(base)         : %10.6f ± %10.6f\n", k.ppl_diff.mean, k.ppl_diff.err);
  line("\n====== KL divergence statistics ======\n");
  line("Mean    KLD: %10.6f ± %10.6f\n", k.kld.mean, k.kld.err);
  line("Maximum KLD: %10.6f\n", k.kld_max);
  line("99.9%%   KLD: %10.6f\n", k.kld_999);
  line("99.0%%   KLD: %10.6f\n", k.kld_99);
  line("Median  KLD: %10.6f\n", k.kld_median);
  line("10.0%%   KLD: %10.6f\n", k.kld_10);
  line(" 5.0%%   KLD: %10.6f\n", k.kld_5);
  line(" 1.0%%   KLD: %10.6f\n", k.kld_1);
  line("Minimum KLD: %10.6f\n", k.kld_min);
  line("\n====== Token probability statistics ======\n");
  line("Mean    Δp: %6.3f ± %5.3f %%\n", 100.0 * k.p_diff.mean, 100.0 * k.p_diff.err);
  for (const auto& [name, v] : k.p_diff_pct) line("%-7s Δp: %6.3f%%\n", name.c_str(), 100.0 * v);
  line("RMS Δp    : %6.3f ± %5.3f %%\n", 100.0 * k.rms_p_diff.mean, 100.0 * k.rms_p_diff.err);
  line("Same top p: %6.3f ± %5.3f %%\n", 100.0 * k.same_top.mean, 100.0 * k.same_top.err);
  return out;
}

std::string perplexity_json(const PerplexityResult& r) {
  using nlohmann::json;
  auto me = [](const MeanErr& m) { return json{{"value", m.mean}, {"error", m.err}}; };
  json j{{"ctx", r.plan.ctx},     {"chunks", r.plan.n_chunk}, {"tokens", r.n_tokens},
         {"scored", r.count},     {"ppl", r.ppl.mean},        {"ppl_error", r.ppl.err}};
  if (r.has_kl) {
    const KlReport& k = r.kl;
    json pd = json::object();
    for (const auto& [name, v] : k.p_diff_pct) pd[name] = v;
    j["kl"] = json{{"ppl", me(k.ppl)},
                   {"ppl_base", me(k.ppl_base)},
                   {"cor_ln_ppl", k.cor},
                   {"ln_ppl_ratio", me(k.ln_ratio)},
                   {"ppl_ratio", me(k.ppl_ratio)},
                   {"ppl_diff", me(k.ppl_diff)},
                   {"kld", me(k.kld)},
                   {"kld_max", k.kld_max},
                   {"kld_99_9", k.kld_999},
                   {"kld_99", k.kld_99},
                   {"kld_median", k.kld_median},
                   {"kld_10", k.kld_10},
                   {"kld_5", k.kld_5},
                   {"kld_1", k.kld_1},
                   {"kld_min", k.kld_min},
                   {"p_diff", me(k.p_diff)},
                   {"p_diff_percentiles", pd},
                   {"rms_p_diff", me(k.rms_p_diff)},
                   {"same_top", me(k.same_top)}};
  }
  return j.dump();
}

}  // namespace mx
