"""Plot `fp8kv bench engine --json` output: inter-token latency against context, BF16 vs FP8 KV.

Usage: python3 bench/plot_engine.py RESULT.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(path, png):
    data = json.load(open(path))
    fits = {f["batch"]: f for f in data["fits"]}
    batches = sorted({p["batch"] for p in data["points"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for dtype, color in (("bf16", "tab:blue"), ("fp8_e4m3", "tab:red")):
            pts = sorted((p["context"], p["itl_ms"]) for p in data["points"]
                         if p["batch"] == batch and p["kv_dtype"] == dtype)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o", color=color, label=f"{dtype} KV")
            fit = fits.get(batch)
            if fit:
                key = "bf16" if dtype == "bf16" else "fp8"
                a, s = fit[f"{key}_intercept_ms"], fit[f"{key}_slope_ms_per_token"]
                ax.plot(xs, [a + s * x for x in xs], "-", color=color, alpha=0.6,
                        label=f"fit: {a:.2f} ms + {s * 1e3:.3f} ms/1k tok")
        title = f"batch {batch}"
        if batch in fits:
            title += f"  (slope ratio {fits[batch]['slope_ratio']:.2f})"
        ax.set_title(title)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("inter-token latency (ms)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"fp8kv engine decode, {data['model']}")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
