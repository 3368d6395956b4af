#include <gtest/gtest.h>

#include <set>

#include "fp8kv/block_allocator.h"
#include "fp8kv/error.h"

namespace fp8kv {
namespace {

constexpr int kBs = 16;

TEST(BlockAllocator, AppendAllocatesBlocksAsSequencesGrow) {
  BlockAllocator a(8, kBs);
  const SequenceId s = a.create_sequence();
  EXPECT_EQ(a.blocks_needed(s, 1), 1);
  AppendResult r = a.append_tokens(s, kBs - 1);
  ASSERT_EQ(r.slots.size(), static_cast<size_t>(kBs - 1));
  EXPECT_TRUE(r.copies.empty());
  EXPECT_EQ(a.block_table(s).size(), 1u);
  EXPECT_EQ(a.num_free_blocks(), 7);
  for (int i = 0; i < kBs - 1; ++i) EXPECT_EQ(r.slots[static_cast<size_t>(i)], a.block_table(s)[0] * kBs + i);
  r = a.append_tokens(s, 2);  // fills block 0, opens block 1
  EXPECT_EQ(a.block_table(s).size(), 2u);
  EXPECT_EQ(r.slots[0], a.block_table(s)[0] * kBs + kBs - 1);
  EXPECT_EQ(r.slots[1], a.block_table(s)[1] * kBs + 0);
  EXPECT_EQ(a.length(s), kBs + 1);
  EXPECT_EQ(a.slot_of(s, kBs), r.slots[1]);
  EXPECT_THROW(a.slot_of(s, kBs + 1), InvalidArgument);
  EXPECT_TRUE(a.append_tokens(s, 0).slots.empty());
  EXPECT_THROW(a.append_tokens(s, -1), InvalidArgument);
}

TEST(BlockAllocator, FreeReturnsBlocks) {
  BlockAllocator a(4, kBs);
  const SequenceId s = a.create_sequence();
  a.append_tokens(s, 3 * kBs);
  EXPECT_EQ(a.num_free_blocks(), 1);
  a.free_sequence(s);
  EXPECT_EQ(a.num_free_blocks(), 4);
  EXPECT_FALSE(a.contains(s));
  EXPECT_THROW(a.free_sequence(s), InvalidArgument);
  EXPECT_THROW(a.block_table(s), InvalidArgument);
  for (int32_t b = 0; b < 4; ++b) EXPECT_EQ(a.ref_count(b), 0);
}

TEST(BlockAllocator, ForkSharesBlocksAndCopiesThePartialLastBlockOnWrite) {
  BlockAllocator a(8, kBs);
  const SequenceId parent = a.create_sequence();
  a.append_tokens(parent, kBs + 5);  // one full block, one partial
  const auto parent_blocks = a.block_table(parent);
  const SequenceId child = a.fork(parent);
  EXPECT_EQ(a.block_table(child), parent_blocks);
  EXPECT_EQ(a.length(child), kBs + 5);
  for (int32_t b : parent_blocks) EXPECT_EQ(a.ref_count(b), 2);
  EXPECT_EQ(a.num_free_blocks(), 6);

  // The child writes into the shared partial block: it gets a private copy of the 5 tokens.
  EXPECT_EQ(a.blocks_needed(child, 1), 1);
  AppendResult r = a.append_tokens(child, 1);
  ASSERT_EQ(r.copies.size(), 1u);
  EXPECT_EQ(r.copies[0].src, parent_blocks[1]);
  EXPECT_NE(r.copies[0].dst, parent_blocks[1]);
  EXPECT_EQ(r.copies[0].num_tokens, 5);
  EXPECT_EQ(a.block_table(child)[0], parent_blocks[0]);  // the full block stays shared
  EXPECT_EQ(a.block_table(child)[1], r.copies[0].dst);
  EXPECT_EQ(r.slots[0], r.copies[0].dst * kBs + 5);
  EXPECT_EQ(a.ref_count(parent_blocks[0]), 2);
  EXPECT_EQ(a.ref_count(parent_blocks[1]), 1);
  EXPECT_EQ(a.ref_count(r.copies[0].dst), 1);

  // The parent now owns its partial block alone and writes in place.
  r = a.append_tokens(parent, 1);
  EXPECT_TRUE(r.copies.empty());
  EXPECT_EQ(r.slots[0], parent_blocks[1] * kBs + 5);

  a.free_sequence(parent);
  EXPECT_EQ(a.ref_count(parent_blocks[0]), 1);  // still used by the child
  a.free_sequence(child);
  EXPECT_EQ(a.num_free_blocks(), 8);
}

TEST(BlockAllocator, ForkAtBlockBoundaryNeedsNoCopy) {
  BlockAllocator a(4, kBs);
  const SequenceId s = a.create_sequence();
  a.append_tokens(s, kBs);
  const SequenceId f = a.fork(s);
  const AppendResult r = a.append_tokens(f, 1);
  EXPECT_TRUE(r.copies.empty());
  EXPECT_EQ(a.block_table(f).size(), 2u);
  EXPECT_EQ(a.block_table(f)[0], a.block_table(s)[0]);
}

TEST(BlockAllocator, FullCacheFailsWithoutChangingAnything) {
  BlockAllocator a(3, kBs);
  const SequenceId s = a.create_sequence();
  a.append_tokens(s, kBs + 3);
  const SequenceId f = a.fork(s);
  const SequenceId t = a.create_sequence();
  a.append_tokens(t, 1);
  ASSERT_EQ(a.num_free_blocks(), 0);
  const auto table_s = a.block_table(s), table_f = a.block_table(f), table_t = a.block_table(t);
  // f needs a copy of the shared partial block; t needs a second block: neither fits.
  EXPECT_THROW(a.append_tokens(f, 1), CacheFullError);
  EXPECT_THROW(a.append_tokens(t, kBs), CacheFullError);
  EXPECT_FALSE(a.can_append(f, 1));
  EXPECT_TRUE(a.can_append(t, kBs - 1));  // room left in t's own block
  EXPECT_EQ(a.block_table(s), table_s);
  EXPECT_EQ(a.block_table(f), table_f);
  EXPECT_EQ(a.block_table(t), table_t);
  EXPECT_EQ(a.length(f), kBs + 3);
  EXPECT_EQ(a.length(t), 1);
  EXPECT_EQ(a.ref_count(table_s[1]), 2);
  EXPECT_EQ(a.num_free_blocks(), 0);
  // Recoverable: freeing a sequence makes room and the same append then succeeds.
  a.free_sequence(t);
  EXPECT_EQ(a.append_tokens(f, 1).copies.size(), 1u);
}

TEST(BlockAllocator, SlotsOfLiveSequencesNeverCollide) {
  BlockAllocator a(128, kBs);
  std::vector<SequenceId> seqs;
  for (int i = 0; i < 6; ++i) seqs.push_back(a.create_sequence());
  for (int round = 0; round < 10; ++round) {
    for (size_t i = 0; i < seqs.size(); ++i) a.append_tokens(seqs[i], static_cast<int64_t>(3 + i * 5 + round));
  }
  std::set<int64_t> used;
  for (SequenceId s : seqs) {
    for (int64_t t = 0; t < a.length(s); ++t) EXPECT_TRUE(used.insert(a.slot_of(s, t)).second);
  }
}

TEST(BlockAllocator, RejectsBadConstruction) {
  EXPECT_THROW(BlockAllocator(0, kBs), InvalidArgument);
  EXPECT_THROW(BlockAllocator(4, 0), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv
