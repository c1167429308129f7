// Expert placement: the default blocks for any rank count, and the placement file's parser.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "formats/error.h"
#include "formats/expert_split.h"
#include "formats/loaded_model.h"
#include "runtime/placement.h"

using mx::LoadOptions;
using mx::ep::experts_of;
using mx::ep::parse_placement;

namespace {

std::vector<int> default_owner(int n_ranks, int n_experts) {
  std::vector<int> o;
  const LoadOptions lo{0, n_ranks};
  for (int e = 0; e < n_experts; ++e) o.push_back(lo.expert_owner(e, n_experts));
  return o;
}

std::string parse_error(const std::string& text, int n_ranks) {
  try {
    parse_placement(text, "p.txt", n_ranks);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Placement, DefaultBlocksForAnyRankCount) {
  EXPECT_EQ(default_owner(1, 8), (std::vector<int>{0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(default_owner(2, 8), (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(default_owner(3, 8), (std::vector<int>{0, 0, 0, 1, 1, 1, 2, 2}));  // 3+3+2
  EXPECT_EQ(default_owner(5, 8), (std::vector<int>{0, 0, 1, 1, 2, 2, 3, 4}));
  EXPECT_EQ(default_owner(6, 8), (std::vector<int>{0, 0, 1, 1, 2, 3, 4, 5}));
  EXPECT_EQ(default_owner(7, 8), (std::vector<int>{0, 0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(default_owner(8, 8), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  // Every rank count: each rank's experts are contiguous and the counts differ by at most one.
  for (int n = 1; n <= 8; ++n) {
    const std::vector<int> o = default_owner(n, 8);
    std::vector<int> count(static_cast<size_t>(n));
    for (size_t e = 0; e < o.size(); ++e) {
      ASSERT_GE(o[e], 0);
      ASSERT_LT(o[e], n);
      if (e) EXPECT_GE(o[e], o[e - 1]);
      ++count[static_cast<size_t>(o[e])];
    }
    for (int c : count) EXPECT_TRUE(c == 8 / n || c == 8 / n + 1) << n << " ranks";
  }
}

TEST(Placement, ParsesRanksRangesAndComments) {
  const auto o = parse_placement("# by memory\nrank 0: 0-3\nrank 2: 7 6   # small host\n\n1: 4 5\n", "p.txt", 3);
  EXPECT_EQ(o, (std::vector<int>{0, 0, 0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(experts_of(o, 0), "0-3");
  EXPECT_EQ(experts_of(o, 2), "6-7");
  const auto holes = parse_placement("rank 1: 0 2\nrank 0 : 1 3\n", "p.txt", 4);
  EXPECT_EQ(experts_of(holes, 1), "0 2");
  EXPECT_EQ(experts_of(holes, 3), "none");
  LoadOptions lo{1, 4};
  lo.owner = holes;
  EXPECT_TRUE(lo.owns_expert(2, 4));
  EXPECT_FALSE(lo.owns_expert(3, 4));
}

TEST(Placement, BadFilesNameTheLineAndTheProblem) {
  EXPECT_NE(parse_error("rank 0: 0-3\nrank 3: 4-7\n", 3).find("p.txt:2: rank 3 does not exist: the job has 3 ranks"),
            std::string::npos);
  EXPECT_NE(parse_error("rank 0: 0-4\nrank 1: 4-7\n", 2).find("p.txt:2: expert 4 is already placed (line 1)"),
            std::string::npos);
  EXPECT_NE(parse_error("rank 0: 0-2\nrank 1: 4-7\n", 2).find("p.txt: expert 3 is not placed on any rank"),
            std::string::npos);
  EXPECT_NE(parse_error("rank 0: 0-x\n", 2).find("p.txt:1: '0-x' is not an expert number"), std::string::npos);
  EXPECT_NE(parse_error("rank 0: 3-1\n", 2).find("'3-1' is not an expert number or range"), std::string::npos);
  EXPECT_NE(parse_error("zero: 1\n", 2).find("p.txt:1: 'zero' is not a rank number"), std::string::npos);
  EXPECT_NE(parse_error("rank 0 0 1\n", 2).find("p.txt:1: expected 'rank R: experts'"), std::string::npos);
  EXPECT_NE(parse_error("# nothing\n", 2).find("p.txt: places no experts"), std::string::npos);
  try {
    mx::ep::read_placement_file("/nonexistent/p.txt", 2);
    ADD_FAILURE() << "no error for a missing file";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/p.txt: cannot open placement file"), std::string::npos);
  }
}

// More ranks than experts: expert e is split over ranks e, e+8, ...; rank r holds part r / 8.
TEST(Placement, SplitsExpertsOverMoreRanksThanExperts) {
  const LoadOptions nine{8, 9};
  EXPECT_TRUE(nine.splits(8));
  EXPECT_EQ(nine.expert_parts(0, 8), 2);
  EXPECT_EQ(nine.expert_parts(1, 8), 1);
  EXPECT_TRUE(nine.owns_expert(0, 8));
  EXPECT_FALSE(nine.owns_expert(1, 8));
  EXPECT_EQ(nine.part(8), 1);
  EXPECT_FALSE((LoadOptions{0, 8}).splits(8));
  for (int r = 0; r < 16; ++r) {
    const LoadOptions lo{r, 16};
    for (int e = 0; e < 8; ++e) {
      EXPECT_EQ(lo.owns_expert(e, 8), e == r % 8);
      EXPECT_EQ(lo.expert_parts(e, 8), 2);
    }
    EXPECT_EQ(lo.part(8), r / 8);
  }
  // A placement file never splits, whatever the rank count.
  LoadOptions placed{3, 12};
  placed.owner = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_FALSE(placed.splits(8));
  EXPECT_TRUE(placed.owns_expert(3, 8));
}

TEST(Placement, SplitRowsAreWhole16RowGroupsAndCoverTheExpert) {
  const auto a = mx::expert_rows(14336, 2, 0, "m"), b = mx::expert_rows(14336, 2, 1, "m");
  EXPECT_EQ(a.lo, 0);
  EXPECT_EQ(a.hi, 7168);
  EXPECT_EQ(b.lo, 7168);
  EXPECT_EQ(b.hi, 14336);
  EXPECT_EQ(mx::expert_rows(4096, 1, 0, "m").hi, 4096);  // one part: everything
  // Uneven: 8 groups of 16 over 3 parts are 3+3+2.
  EXPECT_EQ(mx::expert_rows(128, 3, 0, "m").hi, 48);
  EXPECT_EQ(mx::expert_rows(128, 3, 1, "m").hi, 96);
  EXPECT_EQ(mx::expert_rows(128, 3, 2, "m").lo, 96);
  EXPECT_EQ(mx::expert_rows(128, 3, 2, "m").hi, 128);
  auto error = [](int64_t n, int parts) {
    try {
      mx::expert_rows(n, parts, 0, "tiny: hidden size");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(error(128, 9).find("tiny: hidden size 128 has only 8 16-row groups, too few to split over 9 ranks"),
            std::string::npos)
      << error(128, 9);
  EXPECT_NE(error(100, 2).find("tiny: hidden size 100 is not a multiple of 16"), std::string::npos) << error(100, 2);
}
