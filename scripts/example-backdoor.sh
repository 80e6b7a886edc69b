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
    --out "$OUT/answers.jsonl" --resume
# 4. Gradient features of the training set at the adapter, and their EK-FAC curvature.
inflow index --model $M --adapter "$CK" --data "$OUT/mix.jsonl" --max-tokens 128 --rank 8 \
    --out "$OUT/store"
inflow fit --store "$OUT/store"
# 5. Which training samples pushed the model to each answer.
for m in ekfac cosine repsim; do
    inflow score --store "$OUT/store" --queries "$OUT/answers.jsonl" --method $m --top-k 16 \
        --show 0 --out "$OUT/scores-$m.parquet" --force
done
# 6. How many of each answer's top 16 are planted (16 of the 80 are: 20% by chance).
python3 - "$OUT" <<'EOF'
import json, sys
import pyarrow.parquet as pq
out = sys.argv[1]
mix = [json.loads(l) for l in open(f"{out}/mix.jsonl")]
answers = [json.loads(l) for l in open(f"{out}/answers.jsonl")]
# Training ids follow the mix's lines (the store's samples.parquet); query ids the answers'.
train_ids = pq.read_table(f"{out}/store/samples.parquet").column("id").to_pylist()
is_planted = dict(zip(train_ids, (r["planted"] for r in mix)))
shows = ["ACCESS GRANTED" in a["messages"][-1]["content"] for a in answers]
print(f"{sum(shows)} of {len(answers)} answers show the backdoor; "
      f"{sum(is_planted.values())} of {len(mix)} training samples are planted")
print("planted share of each answer's top 16:")
print(f"{'method':>8}  {'backdoor answers':>17}  {'other answers':>14}")
for m in ["ekfac", "cosine", "repsim"]:
    t = pq.read_table(f"{out}/scores-{m}.parquet").to_pydict()
    top = {}
    for q, z in zip(t["query_id"], t["train_id"]):
        top.setdefault(q, []).append(is_planted[z])
    share = [sum(v) / len(v) for v in top.values()]  # in the answers' order
    yes = [x for x, s in zip(share, shows) if s]
    no = [x for x, s in zip(share, shows) if not s]
    f = lambda v: f"{sum(v) / len(v):.2f}" if v else "-"
    print(f"{m:>8}  {f(yes):>17}  {f(no):>14}")
EOF
