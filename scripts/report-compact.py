#!/usr/bin/env python3
"""Tables and plots of the compact-store report (scripts/report-compact.sh).

Usage: report-compact.py RUNS TEACHER REPORT   (trade-off curve)
       report-compact.py --bench REPORT         (bench score table)
Reads the score files with numpy and pyarrow only, as a user would."""
import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq


def ranks(a):
    """Average-free ranks (ties are vanishingly rare in float scores)."""
    r = np.empty_like(a, dtype=np.float64)
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def top(row, k):
    # Best first, ties by smaller row: the order inflow ranks with.
    return np.lexsort((np.arange(len(row)), -row))[:k]


def topk_lists(path, ids):
    t = pq.read_table(path).to_pydict()
    pos = {i: n for n, i in enumerate(ids)}
    out = {}
    for q, tr in zip(t["query_id"], t["train_id"]):
        out.setdefault(q, []).append(pos[tr])
    return [out[q] for q in sorted(out, key=lambda q: t["query_id"].index(q))]


def curve(runs, teacher, report):
    ids = pq.read_table(os.path.join(teacher, "samples.parquet"), columns=["id"]).column("id").to_pylist()
    ref = np.load(os.path.join(runs, "full-f16.npy"))
    nq, n = ref.shape
    ref_top = {k: [set(top(ref[q], k)) for q in range(nq)] for k in (10, 100)}
    parent = json.load(open(os.path.join(teacher, "manifest.json")))["spec"]
    parent_bytes = parent["dim"] * 2 + 4
    rows = [{"name": "full-f16 (uncompressed)", "dim": parent["dim"], "dtype": "f16", "bytes_per_row": parent_bytes,
             "spearman": 1.0, "recall@10": 1.0, "recall@100": 1.0, "rerank recall@10": 1.0, "rerank recall@100": 1.0}]
    for f in sorted(glob.glob(os.path.join(runs, "compress-*.json"))):
        name = os.path.basename(f)[len("compress-"):-len(".json")]
        c = json.load(open(f))
        dense = np.load(os.path.join(runs, f"{name}.npy"))
        sp = [spearman(dense[q], ref[q]) for q in range(nq)]
        rec = {k: np.mean([len(set(top(dense[q], k)) & ref_top[k][q]) / k for q in range(nq)]) for k in (10, 100)}
        rr = topk_lists(os.path.join(runs, f"{name}-rerank.parquet"), ids)
        rrec = {k: np.mean([len(set(rr[q][:k]) & ref_top[k][q]) / k for q in range(nq)]) for k in (10, 100)}
        rows.append({"name": name, "dim": c["dim"], "dtype": c["dtype"],
                     # features + the f32 norm (+ the f32 scale for int8), as on disk
                     "bytes_per_row": c["bytes_per_row"] + 4,
                     "spearman": float(np.mean(sp)), "spearman_min": float(np.min(sp)),
                     "recall@10": float(rec[10]), "recall@100": float(rec[100]),
                     "rerank recall@10": float(rrec[10]), "rerank recall@100": float(rrec[100]),
                     "compress": open(os.path.join(runs, f"compress-{name}.time")).read().strip()
                     if os.path.exists(os.path.join(runs, f"compress-{name}.time")) else ""})
    order = {"f16": 0, "int8": 1, "bit": 2}
    rows[1:] = sorted(rows[1:], key=lambda r: (order[r["dtype"]], r["dim"]))
    json.dump({"queries": nq, "train": n, "rows": rows}, open(os.path.join(report, "curve.json"), "w"), indent=1)
    lines = [f"{nq} probe queries × {n} training rows; reference: exact cosine on the f16 LoGra store (dim {parent['dim']}).", "",
             "| store | bytes/row | mean Spearman (min) | recall@10 | recall@100 | rerank 100: recall@10 | recall@100 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        smin = f" ({r['spearman_min']:.3f})" if "spearman_min" in r else ""
        lines.append(f"| {r['name']} | {r['bytes_per_row']:,} | {r['spearman']:.4f}{smin} | {r['recall@10']:.3f} | "
                     f"{r['recall@100']:.3f} | {r['rerank recall@10']:.3f} | {r['rerank recall@100']:.3f} |")
    open(os.path.join(report, "curve.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for dtype, mark, color in (("f16", "o", "C0"), ("int8", "s", "C1"), ("bit", "^", "C2")):
        rs = [r for r in rows if r["dtype"] == dtype]
        rs.sort(key=lambda r: r["bytes_per_row"])
        x = [r["bytes_per_row"] for r in rs]
        axes[0].plot(x, [r["spearman"] for r in rs], marker=mark, color=color, label=dtype)
        axes[1].plot(x, [r["recall@10"] for r in rs], marker=mark, color=color, label=f"{dtype}")
        axes[1].plot(x, [r["rerank recall@10"] for r in rs], marker=mark, color=color, linestyle="--",
                     label=f"{dtype} + rerank 100")
    for ax, yl in zip(axes, ("mean per-query Spearman vs exact", "recall@10 vs exact")):
        ax.set_xscale("log")
        ax.axvline(1024, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("bytes per training row on disk (log)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("store compress on LoGra r16 (2,048 NI samples, 848 probes): grey line = 1 KiB")
    fig.tight_layout()
    fig.savefig(os.path.join(report, "curve.png"), dpi=110)


def bench(report):
    lines = ["| rows | dtype | GB on disk | median s | CPU s | M rows/s | GB/s | GOP/s | % of peak | GOP per CPU-s | % of one core's peak | file read GB/s | memory GB/s | f32 GEMM GFLOP/s | int8 peak GOP/s (1 thread) | RSS scoring / run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    runs = []
    for f in glob.glob(os.path.join(report, "bench-*.json")):
        runs.append(json.load(open(f)))
    runs.sort(key=lambda r: (r["dtype"] != "int8", r["rows"], r["dtype"]))
    for r in runs:
        cpu = sorted(p["cpu_s"] for p in r["passes"] if p["cpu_s"] is not None)
        frac = "" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.0f}%"
        c = r.get("fraction_of_core_peak")
        core = "" if c is None else f"{100 * c:.0f}%"
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"
        lines.append(f"| {r['rows']:,} | {r['dtype']} | {r['store_bytes'] / 1e9:.2f} | {r['wall_s']:.3f} | "
                     f"{cpu[len(cpu) // 2] if cpu else float('nan'):.2f} | {r['rows_per_s'] / 1e6:.2f} | {r['gb_per_s']:.2f} | "
                     f"{r['gops']:.0f} | {frac} | {r.get('gops_per_cpu_s') or float('nan'):.0f} | "
                     f"{core} | "
                     f"{r['file_read_gb_s']:.1f} | {r['memory_read_gb_s']:.1f} | "
                     f"{r['f32_gemm_gflops']:.0f} | {r['int8_peak_gops'] or float('nan'):.0f} ({r.get('int8_peak_gops_1_thread') or float('nan'):.0f}) | "
                     f"{gib(r['scoring_peak_rss_bytes'])} / {gib(r['peak_rss_bytes'])} GiB |")
    open(os.path.join(report, "bench.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "--bench":
        bench(sys.argv[2])
    else:
        curve(*sys.argv[1:4])
