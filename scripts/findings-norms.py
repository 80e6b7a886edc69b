#!/usr/bin/env python3
"""Planted vs clean samples at the fine-tuned model, per seed of an `eval planted` run: mean
gradient-feature norm ‖φ(z)‖ and mean training loss (the store's own files, read with numpy and
pyarrow; no inflow needed).

Usage: scripts/findings-norms.py runs/findings/backdoor
"""
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

root = Path(sys.argv[1])
print("| seed | ‖φ‖ planted | ‖φ‖ clean | loss planted | loss clean |")
print("|---|---|---|---|---|")
for run in sorted(root.glob("seed-*")):
    store = run / "store"
    if not (run / "report.json").exists() or not store.is_dir():
        continue
    mix = [json.loads(l) for l in (run / "mix.jsonl").read_text().splitlines() if l.strip()]
    planted = np.array([bool(m.get("planted")) for m in mix])
    feats = np.concatenate([np.load(f) for f in sorted(store.glob("features-*.npy"))]).astype(np.float64)
    norm = np.linalg.norm(feats, axis=1)
    loss = pq.read_table(store / "samples.parquet").column("loss").to_numpy()
    # Class runs plant nothing: every sample is "clean".
    mean = lambda v, m, f: format(v[m].mean(), f) if m.any() else "-"
    print(f"| {run.name[5:]} | {mean(norm, planted, '.2f')} | {mean(norm, ~planted, '.2f')} | "
          f"{mean(loss, planted, '.3f')} | {mean(loss, ~planted, '.3f')} |")
