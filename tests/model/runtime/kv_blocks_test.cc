#include "model/runtime/kv_blocks.h"

#include "gtest/gtest.h"
#include "model/runtime/kv_cache.h"

namespace mpa {
namespace {

TEST(KvBlocksTest, BlocksForRoundsUp) {
  EXPECT_EQ(KvBlocksFor(0, 16), 0);
  EXPECT_EQ(KvBlocksFor(1, 16), 1);
  EXPECT_EQ(KvBlocksFor(16, 16), 1);
  EXPECT_EQ(KvBlocksFor(17, 16), 2);
  EXPECT_EQ(KvBlocksFor(int64_t{1} << 40, 1), int64_t{1} << 40);
}

TEST(KvBlocksTest, FullErrorNamesTheNeedAndWhatIsFree) {
  const absl::Status s = KvCacheFullError(3, 16, 2, 8);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "KV cache is full: need 3 more blocks of 16 tokens, 2 of 8 are free");
}

// The CPU pool reports a reservation it cannot meet with the shared error.
TEST(KvBlocksTest, PoolUsesTheSharedAccounting) {
  KvBlockPool pool(/*num_blocks=*/4, /*block_tokens=*/16);
  EXPECT_EQ(pool.BlocksFor(33), KvBlocksFor(33, 16));
  ASSERT_TRUE(pool.Acquire(3).ok());
  const absl::Status s = pool.Acquire(2);
  EXPECT_EQ(s, KvCacheFullError(2, 16, 1, 4));
  pool.Release(3);
  EXPECT_EQ(pool.free_blocks(), 4);
}

}  // namespace
}  // namespace mpa
