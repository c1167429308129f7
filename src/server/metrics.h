// GET /metrics in the Prometheus text exposition format (version 0.0.4): request counts by
// endpoint and status, token counters, prefix-cache counters, TTFT and inter-token latency
// histograms, running/waiting requests and KV-cache bytes.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace mx::server {

// A cumulative-bucket histogram of seconds, as Prometheus wants it.
struct Histogram {
  std::vector<double> bounds;    // upper bounds, ascending; +Inf is implied
  std::vector<uint64_t> counts;  // per bound, not cumulative; counts.back() is the +Inf bucket
  double sum = 0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double x);
};
Histogram latency_histogram();  // 1 ms … 60 s

// What the engine knows (filled by EngineLoop, read under its lock).
struct EngineCounters {
  int64_t prompt_tokens = 0;     // of requests admitted to a slot
  int64_t prefilled_tokens = 0;  // prompt tokens actually run through the model
  int64_t reused_tokens = 0;     // prompt tokens whose KV came from the prefix cache
  int64_t prefix_requests = 0, prefix_hits = 0;  // requests admitted; of which reused >= 1 token
  int64_t generated_tokens = 0;
  Histogram ttft = latency_histogram();  // request handed in -> first token
  Histogram itl = latency_histogram();   // between one request's consecutive tokens
  size_t kv_bytes = 0;                   // KV cache allocated, all slots
};

// Requests answered, by endpoint and status (HTTP threads and the connection thread).
class RequestCounter {
 public:
  void count(const std::string& method, const std::string& path, int status);
  std::map<std::pair<std::string, int>, uint64_t> snapshot() const;

 private:
  mutable std::mutex m_;
  std::map<std::pair<std::string, int>, uint64_t> by_endpoint_;
};

// The endpoint label for a path: the route it matched, so ids do not make new series.
std::string endpoint_label(const std::string& method, const std::string& path);

struct MetricsInput {
  std::map<std::pair<std::string, int>, uint64_t> requests;
  EngineCounters engine;
  int running = 0, waiting = 0, max_users = 0;
};
std::string render_metrics(const MetricsInput& in);

}  // namespace mx::server
