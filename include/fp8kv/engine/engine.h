// The serving loop: continuous batching over the paged KV cache.
//
// Each step() schedules work under a token budget: first one decode token (or the next prefill
// chunk) for every running request in arrival order, then new requests from the waiting queue.
// Requests join and leave the running batch at every step. Prefill is chunked: a long prompt is
// spread over several steps, sharing each with the decodes of other requests.
//
// When the cache has no block for a running request, the most recently admitted request is
// preempted: its blocks are freed and it goes back to the front of the waiting queue with the
// tokens it has generated so far; when readmitted, its prompt and generated tokens are recomputed
// (one prefill) and generation continues where it stopped. Nothing is lost, and because the oldest
// request always keeps its blocks, every request eventually finishes. A request that could not
// fit in the whole cache even alone is rejected when it is added.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fp8kv/engine/model.h"
#include "fp8kv/engine/sampling.h"
#include "fp8kv/kv_cache.h"

namespace fp8kv::engine {

struct EngineOptions {
  int32_t max_num_batched_tokens = 512;  // token budget of one step (prefill chunks + decodes)
  int32_t max_num_seqs = 64;             // running requests at most
};

enum class FinishReason : uint8_t { kStop, kLength };
const char* finish_reason_name(FinishReason r);  // "stop", "length"

struct RequestOutput {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;  // generated tokens (the stop token included)
  FinishReason finish_reason = FinishReason::kLength;
  int32_t num_preemptions = 0;  // times this request was preempted and recomputed
};

struct EngineStats {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;      // prefill tokens computed (recomputation included)
  int64_t generated_tokens = 0;
  int64_t preemptions = 0;
  int64_t finished = 0;
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t used_blocks = 0;
  int64_t total_blocks = 0;
};

class Engine {
 public:
  // The engine runs `model` over `cache` (which must have been made for the model's config).
  Engine(Model& model, KvCache& cache, const EngineOptions& options = {});

  // Queues a request; returns its id (0, 1, ...). Throws InvalidArgument("prompt", ...) for an
  // empty prompt or an out-of-vocabulary token, and InvalidArgument("max_new_tokens", ...) when
  // prompt + max_new_tokens exceeds the cache or the model's max position.
  int64_t add_request(const std::vector<int32_t>& prompt, const SamplingParams& sampling);

  // Runs one step; returns the requests that finished in it.
  std::vector<RequestOutput> step();
  bool has_unfinished() const { return !running_.empty() || !waiting_.empty(); }
  // Steps until every request has finished; outputs in id order. `on_step` (optional) is called
  // after each step with the current stats.
  std::vector<RequestOutput> run_to_completion(const std::function<void(const EngineStats&)>& on_step = {});

  const EngineStats& stats() const { return stats_; }

 private:
  struct Request {
    int64_t id = 0;
    std::vector<int32_t> prompt;
    std::vector<int32_t> generated;
    SamplingParams sampling;
    std::mt19937_64 rng;
    SequenceId seq = -1;        // cache sequence while running
    int64_t num_computed = 0;   // tokens whose K/V are in the cache
    int32_t num_preemptions = 0;

    int64_t num_tokens() const { return static_cast<int64_t>(prompt.size() + generated.size()); }
    int32_t token(int64_t i) const;
  };
  void preempt(std::unique_ptr<Request>& request);
  bool finished(const Request& request, FinishReason& reason) const;

  Model& model_;
  KvCache& cache_;
  EngineOptions options_;
  std::vector<std::unique_ptr<Request>> running_;   // in admission order
  std::deque<std::unique_ptr<Request>> waiting_;
  int64_t next_id_ = 0;
  EngineStats stats_;
  DeviceTensor logits_, argmax_;
};

}  // namespace fp8kv::engine
