#!/usr/bin/env python3
"""Tables of docs/reports/encoder/figures.md from the JSON that scripts/report-encoder.sh wrote.

Usage: report-encoder.py RUNS OUT PROBES TRAIN K [K...]
"""
import json
import os
import sys

runs, out, probes, train = sys.argv[1:5]
ks = sys.argv[5:]
lines = []


def load(p):
    with open(p) as f:
        return json.load(f)


def fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


ORDER = ["encoder", "untrained-head", "truncated-model", "repsim-last", "repsim-mean"]
for k in ks:
    t = os.path.join(runs, f"train-k{k}.json")
    if not os.path.exists(t):
        continue
    s = load(t)
    lines.append(f"### Encoder with a trunk of {k} blocks\n")
    lines.append(
        f"{s['n_train']} + {s['n_val']} training samples and {s['nq_train']} + {s['nq_val']} probes "
        f"(train + held out), {s['d_in']} → {s['dim']} dims, {s['steps']} steps; trunk features "
        f"{s['seconds_trunk']:.0f} s, teacher targets {s['seconds_teacher']:.0f} s, distillation "
        f"{s['seconds_distil']:.0f} s.\n"
    )
    for title, key in [
        ("held-out training samples (anchors) against the other held-out training samples", "held_out_samples"),
        ("held-out probes against the held-out training samples", "held_out_queries"),
    ]:
        table = s["metrics"][key]
        if not table:
            continue
        lines.append(f"Agreement with the teacher, {title} (mean per query):\n")
        lines.append("| scorer | Spearman | Spearman within task | top-10 overlap | top-50 overlap |")
        lines.append("|---|---|---|---|---|")
        for name in ORDER:
            if name in table:
                g = table[name]
                lines.append(
                    f"| {name} | {fmt(g['spearman'])} | {fmt(g['spearman_within_task'])} "
                    f"(n={g['n_within_task']}) | {fmt(g['top10'])} | {fmt(g['top50'])} |"
                )
        lines.append("")
    b = os.path.join(runs, f"bench-k{k}.json")
    if os.path.exists(b):
        r = load(b)
        lines.append(f"Speed (`inflow bench encode`, {r['threads']} threads, same samples, interleaved):\n")
        lines.append("| pass | round | samples | tokens | wall s | CPU s | samples/s | tokens/s | bytes/sample |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for p in r["passes"]:
            cpu = "n/a" if p["cpu_s"] is None else f"{p['cpu_s']:.1f}"
            lines.append(
                f"| {p['what']} | {p['round']} | {p['samples']} | {p['tokens']} | {p['wall_s']:.1f} | {cpu} "
                f"| {p['samples_per_s']:.2f} | {p['tokens_per_s']:.0f} | {p['bytes_per_sample']:.0f} |"
            )
        lines.append(
            f"\nMedian samples/s: index {r['index_samples_per_s']:.2f}, encode {r['encode_samples_per_s']:.2f}: "
            f"**{r['speedup']:.1f}×**; bytes per sample {r['index_bytes_per_sample']:.0f} → "
            f"{r['encode_bytes_per_sample']:.0f}.\n"
        )

for name in ["encode-train", "encode-probes"]:
    p = os.path.join(runs, f"{name}.json")
    if os.path.exists(p):
        e = load(p)
        s = e["summary"]
        wall = os.path.join(runs, f"{name}.wall")
        cpu = ""
        if os.path.exists(wall):
            w = open(wall).read().split()
            if len(w) >= 3:
                cpu = f", process wall {float(w[0]):.0f} s, CPU {float(w[1]) + float(w[2]):.0f} s (user + system)"
        lines.append(
            f"- `{name}`: {s['n_samples']} samples, {s['tokens']} tokens in {e['seconds']:.0f} s "
            f"({s['n_written'] / max(e['seconds'], 1e-9):.1f} samples/s){cpu}, {s['bytes_per_sample']:.0f} bytes/sample."
        )
lines.append("")

top = os.path.join(runs, "top3.parquet")
if os.path.exists(top):
    import pyarrow.parquet as pq

    t = pq.read_table(top).to_pydict()
    text = {}
    for path in [probes, train]:
        with open(path) as f:
            for row, line in enumerate(f):
                if line.strip():
                    r = json.loads(line)
                    text[(path, row)] = r
    qrows = {}
    for q, tr, sc, rk in zip(t["query_id"], t["train_id"], t["score"], t["rank"]):
        qrows.setdefault(q, []).append((rk, tr, sc))
    shown = list(qrows)[:: max(1, len(qrows) // 4)][:4]
    lines.append("Top-3 training samples of a few probes (encoder store of the full pool):\n")
    for q in shown:
        qr = text.get((probes, int(q.split("-")[0])), {})
        lines.append(
            f"- probe `{q}` ({qr.get('task', '?')}): input {qr.get('input', '')[:80]!r} → {qr.get('output', '')[:50]!r}"
        )
        for rk, tr, sc in sorted(qrows[q]):
            r = text.get((train, int(tr.split("-")[0])), {})
            lines.append(
                f"  {rk}. `{tr}` {sc:.3f} ({r.get('task', '?')}) {r.get('input', '')[:60]!r} → {r.get('output', '')[:40]!r}"
            )
    lines.append("")

with open(os.path.join(out, "figures.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
