#include "cli/commands.h"

#include <mpi.h>

namespace mx::cli {

std::vector<Command> all_commands(CLI::App& app) {
  return {add_generate(app), add_chat(app), add_score(app), add_make_tiny(app), add_repack(app), add_bench(app), add_demo(app)};
}

void abort_all_ranks(int code) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  int size = 1;
  if (init && !fin) MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (init && !fin && size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace mx::cli
