"""inflow from Python on the bundled data: index, score, features, fit, influence, select.

    pip install ./python && ./scripts/fetch-model.sh
    python python/examples/quickstart.py            # from the repository root, ~1 minute on 2 cores

Every step writes the same files as the CLI verb of the same name, under --out (runs/py-quickstart).
"""

import argparse
from pathlib import Path

import inflow

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "assets" / "data"

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
p.add_argument("--limit", type=int, default=32, help="training samples to index")
p.add_argument("--out", default="runs/py-quickstart")
args = p.parse_args()
out = Path(args.out)

# 1. Load the model once and index the training set (resumable: rerun and it continues).
m = inflow.Model(args.model)
store = inflow.index(m, DATA / "train.jsonl", out / "store", limit=args.limit, max_tokens=128, progress=True)
print(store, store.summary["tokens"], "tokens")

# 2. The most helpful training samples for two queries of our own, as a DataFrame.
queries = [
    {"instruction": "Translate to French: Good morning.", "output": "Bonjour."},
    {"instruction": "Is 7 a prime number? Answer yes or no.", "output": "yes"},
]
top = store.score(queries, method="cosine", top_k=3)
print(top)
print("sign:", top.attrs["sign_convention"][:80], "…")

# 3. The gradient features themselves: read-only numpy memmaps, one per shard (zero-copy).
feats = store.features()
print([f.shape for f in feats], feats[0].dtype)

# 4. Curvature, then influence functions with EK-FAC.
store.fit(fisher="empirical")
infl = store.score(DATA / "probe.jsonl", method="influence", preconditioner="ekfac", top_k=3, limit=4)
print(infl.head())

# 5. Data selection: the 25% of samples most similar to the probes, and G-DIG against a seed set.
mean = store.score(DATA / "probe.jsonl", method="cosine", aggregate="mean", out=out / "mean.parquet", force=True)
sel = inflow.select(store, mean, size="25%", out=out / "top.jsonl", force=True)
print("selected", sel.attrs["selected"], "of", sel.attrs["candidates"], "→", sel.attrs["out"])
gdig = inflow.select(store, size="25%", method="gdig", seed_set=DATA / "probe.jsonl", clusters=4, out=out / "gdig.jsonl", force=True)
print("G-DIG selected", gdig.attrs["selected"], "→", gdig.attrs["out"])
