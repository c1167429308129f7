// Perplexity and KL divergence over a text file, computed the way llama.cpp's llama-perplexity
// computes them, so the figures of the two engines on the same file are comparable:
//   - the tokenized file (BOS first) is cut into non-overlapping chunks of `ctx` tokens, as many
//     as fit (at most `max_chunks`); each chunk's first token is replaced by BOS and the chunk
//     runs as one prefill in an empty KV cache;
//   - only the second half is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens
//     at ctx/2+1 .. ctx-1 (ctx-1-ctx/2 tokens per chunk);
//   - PPL = exp(mean NLL), error = PPL * sqrt(var(NLL) / (n-1)).
// The KL statistics against saved base log-probabilities follow llama-perplexity
// --kl-divergence (mean KLD ± error, percentiles, same top token, Δp, PPL ratio).
//
// Base log-probabilities file (--save-logits / --kl-base), little-endian:
//   char[8]  magic "MXLOGP1\0"
//   u32      ctx, vocab, n_chunk, scored (= ctx-1-ctx/2, rows per chunk)
//   i32      tokens[n_chunk*ctx]      the file's tokens as tokenized (before the BOS swap)
//   then per chunk, per scored position, one row:
//     i32    top id of the base logits (lowest id on ties)
//     f32    base NLL of the next token (exact, for PPL(base) and Δp)
//     u16    f16 log-probabilities [vocab]
// Its size is checked exactly on read. The f16 log-probs are renormalized on read, so a model
// compared with its own file gets KLD ~1e-8 rather than f16's rounding noise.
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/dtype.h"

namespace mx {

class ThreadPool;
struct Model;

struct PerplexityPlan {
  int ctx = 0;
  int n_chunk = 0;
  int first = 0;   // ctx/2: the first position whose logits are scored
  int scored = 0;  // ctx-1-first positions scored per chunk
};

// Checks ctx and the token count the way llama-perplexity does (at least 2*ctx tokens) and
// picks the chunk count; throws mx::Error naming `what` (the text file) on bad input.
// `model_ctx` is the model's context limit; max_chunks < 0 means all.
PerplexityPlan plan_perplexity(int n_tokens, int ctx, int max_chunks, int model_ctx,
                               const std::string& what);

// The tokens of chunk `i` as they are run: tokens[i*ctx .. (i+1)*ctx) with the first set to BOS.
std::vector<int> chunk_tokens(const std::vector<int>& tokens, const PerplexityPlan& p, int i,
                              int bos);

struct LogitsFile {
  int ctx = 0, vocab = 0, n_chunk = 0, scored = 0;
  std::vector<int> tokens;  // n_chunk*ctx
  std::string path;
  size_t rows_offset = 0;   // where the first row starts
};

// Reads and checks the header of a base log-probabilities file (magic, sizes, exact length).
LogitsFile read_logits_header(const std::string& path);
// Refuses a base file made from another vocabulary, context or token sequence, saying which.
void check_logits_match(const LogitsFile& f, int vocab, int ctx, const std::vector<int>& tokens,
                        int n_chunk, const std::string& text_path);

// Mean of a sample with llama-perplexity's error of the mean (0 when n <= 10).
struct MeanErr {
  double mean = 0, err = 0;
};

struct KlReport {
  MeanErr ppl, ppl_base, ln_ratio, ppl_ratio, ppl_diff, kld, p_diff, rms_p_diff, same_top;
  double cor = 0;  // correlation of ln PPL(Q) and ln PPL(base), as llama.cpp prints it
  double kld_max = 0, kld_999 = 0, kld_99 = 0, kld_median = 0, kld_10 = 0, kld_5 = 0, kld_1 = 0,
         kld_min = 0;
  // Δp percentiles: max, 99.9, 99, 95, 90, 75, median, 25, 10, 5, 1, 0.1, min
  std::vector<std::pair<std::string, double>> p_diff_pct;
};

struct PerplexityResult {
  PerplexityPlan plan;
  int n_tokens = 0;  // tokens in the file (BOS included)
  size_t count = 0;  // tokens scored
  MeanErr ppl;       // ppl.err is the ± llama-perplexity prints
  bool has_kl = false;
  KlReport kl;
};

struct PerplexityOptions {
  int ctx = 512;
  int max_chunks = -1;
  DType kv_dtype = DType::F32;
  std::string save_logits;  // write the base file here
  std::string kl_base;      // compare against this base file
  // Called after each chunk with (chunks done, chunks total, running PPL, its error).
  std::function<void(int, int, double, double)> progress;
};

// Runs the whole file; `tokens` is the tokenized file with BOS first. `text_path` names it in
// errors. Throws mx::Error on bad input (see plan_perplexity, check_logits_match).
PerplexityResult run_perplexity(Model& m, const std::vector<int>& tokens, int bos,
                                const PerplexityOptions& o, const std::string& text_path,
                                ThreadPool& pool);

// The final report in llama-perplexity's wording, and as one JSON object.
std::string perplexity_report(const PerplexityResult& r);
std::string perplexity_json(const PerplexityResult& r);

}  // namespace mx
