// Block bookkeeping for the paged cache: which blocks are free, which sequence owns which
// blocks (its block table), reference counts for forked sequences, and copy-on-write of a shared
// partial last block. It owns no K/V data; it tells the caller which slots to write and which
// block copies to perform before writing (KvCache applies them for its own storage).
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace fp8kv {

using SequenceId = int64_t;

// Copy the first `num_tokens` positions of block `src` to block `dst` (every layer, K and V, and
// per-token scales). Emitted by copy-on-write.
struct BlockCopy {
  int32_t src = 0;
  int32_t dst = 0;
  int32_t num_tokens = 0;
};

struct AppendResult {
  std::vector<int64_t> slots;      // one slot per appended token, in order
  std::vector<BlockCopy> copies;   // to apply before writing the new tokens
};

class BlockAllocator {
 public:
  BlockAllocator(int64_t num_blocks, int block_size);

  SequenceId create_sequence();
  // Grows `seq` by `num_tokens` tokens, allocating blocks as needed (and copying a shared partial
  // last block first). All-or-nothing: on CacheFullError nothing has changed.
  AppendResult append_tokens(SequenceId seq, int64_t num_tokens);
  // New sequence sharing all of `seq`'s blocks (reference-counted); the next append to either
  // copies the shared partial last block.
  SequenceId fork(SequenceId seq);
  // Releases the sequence; blocks return to the free list when their count reaches zero.
  void free_sequence(SequenceId seq);

  // Blocks needed to append `num_tokens` to `seq` (copy-on-write included); 0 if none.
  int64_t blocks_needed(SequenceId seq, int64_t num_tokens) const;
  bool can_append(SequenceId seq, int64_t num_tokens) const { return blocks_needed(seq, num_tokens) <= num_free_blocks(); }

  const std::vector<int32_t>& block_table(SequenceId seq) const;
  int64_t length(SequenceId seq) const;
  bool contains(SequenceId seq) const { return sequences_.count(seq) != 0; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }
  int64_t num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int32_t ref_count(int32_t block) const { return ref_counts_[static_cast<size_t>(block)]; }
  // Slot of token `index` of `seq` (0 <= index < length).
  int64_t slot_of(SequenceId seq, int64_t index) const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    int64_t length = 0;
  };
  const Sequence& sequence(SequenceId seq, const char* argument) const;
  int32_t take_free_block();

  int64_t num_blocks_;
  int block_size_;
  std::vector<int32_t> free_blocks_;  // stack; a fresh allocator hands out the lowest ids first
  std::vector<int32_t> ref_counts_;
  std::unordered_map<SequenceId, Sequence> sequences_;
  SequenceId next_id_ = 0;
};

}  // namespace fp8kv
