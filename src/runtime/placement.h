// A placement file pins experts to MPI ranks (e.g. more experts on the hosts with more memory):
//
//   # rank: experts (single numbers or ranges a-b)
//   rank 0: 0-3
//   rank 1: 4 5
//   rank 2: 6 7
//
// Every expert must appear exactly once; a rank that is not listed holds no experts.
#pragma once
#include <string>
#include <vector>

namespace mx::ep {

// Expert -> rank, one entry per expert 0..E-1 (E = the highest expert named + 1). Throws
// mx::Error naming the file and line for unreadable lines, ranks outside [0, n_ranks), and
// experts given twice or missing.
std::vector<int> parse_placement(const std::string& text, const std::string& path, int n_ranks);
std::vector<int> read_placement_file(const std::string& path, int n_ranks);

// "0-2" / "3 5 7" / "none": the experts `owner` gives rank r, for messages.
std::string experts_of(const std::vector<int>& owner, int rank);

}  // namespace mx::ep
