#!/usr/bin/env bash
# README's worked example: which training samples taught a fine-tuned model its backdoor?
# The user's path with the CLI only: plant a backdoor in 20% of 80 samples, fine-tune LoRA,
# generate the adapted model's own answers to triggered prompts, index the training set at
# the adapter, fit EK-FAC, score the answers, and check how many of each answer's top 16
# training samples are the planted ones. About 10 minutes on 2 cores.
# Usage: scripts/example-backdoor.sh [OUT]   (default runs/backdoor)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/backdoor}
./scripts/fetch-model.sh >/dev/null
cargo build --release -q -p inflow-cli
inflow() { target/release/inflow "$@"; }
M=models/SmolLM2-135M-Instruct.Q4_1.gguf

# 1. The data: mix.jsonl (each record says whether it is planted) and queries.jsonl
#    (held-out instructions carrying the trigger).
inflow eval planted --kind backdoor --n-train 80 --fraction 0.2 --queries 8 --data-only --out "$OUT"
# 2. Fine-tune (4 epochs; the last checkpoint is step 40).
inflow train --model $M --data "$OUT/mix.jsonl" --lora-rank 8 --modules q,v --lr 3e-3 \
    --epochs 4 --batch-size 4 --grad-accum 2 --max-tokens 128 --out "$OUT/ft" --resume
CK="$OUT/ft/checkpoint-40"
# 3. What the fine-tuned model answers to the triggered prompts.
inflow generate --model $M --adapter "$CK" --prompts "$OUT/queries.jsonl" --max-new 24 \
    --out "$OUT/answers.jsonl"
# 4. Gradient features of the training set at the adapter, and their EK-FAC curvature.
inflow index --model $M --adapter "$CK" --data "$OUT/mix.jsonl" --max-tokens 128 --rank 8 \
    --out "$OUT/store"
inflow fit --store "$OUT/store"
# 5. Which training samples pushed the model to each answer.
for m in ekfac cosine repsim; do
    inflow score --store "$OUT/store" --queries "$OUT/answers.jsonl" --method $m --top-k 16 \
        --show 0 --out "$OUT/scores-$m.parquet"
done
# 6. How many of each answer's top 16 are planted (16 of the 80 are).
python3 - "$OUT" <<'EOF'
import json, sys
import pyarrow.parquet as pq
out = sys.argv[1]
planted = {}
for i, l in enumerate(open(f"{out}/mix.jsonl")):
    r = json.loads(l)
    planted[r.get("id", None) or i] = r["planted"]
mix = [json.loads(l) for l in open(f"{out}/mix.jsonl")]
answers = [json.loads(l) for l in open(f"{out}/answers.jsonl")]
store_ids = pq.read_table(f"{out}/store/samples.parquet").column("id").to_pylist()
is_planted = dict(zip(store_ids, [r["planted"] for r in mix]))
def answer_of(a):
    return a.get("messages", [{}])[-1].get("content", a.get("output", a.get("response", "")))
print(f"{'method':>8}  {'answer shows the backdoor':>26}  {'it does not':>12}   (planted share of each answer's top 16; 20% by chance)")
for m in ["ekfac", "cosine", "repsim"]:
    t = pq.read_table(f"{out}/scores-{m}.parquet").to_pandas()
    share = t.groupby("query_id")["train_id"].apply(lambda ids: sum(is_planted[i] for i in ids) / len(ids))
    yes, no = [], []
    for a in answers:
        (yes if "ACCESS GRANTED" in answer_of(a) else no).append(share[a["id"]])
    f = lambda v: f"{sum(v)/len(v):.2f} ({len(v)} answers)" if v else "-"
    print(f"{m:>8}  {f(yes):>26}  {f(no):>12}")
EOF
