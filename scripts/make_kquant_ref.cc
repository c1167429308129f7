// Writes tests/data/kquant-ref.gguf: heavy-tailed "weight-like" rows and llama.cpp's reference
// Q4_K / Q5_K / Q6_K encodings of them, so that tests can hold our encoders to an error no
// larger than llama.cpp's on the same values (tests/quant_blocks_test.cc).
// Build against a llama.cpp build's libggml-base (its quantize_row_*_ref):
//   L=/path/to/llama.cpp/build/bin
//   g++ -O2 -std=c++17 scripts/make_kquant_ref.cc -L$L -lggml-base -Wl,-rpath,$L -o /tmp/mkq
//   /tmp/mkq tests/data/kquant-ref.gguf
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

extern "C" {
void quantize_row_q4_K_ref(const float* x, void* y, int64_t k);
void quantize_row_q5_K_ref(const float* x, void* y, int64_t k);
void quantize_row_q6_K_ref(const float* x, void* y, int64_t k);
}

namespace {

constexpr int kRows = 64, kCols = 256;

template <typename V>
void raw(std::string& o, V v) { o.append(reinterpret_cast<const char*>(&v), sizeof(V)); }
void str(std::string& o, const std::string& s) {
  raw<uint64_t>(o, s.size());
  o += s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.gguf\n", argv[0]);
    return 2;
  }
  // Trained weights are not Gaussian: scales vary by row and by region, with rare outliers.
  // A Gaussian times a log-normal per element, a per-row scale and a few spikes imitates that.
  std::mt19937 rng(20261202);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(kRows) * kCols);
  for (int r = 0; r < kRows; ++r) {
    const float row_scale = 0.02f * std::exp(0.5f * nd(rng));
    for (int c = 0; c < kCols; ++c) {
      float v = row_scale * nd(rng) * std::exp(0.6f * nd(rng));
      if (rng() % 97 == 0) v *= 8.0f;
      x[static_cast<size_t>(r) * kCols + c] = v;
    }
  }
  struct Q { const char* name; uint32_t type; size_t block; void (*fn)(const float*, void*, int64_t); };
  const Q qs[] = {{"Q4_K.source", 12, 144, quantize_row_q4_K_ref},
                  {"Q5_K.source", 13, 176, quantize_row_q5_K_ref},
                  {"Q6_K.source", 14, 210, quantize_row_q6_K_ref}};
  struct T { std::string name; uint32_t type; std::string data; };
  std::vector<T> ts;
  ts.push_back({"source", 0, std::string(reinterpret_cast<const char*>(x.data()), x.size() * 4)});
  for (const Q& q : qs) {
    std::string d(kRows * (kCols / 256) * q.block, '\0');
    for (int r = 0; r < kRows; ++r)
      q.fn(x.data() + static_cast<size_t>(r) * kCols, &d[static_cast<size_t>(r) * (kCols / 256) * q.block], kCols);
    ts.push_back({q.name, q.type, d});
  }
  std::string out = "GGUF";
  raw<uint32_t>(out, 3);
  raw<uint64_t>(out, ts.size());
  raw<uint64_t>(out, 2);
  str(out, "general.architecture");
  raw<uint32_t>(out, 8);
  str(out, "kquant-reference");
  str(out, "general.description");
  raw<uint32_t>(out, 8);
  str(out, "heavy-tailed rows (source, f32) and llama.cpp's quantize_row_q{4,5,6}_K_ref of them; scripts/make_kquant_ref.cc");
  uint64_t off = 0;
  for (const T& t : ts) {
    str(out, t.name);
    raw<uint32_t>(out, 2);
    raw<uint64_t>(out, kCols);  // ne0: elements per row
    raw<uint64_t>(out, kRows);
    raw<uint32_t>(out, t.type);
    raw<uint64_t>(out, off);
    off += (t.data.size() + 31) / 32 * 32;
  }
  out.resize((out.size() + 31) / 32 * 32, '\0');
  for (const T& t : ts) {
    out += t.data;
    out.resize((out.size() + 31) / 32 * 32, '\0');
  }
  FILE* f = std::fopen(argv[1], "wb");
  if (!f || std::fwrite(out.data(), 1, out.size(), f) != out.size() || std::fclose(f) != 0) {
    std::perror(argv[1]);
    return 1;
  }
  return 0;
}
