"""fp8kv beside FlashInfer: FP8 paged decode and FP8 prefill, same shapes, same cache, same scales.

Both libraries read the very same FP8 E4M3 pages: with 16-token pages fp8kv's cache is HND
([num_blocks, num_kv_heads, block_size, head_dim]; FP8 blocks of more than 16 tokens would be
16-token sub-blocks, which FlashInfer cannot read), FlashInfer's kv_layout="HND" is the same
layout, so FlashInfer is handed
zero-copy torch views of fp8kv's pools and the same per-tensor K/V scales. Each row also records
how far the two outputs are apart (a wrong kernel is not a fast kernel).

Timings: medians of triton.testing.do_bench (events, L2 flushed between runs), after warm-up, so
FlashInfer's JIT compilation stays out of them (its compile time is reported separately). The
HBM read ceiling is measured in the same run.

    python3 bench/flashinfer_peers.py --out bench/results/flashinfer_h100.json
"""

import argparse
import json
import math
import time

import torch
import triton.testing

import fp8kv

HQ, HK, D, PAGE = 32, 8, 128, 16  # Llama-3-8B / Qwen3-8B attention shape
DECODE_SHAPES = [(1, 4096), (1, 16384), (1, 65536), (8, 4096), (8, 16384), (32, 4096), (32, 16384)]
PREFILL_SHAPES = [(1, 1024), (1, 4096), (4, 4096), (1, 16384)]
MAX_EXACT_SEQ = 4096  # float32 SDPA reference up to this length (its memory grows with seq^2)


def bench_us(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def hbm_read_ceiling():
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    us = bench_us(lambda: x.sum())
    return x.numel() * 4 / (us * 1e-6) / 1e9


def rel_diff(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def filled_cache(batch, context, seed):
    """An fp8kv E4M3 per-tensor cache holding `batch` sequences of `context` random tokens."""
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    pages_per_seq = math.ceil(context / PAGE)
    cache = fp8kv.KvCache(1, HK, D, batch * pages_per_seq, PAGE, "fp8_e4m3", "per_tensor", device="cuda")
    k_scale, v_scale = 8.0 / 448, 4.0 / 448
    cache.set_scales(0, [k_scale], [v_scale])
    for pool, scale in ((cache.k_cache(0), k_scale), (cache.v_cache(0), v_scale)):
        values = torch.randn(pool.shape, generator=g, device="cuda") * 2
        pool.copy_((values / scale).clamp(-448, 448).to(torch.float8_e4m3fn))  # torch does not saturate
    seqs = [cache.create_sequence() for _ in range(batch)]
    for s in seqs:
        cache.append_tokens(s, context)
    return cache, seqs, k_scale, v_scale, g


def flashinfer_page_args(cache, seqs):
    tables = cache.block_tables(seqs)
    lens = cache.seq_lens(seqs)
    indptr = [0]
    indices = []
    last = []
    for row, n in zip(tables, lens):
        pages = math.ceil(int(n) / PAGE)
        indices.extend(row[:pages].tolist())
        indptr.append(indptr[-1] + pages)
        last.append(int(n) - (pages - 1) * PAGE)
    as_cuda = lambda xs: torch.tensor(xs, dtype=torch.int32, device="cuda")  # noqa: E731
    return as_cuda(indptr), as_cuda(indices), as_cuda(last)


def exact_prefill(q, cache, seqs, k_scale, v_scale, seq):
    """float32 causal attention of the bf16 query over the dequantized FP8 pages: the answer for
    the data both libraries read (each then adds its own rounding, e.g. of Q and P to FP8)."""
    tables = cache.block_tables(seqs)
    pages = math.ceil(seq / PAGE)
    out = torch.empty(q.shape, dtype=torch.float32, device="cuda")
    for b in range(len(seqs)):
        idx = torch.from_numpy(tables[b, :pages]).long().cuda()
        def tokens(pool, scale):  # [pages, HK, PAGE, D] -> [HK, seq, D]; gather on bytes, then decode
            values = pool.view(torch.uint8)[idx].view(torch.float8_e4m3fn).float() * scale
            return values.permute(1, 0, 2, 3).reshape(HK, pages * PAGE, D)[:, :seq]
        qb = q[b * seq:(b + 1) * seq].float().transpose(0, 1)
        out[b * seq:(b + 1) * seq] = torch.nn.functional.scaled_dot_product_attention(
            qb, tokens(cache.k_cache(0), k_scale), tokens(cache.v_cache(0), v_scale), is_causal=True,
            enable_gqa=True).transpose(0, 1)
    return out


def decode_row(flashinfer, workspace, batch, context):
    cache, seqs, k_scale, v_scale, g = filled_cache(batch, context, seed=batch * 7 + context)
    q = torch.randn(batch, HQ, D, generator=g, device="cuda").to(torch.bfloat16)
    tables, lens = cache.block_tables(seqs, device="cuda"), cache.seq_lens(seqs, device="cuda")
    out = torch.empty_like(q)
    plan = fp8kv.DecodePlan(q, cache, 0, tables, lens, out=out)
    ours = bench_us(lambda: plan.run(q, cache, 0, tables, lens, out=out))
    row = {"batch": batch, "context": context, "fp8kv_us": ours,
           "kv_bytes": 2 * batch * context * HK * D}
    row["fp8kv_GBps"] = row["kv_bytes"] / (ours * 1e-6) / 1e9
    if flashinfer is None:
        return row
    indptr, indices, last = flashinfer_page_args(cache, seqs)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "HND")
    wrapper.plan(indptr, indices, last, HQ, HK, D, PAGE, q_data_type=torch.bfloat16,
                 kv_data_type=torch.float8_e4m3fn)
    pools = (cache.k_cache(0), cache.v_cache(0))
    theirs_out = wrapper.run(q, pools, k_scale=k_scale, v_scale=v_scale)
    row["max_rel_diff"] = rel_diff(out, theirs_out)
    theirs = bench_us(lambda: wrapper.run(q, pools, k_scale=k_scale, v_scale=v_scale))
    row.update(flashinfer_us=theirs, flashinfer_GBps=row["kv_bytes"] / (theirs * 1e-6) / 1e9,
               speedup_vs_flashinfer=theirs / ours)
    return row


def prefill_row(flashinfer, workspace, batch, seq):
    """Fresh prompts already in the FP8 cache (prefix 0): causal paged prefill over them."""
    cache, seqs, k_scale, v_scale, g = filled_cache(batch, seq, seed=batch * 13 + seq)
    q = torch.randn(batch * seq, HQ, D, generator=g, device="cuda").to(torch.bfloat16)
    q8, q_scale = fp8kv.quantize_heads(q, num_groups=HK)
    cu_q = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * seq
    tables, lens = cache.block_tables(seqs, device="cuda"), cache.seq_lens(seqs, device="cuda")
    out = torch.empty_like(q)
    fp8kv.paged_prefill(q8, cache, 0, tables, cu_q, lens, out=out, q_descale=q_scale)
    exact = exact_prefill(q, cache, seqs, k_scale, v_scale, seq) if seq <= MAX_EXACT_SEQ else None
    ours = bench_us(lambda: fp8kv.paged_prefill(q8, cache, 0, tables, cu_q, lens, out=out, q_descale=q_scale))
    flops = 4 * batch * HQ * seq * seq * D / 2
    row = {"batch": batch, "seq": seq, "fp8kv_us": ours, "fp8kv_TFLOPs": flops / (ours * 1e-6) / 1e12,
           "fp8kv_q": "fp8_e4m3 (quantize_heads, not timed)"}
    if exact is not None:
        row["fp8kv_rel_err_vs_exact"] = rel_diff(out, exact)
    if flashinfer is None:
        return row
    indptr, indices, last = flashinfer_page_args(cache, seqs)
    pools = (cache.k_cache(0), cache.v_cache(0))
    # Two FlashInfer configurations over the same FP8 pages and scales: its FA3 (sm90) kernel with an
    # FP8 query (one per-tensor q scale: FlashInfer takes a scalar), and its FA2 kernel with a bf16
    # query reading FP8 K/V. Each is measured on its own; a failure is recorded, not hidden.
    q8_t, q_scale_t = fp8kv.quantize_heads(q, num_groups=1)
    configs = {
        "fa3_fp8_q": dict(backend="fa3", q=q8_t, q_dtype=torch.float8_e4m3fn, q_scale=float(q_scale_t[0])),
        "fa2_bf16_q": dict(backend="fa2", q=q, q_dtype=torch.bfloat16, q_scale=None),
    }
    best = None
    for name, c in configs.items():
        try:
            wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "HND", backend=c["backend"])
            wrapper.plan(cu_q, indptr, indices, last, HQ, HK, D, PAGE, causal=True, q_data_type=c["q_dtype"],
                         kv_data_type=torch.float8_e4m3fn, o_data_type=torch.bfloat16)
            kwargs = dict(k_scale=k_scale, v_scale=v_scale)
            if c["q_scale"] is not None:
                kwargs["q_scale"] = c["q_scale"]
            theirs_out = wrapper.run(c["q"], pools, **kwargs)
            us = bench_us(lambda: wrapper.run(c["q"], pools, **kwargs))
            row[name] = {"flashinfer_us": us, "flashinfer_TFLOPs": flops / (us * 1e-6) / 1e12,
                         "max_rel_diff": rel_diff(out, theirs_out), "speedup_vs_flashinfer": us / ours}
            if exact is not None:
                row[name]["rel_err_vs_exact"] = rel_diff(theirs_out, exact)
            if best is None or us < row[best]["flashinfer_us"]:
                best = name
        except Exception as e:
            row[name] = {"error": f"{type(e).__name__}: {e}"[-1500:]}
    if best is not None:  # the table compares against FlashInfer's faster configuration
        row.update(flashinfer_us=row[best]["flashinfer_us"], speedup_vs_flashinfer=row[best]["speedup_vs_flashinfer"],
                   max_rel_diff=row[best]["max_rel_diff"], flashinfer_config=best)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON results path")
    parser.add_argument("--only", choices=["decode", "prefill"], help="run one of the two tables")
    parser.add_argument("--prefill-shapes", help="batch x seq list, e.g. 1x1024,1x4096 (default: the full table)")
    args = parser.parse_args()

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "shape": {"num_q_heads": HQ, "num_kv_heads": HK, "head_dim": D, "page_size": PAGE,
                        "kv_cache_dtype": "fp8_e4m3", "kv_scales": "per_tensor"},
              "timing": "median of triton.testing.do_bench (warmup 25 ms, rep 100 ms)",
              "speedup_vs_flashinfer": "FlashInfer time / fp8kv time (> 1: fp8kv faster)"}
    try:
        import flashinfer
        result["flashinfer"] = flashinfer.__version__
    except Exception as e:  # the peer is optional: fp8kv's own numbers are still measured
        flashinfer = None
        result["flashinfer_import_error"] = f"{type(e).__name__}: {e}"
    result["hbm_read_GBps"] = hbm_read_ceiling()
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def run_rows(name, fn, shapes):
        rows = []
        for shape in shapes:
            started = time.time()
            try:
                row = fn(flashinfer, workspace, *shape)
            except Exception as e:  # recorded, not hidden: a failing shape is a result too
                row = {"shape": list(shape), "error": f"{type(e).__name__}: {e}"[-1500:]}
            row["wall_s"] = round(time.time() - started, 1)  # includes FlashInfer's JIT on first use
            rows.append(row)
            print(name, json.dumps(row), flush=True)
            result[name] = rows
            with open(args.out, "w") as f:  # after every row: a cut-off run keeps what it measured
                json.dump(result, f, indent=1)

    if args.only != "prefill":
        run_rows("decode", decode_row, DECODE_SHAPES)
    if args.only != "decode":
        shapes = PREFILL_SHAPES
        if args.prefill_shapes:
            shapes = [tuple(int(n) for n in s.split("x")) for s in args.prefill_shapes.split(",")]
        run_rows("paged_prefill", prefill_row, shapes)
    print(f"{'op':14} {'shape':>12} {'fp8kv us':>10} {'FI us':>10} {'speedup':>8} {'rel diff':>9}")
    for op in ("decode", "paged_prefill"):
        for r in result.get(op, []):
            shape = f"{r.get('batch', '?')}x{r.get('context', r.get('seq', '?'))}"
            print(f"{op:14} {shape:>12} {r.get('fp8kv_us', float('nan')):10.1f} "
                  f"{r.get('flashinfer_us', float('nan')):10.1f} {r.get('speedup_vs_flashinfer', float('nan')):8.2f} "
                  f"{r.get('max_rel_diff', float('nan')):9.2e} {r.get('error', '')[:60]}")


if __name__ == "__main__":
    main()
