#include "fp8kv/block_allocator.h"

#include <limits>
#include <string>

#include "fp8kv/error.h"

namespace fp8kv {

BlockAllocator::BlockAllocator(int64_t num_blocks, int block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  FP8KV_REQUIRE(num_blocks > 0 && num_blocks <= std::numeric_limits<int32_t>::max(), "num_blocks",
                "must be in [1, 2^31 - 1], got ", num_blocks);
  FP8KV_REQUIRE(block_size > 0, "block_size", "must be > 0, got ", block_size);
  free_blocks_.reserve(static_cast<size_t>(num_blocks));
  // A stack whose top is block 0, so a fresh cache fills from the lowest ids.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_blocks_.push_back(static_cast<int32_t>(b));
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
}

const BlockAllocator::Sequence& BlockAllocator::sequence(SequenceId seq, const char* argument) const {
  auto it = sequences_.find(seq);
  FP8KV_REQUIRE(it != sequences_.end(), argument, "unknown sequence id ", seq);
  return it->second;
}

int32_t BlockAllocator::take_free_block() {
  const int32_t block = free_blocks_.back();
  free_blocks_.pop_back();
  ref_counts_[static_cast<size_t>(block)] = 1;
  return block;
}

SequenceId BlockAllocator::create_sequence() {
  const SequenceId id = next_id_++;
  sequences_.emplace(id, Sequence{});
  return id;
}

int64_t BlockAllocator::blocks_needed(SequenceId seq, int64_t num_tokens) const {
  const Sequence& s = sequence(seq, "seq");
  FP8KV_REQUIRE(num_tokens >= 0, "num_tokens", "must be >= 0, got ", num_tokens);
  if (num_tokens == 0) return 0;
  const int64_t total_blocks = (s.length + num_tokens + block_size_ - 1) / block_size_;
  int64_t needed = total_blocks - static_cast<int64_t>(s.blocks.size());
  // The new tokens land in a partial last block that another sequence shares: it is copied first.
  const bool partial_last = s.length % block_size_ != 0;
  if (partial_last && ref_counts_[static_cast<size_t>(s.blocks.back())] > 1) ++needed;
  return needed;
}

AppendResult BlockAllocator::append_tokens(SequenceId seq, int64_t num_tokens) {
  const int64_t needed = blocks_needed(seq, num_tokens);
  if (needed > num_free_blocks()) {
    throw CacheFullError("sequence " + std::to_string(seq) + " needs " + std::to_string(needed) +
                         " more blocks to append " + std::to_string(num_tokens) + " tokens, but only " +
                         std::to_string(num_free_blocks()) + " of " + std::to_string(num_blocks_) +
                         " are free; nothing was changed");
  }
  // From here on nothing can fail, so the update is all-or-nothing.
  Sequence& s = sequences_.at(seq);
  AppendResult result;
  if (num_tokens == 0) return result;
  const int32_t used_in_last = static_cast<int32_t>(s.length % block_size_);
  if (used_in_last != 0 && ref_counts_[static_cast<size_t>(s.blocks.back())] > 1) {
    const int32_t shared = s.blocks.back();
    const int32_t copy = take_free_block();
    --ref_counts_[static_cast<size_t>(shared)];
    s.blocks.back() = copy;
    result.copies.push_back(BlockCopy{shared, copy, used_in_last});
  }
  const int64_t new_length = s.length + num_tokens;
  while (static_cast<int64_t>(s.blocks.size()) * block_size_ < new_length) s.blocks.push_back(take_free_block());
  result.slots.reserve(static_cast<size_t>(num_tokens));
  for (int64_t t = s.length; t < new_length; ++t) {
    result.slots.push_back(static_cast<int64_t>(s.blocks[static_cast<size_t>(t / block_size_)]) * block_size_ +
                           t % block_size_);
  }
  s.length = new_length;
  return result;
}

SequenceId BlockAllocator::fork(SequenceId seq) {
  const Sequence copy = sequence(seq, "seq");
  for (int32_t b : copy.blocks) ++ref_counts_[static_cast<size_t>(b)];
  const SequenceId id = next_id_++;
  sequences_.emplace(id, copy);
  return id;
}

void BlockAllocator::free_sequence(SequenceId seq) {
  const Sequence& s = sequence(seq, "seq");
  for (int32_t b : s.blocks) {
    if (--ref_counts_[static_cast<size_t>(b)] == 0) free_blocks_.push_back(b);
  }
  sequences_.erase(seq);
}

const std::vector<int32_t>& BlockAllocator::block_table(SequenceId seq) const { return sequence(seq, "seq").blocks; }

int64_t BlockAllocator::length(SequenceId seq) const { return sequence(seq, "seq").length; }

int64_t BlockAllocator::slot_of(SequenceId seq, int64_t index) const {
  const Sequence& s = sequence(seq, "seq");
  FP8KV_REQUIRE(index >= 0 && index < s.length, "index", "token index must be in [0, ", s.length, "), got ", index);
  return static_cast<int64_t>(s.blocks[static_cast<size_t>(index / block_size_)]) * block_size_ + index % block_size_;
}

}  // namespace fp8kv
