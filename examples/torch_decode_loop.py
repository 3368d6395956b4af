"""fp8kv's paged FP8 decode swapped into a plain PyTorch decoding loop.

A small random-weight decoder (GQA attention with rotary embeddings, no checkpoint needed) generates
tokens greedily twice from the same prompt:

  * baseline: the usual PyTorch loop, a contiguous bf16 KV cache per layer and SDPA;
  * fp8kv:    the same model, but K/V go into an fp8kv paged FP8 cache (``write_kv``, RoPE applied
              by fp8kv on the way in) and attention is ``DecodePlan.run`` over the pages.

The diff against the baseline is the attend() function. The script reports how many generated tokens
agree, the logits' relative difference at each step, and both loops' time per token.

    python3 examples/torch_decode_loop.py --device cuda     # Hopper GPU: the CUDA kernels
    python3 examples/torch_decode_loop.py --device cpu      # anywhere: fp8kv's CPU reference
"""

import argparse
import math
import time

import torch

import fp8kv


class TinyDecoder(torch.nn.Module):
    """Pre-norm decoder layers with GQA attention and a SiLU MLP, in the Llama arrangement."""

    def __init__(self, vocab, layers, hidden, q_heads, kv_heads, head_dim, max_position, device, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        init = lambda *shape: (torch.randn(*shape, generator=g) / math.sqrt(shape[-1])).to(device, dtype)  # noqa: E731
        self.embed = init(vocab, hidden) * math.sqrt(hidden)
        self.layers = [dict(wq=init(q_heads * head_dim, hidden), wk=init(kv_heads * head_dim, hidden),
                            wv=init(kv_heads * head_dim, hidden), wo=init(hidden, q_heads * head_dim),
                            w1=init(4 * hidden, hidden), w2=init(hidden, 4 * hidden)) for _ in range(layers)]
        self.head = init(vocab, hidden)
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, head_dim
        # One RoPE table for both paths: fp8kv applies it to K when writing the cache.
        self.rope = torch.from_numpy(fp8kv.rope_table(max_position, head_dim, theta=1e6)).to(device)

    def rotate(self, x, positions):
        half = self.head_dim // 2
        cos, sin = self.rope[positions, :half][:, None], self.rope[positions, half:][:, None]
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def forward(self, tokens, positions, attend):
        """tokens/positions [n]; attend(layer, q, k, v) -> [n, q_heads, head_dim]."""
        h = self.embed[tokens]
        for i, w in enumerate(self.layers):
            x = torch.nn.functional.rms_norm(h, (h.shape[-1],))
            q = (x @ w["wq"].T).view(-1, self.q_heads, self.head_dim)
            k = (x @ w["wk"].T).view(-1, self.kv_heads, self.head_dim)
            v = (x @ w["wv"].T).view(-1, self.kv_heads, self.head_dim)
            h = h + attend(i, self.rotate(q, positions), k, v).reshape(len(tokens), -1) @ w["wo"].T
            x = torch.nn.functional.rms_norm(h, (h.shape[-1],))
            h = h + torch.nn.functional.silu(x @ w["w1"].T) @ w["w2"].T
        return torch.nn.functional.rms_norm(h, (h.shape[-1],)) @ self.head.T


def generate_baseline(model, prompt, steps):
    """Contiguous bf16 caches [kv_heads, len, head_dim] per layer, SDPA attention."""
    caches = [[None, None] for _ in model.layers]

    def attend(layer, q, k, v):
        positions = attend.positions
        k = model.rotate(k, positions)
        kv = caches[layer]
        kv[0] = k.transpose(0, 1) if kv[0] is None else torch.cat([kv[0], k.transpose(0, 1)], dim=1)
        kv[1] = v.transpose(0, 1) if kv[1] is None else torch.cat([kv[1], v.transpose(0, 1)], dim=1)
        causal = q.shape[0] > 1
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1), kv[0], kv[1], is_causal=causal, enable_gqa=True).transpose(0, 1)

    return run_loop(model, prompt, steps, attend)


def generate_fp8kv(model, prompt, steps, device):
    cache = fp8kv.KvCache(len(model.layers), model.kv_heads, model.head_dim, num_blocks=64, block_size=16,
                          kv_cache_dtype="fp8_e4m3", kv_scales="per_token", device=device)
    seq = cache.create_sequence()
    state = {}

    def attend(layer, q, k, v):
        positions = attend.positions
        if layer == 0:  # once per step: the new tokens' slots and this step's decode plan
            state["slots"] = torch.from_numpy(cache.append_tokens(seq, len(positions))).to(device)
            state["tables"] = cache.block_tables([seq], device=device)
            state["lens"] = cache.seq_lens([seq], device=device)
            state["plan"] = None
        fp8kv.write_kv(cache, layer, k, v, state["slots"], positions=positions.int(), rope=model.rope)
        if q.shape[0] > 1:  # the prompt: causal paged prefill over the pages just written
            cu_q = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=device)
            if device == "cpu":
                return fp8kv.paged_prefill(q, cache, layer, state["tables"], cu_q, state["lens"])
            # The Hopper kernel multiplies FP8 Q by FP8 K: quantise Q, one scale per KV-head group.
            q8, q_scale = fp8kv.quantize_heads(q, num_groups=model.kv_heads)
            return fp8kv.paged_prefill(q8, cache, layer, state["tables"], cu_q, state["lens"], q_descale=q_scale)
        if state["plan"] is None:
            state["plan"] = fp8kv.DecodePlan(q, cache, layer, state["tables"], state["lens"])
        return state["plan"].run(q, cache, layer, state["tables"], state["lens"])

    return run_loop(model, prompt, steps, attend)


def run_loop(model, prompt, steps, attend):
    tokens, logits_per_step = list(prompt), []
    positions = torch.arange(len(prompt), device=prompt.device)
    current = prompt
    started = None
    for step in range(steps):
        if step == 1:  # time the decode steps, not the prompt
            if prompt.is_cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        attend.positions = positions
        logits = model(current, positions, attend)[-1].float()
        logits_per_step.append(logits)
        nxt = int(logits.argmax())
        tokens.append(nxt)
        current = torch.tensor([nxt], device=prompt.device)
        positions = torch.tensor([len(tokens) - 1], device=prompt.device)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    per_token = (time.perf_counter() - started) / max(steps - 1, 1)
    return tokens[len(prompt):], logits_per_step, per_token


def main():
    parser = argparse.ArgumentParser(description="fp8kv decode inside a PyTorch decoding loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=48)
    args = parser.parse_args()
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # the CPU reference takes float32
    model = TinyDecoder(vocab=512, layers=4, hidden=512, q_heads=8, kv_heads=2, head_dim=128,
                        max_position=1024, device=device, dtype=dtype)
    prompt = torch.randint(0, 512, (37,), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        base_tokens, base_logits, base_time = generate_baseline(model, prompt, args.steps)
        fp8_tokens, fp8_logits, fp8_time = generate_fp8kv(model, prompt, args.steps, device)
    # Compare logits only while both loops have fed back the same tokens.
    agree = next((i for i, (a, b) in enumerate(zip(base_tokens, fp8_tokens)) if a != b), len(base_tokens))
    diffs = [float((a - b).norm() / a.norm()) for a, b in zip(base_logits[:agree + 1], fp8_logits[:agree + 1])]
    print(f"device {device}: {args.steps} greedy tokens, {agree} identical before the first divergence")
    print(f"logits relative difference (bf16 cache vs fp8kv FP8 cache): max {max(diffs):.3e}, "
          f"mean {sum(diffs) / len(diffs):.3e}")
    print(f"time per decode step: baseline {base_time * 1e3:.2f} ms, fp8kv {fp8_time * 1e3:.2f} ms "
          "(tiny model: launch-bound, not a benchmark)")


if __name__ == "__main__":
    main()
