#!/usr/bin/env bash
# The papers' findings at sizes that run on a 2-core machine (issue 18): planted-data
# retrieval in the setting of Li et al. (2024), "Do Influence Functions Work on Large Language
# Models?": the fine-tuned model must show the behaviour (greedy answers to held-out queries;
# training stops at the first epoch with >= 80% attack success) and the queries are its own
# answers; the planted-response queries are the labelled second set. Three seeds each (another
# planted subset, LoRA initialisation and data order), mean ± sd.
#
# Sizes: 80 training samples (backdoor 8 planted, harmful 16; class: 4 tasks x 20), 12 held-out
# queries, LoRA r16 on all 210 Linears, lr 5e-3, LoGra rank 8 features (dim 13,440). About 5
# minutes per seed on 2 cores (class: 8, it trains all 10 epochs); about 1.5 hours in all.
# LESS is left out of the seeded runs: its LoRA-gradient features with a dense projection cost
# about 13 minutes and 20 GB per seed at this adapter size; ICP and one-step about 10 minutes
# each (docs/reports/findings/jiao-2024.md). Every step resumes.
#
# Writes runs/findings/<kind>/ and copies the reports to docs/reports/findings/<kind>/.
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS=${METHODS:-dot,cosine,kfac,ekfac,datainf,lissa,repsim,repsim-mean}
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
mkdir -p runs/findings
copy() {  # copy() KIND: the report, its plots and each seed's report, fine-tune.json, answers
  local src=runs/findings/$1 dst=docs/reports/findings/$1
  mkdir -p "$dst"
  cp "$src/report.json" "$src"/*.png "$dst/"
  cp "runs/findings/$1.txt" "$dst/table.txt"
  for s in "$src"/seed-*; do
    mkdir -p "$dst/$(basename "$s")"
    for f in report.json fine-tune.json queries-generated.jsonl; do
      if [ -f "$s/$f" ]; then cp "$s/$f" "$dst/$(basename "$s")/"; fi
    done
  done
}
# Backdoor: 8 of 80 planted. Seed 3 never reaches 80% (it is listed under `refused`), so four
# seeds give three.
$I eval planted --kind backdoor --seeds 1,2,3,4 --n-train 80 --methods "$METHODS" \
  --out runs/findings/backdoor | tee runs/findings/backdoor.txt
copy backdoor
# Harmful: 8 of 80 planted peaked at 33%; 16 of 80 at 75%, 67%, 42% (seeds 1-3), never 80%:
# gated at 70%, only seed 1 passes (the report lists the others under refused).
$I eval planted --kind harmful --fraction 0.2 --min-attack-success 0.7 --seeds 1,2,3 \
  --n-train 80 --methods "$METHODS" --out runs/findings/harmful-20 | tee runs/findings/harmful-20.txt
copy harmful-20
# Class attribution: 4 tasks x 20 of the larger NI split (tasks with 20 + 3 records), 10 epochs.
$I eval planted --kind class --seeds 1,2,3 --n-train 80 --tasks 4 \
  --data ../shared/data/natural-instructions/train.jsonl --methods "$METHODS" \
  --out runs/findings/class | tee runs/findings/class.txt
copy class
# Convergence: seed 1's backdoor fine-tuning continued to all 10 epochs (the same run: the
# schedule is over 10 epochs either way), retrieval at every epoch's checkpoint.
mkdir -p runs/findings/backdoor-long
[ -d runs/findings/backdoor-long/ft ] || cp -r runs/findings/backdoor/seed-1/ft runs/findings/backdoor-long/ft
$I eval planted --kind backdoor --seed 1 --n-train 80 --until epochs --force-retrieval --trajectory \
  --methods dot,cosine,ekfac,repsim --out runs/findings/backdoor-long | tee runs/findings/backdoor-long.txt
mkdir -p docs/reports/findings/backdoor-long
cp runs/findings/backdoor-long/report.json runs/findings/backdoor-long/fine-tune.json \
  runs/findings/backdoor-long/along-*.png runs/findings/backdoor-long.txt docs/reports/findings/backdoor-long/
