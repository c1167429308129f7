#include "server/metrics.h"

#include <cstdio>

namespace mx::server {

void Histogram::observe(double x) {
  size_t i = 0;
  while (i < bounds.size() && x > bounds[i]) ++i;
  ++counts[i];
  sum += x;
  ++count;
}

Histogram latency_histogram() {
  return Histogram({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60});
}

std::string endpoint_label(const std::string& method, const std::string& path) {
  static const char* known[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"};
  std::string p = "other";
  for (const char* k : known)
    if (path == k) p = k;
  if (path.rfind("/v1/models/", 0) == 0) p = "/v1/models/{id}";
  return method + " " + p;
}

void RequestCounter::count(const std::string& method, const std::string& path, int status) {
  std::lock_guard lk(m_);
  ++by_endpoint_[{endpoint_label(method, path), status}];
}

std::map<std::pair<std::string, int>, uint64_t> RequestCounter::snapshot() const {
  std::lock_guard lk(m_);
  return by_endpoint_;
}

namespace {

std::string fmt(double x) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", x);
  return b;
}

void family(std::string& o, const char* name, const char* type, const char* help) {
  o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& o, const char* name, double v) { o += std::string(name) + " " + fmt(v) + "\n"; }

// A family of one unlabelled sample: the name is written once.
void metric(std::string& o, const char* name, const char* type, const char* help, double v) {
  family(o, name, type, help);
  sample(o, name, v);
}

void histogram(std::string& o, const char* name, const char* help, const Histogram& h) {
  family(o, name, "histogram", help);
  uint64_t cum = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += h.counts[i];
    o += std::string(name) + "_bucket{le=\"" + fmt(h.bounds[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  o += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count) + "\n";
  o += std::string(name) + "_sum " + fmt(h.sum) + "\n";
  o += std::string(name) + "_count " + std::to_string(h.count) + "\n";
}

}  // namespace

std::string render_metrics(const MetricsInput& in) {
  std::string o;
  family(o, "mixtral_requests_total", "counter", "HTTP requests answered, by endpoint and status.");
  for (const auto& [key, n] : in.requests)
    o += "mixtral_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
         std::to_string(n) + "\n";
  const EngineCounters& e = in.engine;
  metric(o, "mixtral_prompt_tokens_total", "counter", "Prompt tokens of requests given a KV-cache slot.", static_cast<double>(e.prompt_tokens));
  metric(o, "mixtral_prefilled_tokens_total", "counter", "Prompt tokens run through the model (not reused).", static_cast<double>(e.prefilled_tokens));
  metric(o, "mixtral_generated_tokens_total", "counter", "Tokens generated.", static_cast<double>(e.generated_tokens));
  metric(o, "mixtral_prefix_cache_reused_tokens_total", "counter", "Prompt tokens whose KV came from the prefix cache.", static_cast<double>(e.reused_tokens));
  metric(o, "mixtral_prefix_cache_requests_total", "counter", "Requests given a KV-cache slot.", static_cast<double>(e.prefix_requests));
  metric(o, "mixtral_prefix_cache_hits_total", "counter", "Requests that reused at least one cached token.", static_cast<double>(e.prefix_hits));
  histogram(o, "mixtral_time_to_first_token_seconds", "From a request reaching the engine to its first token.", e.ttft);
  histogram(o, "mixtral_inter_token_latency_seconds", "Between consecutive tokens of one request.", e.itl);
  metric(o, "mixtral_requests_running", "gauge", "Requests holding a KV-cache slot.", in.running);
  metric(o, "mixtral_requests_waiting", "gauge", "Requests queued for a slot.", in.waiting);
  metric(o, "mixtral_max_users", "gauge", "KV-cache slots.", in.max_users);
  metric(o, "mixtral_kv_cache_bytes", "gauge", "KV-cache memory allocated over all slots.", static_cast<double>(e.kv_bytes));
  return o;
}

}  // namespace mx::server
