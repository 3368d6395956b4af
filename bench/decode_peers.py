"""PyTorch SDPA (flash backend) decode over a contiguous BF16 cache: the peer of `fp8kv bench decode`.

Invoked by the C++ benchmark in the same run:  python3 bench/decode_peers.py --request points.json
where points.json is a list of {shape, num_q_heads, num_kv_heads, head_dim, batch, context}.
Prints one JSON object: {"backend", "torch", "gpu", "results": [{..., "us": median µs}]}.
Timing as the C++ side does it: CUDA events around one call at a time, the L2 flushed before each
call by reading a 256 MiB buffer (reading leaves no dirty lines to write back inside the timed
region), median of the repeats.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


FLUSH = None


def median_us(fn, warmup, repeats):
    global FLUSH
    if FLUSH is None:
        FLUSH = torch.ones(256 << 20, dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        FLUSH.sum()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(1000.0 * start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def time_point(p, repeats):
    hq, hk, d = p["num_q_heads"], p["num_kv_heads"], p["head_dim"]
    b, n = p["batch"], p["context"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b, hk, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b, hk, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)

    def step():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    us = median_us(step, warmup=5, repeats=repeats)
    del q, k, v
    torch.cuda.empty_cache()
    return us


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--request", required=True)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with open(args.request) as f:
        points = json.load(f)
    results = []
    for p in points:
        r = dict(p)
        try:
            r["us"] = time_point(p, args.repeats)
        except (RuntimeError, torch.OutOfMemoryError) as e:  # report, keep the other points
            r["us"] = None
            r["error"] = str(e).splitlines()[0]
            torch.cuda.empty_cache()
        print(f"sdpa {p['shape']} batch {p['batch']} context {p['context']}: {r['us']}", file=sys.stderr)
        results.append(r)
    print(json.dumps({"backend": "torch sdpa flash (bf16, contiguous, enable_gqa)", "torch": torch.__version__,
                      "gpu": torch.cuda.get_device_name(), "results": results}))


if __name__ == "__main__":
    main()
