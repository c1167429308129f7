#include "runtime/expert_parallel.h"

#include <mpi.h>
#include <sched.h>
#include <sys/sysinfo.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <new>
#include <thread>

#include "formats/error.h"
#include "formats/expert_split.h"
#include "formats/model_loader.h"
#include "kernels/matmul.h"
#include "kernels/thread_pool.h"
#include "model/forward.h"
#include "model/kv_cache.h"
#include "runtime/placement.h"

namespace mx::ep {

namespace {

// Control messages from rank 0: a fixed header, then `bytes` of payload.
enum MsgType : int64_t { kOpen = 1, kStep = 2, kStats = 3, kExit = 4 };
// Liveness pings (check_peers) on their own communicator: rank 0 sends kPing, an idle follower answers kPong.
enum ProbeTag : int { kPing = 11, kPong = 12 };
struct Header {
  int64_t type = 0, bytes = 0, a = 0, b = 0;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Process-wide state. MPI calls come from one thread at a time (the command's, or the
// follower loop); thread-pool workers never call MPI.
struct Runtime {
  World world;
  MPI_Comm ctrl = MPI_COMM_NULL;  // rank 0's control messages
  MPI_Comm data = MPI_COMM_NULL;  // per-layer expert exchange
  MPI_Comm probe = MPI_COMM_NULL; // liveness pings
  MPI_Request ping_req = MPI_REQUEST_NULL;  // follower: the posted receive of rank 0's next ping
  int ping_buf = 0;
  // Rank 0: a step and a liveness check never overlap (MPI calls are serialized), so
  // check_peers waits for `stepping` to clear and holds new steps back while `probing`.
  std::mutex mu;
  std::condition_variable cv;
  bool stepping = false, probing = false;
  // check_peers was called at this time (0: not): a step in flight gives up on a silent peer
  // after hurry_wait seconds instead of timeout_s (mpirun kills rank 0 about 1 s after a rank dies).
  std::atomic<double> hurry_t{0};
  double hurry_wait = 0;
  // Rank 0's waits on peers inside a step (the control message, the exchange), as check_peers
  // sees them from another thread: when it last polled MPI (0: not waiting) and whom it waited
  // for then. A poll that stops means the thread is stuck inside MPI (OpenMPI blocks in its own
  // abort when a TCP peer disconnects, or in a send to a dead peer), so check_peers names them.
  std::atomic<double> exchange_poll_t{0};
  std::string exchange_missing;  // guarded by mu
  CommStats stats;
  bool timing = false;      // MIXTRAL_EP_TIMING=1
  bool check_routing = false;  // MIXTRAL_EP_CHECK=1
  // Rank 0: a step the others have started; cleared after the last layer's exchange.
  bool step_open = false;
  int layers_done = 0;
  // Test hooks (tests/mpi_test.sh): on rank test_rank, die or fail an allocation in step k.
  int test_rank = 1;
  long die_at_step = -1, oom_at_step = -1;
  // Figures for gather_rank_stats, set when a model is attached.
  double expert_mb = 0;
  int first_expert = 0, n_experts = 0;
  std::string experts_label;  // RankStats::experts
  std::vector<int> counts, displs, cursor;
  std::vector<float> buf;
  std::vector<MPI_Request> reqs;
  LoadOptions load;               // this rank's, with the placement rank 0 sent
  std::vector<int> owner;         // expert -> rank, filled when a model is attached
  // expert -> the ranks holding its parts, ascending (one rank unless experts are split)
  std::vector<std::vector<int>> holders;
  // With more ranks than experts: each rank's hidden rows and w2 output rows of its expert.
  std::vector<RowSlice> hid_of, out_of;
  std::vector<float> xs, h_mine, h3, h_full, y_part;  // a split expert's scratch
  std::vector<std::vector<float>> h_peer;              // its peers' hidden rows, by group index
  std::vector<std::string> hosts; // each rank's hostname
  double timeout_s = 5;           // MIXTRAL_EP_TIMEOUT: longest wait for a peer's expert rows
  double layer_t0 = 0;            // when this rank began the current layer's work
  std::function<void(const std::string&)> fatal_hook;  // rank 0, set_fatal_hook
};

Runtime& rt() {
  static Runtime r;
  return r;
}

std::string mpi_error_string(int rc) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, s, &n);
  return std::string(s, static_cast<size_t>(n));
}

// Communication errors end the job: the other ranks would otherwise wait forever.
void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) abort_job(std::string(what) + " failed: " + mpi_error_string(rc));
}

long env_long(const char* name, long dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == 0) ? x : dflt;
}

double status_mb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0) return std::stod(line.substr(n)) / 1024.0;
  return 0;
}

// Local rank i of n gets CPUs [i*k, (i+1)*k) with k = online CPUs / n; all of them when the
// host is oversubscribed.
void share_host_cpus(int local_rank, int local_size) {
  const int n = get_nprocs();
  const int k = n / std::max(1, local_size);
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c = 0; c < n && c < CPU_SETSIZE; ++c)
    if (k == 0 || (c >= local_rank * k && c < (local_rank + 1) * k)) CPU_SET(c, &set);
  sched_setaffinity(0, sizeof set, &set);  // best effort: a cpuset may narrow it further
}

// ---- control channel ------------------------------------------------------------------------

void note_wait(std::string who);

void send_msg(int64_t type, const std::vector<char>& payload, int64_t a = 0, int64_t b = 0) {
  Runtime& r = rt();
  // The others are still inside a step rank 0 abandoned (an exception between layers).
  if (r.step_open) abort_job("a step failed between layers while the other ranks were in it");
  Header h{type, static_cast<int64_t>(payload.size()), a, b};
  // A broadcast does not say which rank it still waits for: all of them, for check_peers.
  std::string everyone;
  for (int q = 1; q < r.world.size; ++q)
    everyone += (everyone.empty() ? "" : ", ") + ("rank " + std::to_string(q) + " on host " + host_of(q));
  if (r.world.size > 2) everyone = "one of " + everyone;
  note_wait(everyone);
  // Followers wait with a non-blocking broadcast (so they can sleep), and MPI requires the
  // root to match it with a non-blocking one too.
  MPI_Request req;
  check(MPI_Ibcast(&h, 4, MPI_INT64_T, 0, r.ctrl, &req), "MPI_Ibcast (control header)");
  const double t0 = now_s();
  int done = 0;
  for (long spins = 0;; ++spins) {
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test (control header)");
    if (done) break;
    if ((spins & 255) == 0) {
      const double t = now_s(), hurry = r.hurry_t.load();
      r.exchange_poll_t = t;
      if (t - t0 > r.timeout_s || (hurry > 0 && t - hurry > r.hurry_wait)) {
        char secs[32];
        std::snprintf(secs, sizeof secs, "%.3g", t - t0);
        abort_job("rank 0's control message did not reach " + everyone + " for " + secs +
                  " s; that host is down or unreachable (MIXTRAL_EP_TIMEOUT sets the wait)");
      }
    }
  }
  if (!payload.empty())
    check(MPI_Bcast(const_cast<char*>(payload.data()), static_cast<int>(payload.size()), MPI_BYTE,
                    0, r.ctrl),
          "MPI_Bcast (control payload)");
  r.exchange_poll_t = 0;
}

// A follower answers rank 0's liveness ping (check_peers) while it idles between steps.
void answer_ping() {
  Runtime& r = rt();
  if (r.ping_req == MPI_REQUEST_NULL)
    check(MPI_Irecv(&r.ping_buf, 1, MPI_INT, 0, kPing, r.probe, &r.ping_req), "MPI_Irecv (ping)");
  int got = 0;
  check(MPI_Test(&r.ping_req, &got, MPI_STATUS_IGNORE), "MPI_Test (ping)");
  if (got) check(MPI_Send(&r.ping_buf, 1, MPI_INT, 0, kPong, r.probe), "MPI_Send (pong)");
}

// Rank 0: pings every other rank and waits up to wait_s for the answers; names the ranks that
// did not answer ("" when all did). The others must be idle (no step in flight).
std::string ping_peers(double wait_s) {
  Runtime& r = rt();
  const int N = r.world.size;
  std::vector<int> ping(static_cast<size_t>(N), 1), pong(static_cast<size_t>(N), 0);
  std::vector<MPI_Request> recv(static_cast<size_t>(N), MPI_REQUEST_NULL), send(recv);
  std::vector<char> answered(static_cast<size_t>(N), 0), failed(answered);
  answered[0] = 1;
  for (int q = 1; q < N; ++q) {
    const size_t i = static_cast<size_t>(q);
    if (MPI_Irecv(&pong[i], 1, MPI_INT, q, kPong, r.probe, &recv[i]) != MPI_SUCCESS ||
        MPI_Isend(&ping[i], 1, MPI_INT, q, kPing, r.probe, &send[i]) != MPI_SUCCESS)
      failed[i] = 1;
  }
  const double t0 = now_s();
  for (;;) {
    bool all = true;
    for (size_t i = 1; i < answered.size(); ++i) {
      if (answered[i] || failed[i]) {
        all = all && answered[i];
        continue;
      }
      int ok = 0;
      // An error here is a peer MPI saw fail (e.g. its connection was refused).
      if (MPI_Test(&recv[i], &ok, MPI_STATUS_IGNORE) != MPI_SUCCESS) failed[i] = 1;
      answered[i] = static_cast<char>(ok && !failed[i]);
      all = all && answered[i];
    }
    if (all || now_s() - t0 > wait_s) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::string who;
  for (int q = 1; q < N; ++q)
    if (!answered[static_cast<size_t>(q)])
      who += (who.empty() ? "" : ", ") + ("rank " + std::to_string(q) + " on host " + host_of(q));
  // Everyone answered, so every ping was received: the sends complete.
  if (who.empty()) check(MPI_Waitall(N, send.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (pings)");
  return who;
}

// Followers idle here between steps (rank 0 may be reading a prompt for minutes): spin
// briefly for low step latency, then sleep so an idle rank costs no CPU.
Header recv_msg(std::vector<char>* payload) {
  Runtime& r = rt();
  Header h;
  MPI_Request req;
  check(MPI_Ibcast(&h, 4, MPI_INT64_T, 0, r.ctrl, &req), "MPI_Ibcast (control header)");
  const double t0 = now_s();
  int done = 0;
  for (;;) {
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test (control header)");
    if (done) break;
    answer_ping();
    const double idle = now_s() - t0;
    if (idle < 0.002) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(idle < 0.1 ? 50 : 1000));
    }
  }
  payload->resize(static_cast<size_t>(h.bytes));
  if (h.bytes > 0)
    check(MPI_Bcast(payload->data(), static_cast<int>(h.bytes), MPI_BYTE, 0, r.ctrl),
          "MPI_Bcast (control payload)");
  return h;
}

// ---- the per-layer exchange -----------------------------------------------------------------

// The peers whose rows the current exchange still waits for ("rank 1 on host b").
std::string missing_peers(size_t n_recv, const std::vector<int>& from) {
  Runtime& r = rt();
  std::string who;
  for (size_t k = 0; k < n_recv && k < r.reqs.size(); ++k) {
    int ok = 0;
    if (r.reqs[k] != MPI_REQUEST_NULL) MPI_Request_get_status(r.reqs[k], &ok, MPI_STATUS_IGNORE);
    if (r.reqs[k] == MPI_REQUEST_NULL || ok) continue;
    const int q = from[k];
    who += (who.empty() ? "" : ", ") + ("rank " + std::to_string(q) + " on host " + host_of(q));
  }
  return who;
}

// Rank 0: records that a wait on peers is alive and whom it waits for (see exchange_poll_t).
void note_wait(std::string who) {
  Runtime& r = rt();
  {
    std::lock_guard lk(r.mu);
    r.exchange_missing.swap(who);
  }
  r.exchange_poll_t = now_s();
}

void note_exchange(size_t n_recv, const std::vector<int>& from) { note_wait(missing_peers(n_recv, from)); }

// One peer's share of an exchange: `count` floats at `data`, sent to or received from `peer`.
struct Piece {
  int peer;
  float* data;
  int count;
};

// Posts every receive and send at once and waits for all of them: written as point-to-point
// messages so that a peer that stops answering (dead host, link down) is noticed after
// r.timeout_s and named, instead of blocking a collective forever. Only data moves, so results
// are unchanged.
void exchange_floats(int layer, const std::vector<Piece>& recvs, const std::vector<Piece>& sends, int tag) {
  Runtime& r = rt();
  const int N = r.world.size, me = r.world.rank;
  r.reqs.clear();
  std::vector<int> from;  // the peer each receive request waits for
  for (const Piece& p : recvs) {
    from.push_back(p.peer);
    r.reqs.emplace_back();
    check(MPI_Irecv(p.data, p.count, MPI_FLOAT, p.peer, tag, r.data, &r.reqs.back()), "MPI_Irecv (expert outputs)");
  }
  const size_t n_recv = r.reqs.size();
  for (const Piece& p : sends) {
    r.reqs.emplace_back();
    check(MPI_Isend(p.data, p.count, MPI_FLOAT, p.peer, tag, r.data, &r.reqs.back()), "MPI_Isend (expert outputs)");
  }
  const double t0 = now_s();
  // A peer may legitimately need longer than this rank for the same layer (a long prefill
  // chunk, routing that sends it more pairs): wait at least 2N times this rank's own work.
  const double limit = std::max(r.timeout_s, 2.0 * N * (t0 - r.layer_t0));
  const double own_work = 2.0 * N * (t0 - r.layer_t0);
  int done = 0;
  double waited = 0;
  for (long spins = 0;; ++spins) {
    check(MPI_Testall(static_cast<int>(r.reqs.size()), r.reqs.data(), &done, MPI_STATUSES_IGNORE),
          "MPI_Testall (expert outputs)");
    if (done) {  // (the caller restarts layer_t0 after the layer's last exchange)
      r.exchange_poll_t = 0;
      return;
    }
    if ((spins & 255) == 0) {
      const double t = now_s(), hurry = r.hurry_t.load();
      if (me == 0) note_exchange(n_recv, from);
      waited = t - t0;
      if (waited > limit) break;
      if (hurry > 0 && t - hurry > r.hurry_wait && waited > own_work) break;
    }
  }
  // Name the peers whose rows never came (or that never took ours).
  std::string who = missing_peers(n_recv, from);
  if (who.empty()) who = "a rank that did not take this rank's rows";
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.3g", waited);
  abort_job("layer " + std::to_string(layer) + ": no expert rows from " + who + " for " + secs +
            " s; that host is down or unreachable (MIXTRAL_EP_TIMEOUT sets the wait)");
}

// With more ranks than experts this rank holds part of one expert: hidden rows [hid.lo, hid.hi)
// of w1/w3 and output rows [out.lo, out.hi) of w2. It computes its hidden rows for the expert's
// pairs, swaps them with the expert's other ranks (every rank routes alike, so all of them know
// the pairs), and runs its w2 rows over the whole hidden vector: each output float is the one a
// single process computes (matmul.h: y[t, o] depends only on W row o and x row t). The result
// goes to y at the pair's columns [out.lo, out.hi); exchange() spreads the pieces.
void run_split_expert(const LayerWeights& lw, int layer, const float* x, int dim, const MoeRouting& route,
                      float* y, ThreadPool& pool) {
  Runtime& r = rt();
  const int me = r.world.rank, E = static_cast<int>(lw.experts.size());
  if (E == 0 || !r.load.splits(E)) return;
  const int e = me % E;
  const ExpertWeights& ew = lw.experts[static_cast<size_t>(e)];
  if (!ew.present || !ew.split) return;
  std::vector<int> ps;
  for (int i = 0; i < route.n_tokens * route.top_k; ++i)
    if (route.expert[static_cast<size_t>(i)] == e) ps.push_back(i);
  const int n = static_cast<int>(ps.size());
  if (n == 0) return;
  r.xs.resize(static_cast<size_t>(n) * dim);
  for (int k = 0; k < n; ++k)
    std::memcpy(r.xs.data() + static_cast<size_t>(k) * dim, x + static_cast<size_t>(ps[static_cast<size_t>(k)] / route.top_k) * dim,
                static_cast<size_t>(dim) * sizeof(float));
  const int64_t w_me = ew.hid.hi - ew.hid.lo;
  r.h_mine.resize(static_cast<size_t>(n * w_me));
  expert_hidden(ew, r.xs.data(), n, r.h3, r.h_mine.data(), pool);

  const std::vector<int>& group = r.holders[static_cast<size_t>(e)];
  r.h_peer.resize(group.size());
  std::vector<Piece> recvs, sends;
  for (size_t g = 0; g < group.size(); ++g) {
    const int q = group[g];
    if (q == me) continue;
    const RowSlice& hq = r.hid_of[static_cast<size_t>(q)];
    r.h_peer[g].resize(static_cast<size_t>(n * (hq.hi - hq.lo)));
    recvs.push_back({q, r.h_peer[g].data(), static_cast<int>(r.h_peer[g].size())});
    sends.push_back({q, r.h_mine.data(), static_cast<int>(r.h_mine.size())});
  }
  const double t0 = now_s();
  exchange_floats(layer, recvs, sends, 8);
  r.stats.seconds += now_s() - t0;
  r.stats.bytes_sent += static_cast<uint64_t>(r.h_mine.size()) * sizeof(float) * sends.size();
  const int64_t ffn = r.hid_of.empty() ? 0 : ew.w2.cols;
  r.h_full.resize(static_cast<size_t>(n * ffn));
  for (size_t g = 0; g < group.size(); ++g) {
    const int q = group[g];
    const RowSlice& hq = r.hid_of[static_cast<size_t>(q)];
    const int64_t w = hq.hi - hq.lo;
    const float* src = q == me ? r.h_mine.data() : r.h_peer[g].data();
    if (q != me) r.stats.bytes_received += static_cast<uint64_t>(n * w) * sizeof(float);
    for (int k = 0; k < n; ++k)
      std::memcpy(r.h_full.data() + static_cast<size_t>(k * ffn + hq.lo), src + static_cast<size_t>(k * w),
                  static_cast<size_t>(w) * sizeof(float));
  }
  const int64_t w_out = ew.out.hi - ew.out.lo;
  r.y_part.resize(static_cast<size_t>(n * w_out));
  expert_output(ew, r.h_full.data(), n, r.y_part.data(), pool);
  for (int k = 0; k < n; ++k)
    std::memcpy(y + static_cast<size_t>(ps[static_cast<size_t>(k)]) * dim + ew.out.lo,
                r.y_part.data() + static_cast<size_t>(k * w_out), static_cast<size_t>(w_out) * sizeof(float));
}

// Every rank holds the same hidden states and routing, so every rank knows which rows each
// rank computes and in which order: rank q contributes, for the pairs i (= t*top_k + j) whose
// expert it holds, in ascending i, that pair's y row (or, for an expert split over ranks, its
// piece of the row: columns out_of[q]). exchange_floats then leaves every y row whole on every
// rank.
void exchange(const Model& m, int layer, const MoeRouting& route, int dim, float* y) {
  Runtime& r = rt();
  const int N = r.world.size, me = r.world.rank;
  const std::vector<std::vector<int>>& holders = r.holders;
  const int P = route.n_tokens * route.top_k;
  auto held_by = [&](int i) -> const std::vector<int>& {
    return holders[static_cast<size_t>(route.expert[static_cast<size_t>(i)])];
  };
  // The columns of a y row rank q computes for a pair held by `h`: all of them unless split.
  auto piece = [&](const std::vector<int>& h, int q) {
    return h.size() == 1 ? RowSlice{0, dim} : r.out_of[static_cast<size_t>(q)];
  };
  r.counts.assign(static_cast<size_t>(N), 0);
  size_t total = 0;
  for (int i = 0; i < P; ++i)
    for (int q : held_by(i)) {
      const RowSlice c = piece(held_by(i), q);
      r.counts[static_cast<size_t>(q)] += static_cast<int>(c.hi - c.lo);
      total += static_cast<size_t>(c.hi - c.lo);
    }
  r.displs.assign(static_cast<size_t>(N), 0);
  for (int q = 1; q < N; ++q) r.displs[static_cast<size_t>(q)] = r.displs[static_cast<size_t>(q - 1)] + r.counts[static_cast<size_t>(q - 1)];
  r.buf.resize(total);
  const size_t row = static_cast<size_t>(dim);
  float* mine = r.buf.data() + static_cast<size_t>(r.displs[static_cast<size_t>(me)]);
  for (int i = 0; i < P; ++i) {
    const std::vector<int>& h = held_by(i);
    if (std::find(h.begin(), h.end(), me) == h.end()) continue;
    const RowSlice c = piece(h, me);
    std::memcpy(mine, y + static_cast<size_t>(i) * row + c.lo, static_cast<size_t>(c.hi - c.lo) * sizeof(float));
    mine += c.hi - c.lo;
  }

  if (r.check_routing) {
    // Diverging ranks (e.g. hosts with different math libraries) would silently exchange
    // mismatched rows; compare a hash of the routing first.
    uint64_t hsh = 1469598103934665603ull;
    for (int e : route.expert) hsh = (hsh ^ static_cast<uint64_t>(e)) * 1099511628211ull;
    std::vector<uint64_t> all(static_cast<size_t>(N));
    check(MPI_Allgather(&hsh, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, r.data), "MPI_Allgather (routing check)");
    for (int q = 0; q < N; ++q)
      if (all[static_cast<size_t>(q)] != all[0])
        abort_job("layer " + std::to_string(layer) + ": rank " + std::to_string(q) +
                  " routed tokens differently from rank 0; the ranks no longer compute the same "
                  "hidden states (same binary, SIMD path and libraries are needed on every host)");
  }
  if (r.timing) {
    const double t0 = now_s();
    check(MPI_Barrier(r.data), "MPI_Barrier (timing)");
    r.stats.wait_seconds += now_s() - t0;
  }
  const double t0 = now_s();
  std::vector<Piece> recvs, sends;
  const int own = r.counts[static_cast<size_t>(me)];
  for (int q = 0; q < N; ++q) {
    if (q == me) continue;
    const int n = r.counts[static_cast<size_t>(q)];
    if (n > 0) recvs.push_back({q, r.buf.data() + r.displs[static_cast<size_t>(q)], n});
    if (own > 0) sends.push_back({q, r.buf.data() + r.displs[static_cast<size_t>(me)], own});
  }
  exchange_floats(layer, recvs, sends, 7);
  r.layer_t0 = now_s();
  r.stats.seconds += now_s() - t0;
  ++r.stats.calls;
  r.stats.bytes_sent += static_cast<uint64_t>(own) * sizeof(float) * static_cast<uint64_t>(N - 1);
  r.stats.bytes_received += (static_cast<uint64_t>(total) - static_cast<uint64_t>(own)) * sizeof(float);

  r.cursor = r.displs;
  for (int i = 0; i < P; ++i) {
    const std::vector<int>& h = held_by(i);
    for (int q : h) {
      const RowSlice c = piece(h, q);
      const int at = r.cursor[static_cast<size_t>(q)];
      r.cursor[static_cast<size_t>(q)] += static_cast<int>(c.hi - c.lo);
      if (q != me)
        std::memcpy(y + static_cast<size_t>(i) * row + c.lo, r.buf.data() + at,
                    static_cast<size_t>(c.hi - c.lo) * sizeof(float));
    }
  }
}

void run_test_hooks(int layer, int n_layers) {
  Runtime& r = rt();
  if (r.world.rank != r.test_rank || layer != n_layers - 1) return;
  const long step = static_cast<long>(r.stats.steps);
  if (step == r.die_at_step) {
    std::fprintf(stderr, "rank %d: MIXTRAL_TEST_DIE_AT_STEP=%ld: killing myself\n", r.world.rank, step);
    std::fflush(stderr);
    ::raise(SIGKILL);
  }
  if (step == r.oom_at_step) throw std::bad_alloc();
}

// Rank 0: the step's last exchange is done (followers have nothing waiting on `stepping`).
void end_step() {
  Runtime& r = rt();
  r.step_open = false;
  {
    std::lock_guard lk(r.mu);
    r.stepping = false;
  }
  r.cv.notify_all();
}

void install_runner(Model& m, ThreadPool& pool) {
  Model* raw = &m;
  Runtime& r = rt();
  const int E = m.config.n_experts;
  r.owner.resize(static_cast<size_t>(E));
  r.holders.assign(static_cast<size_t>(E), {});
  for (int e = 0; e < E; ++e) {
    r.owner[static_cast<size_t>(e)] = r.load.expert_owner(e, E);
    // Parts of a split expert are held by ranks e, e+E, ... (LoadOptions), ascending.
    for (int p = 0; p < r.load.expert_parts(e, E); ++p) r.holders[static_cast<size_t>(e)].push_back(r.load.expert_owner(e, E) + p * E);
  }
  // Every rank's share of its expert, the same arithmetic as bind_weights.
  r.hid_of.clear();
  r.out_of.clear();
  if (r.load.splits(E))
    for (int q = 0; q < r.world.size; ++q) {
      LoadOptions lq = r.load;
      lq.rank = q;
      const int parts = lq.expert_parts(q % E, E);
      r.hid_of.push_back(expert_rows(m.config.ffn_dim, parts, lq.part(E), "hidden size"));
      r.out_of.push_back(expert_rows(m.config.dim, parts, lq.part(E), "model dim"));
    }
  m.experts = [raw, &pool](int layer, const float* x, int dim, const MoeRouting& route, float* y) {
    const LayerWeights& lw = raw->weights.layers[static_cast<size_t>(layer)];
    run_local_experts(lw, x, dim, route, y, pool);
    run_split_expert(lw, layer, x, dim, route, y, pool);
    run_test_hooks(layer, raw->config.n_layers);
    exchange(*raw, layer, route, dim, y);
    Runtime& rr = rt();
    if (++rr.layers_done >= raw->config.n_layers) end_step();
  };
  note_local_model(m);
}

// What must agree across ranks for their hidden states to stay identical: config, layout
// conventions, weight dtypes, and the router and norm weights (a wrong host folder shows
// up here rather than as a hang or a silently different answer).
uint64_t model_signature(const Model& m) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, b + i, 8);
      h = (h ^ w) * 1099511628211ull;
      h ^= h >> 29;
    }
    for (; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  const ModelConfig& c = m.config;
  const int ints[] = {c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.n_experts,
                      c.top_k, c.vocab, c.sliding_window, c.rope_interleaved ? 1 : 0};
  mix(ints, sizeof ints);
  const float fl[] = {c.rope_theta, c.norm_eps};
  mix(fl, sizeof fl);
  auto mat = [&](const MatView& v, bool bytes) {
    const int64_t d[] = {static_cast<int64_t>(v.dtype), v.rows, v.cols};
    mix(d, sizeof d);
    if (bytes)
      for (int64_t row = 0; row < v.rows; ++row) mix(v.row(row), row_bytes(v.dtype, v.cols));
  };
  mat(m.weights.tok_embeddings, false);
  mat(m.weights.output, false);
  mix(m.weights.norm.data(), m.weights.norm.size() * sizeof(float));
  for (const LayerWeights& lw : m.weights.layers) {
    mix(lw.attention_norm.data(), lw.attention_norm.size() * sizeof(float));
    mix(lw.ffn_norm.data(), lw.ffn_norm.size() * sizeof(float));
    mat(lw.wq, false);
    mat(lw.wk, false);
    mat(lw.wv, false);
    mat(lw.wo, false);
    mat(lw.gate, true);
  }
  return h;
}

// Each rank's outcome of an open, gathered on rank 0.
struct OpenStatus {
  int32_t ok = 0;
  int32_t msg_len = 0;
  uint64_t signature = 0;
};

// Both sides of the open: every rank reports; rank 0 gets everything.
void gather_open(const OpenStatus& mine, const std::string& msg, std::vector<OpenStatus>* all,
                 std::vector<std::string>* msgs) {
  Runtime& r = rt();
  const int N = r.world.size;
  const bool root = r.world.rank == 0;
  if (root) all->resize(static_cast<size_t>(N));
  check(MPI_Gather(&mine, sizeof(OpenStatus), MPI_BYTE, root ? all->data() : nullptr,
                   sizeof(OpenStatus), MPI_BYTE, 0, r.ctrl),
        "MPI_Gather (open status)");
  std::vector<int> lens, displs;
  std::vector<char> text;
  if (root) {
    lens.resize(static_cast<size_t>(N));
    displs.resize(static_cast<size_t>(N));
    int total = 0;
    for (int q = 0; q < N; ++q) {
      lens[static_cast<size_t>(q)] = (*all)[static_cast<size_t>(q)].msg_len;
      displs[static_cast<size_t>(q)] = total;
      total += lens[static_cast<size_t>(q)];
    }
    text.resize(static_cast<size_t>(std::max(total, 1)));
  }
  check(MPI_Gatherv(msg.data(), static_cast<int>(msg.size()), MPI_BYTE, root ? text.data() : nullptr,
                    root ? lens.data() : nullptr, root ? displs.data() : nullptr, MPI_BYTE, 0, r.ctrl),
        "MPI_Gatherv (open errors)");
  if (root) {
    msgs->resize(static_cast<size_t>(N));
    for (int q = 0; q < N; ++q)
      (*msgs)[static_cast<size_t>(q)].assign(text.data() + displs[static_cast<size_t>(q)],
                                             static_cast<size_t>(lens[static_cast<size_t>(q)]));
  }
}

RankStats local_rank_stats() {
  Runtime& r = rt();
  RankStats s;
  s.rank = r.world.rank;
  s.comm = r.stats;
  s.rss_mb = status_mb("VmRSS:");
  s.peak_rss_mb = status_mb("VmHWM:");
  s.expert_mb = r.expert_mb;
  s.first_expert = r.first_expert;
  s.n_experts = r.n_experts;
  std::snprintf(s.experts, sizeof s.experts, "%s", r.experts_label.c_str());
  return s;
}

// ---- the follower side -----------------------------------------------------------------------

// A copy of one of rank 0's KV caches, which rank 0 names by its address. Addresses get
// reused, so the cache is never trusted by name alone: every step carries each chunk's start
// position, and a slot starting at 0 is reset.
struct Mirror {
  uint64_t id = 0;
  int n_layers = 0, kv_dim = 0, max_ctx = 0, dtype = 0;
  std::unique_ptr<KvCache> kv;
  uint64_t last_use = 0;
};

struct Follower {
  FollowerOptions opt;
  std::shared_ptr<LoadedModel> loaded;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::vector<Mirror> mirrors;
  uint64_t uses = 0;
  static constexpr size_t kMaxMirrors = 3;  // rank 0 rarely has more than two caches alive

  void open(const Header& h, const std::vector<char>& payload) {
    Runtime& r = rt();
    model.reset();
    loaded.reset();
    mirrors.clear();
    OpenStatus st;
    std::string msg;
    try {
      if (!opt.has_model) fail("this rank's command line has no --model");
      const SimdPath root_path = static_cast<SimdPath>(h.a);
      // Different SIMD paths sum in different orders: the ranks' hidden states would drift
      // apart. Follow rank 0's choice.
      if (!cpu_supports(root_path))
        fail("this CPU cannot run the " + simd_path_name(root_path) +
             " kernels rank 0 uses; start every rank with the same MIXTRAL_SIMD (e.g. avx2)");
      set_simd_path(root_path);
      if (!pool) pool = std::make_unique<ThreadPool>(opt.threads > 0 ? opt.threads : default_threads());
      const std::string path = model_path_for_rank(opt.model, r.world.rank);
      LoadOptions lo{r.world.rank, r.world.size};
      lo.interleave = opt.interleave;
      lo.owner.resize(payload.size() / sizeof(int32_t));
      for (size_t e = 0; e < lo.owner.size(); ++e) {
        int32_t v;
        std::memcpy(&v, payload.data() + e * sizeof v, sizeof v);
        lo.owner[e] = v;
      }
      r.load = lo;
      loaded = std::make_shared<LoadedModel>(load_model(path, lo));
      model = make_model(loaded, lo, *pool);
      model->skip_logits = true;
      install_runner(*model, *pool);
      st.ok = 1;
      st.signature = model_signature(*model);
      msg = path;  // named by rank 0 if the model differs from its own
    } catch (const std::bad_alloc&) {
      msg = "out of memory while loading the model";
    } catch (const std::exception& e) {
      msg = e.what();
    }
    if (!st.ok) {
      model.reset();
      loaded.reset();
    }
    st.msg_len = static_cast<int32_t>(msg.size());
    gather_open(st, msg, nullptr, nullptr);
  }

  KvCache& mirror(uint64_t id, int n_layers, int kv_dim, int max_ctx, int dtype) {
    ++uses;
    for (Mirror& m : mirrors)
      if (m.id == id && m.n_layers == n_layers && m.kv_dim == kv_dim && m.max_ctx == max_ctx &&
          m.dtype == dtype) {
        m.last_use = uses;
        return *m.kv;
      }
    if (mirrors.size() >= kMaxMirrors) {
      auto old = std::min_element(mirrors.begin(), mirrors.end(),
                                  [](const Mirror& a, const Mirror& b) { return a.last_use < b.last_use; });
      mirrors.erase(old);
    }
    Mirror m;
    m.id = id;
    m.n_layers = n_layers;
    m.kv_dim = kv_dim;
    m.max_ctx = max_ctx;
    m.dtype = dtype;
    m.kv = std::make_unique<KvCache>(n_layers, kv_dim, max_ctx, static_cast<DType>(dtype));
    m.last_use = uses;
    mirrors.push_back(std::move(m));
    return *mirrors.back().kv;
  }

  void step(const std::vector<char>& payload) {
    Runtime& r = rt();
    if (!model) fail("got a step but has no model loaded");
    const auto* p = reinterpret_cast<const int32_t*>(payload.data());
    const size_t n = payload.size() / sizeof(int32_t);
    size_t at = 0;
    auto next = [&]() -> int32_t {
      if (at >= n) fail("malformed step message from rank 0");
      return p[at++];
    };
    const uint64_t id = static_cast<uint32_t>(next()) | (static_cast<uint64_t>(static_cast<uint32_t>(next())) << 32);
    const int n_layers = next(), kv_dim = next(), max_ctx = next(), dtype = next();
    KvCache& kv = mirror(id, n_layers, kv_dim, max_ctx, dtype);
    std::vector<SeqChunk> batch(static_cast<size_t>(next()));
    std::vector<int> starts;
    for (SeqChunk& c : batch) {
      c.slot = next();
      starts.push_back(next());
      const int copy_from = next();
      c.all_logits = next() != 0;
      c.tokens.resize(static_cast<size_t>(next()));
      for (int& t : c.tokens) t = next();
      // A prefix copied between slots on rank 0 is copied here too, before any slot changes.
      if (copy_from >= 0) {
        kv.ensure_slot(copy_from);
        if (starts.back() > kv.length(copy_from))
          fail("KV cache out of step with rank 0: slot " + std::to_string(copy_from) + " holds " +
               std::to_string(kv.length(copy_from)) + " positions here but " + std::to_string(starts.back()) +
               " are copied from it there");
        kv.copy_prefix(copy_from, c.slot, starts.back(), starts.back() + static_cast<int>(c.tokens.size()));
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      const SeqChunk& c = batch[i];
      const int start = starts[i];
      kv.ensure_slot(c.slot);
      if (start == 0) {
        kv.reset(c.slot);
      } else if (start <= kv.length(c.slot)) {
        kv.set_length(c.slot, start);  // rank 0 rolled back; the prefix is still valid here
      } else {
        fail("KV cache out of step with rank 0: slot " + std::to_string(c.slot) + " holds " +
             std::to_string(kv.length(c.slot)) + " positions here but starts at " +
             std::to_string(start) + " there");
      }
    }
    ++r.stats.steps;
    r.layers_done = 0;
    r.layer_t0 = now_s();
    forward(*model, kv, batch, *pool);
  }
};

}  // namespace

void note_local_model(const Model& m) {
  Runtime& r = rt();
  // Derived from what this process holds, so one process and any rank are counted alike.
  r.first_expert = -1;
  r.n_experts = 0;
  r.experts_label.clear();
  double bytes = 0;
  if (!m.weights.layers.empty()) {
    // The label lists the experts held (a placement file's need not be contiguous), or the
    // rows of the split one.
    const auto& first = m.weights.layers.front().experts;
    std::vector<int> held(first.size(), -1);
    for (size_t e = 0; e < first.size(); ++e) {
      if (!first[e].present) continue;
      if (r.first_expert < 0) r.first_expert = static_cast<int>(e);
      ++r.n_experts;
      held[e] = 0;
      if (first[e].split)
        r.experts_label = std::to_string(e) + " rows " + std::to_string(first[e].hid.lo) + "-" +
                          std::to_string(first[e].hid.hi - 1);
    }
    if (r.experts_label.empty()) r.experts_label = experts_of(held, 0);
  }
  if (r.first_expert < 0) r.first_expert = 0;
  for (const LayerWeights& lw : m.weights.layers)
    for (const ExpertWeights& e : lw.experts)
      if (e.present)
        bytes += static_cast<double>(e.w1.rows) * e.w1.stride + static_cast<double>(e.w3.rows) * e.w3.stride +
                 static_cast<double>(e.w2.rows) * e.w2.stride;
  r.expert_mb = bytes / (1024.0 * 1024.0);
}

// ---- public -------------------------------------------------------------------------------------

const World& init(int* argc, char*** argv) {
  Runtime& r = rt();
  static bool done = false;
  if (done) return r.world;
  done = true;
  const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") ||
                        std::getenv("PMI_RANK");
  if (!launched) return r.world;
  int provided = 0;
  // Serialized: the command may call forward() from a thread other than main's (a server).
  if (MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
    std::fprintf(stderr, "mixtral: MPI_Init_thread failed\n");
    std::exit(1);
  }
  r.world.mpi = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &r.world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &r.world.size);
  MPI_Comm_dup(MPI_COMM_WORLD, &r.ctrl);
  MPI_Comm_dup(MPI_COMM_WORLD, &r.data);
  MPI_Comm_dup(MPI_COMM_WORLD, &r.probe);
  MPI_Comm local;
  int local_rank = 0;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &r.world.local_size);
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
  // OpenMPI binds each rank to a single core by default when np <= 2, which would leave a rank
  // that is alone on its host one core for all its threads. Unless a binding was asked for
  // (--bind-to sets OMPI_MCA_hwloc_base_binding_policy), give each rank its share of the host.
  if (!std::getenv("OMPI_MCA_hwloc_base_binding_policy")) share_host_cpus(local_rank, r.world.local_size);
  // Each rank's hostname, for the placement line and for naming a host that stops answering.
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  std::vector<char> names(static_cast<size_t>(r.world.size) * MPI_MAX_PROCESSOR_NAME);
  MPI_Allgather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, names.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR,
                MPI_COMM_WORLD);
  for (int q = 0; q < r.world.size; ++q)
    r.hosts.emplace_back(names.data() + static_cast<size_t>(q) * MPI_MAX_PROCESSOR_NAME);
  if (const char* v = std::getenv("MIXTRAL_EP_TIMEOUT"); v && *v) {
    char* end = nullptr;
    const double t = std::strtod(v, &end);
    if (!(end && *end == 0 && t > 0)) {
      abort_job(std::string("MIXTRAL_EP_TIMEOUT must be a number of seconds > 0, not '") + v + "'");
    }
    r.timeout_s = t;
  }
  r.timing = env_long("MIXTRAL_EP_TIMING", 0) != 0;
  r.check_routing = env_long("MIXTRAL_EP_CHECK", 0) != 0;
  r.test_rank = static_cast<int>(env_long("MIXTRAL_TEST_RANK", 1));
  r.die_at_step = env_long("MIXTRAL_TEST_DIE_AT_STEP", -1);
  r.oom_at_step = env_long("MIXTRAL_TEST_OOM_AT_STEP", -1);
  return r.world;
}

const World& world() { return rt().world; }

std::string host_of(int rank) {
  const Runtime& r = rt();
  return rank >= 0 && rank < static_cast<int>(r.hosts.size()) ? r.hosts[static_cast<size_t>(rank)] : "";
}

std::string model_path_for_rank(const std::string& model, int rank) {
  const std::string var = "MIXTRAL_MODEL_RANK" + std::to_string(rank);
  if (const char* v = std::getenv(var.c_str()); v && *v) return v;
  std::string out = model;
  for (size_t at; (at = out.find("{rank}")) != std::string::npos;) out.replace(at, 6, std::to_string(rank));
  return out;
}

int default_threads() {
  // The host's share, capped by the CPUs this rank may run on (an explicit binding).
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int n = std::max(1, hw / std::max(1, world().local_size));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) n = std::min(n, CPU_COUNT(&set));
  return n;
}

void open_begin(const std::vector<int>& owner) {
  Runtime& r = rt();
  r.load = LoadOptions{r.world.rank, r.world.size};
  r.load.owner = owner;
  std::vector<char> p(owner.size() * sizeof(int32_t));
  for (size_t e = 0; e < owner.size(); ++e) {
    const int32_t v = owner[e];
    std::memcpy(p.data() + e * sizeof v, &v, sizeof v);
  }
  send_msg(kOpen, p, static_cast<int64_t>(simd_path()));
}

void open_end(const Model* m, const std::string& local_error) {
  Runtime& r = rt();
  OpenStatus st;
  st.ok = m != nullptr && local_error.empty();
  if (st.ok) st.signature = model_signature(*m);
  std::vector<OpenStatus> all;
  std::vector<std::string> msgs;
  gather_open(st, "", &all, &msgs);
  std::string err = local_error;
  for (int q = 1; q < r.world.size; ++q) {
    const OpenStatus& o = all[static_cast<size_t>(q)];
    std::string why;
    if (!o.ok) {
      // The same failure everywhere (e.g. a rank count that does not divide the experts) is
      // reported once, as rank 0's.
      if (msgs[static_cast<size_t>(q)] == local_error) continue;
      why = msgs[static_cast<size_t>(q)];
    } else if (st.ok && o.signature != st.signature) {
      why = "its model " + msgs[static_cast<size_t>(q)] +
            " differs from rank 0's (config, weight types, router or norm weights disagree)";
    } else {
      continue;
    }
    err += (err.empty() ? "" : "; ") + ("rank " + std::to_string(q) + " (host " + host_of(q) + "): " + why);
  }
  if (!err.empty()) fail(err);
  // Which rank holds which experts, once at start (the default blocks or the placement file).
  const int E = m->config.n_experts;
  std::vector<int> owner(static_cast<size_t>(E));
  for (int e = 0; e < E; ++e) owner[static_cast<size_t>(e)] = r.load.expert_owner(e, E);
  std::string line = "placement:";
  if (r.load.splits(E)) {
    // Rank q holds hidden rows (w1/w3 rows) of expert q % E, and as many w2 rows.
    for (int q = 0; q < r.world.size; ++q) {
      LoadOptions lq = r.load;
      lq.rank = q;
      const int e = q % E;
      const RowSlice sl = expert_rows(m->config.ffn_dim, lq.expert_parts(e, E), lq.part(E), "hidden size");
      line += (q ? "; rank " : " rank ") + std::to_string(q) + " (" + host_of(q) + "): expert " + std::to_string(e);
      if (lq.expert_parts(e, E) > 1) line += " rows " + std::to_string(sl.lo) + "-" + std::to_string(sl.hi - 1);
    }
  } else {
    for (int q = 0; q < r.world.size; ++q)
      line += (q ? "; rank " : " rank ") + std::to_string(q) + " (" + host_of(q) + "): experts " + experts_of(owner, q);
  }
  std::fprintf(stderr, "%s\n", line.c_str());
}

void attach_root(Model& m, ThreadPool& pool) {
  install_runner(m, pool);
  m.before_step = [&m](const KvCache& kv, const std::vector<SeqChunk>& batch) {
    Runtime& r = rt();
    {
      std::unique_lock lk(r.mu);
      r.cv.wait(lk, [&r] { return !r.probing; });
      r.stepping = m.config.n_layers > 0;
    }
    std::vector<int32_t> p;
    const uint64_t id = reinterpret_cast<uintptr_t>(&kv);
    p.push_back(static_cast<int32_t>(static_cast<uint32_t>(id)));
    p.push_back(static_cast<int32_t>(static_cast<uint32_t>(id >> 32)));
    p.push_back(m.config.n_layers);
    p.push_back(kv.kv_dim());
    p.push_back(kv.max_ctx());
    p.push_back(static_cast<int32_t>(kv.dtype()));
    p.push_back(static_cast<int32_t>(batch.size()));
    for (const SeqChunk& c : batch) {
      p.push_back(c.slot);
      p.push_back(kv.length(c.slot));
      p.push_back(c.copy_from);
      p.push_back(c.all_logits ? 1 : 0);  // which rows the last layer computes (forward())
      p.push_back(static_cast<int32_t>(c.tokens.size()));
      p.insert(p.end(), c.tokens.begin(), c.tokens.end());
    }
    std::vector<char> bytes(p.size() * sizeof(int32_t));
    std::memcpy(bytes.data(), p.data(), bytes.size());
    const double t0 = now_s();
    send_msg(kStep, bytes);
    r.stats.step_send_seconds += now_s() - t0;
    ++r.stats.steps;
    r.layers_done = 0;
    r.step_open = m.config.n_layers > 0;
    r.layer_t0 = now_s();
  };
}

void print_rank_stats(const std::vector<RankStats>& all) {
  std::fprintf(stderr, "rank  experts         expert_MB  rss_MB  peak_MB  steps  exchanges  sent_MB  recv_MB  exch_s  wait_s  step_msg_s\n");
  for (const RankStats& s : all)
    std::fprintf(stderr, "%4d  %-14s  %9.1f  %6.1f  %7.1f  %5llu  %9llu  %7.2f  %7.2f  %6.4f  %6.4f  %10.4f\n", s.rank,
                 s.experts, s.expert_mb, s.rss_mb, s.peak_rss_mb,
                 static_cast<unsigned long long>(s.comm.steps), static_cast<unsigned long long>(s.comm.calls),
                 s.comm.bytes_sent / 1048576.0, s.comm.bytes_received / 1048576.0, s.comm.seconds,
                 s.comm.wait_seconds, s.comm.step_send_seconds);
}

int finish(int code) {
  Runtime& r = rt();
  if (!r.world.mpi) return code;
  if (r.world.size > 1) {
    if (r.step_open)
      abort_job("stopped in the middle of a step by the error above (the other ranks are waiting in it)",
                code ? code : 1);
    if (env_long("MIXTRAL_EP_STATS", 0) != 0) print_rank_stats(gather_rank_stats());
    send_msg(kExit, {}, code);
  }
  MPI_Finalize();
  return code;
}

int follower_main(const FollowerOptions& o) {
  Runtime& r = rt();
  Follower f;
  f.opt = o;
  std::vector<char> payload;
  for (;;) {
    const double t0 = now_s();
    const Header h = recv_msg(&payload);
    switch (h.type) {
      case kOpen:
        f.open(h, payload);
        break;
      case kStep:
        r.stats.step_send_seconds += now_s() - t0;  // includes idle time; see CommStats
        try {
          f.step(payload);
        } catch (const std::bad_alloc&) {
          abort_job("out of memory in step " + std::to_string(r.stats.steps));
        } catch (const std::exception& e) {
          abort_job(std::string("step ") + std::to_string(r.stats.steps) + ": " + e.what());
        }
        break;
      case kStats: {
        const RankStats s = local_rank_stats();
        check(MPI_Gather(&s, sizeof(RankStats), MPI_BYTE, nullptr, sizeof(RankStats), MPI_BYTE, 0, r.ctrl),
              "MPI_Gather (stats)");
        break;
      }
      case kExit: {
        if (r.ping_req != MPI_REQUEST_NULL) {
          MPI_Cancel(&r.ping_req);
          MPI_Request_free(&r.ping_req);
        }
        f.mirrors.clear();
        f.model.reset();
        f.loaded.reset();
        f.pool.reset();
        MPI_Finalize();
        return static_cast<int>(h.a);
      }
      default:
        abort_job("unknown control message " + std::to_string(h.type) + " from rank 0");
    }
  }
}

void set_fatal_hook(std::function<void(const std::string&)> hook) { rt().fatal_hook = std::move(hook); }

void abort_job(const std::string& cause, int code) {
  const Runtime& r = rt();
  std::fprintf(stderr, "rank %d: %s\n", r.world.rank, cause.c_str());
  std::fflush(stderr);
  // Once: an error inside the hook (or a second thread's) goes straight to the abort.
  static std::atomic<int> hook_state{0};  // 0: not run, 1: running, 2: done
  if (r.world.rank == 0 && r.fatal_hook) {
    int idle = 0;
    if (hook_state.compare_exchange_strong(idle, 1)) {
      try {
        r.fatal_hook(cause);
      } catch (...) {
      }
      hook_state = 2;
    } else {
      // Another thread is answering clients: let it finish before the abort cuts them off.
      for (int i = 0; i < 300 && hook_state.load() == 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::string check_peers(double wait_s) {
  Runtime& r = rt();
  if (r.world.size <= 1 || r.world.rank != 0) return "";
  r.hurry_wait = wait_s;
  r.hurry_t = now_s();
  std::unique_lock lk(r.mu);
  // A step in flight ends within about wait_s, or aborts the job naming its silent peer. One
  // that a healthy peer still needs long for is left alone (no check then).
  const double t0 = now_s();
  while (r.stepping) {
    r.cv.wait_for(lk, std::chrono::milliseconds(20));
    const double t = now_s(), poll = r.exchange_poll_t.load();
    if (r.stepping && poll > 0 && t - poll > wait_s && !r.exchange_missing.empty())
      return r.exchange_missing + " (rank 0 is stuck inside MPI waiting for it)";
    if (t - t0 > r.timeout_s + wait_s) {
      r.hurry_t = 0;
      return "";
    }
  }
  r.probing = true;
  lk.unlock();
  const std::string lost = ping_peers(wait_s);
  lk.lock();
  r.probing = false;
  r.hurry_t = 0;
  lk.unlock();
  r.cv.notify_all();
  return lost;
}

CommStats comm_stats() { return rt().stats; }

std::vector<RankStats> gather_rank_stats() {
  Runtime& r = rt();
  const RankStats mine = local_rank_stats();
  if (r.world.size <= 1) return {mine};
  send_msg(kStats, {});
  std::vector<RankStats> all(static_cast<size_t>(r.world.size));
  check(MPI_Gather(&mine, sizeof(RankStats), MPI_BYTE, all.data(), sizeof(RankStats), MPI_BYTE, 0, r.ctrl),
        "MPI_Gather (stats)");
  return all;
}

}  // namespace mx::ep
