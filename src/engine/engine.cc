#include "fp8kv/engine/engine.h"

#include <algorithm>

#include "fp8kv/error.h"

namespace fp8kv::engine {

const char* finish_reason_name(FinishReason r) { return r == FinishReason::kStop ? "stop" : "length"; }

int32_t Engine::Request::token(int64_t i) const {
  const int64_t p = static_cast<int64_t>(prompt.size());
  return i < p ? prompt[static_cast<size_t>(i)] : generated[static_cast<size_t>(i - p)];
}

Engine::Engine(Model& model, KvCache& cache, const EngineOptions& options)
    : model_(model), cache_(cache), options_(options) {
  FP8KV_REQUIRE(options.max_num_batched_tokens >= 1, "max_num_batched_tokens", "must be >= 1, got ",
                options.max_num_batched_tokens);
  FP8KV_REQUIRE(options.max_num_seqs >= 1, "max_num_seqs", "must be >= 1, got ", options.max_num_seqs);
  const ModelConfig& c = model.config();
  const KvCacheSpec& s = cache.spec();
  FP8KV_REQUIRE(s.num_layers == c.num_layers && s.num_kv_heads == c.num_kv_heads && s.head_dim == c.head_dim, "cache",
                "was made for ", s.num_layers, " layers x ", s.num_kv_heads, " KV heads x ", s.head_dim,
                ", the model has ", c.num_layers, " x ", c.num_kv_heads, " x ", c.head_dim);
  FP8KV_REQUIRE(cache.device() == model.backend().device(), "cache", "must live on the model's backend device");
  stats_.total_blocks = cache.allocator().num_blocks();
}

int64_t Engine::add_request(const std::vector<int32_t>& prompt, const SamplingParams& sampling) {
  sampling.validate();
  FP8KV_REQUIRE(!prompt.empty(), "prompt", "must hold at least one token");
  const int32_t vocab = model_.config().vocab_size;
  for (size_t i = 0; i < prompt.size(); ++i) {
    FP8KV_REQUIRE(prompt[i] >= 0 && prompt[i] < vocab, "prompt", "token ", i, " = ", prompt[i], " is outside [0, ",
                  vocab, ")");
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + sampling.max_new_tokens;
  const int64_t capacity = cache_.allocator().num_blocks() * cache_.allocator().block_size();
  FP8KV_REQUIRE(total <= capacity, "max_new_tokens", "prompt (", prompt.size(), ") + max_new_tokens (",
                sampling.max_new_tokens, ") = ", total, " tokens exceeds the whole KV cache (", capacity, " tokens)");
  FP8KV_REQUIRE(total <= model_.max_position(), "max_new_tokens", "prompt + max_new_tokens = ", total,
                " exceeds the model's max position (", model_.max_position(), ")");
  auto request = std::make_unique<Request>();
  request->id = next_id_++;
  request->prompt = prompt;
  request->sampling = sampling;
  request->rng.seed(sampling.seed);
  waiting_.push_back(std::move(request));
  stats_.waiting = static_cast<int64_t>(waiting_.size());
  return next_id_ - 1;
}

void Engine::preempt(std::unique_ptr<Request>& request) {
  cache_.allocator().free_sequence(request->seq);
  request->seq = -1;
  request->num_computed = 0;
  ++request->num_preemptions;
  ++stats_.preemptions;
  waiting_.push_front(std::move(request));
}

bool Engine::finished(const Request& request, FinishReason& reason) const {
  const int32_t last = request.generated.back();
  const auto& stop = request.sampling.stop_token_ids;
  const auto& eos = model_.config().eos_token_ids;
  if (std::find(stop.begin(), stop.end(), last) != stop.end() ||
      (!request.sampling.ignore_eos && std::find(eos.begin(), eos.end(), last) != eos.end())) {
    reason = FinishReason::kStop;
    return true;
  }
  if (static_cast<int32_t>(request.generated.size()) >= request.sampling.max_new_tokens) {
    reason = FinishReason::kLength;
    return true;
  }
  return false;
}

std::vector<RequestOutput> Engine::step() {
  std::vector<RequestOutput> done;
  if (!has_unfinished()) return done;
  BlockAllocator& allocator = cache_.allocator();
  int64_t budget = options_.max_num_batched_tokens;
  StepBatch batch;
  std::vector<Request*> sampled;  // requests whose chunk ends at their last token, in logit-row order

  auto schedule = [&](Request& r, int64_t n) {
    const AppendResult appended = allocator.append_tokens(r.seq, n);
    if (!appended.copies.empty()) cache_.apply_copies(appended.copies);
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = r.token(r.num_computed + i);
    const bool wants_logits = r.num_computed + n == r.num_tokens();
    const bool is_decode = n == 1 && wants_logits && !r.generated.empty();
    if (!is_decode) stats_.prompt_tokens += n;
    batch.add_sequence(tokens, static_cast<int32_t>(r.num_computed), appended.slots, allocator.block_table(r.seq),
                       wants_logits);
    r.num_computed += n;
    budget -= n;
    if (wants_logits) sampled.push_back(&r);
  };

  // Running requests first, oldest first; a request short of blocks takes them from the newest.
  bool preempted = false;
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request& r = *running_[i];
    const int64_t n = std::min(r.num_tokens() - r.num_computed, budget);
    bool self_preempted = false;
    while (!allocator.can_append(r.seq, n)) {
      preempted = true;
      self_preempted = running_.size() - 1 == i;
      preempt(running_.back());
      running_.pop_back();
      if (self_preempted) break;
    }
    if (self_preempted) break;
    schedule(r, n);
    ++i;
  }
  // New requests only when nobody was preempted this step (they would only take blocks back).
  while (!preempted && !waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Request& r = *waiting_.front();
    const int64_t n = std::min(r.num_tokens(), budget);
    const SequenceId seq = allocator.create_sequence();
    if (!allocator.can_append(seq, n)) {
      allocator.free_sequence(seq);
      break;
    }
    r.seq = seq;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    schedule(r, n);
  }
  FP8KV_REQUIRE(batch.total_q() > 0, "cache", "no request could be scheduled: the cache (",
                allocator.num_blocks(), " blocks) is too small for any chunk");
  batch.finalize();

  const int32_t vocab = model_.config().vocab_size;
  const int64_t num_logits = static_cast<int64_t>(sampled.size());
  if (!logits_.defined() || logits_.ref().size(0) < num_logits) {
    const int64_t rows = std::max<int64_t>(num_logits, options_.max_num_seqs);
    logits_ = DeviceTensor(model_.backend().device(), DType::kFloat32, {rows, vocab});
    argmax_ = DeviceTensor(model_.backend().device(), DType::kInt32, {rows});
  }
  const TensorRef logits = logits_.rows(num_logits);
  model_.forward(batch, cache_, logits);

  std::vector<int32_t> next(static_cast<size_t>(num_logits));
  const bool all_greedy = std::all_of(sampled.begin(), sampled.end(), [](Request* r) { return r->sampling.greedy(); });
  if (num_logits > 0 && all_greedy) {
    // Only the token ids cross to the host.
    model_.backend().argmax(logits, argmax_.rows(num_logits));
    model_.backend().copy_to_host(next.data(), argmax_.rows(num_logits));
  } else if (num_logits > 0) {
    std::vector<float> host(static_cast<size_t>(num_logits) * vocab);
    model_.backend().copy_to_host(host.data(), logits);
    for (int64_t i = 0; i < num_logits; ++i) {
      Request& r = *sampled[static_cast<size_t>(i)];
      next[static_cast<size_t>(i)] = sample(host.data() + i * vocab, vocab, r.sampling, r.rng);
    }
  }
  for (int64_t i = 0; i < num_logits; ++i) {
    Request& r = *sampled[static_cast<size_t>(i)];
    // The device argmax reports a NaN row as -1.
    FP8KV_REQUIRE(next[static_cast<size_t>(i)] >= 0, "logits", "NaN in the next-token logits of request ", r.id);
    r.generated.push_back(next[static_cast<size_t>(i)]);
    ++stats_.generated_tokens;
  }

  // Retire finished requests.
  std::vector<std::unique_ptr<Request>> still_running;
  for (auto& r : running_) {
    FinishReason reason;
    if (!r->generated.empty() && r->num_computed == r->num_tokens() - 1 && finished(*r, reason)) {
      allocator.free_sequence(r->seq);
      RequestOutput out;
      out.id = r->id;
      out.prompt = std::move(r->prompt);
      out.tokens = std::move(r->generated);
      out.finish_reason = reason;
      out.num_preemptions = r->num_preemptions;
      done.push_back(std::move(out));
      ++stats_.finished;
    } else {
      still_running.push_back(std::move(r));
    }
  }
  running_ = std::move(still_running);
  ++stats_.steps;
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size());
  stats_.used_blocks = allocator.num_blocks() - allocator.num_free_blocks();
  return done;
}

std::vector<RequestOutput> Engine::run_to_completion(const std::function<void(const EngineStats&)>& on_step) {
  std::vector<RequestOutput> all;
  while (has_unfinished()) {
    for (RequestOutput& out : step()) all.push_back(std::move(out));
    if (on_step) on_step(stats_);
  }
  std::sort(all.begin(), all.end(), [](const RequestOutput& a, const RequestOutput& b) { return a.id < b.id; });
  return all;
}

}  // namespace fp8kv::engine
