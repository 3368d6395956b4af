"""Plot the attention kernel benchmarks: `fp8kv bench decode --json` and `fp8kv bench prefill --json`.

Decode: time per step against context, one panel per (model shape, batch), for fp8kv BF16, FP8
per-tensor and per-token storage and PyTorch SDPA, with the time the measured read bandwidth allows
for the FP8 bytes (the floor). Prefill: TFLOP/s per configuration for fp8kv FP8 and BF16 and SDPA
(cuDNN, flash).

Usage: python3 bench/plot_kernels.py --decode DECODE.json DECODE.png --prefill PREFILL.json PREFILL.png
(either pair may be left out)
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DECODE_SERIES = (  # JSON key, label, colour
    ("bf16", "fp8kv BF16", "tab:blue"),
    ("fp8_tensor", "fp8kv FP8 per-tensor", "tab:red"),
    ("fp8_token", "fp8kv FP8 per-token", "tab:orange"),
)


def plot_decode(path, png, block_size=16):
    data = json.load(open(path))
    points = [p for p in data["points"] if p["block_size"] == block_size]
    shapes = sorted({p["shape"] for p in points})
    batches = sorted({p["batch"] for p in points})
    fig, axes = plt.subplots(len(shapes), len(batches), figsize=(4.2 * len(batches), 3.6 * len(shapes)),
                             squeeze=False)
    for row, shape in enumerate(shapes):
        for col, batch in enumerate(batches):
            ax = axes[row][col]
            pts = sorted((p for p in points if p["shape"] == shape and p["batch"] == batch),
                         key=lambda p: p["context"])
            if not pts:
                ax.set_visible(False)
                continue
            ctx = [p["context"] for p in pts]
            for key, label, colour in DECODE_SERIES:
                ax.plot(ctx, [p[key]["us"] for p in pts], "o-", color=colour, label=label, ms=4)
            sdpa = [(p["context"], p["sdpa_bf16_us"]) for p in pts if "sdpa_bf16_us" in p]
            if sdpa:
                xs, ys = zip(*sdpa)
                ax.plot(xs, ys, "s--", color="tab:gray", label="PyTorch SDPA BF16", ms=4)
            floor = [p["fp8_tensor"]["kv_bytes"] / (data["read_bandwidth_gbs"] * 1e3) for p in pts]
            ax.plot(ctx, floor, ":", color="black", label="FP8 bytes at read bandwidth")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{shape}, batch {batch}")
            ax.set_xlabel("context (tokens)")
            ax.set_ylabel("µs per decode step")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Paged decode attention, block size {block_size} ({data['gpu']}, {data['date']})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def plot_prefill(path, png):
    data = json.load(open(path))
    rows = data["results"]
    labels = [f"{r['shape']}\n{r['batch']}x{r['seq']} d{r['head_dim']}{'' if r['causal'] else ' full'}" for r in rows]
    series = [("fp8_tflops", "fp8kv FP8", "tab:red"), ("bf16_tflops", "fp8kv BF16", "tab:blue"),
              ("cudnn_tflops", "SDPA cuDNN BF16", "tab:gray"), ("flash_tflops", "SDPA flash BF16", "silver")]
    series = [s for s in series if any(s[0] in r for r in rows)]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(12, 0.62 * len(rows)), 5))
    for i, (key, label, colour) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r.get(key, 0.0) for r in rows], width, label=label, color=colour)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("TFLOP/s (causal counts half)")
    ax.set_title(f"Prefill attention ({data['gpu']}, {data['date']})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode", nargs=2, metavar=("JSON", "PNG"))
    parser.add_argument("--prefill", nargs=2, metavar=("JSON", "PNG"))
    args = parser.parse_args()
    if not args.decode and not args.prefill:
        parser.error("nothing to plot: give --decode and/or --prefill")
    if args.decode:
        plot_decode(*args.decode)
    if args.prefill:
        plot_prefill(*args.prefill)


if __name__ == "__main__":
    main()
