#!/usr/bin/env python3
"""Builds the bundled demo data in assets/data/ from the Natural Instructions extract.

assets/data/train.jsonl: the first 300 lines of train.jsonl, byte for byte.
assets/data/probe-tasks.jsonl: the first 4 probe lines of each of those 8 tasks (32 lines),
a probe set for in-context probing and selection targets.
assets/data/probe.jsonl: 8 lines of probe.jsonl from 8 distinct tasks, chosen among the
tasks that also appear in those 300 train lines (the ones with the most train lines
first, ties by name; tasks outside train only if fewer than 8 are shared); for each task
its first probe line; written in probe-file order. Deterministic: same input, same output.

Usage: scripts/make-assets.py [SOURCE_DIR]   (default: ../shared/data/natural-instructions
relative to the repository root, which is what DATA.md describes how to fetch)
"""
import collections
import json
import pathlib
import sys

TRAIN_LINES = 300
PROBE_TASKS = 8

root = pathlib.Path(__file__).resolve().parent.parent
src = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/data/natural-instructions"
out = root / "assets/data"
out.mkdir(parents=True, exist_ok=True)

with open(src / "train.jsonl", "rb") as f:
    train = [line for _, line in zip(range(TRAIN_LINES), f)]
with open(src / "probe.jsonl", "rb") as f:
    probe = [line for line in f if line.strip()]

train_count = collections.Counter(json.loads(line)["task"] for line in train)
first_probe = {}
for i, line in enumerate(probe):
    first_probe.setdefault(json.loads(line)["task"], i)

shared = sorted((t for t in first_probe if t in train_count), key=lambda t: (-train_count[t], t))
others = sorted(t for t in first_probe if t not in train_count)
chosen = (shared + others)[:PROBE_TASKS]
picked = sorted(first_probe[t] for t in chosen)

PER_TASK = 4
per_task = [i for i, line in enumerate(probe) if json.loads(line)["task"] in chosen]
kept, seen = [], collections.Counter()
for i in per_task:
    t = json.loads(probe[i])["task"]
    if seen[t] < PER_TASK:
        seen[t] += 1
        kept.append(i)
(out / "probe-tasks.jsonl").write_bytes(b"".join(probe[i] for i in kept))
(out / "train.jsonl").write_bytes(b"".join(train))
(out / "probe.jsonl").write_bytes(b"".join(probe[i] for i in picked))

print(f"train.jsonl: {len(train)} lines, {len(train_count)} tasks")
print(f"probe.jsonl: {len(picked)} lines")
for i in picked:
    t = json.loads(probe[i])["task"]
    print(f"  {t} (probe line {i + 1}; {train_count.get(t, 0)} train lines)")
