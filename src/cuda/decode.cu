// Host side of paged decode: the one kernel-selection function, the split-KV plan, and run().
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/decode.cuh"
#include "cuda/device_errors.h"
#include "fp8kv/cuda.h"

namespace fp8kv::cuda {
namespace {

using cuda_detail::DecodeParams;

// Fewest keys per split: below this the fixed cost of a block (loading q, filling the pipeline,
// merging warps, writing a partial row) is no longer small against streaming its keys.
constexpr int kMinChunkTokens = 256;
// Split lengths are multiples of this, itself a multiple of every kernel's block tile (at most
// 4 warps x 32 tokens), so that only a sequence's last split is partial.
constexpr int kChunkGranularity = 128;
// Splitting sequences to fill the last of several waves (see the plan): at most this many pieces,
// each at least kMinBalanceChunkTokens long, and only for a last-wave fill better by kMinFillGain.
// 1024 rather than 2048 lets batch 128 x 4k run as 3 pieces of 1408 keys (7.8 waves, not 2.6) with
// 3 blocks per SM: measured 2-3% faster on the H100 (402.9 -> 395.9 us, llama shape). With 4 per SM
// (FP8, head_dim 128) whole sequences already fill 1.94 waves, and no split is taken.
constexpr int kMaxBalanceSplits = 4;
// Blocks per SM that the splits of long sequences aim at, when fewer than the resident limit (3 or 4
// for the FP8 kernels): two blocks per SM already keep enough K/V bytes in flight, and fewer, longer
// splits cost fewer block starts and a cheaper merge. Measured on the H100 against aiming at 3:
// batch 1 and 8 up to 9% faster (1 x 128k 105.8 vs 108.7 us), batch 32 unchanged.
constexpr int kSplitBlocksPerSm = 2;
constexpr int64_t kMinBalanceChunkTokens = 1024;
constexpr double kMinFillGain = 0.05;
// Longest split of a multi-wave plan that keeps sequences whole (the last-wave fill above did not
// cut them): longer sequences are cut into pieces (at most kMaxBalanceSplits) as long as the last
// wave stays as full, because SMs stream at different speeds and a block's share of the tail grows
// with its length; more, shorter blocks even them out. (Measured only there; where the fill
// already cut the sequences, its pieces are kept.)
// With 4 blocks per SM (FP8, head_dim 128), batch 128 x 64k ran as 1024 whole sequences (1.94
// waves) 1.1-1.3% slower on the H100 than as 3 pieces on 3 blocks per SM; as 4 pieces of 16k keys
// (7.8 waves) 0.5-0.6% faster than that (llama 5779 against 5811 us; BF16 11630 against 11940).
// A limit of 8k measured the same.
constexpr int64_t kMaxMultiWaveChunkTokens = 16384;
// Balanced plan (equal planned lengths; see paged_decode_kernel): block rows of W keys laid over
// the sequences end to end. Used where W is shorter than the split plan's longest split by at least
// kMinBalanceSavedGranules x kChunkGranularity keys: a row that crosses into the next sequence pays
// a second pipeline start and partial write (about 3 us), and a block streams whole iterations of
// 32-64 keys, so a few keys less save nothing. Measured on the H100 against the split plan (llama /
// qwen shapes, block size 16, A/B in one run, balanced wherever it applied): 8 x 64k, 8 x 128k,
// 32 x 64k, 32 x 128k 1.3-1.7% and 32 x 16k 0.6-0.8% faster (3 or more granules saved); 8 x 4k,
// 8 x 16k, 32 x 4k 2.3-10% and 1 x 64k 1.1-1.4% slower (none saved).
// Row starts are multiples of kBalanceGranularity keys (two 8-token steps: no step straddles a page).
constexpr int64_t kMinBalanceSavedGranules = 2;
constexpr int64_t kBalanceGranularity = 16;
// gridDim.y limit of CUDA.
constexpr int64_t kMaxWorkItems = 65535;

struct KernelChoice {
  bool supported = false;
  int kernel_group = 0;  // query heads per thread block
  int head_chunks = 0;   // thread blocks per KV head
  std::string reason;    // why not, when unsupported
};

// The one place that decides which decode kernel serves a configuration (used by
// decode_supported(), the plan and run()).
KernelChoice select_kernel(DType storage, DType q_dtype, int head_dim, int num_q_heads, int num_kv_heads) {
  KernelChoice c;
  if (!is_kv_storage_dtype(storage)) {
    c.reason = std::string("cache dtype ") + dtype_name(storage) + " is not a KV storage dtype";
    return c;
  }
  if (q_dtype != DType::kBFloat16 && q_dtype != DType::kFloat16) {
    c.reason = std::string("q dtype ") + dtype_name(q_dtype) + " (the CUDA decode takes bf16 or fp16)";
    return c;
  }
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    c.reason = "head_dim " + std::to_string(head_dim) + " (kernels exist for 64, 128, 256)";
    return c;
  }
  if (num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0) {
    c.reason = "num_q_heads must be a multiple of num_kv_heads";
    return c;
  }
  const int group = num_q_heads / num_kv_heads;
  // The largest power of two <= the register budget that divides the group: a group of 8 over FP8
  // is two blocks of 4 heads, adjacent in the grid so that the second reads the pages from L2.
  int g = cuda_detail::max_decode_group(is_fp8(storage), head_dim);
  while (group % g != 0) g /= 2;
  c.supported = true;
  c.kernel_group = g;
  c.head_chunks = group / g;
  return c;
}

int sm_count() {
  int device = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  int count = 0;
  FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

// The storage-type and scale-kind switch in front of cuda_detail::paged_decode_op (launch, or
// occupancy query). Per-token scales exist for FP8 storage only (PagedKvLayer::validate).
void decode_op(DType storage, bool per_token, const DecodeParams* p, int head_dim, int kernel_group, dim3 grid,
               bool two_per_sm, cudaStream_t stream, int* blocks_per_sm) {
  using cuda_detail::paged_decode_op;
  switch (storage) {
    case DType::kBFloat16:
      return paged_decode_op<Bf16, false>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    case DType::kFloat16:
      return paged_decode_op<Fp16, false>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    case DType::kFp8E4M3:
      return per_token
                 ? paged_decode_op<Fp8E4M3, true>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm)
                 : paged_decode_op<Fp8E4M3, false>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    case DType::kFp8E5M2:
      return per_token
                 ? paged_decode_op<Fp8E5M2, true>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm)
                 : paged_decode_op<Fp8E5M2, false>(p, head_dim, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    default: throw Unsupported(std::string("cache dtype ") + dtype_name(storage));
  }
}

int log2_exact(int x) {
  int n = 0;
  while ((1 << n) < x) ++n;
  return n;
}

}  // namespace

struct DecodePlan::State {
  int64_t batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;
  DType storage = DType::kFp8E4M3;
  bool per_token = false;
  KernelChoice kernel;
  int32_t chunk_tokens = 0;
  std::vector<int32_t> splits;   // per sequence
  int64_t num_work = 0;
  bool any_multi_split = false;
  int32_t uniform_splits = 0;    // every sequence's split count when they are all equal, else 0
  int32_t balance_tokens = 0;    // balanced plan: keys per block row (0 = split plan)
  int32_t balance_len = 0;       // balanced plan: every sequence's planned length, padded
  void* device_memory = nullptr;
  size_t device_bytes = 0;
  int4* work = nullptr;          // [num_work]
  float* partial_o = nullptr;    // [num_work, num_q_heads, head_dim]
  float* partial_lse = nullptr;  // [num_work, num_q_heads]
  int32_t* split_counters = nullptr;  // [batch, num_kv_heads * head_chunks], zero between runs
  // The device's error word, fetched when planning: its first use allocates it, which a stream
  // under graph capture does not allow, so run() must find it ready.
  uint32_t* error_flags = nullptr;

  ~State() {
    if (device_memory != nullptr) cudaFree(device_memory);
  }
};

bool decode_supported(DType storage, DType q_dtype, int head_dim, int num_q_heads, int num_kv_heads) {
  return select_kernel(storage, q_dtype, head_dim, num_q_heads, num_kv_heads).supported;
}

DecodePlan::DecodePlan(const DecodeArgs& args, const std::vector<int32_t>& host_seq_lens,
                       const DecodePlanOptions& options)
    : state_(std::make_unique<State>()) {
  validate(args);
  FP8KV_REQUIRE(args.cache.device == Device::kCuda, "cache", "the CUDA decode needs a cache on the device");
  State& s = *state_;
  s.batch = args.q.size(0);
  s.num_q_heads = static_cast<int>(args.q.size(1));
  s.num_kv_heads = args.cache.layout.num_kv_heads;
  s.head_dim = args.cache.layout.head_dim;
  s.block_size = args.cache.layout.block_size;
  s.storage = args.cache.dtype;
  s.per_token = args.cache.has_token_scales();
  s.kernel = select_kernel(s.storage, args.q.dtype, s.head_dim, s.num_q_heads, s.num_kv_heads);
  if (!s.kernel.supported) throw Unsupported("CUDA paged decode for " + s.kernel.reason);
  FP8KV_REQUIRE(static_cast<int64_t>(host_seq_lens.size()) == s.batch, "seq_lens",
                "host copy has ", host_seq_lens.size(), " entries for a batch of ", s.batch);
  FP8KV_REQUIRE(options.headroom_tokens >= 0, "headroom_tokens", "must be >= 0, got ", options.headroom_tokens);
  FP8KV_REQUIRE(options.max_splits >= 0, "max_splits", "must be >= 0 (0 = heuristic), got ", options.max_splits);
  FP8KV_REQUIRE(options.balanced >= -1 && options.balanced <= 1, "balanced", "must be -1, 0 or 1, got ",
                options.balanced);
  const int64_t capacity = args.block_tables.size(1) * static_cast<int64_t>(s.block_size);
  std::vector<int64_t> planned(static_cast<size_t>(s.batch));
  int64_t total = 0;
  int64_t longest = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int32_t len = host_seq_lens[static_cast<size_t>(b)];
    FP8KV_REQUIRE(len >= 0 && len <= capacity, "seq_lens", "seq_lens[", b, "] = ", len, " is outside [0, ", capacity,
                  "] (max_blocks_per_seq * block_size)");
    planned[static_cast<size_t>(b)] = std::min<int64_t>(static_cast<int64_t>(len) + options.headroom_tokens, capacity);
    total += planned[static_cast<size_t>(b)];
    longest = std::max(longest, planned[static_cast<size_t>(b)]);
  }

  // Keys per split: the shortest multiple of kChunkGranularity (>= kMinChunkTokens) whose blocks
  // all fit in one wave of kSplitBlocksPerSm blocks per SM. Fewer, longer splits amortise each
  // block's fixed cost and the merge; one wave leaves no tail of half-idle SMs; a target the
  // blocks fill evenly matters more than the last resident slot (aiming at 2 per SM while letting
  // the count reach 3 per SM put 320 blocks on 132 SMs and ran 15% slower).
  const int64_t blocks_per_split = static_cast<int64_t>(s.num_kv_heads) * s.kernel.head_chunks;
  int blocks_per_sm = 0;
  decode_op(s.storage, s.per_token, nullptr, s.head_dim, s.kernel.kernel_group, dim3(), false, nullptr, &blocks_per_sm);
  const int64_t wave = std::max<int64_t>(1, static_cast<int64_t>(blocks_per_sm) * sm_count());
  const int64_t split_wave =
      std::max<int64_t>(1, static_cast<int64_t>(std::min(blocks_per_sm, kSplitBlocksPerSm)) * sm_count());
  auto count_work = [&](int64_t c) {
    int64_t n = 0;
    for (int64_t len : planned) n += std::max<int64_t>(1, (len + c - 1) / c);
    return n;
  };
  auto round_up = [](int64_t x) { return (x + kChunkGranularity - 1) / kChunkGranularity * kChunkGranularity; };
  int64_t chunk =
      round_up(std::max<int64_t>(kMinChunkTokens, (total * blocks_per_split + split_wave - 1) / split_wave));
  if (options.max_splits > 0) chunk = std::max<int64_t>(chunk, round_up((longest + options.max_splits - 1) / options.max_splits));
  // Rounding each sequence's split count up can overshoot the wave: lengthen splits until it fits.
  while (count_work(chunk) * blocks_per_split > split_wave && chunk < longest) chunk = round_up(chunk + chunk / 32 + 1);
  // One split per sequence and still more blocks than a full wave of resident blocks: they run in
  // several waves (all resident slots used), and a last wave that is only partly full leaves SMs
  // idle at the end. Split the sequences into a few pieces when that fills the last wave better (3 splits of 128 x 64k: 7.8 waves instead of 2.6,
  // measured 3% faster on the H100), keeping splits long enough that block starts and the merge
  // stay small.
  if (count_work(chunk) * blocks_per_split > wave) {
    auto wave_fill = [&](int64_t c) {
      const double waves = static_cast<double>(count_work(c) * blocks_per_split) / static_cast<double>(wave);
      return waves / std::ceil(waves);
    };
    double best_fill = wave_fill(chunk);
    const int max_pieces = options.max_splits > 0 ? std::min(options.max_splits, kMaxBalanceSplits) : kMaxBalanceSplits;
    for (int pieces = 2; pieces <= max_pieces; ++pieces) {
      const int64_t c = round_up((longest + pieces - 1) / pieces);
      if (c < kMinBalanceChunkTokens) break;
      if (wave_fill(c) > best_fill + kMinFillGain) {
        best_fill = wave_fill(c);
        chunk = c;
      }
    }
    if (chunk >= longest && longest > kMaxMultiWaveChunkTokens) {
      const int64_t pieces =
          std::min<int64_t>(max_pieces, (longest + kMaxMultiWaveChunkTokens - 1) / kMaxMultiWaveChunkTokens);
      const int64_t c = round_up((longest + pieces - 1) / pieces);
      if (pieces > 1 && wave_fill(c) >= best_fill - kMinFillGain) chunk = c;
    }
  }
  while (count_work(chunk) > kMaxWorkItems) chunk *= 2;
  FP8KV_REQUIRE(s.batch <= kMaxWorkItems, "q", "batch ", s.batch, " exceeds the ", kMaxWorkItems,
                " sequences one decode launch covers");

  // Balanced plan: one wave of block rows, two per SM, each streaming the same W keys, where the
  // split plan's whole-sequence splits leave slots idle (8 x 64k: 256 blocks of 16384 keys on 264
  // slots; balanced: 264 blocks of 15888). Only for equal planned lengths, whose segments the
  // kernel computes without loading anything.
  const bool equal_lengths =
      s.batch > 0 && planned[0] > 0 && std::all_of(planned.begin(), planned.end(), [&](int64_t n) { return n == planned[0]; });
  const bool split_plan_one_wave = count_work(chunk) * blocks_per_split <= split_wave;
  if (equal_lengths && options.max_splits == 0 && options.balanced >= 0 && blocks_per_sm >= kSplitBlocksPerSm &&
      split_plan_one_wave) {
    const int64_t len = (planned[0] + kBalanceGranularity - 1) / kBalanceGranularity * kBalanceGranularity;
    const int64_t rows = split_wave / blocks_per_split;
    const int64_t total = s.batch * len;
    const int64_t w = rows < 1 ? 0
                               : std::max<int64_t>(kMinChunkTokens, (total + rows * kBalanceGranularity - 1) /
                                                                        (rows * kBalanceGranularity) * kBalanceGranularity);
    const int64_t longest_split = std::min(chunk, longest);
    const int64_t saved_granules =
        (longest_split + kChunkGranularity - 1) / kChunkGranularity - (w + kChunkGranularity - 1) / kChunkGranularity;
    if (w > 0 && w <= len && w < longest_split &&
        (options.balanced == 1 || saved_granules >= kMinBalanceSavedGranules)) {
      s.balance_tokens = static_cast<int32_t>(w);
      s.balance_len = static_cast<int32_t>(len);
    }
  }

  std::vector<int4> work;
  s.splits.resize(static_cast<size_t>(s.batch));
  if (s.balance_tokens > 0) {
    const int64_t w = s.balance_tokens;
    const int64_t len = s.balance_len;
    s.chunk_tokens = s.balance_tokens;
    s.num_work = (s.batch * len + w - 1) / w;
    for (int64_t b = 0; b < s.batch; ++b) {
      const int64_t parts = (b * len + len - 1) / w - (b * len) / w + 1;
      s.splits[static_cast<size_t>(b)] = static_cast<int32_t>(parts);
      s.any_multi_split = s.any_multi_split || parts > 1;
    }
  } else {
    s.chunk_tokens = static_cast<int32_t>(chunk);
    for (int64_t b = 0; b < s.batch; ++b) {
      const int splits = static_cast<int>(std::max<int64_t>(1, (planned[static_cast<size_t>(b)] + chunk - 1) / chunk));
      s.splits[static_cast<size_t>(b)] = splits;
      s.any_multi_split = s.any_multi_split || splits > 1;
      const int first = static_cast<int>(work.size());
      for (int i = 0; i < splits; ++i) work.push_back(make_int4(static_cast<int>(b), i, splits, first));
    }
    s.num_work = static_cast<int64_t>(work.size());
    const bool uniform = std::all_of(s.splits.begin(), s.splits.end(), [&](int32_t n) { return n == s.splits[0]; });
    s.uniform_splits = uniform && !s.splits.empty() ? s.splits[0] : 0;
  }
  // Partial result rows: one per work item, or two per block row of the balanced plan.
  const int64_t partial_rows = s.balance_tokens > 0 ? 2 * s.num_work : s.num_work;

  // One allocation: the work list, the split counters, then the FP32 split results (256-byte
  // aligned pieces).
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t work_bytes = align(work.size() * sizeof(int4));
  const size_t counter_bytes =
      s.any_multi_split ? align(static_cast<size_t>(s.batch) * s.num_kv_heads * s.kernel.head_chunks * sizeof(int32_t)) : 0;
  const size_t o_bytes = s.any_multi_split
                             ? align(static_cast<size_t>(partial_rows) * s.num_q_heads * s.head_dim * sizeof(float))
                             : 0;
  const size_t lse_bytes = s.any_multi_split ? align(static_cast<size_t>(partial_rows) * s.num_q_heads * sizeof(float)) : 0;
  s.device_bytes = work_bytes + counter_bytes + o_bytes + lse_bytes;
  FP8KV_CUDA_CHECK(cudaMalloc(&s.device_memory, s.device_bytes));
  char* base = static_cast<char*>(s.device_memory);
  s.work = reinterpret_cast<int4*>(base);
  if (s.any_multi_split) {
    s.split_counters = reinterpret_cast<int32_t*>(base + work_bytes);
    s.partial_o = reinterpret_cast<float*>(base + work_bytes + counter_bytes);
    s.partial_lse = reinterpret_cast<float*>(base + work_bytes + counter_bytes + o_bytes);
    FP8KV_CUDA_CHECK(cudaMemset(s.split_counters, 0, counter_bytes));
  }
  FP8KV_CUDA_CHECK(cudaMemcpy(s.work, work.data(), work.size() * sizeof(int4), cudaMemcpyHostToDevice));
  s.error_flags = cuda_detail::device_error_word();
}

DecodePlan::~DecodePlan() = default;
DecodePlan::DecodePlan(DecodePlan&&) noexcept = default;
DecodePlan& DecodePlan::operator=(DecodePlan&&) noexcept = default;

int64_t DecodePlan::batch() const { return state_->batch; }
int32_t DecodePlan::chunk_tokens() const { return state_->chunk_tokens; }
int64_t DecodePlan::num_work_items() const { return state_->num_work; }
int32_t DecodePlan::num_splits(int64_t sequence) const { return state_->splits.at(static_cast<size_t>(sequence)); }
size_t DecodePlan::workspace_bytes() const { return state_->device_bytes; }

void DecodePlan::run(const DecodeArgs& args, void* stream) const {
  validate(args);
  const State& s = *state_;
  FP8KV_REQUIRE(args.cache.device == Device::kCuda, "cache", "the CUDA decode needs a cache on the device");
  FP8KV_REQUIRE(args.q.size(0) == s.batch && args.q.size(1) == s.num_q_heads, "q", "shape ", args.q.shape_string(),
                " differs from the plan's [", s.batch, ", ", s.num_q_heads, ", ", s.head_dim, "]");
  FP8KV_REQUIRE(args.cache.dtype == s.storage && args.cache.layout.num_kv_heads == s.num_kv_heads &&
                    args.cache.layout.head_dim == s.head_dim && args.cache.layout.block_size == s.block_size &&
                    args.cache.has_token_scales() == s.per_token,
                "cache", "format (dtype, heads, head_dim, block_size, scale granularity) differs from the plan's");
  const KernelChoice kernel = select_kernel(args.cache.dtype, args.q.dtype, s.head_dim, s.num_q_heads, s.num_kv_heads);
  if (!kernel.supported) throw Unsupported("CUDA paged decode for " + kernel.reason);

  const PagedKvLayer& cache = args.cache;
  DecodeParams p{};
  p.q = args.q.data;
  p.out = args.out.data;
  p.q_fp16 = args.q.dtype == DType::kFloat16;
  p.out_fp16 = args.out.dtype == DType::kFloat16;
  p.k_cache = cache.k;
  p.v_cache = cache.v;
  p.scales = cuda_detail::CacheScales::of(cache);
  p.block_tables = args.block_tables.ptr<const int32_t>();
  p.max_blocks_per_seq = static_cast<int32_t>(args.block_tables.size(1));
  p.seq_lens = args.seq_lens.ptr<const int32_t>();
  p.num_blocks = cache.num_blocks;
  p.layout = cache.layout;
  p.log2_block_size = log2_exact(cache.layout.block_size);
  p.num_q_heads = s.num_q_heads;
  p.group = s.num_q_heads / s.num_kv_heads;
  p.head_chunks = kernel.head_chunks;
  p.score_scale = args.softmax_scale * cuda_detail::kLog2e;
  p.work = s.work;
  p.uniform_splits = s.uniform_splits;
  p.balance_tokens = s.balance_tokens;
  p.balance_len = s.balance_len;
  p.batch = static_cast<int32_t>(s.batch);
  p.chunk_tokens = s.chunk_tokens;
  p.partial_o = s.partial_o;
  p.partial_lse = s.partial_lse;
  p.split_counters = s.split_counters;
  p.error_flags = s.error_flags;
  if (s.batch == 0) return;

  const auto st = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(s.num_kv_heads * kernel.head_chunks), static_cast<unsigned>(s.num_work));
  decode_op(cache.dtype, s.per_token, &p, s.head_dim, kernel.kernel_group, grid, s.balance_tokens > 0, st, nullptr);
  FP8KV_CUDA_CHECK_LAUNCH();
}

void paged_decode(const DecodeArgs& args, void* stream) {
  validate(args);  // seq_lens are on the device with the cache
  std::vector<int32_t> lens(static_cast<size_t>(args.seq_lens.size(0)));
  FP8KV_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  FP8KV_CUDA_CHECK(cudaMemcpy(lens.data(), args.seq_lens.data, lens.size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
  const DecodePlan plan(args, lens);
  plan.run(args, stream);
}

}  // namespace fp8kv::cuda
