// Expert parallelism over MPI: `mpirun -np N mixtral <command>` splits the experts over N ranks
// and gives the same bits as one process (docs/distributed.md).
//
//   Rank r maps only its experts (LoadOptions: contiguous blocks, 3 ranks of 8 get 3+3+2, or a
//   --placement file; with N > 8, part r / 8 of expert r % 8, formats/expert_split.h, whose
//   ranks swap hidden activations before w2); embeddings, attention, norms, routers and the
//   LM head are replicated, and so is the KV cache (every rank runs attention for every token).
//   Rank 0 runs the command: tokenization, scheduling, sampling and all I/O. Every forward() it
//   makes first sends the step (cache identity, each chunk's slot, start and tokens) to the
//   other ranks, which sit in follower_main() and run the same forward without the LM head.
//   In each layer every rank runs its experts on the (token, j) pairs routed to them, then every
//   rank sends its rows to every other (point to point, so a peer that stops answering is named
//   after MIXTRAL_EP_TIMEOUT seconds, default 5); the combine then runs in a fixed
//   order on all ranks, so hidden states stay identical everywhere.
//
// Without mpirun nothing here touches MPI (no daemon is needed); under `mpirun -np 1` MPI is
// initialized but nothing is distributed.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mx {
struct Model;
class ThreadPool;
}  // namespace mx

namespace mx::ep {

struct World {
  bool mpi = false;    // MPI_Init ran (launched by mpirun)
  int rank = 0, size = 1;
  int local_size = 1;  // ranks on this host (they share its cores)
};

// Starts MPI only when launched by mpirun (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_RANK in the
// environment). Call first thing in main; later calls return the same World.
const World& init(int* argc, char*** argv);
const World& world();
inline bool distributed() { return world().size > 1; }

// --model for this rank: $MIXTRAL_MODEL_RANK<r> when set, else `model` with "{rank}" replaced
// by r (so each host may keep its own folder of shared.bin plus its experts).
std::string model_path_for_rank(const std::string& model, int rank);
// Worker threads when --threads is not given: the host's cores shared by its ranks.
int default_threads();

// ---- rank 0 (called from cli/common.cc open_engine and cli/main.cc) ----

// Tells the other ranks to load their experts; they load while rank 0 does. `owner` (expert ->
// rank, from --placement) is sent along; empty means LoadOptions' default blocks.
void open_begin(const std::vector<int>& owner);
// Collects every rank's outcome of loading. `local_error` is rank 0's ("" when it loaded `m`).
// On success prints the placement to stderr ("placement: rank 0 (host a): experts 0-2; ...").
// Throws mx::Error naming each failing rank and its cause ("rank 1 (host b): ...: no such file"), or a
// rank whose model differs from rank 0's. Every rank must reach it, so call it even on failure.
void open_end(const Model* m, const std::string& local_error);
// Replaces m.experts with the exchanging runner and sets m.before_step to broadcast each step.
void attach_root(Model& m, ThreadPool& pool);
// Records which experts this process holds and their bytes, for gather_rank_stats (attach_root
// and the followers do it; a single process calls it after loading).
void note_local_model(const Model& m);
// Ends the job at the end of main: tells the other ranks to exit with `code` and finalizes
// MPI. If a step was left half done (an exception between layers), the others are blocked
// inside it, so the job is aborted instead. Returns `code`. No-op without MPI.
int finish(int code);

// ---- ranks 1..N-1 ----

struct FollowerOptions {
  bool has_model = false;  // the command line's subcommand takes --model
  std::string model;       // as given on this rank's command line
  int threads = 0;         // 0: default_threads()
  bool interleave = true;  // LoadOptions::interleave, as rank 0's command line says
};
// Serves rank 0's requests (open, steps, stats) until it says exit; finalizes MPI and returns
// the exit code rank 0 sent. Fatal local errors (cannot run a step, out of memory) abort the job.
int follower_main(const FollowerOptions& o);

// The host rank `rank` runs on (its hostname), for messages; "" without MPI.
std::string host_of(int rank);

// Prints "rank R: cause" to stderr and ends the whole job (MPI_Abort) with `code`. On rank 0 it
// first calls the fatal-error hook (below) with `cause`.
[[noreturn]] void abort_job(const std::string& cause, int code = 1);

// Rank 0: whether every other rank is still there, for a command told to stop (SIGTERM) that
// must tell a rank's death from a plain shutdown: mpirun sends SIGTERM to every rank when one
// dies. Lets a step in flight finish (one whose peer stays silent for wait_s aborts the job,
// naming it), then pings every rank and waits up to wait_s. Returns the ranks that did not
// answer ("rank 1 on host b"), or "". Thread-safe against forward() on another thread.
std::string check_peers(double wait_s);

// Rank 0: what to do with a fatal job error (a lost rank, a failed step) before the job is
// aborted, e.g. answer clients with it (`serve`). It runs on the thread that met the error,
// once, and should return within about a second; the abort follows. Empty: none.
void set_fatal_hook(std::function<void(const std::string& cause)> hook);

// ---- measurements (for bench and docs) ----

// This process's expert-exchange traffic since start. `seconds` is the time inside the
// per-layer collective, which includes waiting for slower ranks; with MIXTRAL_EP_TIMING=1 a
// barrier before each exchange moves that wait into `wait_seconds`, so `seconds` is transfer.
struct CommStats {
  uint64_t calls = 0;           // exchanges (one per layer per step)
  uint64_t bytes_sent = 0;      // this rank's expert rows × (N-1) receivers
  uint64_t bytes_received = 0;  // other ranks' expert rows
  double seconds = 0;           // in the row exchange
  double wait_seconds = 0;      // in the timing barrier (MIXTRAL_EP_TIMING=1 only)
  uint64_t steps = 0;           // forward steps this rank took part in
  double step_send_seconds = 0; // rank 0: broadcasting step plans; others: waiting for them
                                // (includes rank 0's sampling, I/O and idle time)
  uint64_t bytes() const { return bytes_sent + bytes_received; }
};
CommStats comm_stats();

struct RankStats {
  int rank = 0;
  CommStats comm;
  double rss_mb = 0, peak_rss_mb = 0;  // VmRSS, VmHWM
  double expert_mb = 0;                // bytes of this rank's expert weights
  int first_expert = 0, n_experts = 0; // experts it holds: the lowest, and how many
  char experts[48] = {};               // which, as the placement line says: "0-4 7", "1 rows 64-127"
};
// On rank 0: every rank's figures, in rank order (one entry without MPI). Call between steps
// (the other ranks answer from their idle loop). Mem/expert figures need an open engine.
std::vector<RankStats> gather_rank_stats();

}  // namespace mx::ep
