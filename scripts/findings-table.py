#!/usr/bin/env python3
"""Markdown tables of an `eval planted --seeds` report (docs/reports/findings/*.md).

Usage: scripts/findings-table.py runs/findings/backdoor/report.json
Prints attack success and steps per seed, then Acc / Cover / AUC as mean ± sd per method for
the model's own answers and for the planted-response queries. Standard library only.
"""
import json
import sys
from pathlib import Path

r = json.loads(Path(sys.argv[1]).read_text())
seeds = r["seeds"]
print(f"Seeds {', '.join(map(str, seeds))}.", end=" ")
a = r.get("attack_success")
if a:
    vals = ", ".join(f"{v:.2f}" for v in a["values"])
    print(f"Attack success at the model scored: {a['mean']:.2f} ± {a['sd']:.2f} ({vals});", end=" ")
steps = r.get("steps", [])
refused = r.get("refused") or []
if refused:
    print("Left out (the model did not learn the behaviour): " + ", ".join(
        f"seed {x['seed']} ({x['attack_success']:.2f})" for x in refused) + ";", end=" ")
n_gen = ", ".join(str(n) for n in r.get("n_generated", []))
print(f"optimizer steps {', '.join(str(s) for s in steps)}; answers used as queries {n_gen}.")
print()
for queries in dict.fromkeys(row["queries"] for row in r["rows"]):
    print(f"Queries: {queries}")
    print()
    print("| method | Acc | Cover | AUC |")
    print("|---|---|---|---|")
    for row in r["rows"]:
        if row["queries"] != queries:
            continue
        cell = lambda s: f"{s['mean']:.3f} ± {s['sd']:.3f}"
        print(f"| {row['method']} | {cell(row['acc'])} | {cell(row['cover'])} | {cell(row['auc'])} |")
    print()
