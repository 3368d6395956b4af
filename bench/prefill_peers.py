#!/usr/bin/env python3
"""PyTorch SDPA BF16 prefill peers for `fp8kv bench prefill`, run by it as a subprocess.

Reads a JSON request (--request FILE: {"warmup", "repeats", "points": [{key, num_q_heads,
num_kv_heads, head_dim, batch, seq, causal}]}) and prints one JSON object with the median
microseconds of SDPA on the cuDNN and flash backends for every point, timed the way the C++
side times fp8kv: CUDA events around single calls, a 256 MiB L2 flush before each call.
cuDNN gets K/V repeated to h_q heads (its SDPA path has no native GQA); flash uses enable_gqa.
A backend that fails on a point reports null for it.
"""
import argparse
import json
import statistics
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--request", required=True)
    args = parser.parse_args()
    with open(args.request) as f:
        request = json.load(f)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    warmup, repeats = int(request["warmup"]), int(request["repeats"])
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def time_us(fn):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0)
        return statistics.median(times)

    results = []
    for p in request["points"]:
        b, s, hq, hk, d = p["batch"], p["seq"], p["num_q_heads"], p["num_kv_heads"], p["head_dim"]
        causal = bool(p["causal"])
        gen = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(b, hq, s, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(b, hk, s, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(b, hk, s, d, device="cuda", dtype=torch.bfloat16, generator=gen)
        row = {"key": p["key"]}
        k_rep = k.repeat_interleave(hq // hk, dim=1)
        v_rep = v.repeat_interleave(hq // hk, dim=1)
        try:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                row["cudnn"] = time_us(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=causal))
        except Exception as e:  # a backend that cannot run this point reports null
            row["cudnn"] = None
            row["cudnn_error"] = str(e)[:200]
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                row["flash"] = time_us(
                    lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
        except Exception as e:
            row["flash"] = None
            row["flash_error"] = str(e)[:200]
        results.append(row)
        print(f"peer {p['key']}: cudnn {row['cudnn']} flash {row['flash']}", file=sys.stderr)
        del q, k, v, k_rep, v_rep
        torch.cuda.empty_cache()

    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
