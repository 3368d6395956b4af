"""PyTorch SDPA (flash backend) decode over a contiguous BF16 cache: the peer of `fp8kv bench decode`.

Invoked by the C++ benchmark in the same run:  python3 bench/decode_peers.py --request points.json
where points.json is a list of {shape, num_q_heads, num_kv_heads, head_dim, batch, context}.
Prints one JSON object: {"backend", "torch", "gpu", "results": [{..., "us": median µs}]}.
Timing: triton.testing.do_bench (CUDA events, L2 flushed between runs), median.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_point(p):
    hq, hk, d = p["num_q_heads"], p["num_kv_heads"], p["head_dim"]
    b, n = p["batch"], p["context"]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, 1, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(b, hk, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(b, hk, n, d, device="cuda", dtype=torch.bfloat16, generator=gen)

    def step():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    step()
    torch.cuda.synchronize()
    import triton.testing

    us = 1000.0 * triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    del q, k, v
    torch.cuda.empty_cache()
    return us


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--request", required=True)
    args = parser.parse_args()
    with open(args.request) as f:
        points = json.load(f)
    results = []
    for p in points:
        r = dict(p)
        try:
            r["us"] = time_point(p)
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
