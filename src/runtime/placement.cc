#include "runtime/placement.h"

#include <fstream>
#include <sstream>

#include "formats/error.h"

namespace mx::ep {

namespace {

bool parse_int(const std::string& s, int* out) {
  if (s.empty() || s.size() > 6) return false;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

}  // namespace

std::vector<int> parse_placement(const std::string& text, const std::string& path, int n_ranks) {
  std::vector<int> owner;
  std::vector<int> line_of;  // where each expert was placed, for "given twice"
  std::istringstream in(text);
  std::string line;
  int ln = 0;
  while (std::getline(in, line)) {
    ++ln;
    const std::string where = path + ":" + std::to_string(ln) + ": ";
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream ls(line);
    std::string head;
    if (!(ls >> head)) continue;
    if (head == "rank" && !(ls >> head)) fail(where + "expected 'rank R: experts'");
    if (head.empty() || head.back() != ':') {
      std::string colon;
      if (!(ls >> colon) || colon != ":") fail(where + "expected 'rank R: experts', got '" + line + "'");
    } else {
      head.pop_back();
    }
    int rank = 0;
    if (!parse_int(head, &rank)) fail(where + "'" + head + "' is not a rank number");
    if (rank >= n_ranks)
      fail(where + "rank " + std::to_string(rank) + " does not exist: the job has " + std::to_string(n_ranks) +
           " rank" + (n_ranks == 1 ? "" : "s") + " (0-" + std::to_string(n_ranks - 1) + ")");
    std::string item;
    while (ls >> item) {
      int lo = 0, hi = 0;
      const size_t dash = item.find('-');
      const bool ok = dash == std::string::npos
                          ? parse_int(item, &lo) && (hi = lo, true)
                          : parse_int(item.substr(0, dash), &lo) && parse_int(item.substr(dash + 1), &hi);
      if (!ok || hi < lo) fail(where + "'" + item + "' is not an expert number or range a-b");
      if (hi >= 4096) fail(where + "expert " + std::to_string(hi) + " is out of range");
      for (int e = lo; e <= hi; ++e) {
        if (static_cast<int>(owner.size()) <= e) {
          owner.resize(static_cast<size_t>(e) + 1, -1);
          line_of.resize(static_cast<size_t>(e) + 1, 0);
        }
        if (owner[static_cast<size_t>(e)] >= 0)
          fail(where + "expert " + std::to_string(e) + " is already placed (line " +
               std::to_string(line_of[static_cast<size_t>(e)]) + ")");
        owner[static_cast<size_t>(e)] = rank;
        line_of[static_cast<size_t>(e)] = ln;
      }
    }
  }
  if (owner.empty()) fail(path + ": places no experts (expected lines 'rank R: experts')");
  for (size_t e = 0; e < owner.size(); ++e)
    if (owner[e] < 0) fail(path + ": expert " + std::to_string(e) + " is not placed on any rank");
  return owner;
}

std::vector<int> read_placement_file(const std::string& path, int n_ranks) {
  std::ifstream f(path);
  if (!f) fail(path + ": cannot open placement file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_placement(ss.str(), path, n_ranks);
}

std::string experts_of(const std::vector<int>& owner, int rank) {
  std::string out;
  const int n = static_cast<int>(owner.size());
  for (int e = 0; e < n;) {
    if (owner[static_cast<size_t>(e)] != rank) {
      ++e;
      continue;
    }
    int end = e;
    while (end + 1 < n && owner[static_cast<size_t>(end) + 1] == rank) ++end;
    if (!out.empty()) out += ' ';
    out += std::to_string(e);
    if (end > e) out += "-" + std::to_string(end);
    e = end + 1;
  }
  return out.empty() ? "none" : out;
}

}  // namespace mx::ep
