#include "model/runtime/device_memory_budget.h"

#include <gtest/gtest.h>

namespace mpa {
namespace {

TEST(DeviceMemoryBudgetTest, ChargesUpToTheLimitAndNamesTheRefusal) {
  DeviceMemoryBudget budget(1000);
  EXPECT_TRUE(budget.Charge(600, "a").ok());
  EXPECT_TRUE(budget.Charge(400, "b").ok());
  EXPECT_EQ(budget.used(), 1000);
  const absl::Status full = budget.Charge(1, "cluster centroids");
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  EXPECT_NE(full.message().find("cluster centroids"), std::string::npos) << full;
  EXPECT_NE(full.message().find("1000 of 1000"), std::string::npos) << full;
  EXPECT_EQ(budget.used(), 1000);  // a refused charge takes nothing
  budget.Release(300);
  EXPECT_EQ(budget.used(), 700);
  EXPECT_TRUE(budget.Charge(300, "c").ok());
  EXPECT_EQ(budget.peak(), 1000);
  budget.Release(5000);  // more than is in use: clamped
  EXPECT_EQ(budget.used(), 0);
  EXPECT_TRUE(absl::IsInvalidArgument(budget.Charge(-1, "d")));
}

TEST(DeviceMemoryBudgetTest, ZeroLimitRefusesEverythingButNothing) {
  DeviceMemoryBudget budget(0);
  EXPECT_TRUE(budget.Charge(0, "nothing").ok());
  EXPECT_TRUE(absl::IsResourceExhausted(budget.Charge(1, "one byte")));
  DeviceMemoryBudget negative(-5);
  EXPECT_EQ(negative.limit(), 0);
}

TEST(DeviceMemoryBudgetTest, ChargeFollowsItsHolderAndGivesBackOnDestruction) {
  DeviceMemoryBudget budget(100);
  {
    DeviceMemoryCharge a(&budget), b(&budget);
    EXPECT_TRUE(a.Resize(60, "a").ok());
    EXPECT_TRUE(b.Resize(30, "b").ok());
    EXPECT_TRUE(absl::IsResourceExhausted(b.Resize(50, "b grows")));
    EXPECT_EQ(b.bytes(), 30);  // unchanged by the refusal
    EXPECT_EQ(budget.used(), 90);
    EXPECT_TRUE(a.Resize(10, "a shrinks").ok());
    EXPECT_EQ(budget.used(), 40);
    EXPECT_TRUE(b.Resize(90, "b grows").ok());
    EXPECT_EQ(budget.used(), 100);
  }
  EXPECT_EQ(budget.used(), 0);
  DeviceMemoryCharge unbudgeted(nullptr);
  EXPECT_TRUE(unbudgeted.Resize(int64_t{1} << 50, "anything").ok());
  EXPECT_EQ(unbudgeted.bytes(), int64_t{1} << 50);
}

}  // namespace
}  // namespace mpa
