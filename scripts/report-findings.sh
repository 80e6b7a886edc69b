#!/usr/bin/env bash
# The papers' findings at sizes that run on a 2-core machine (issue 18): planted-data
# retrieval in the setting of Li et al. (2024), "Do Influence Functions Work on Large Language
# Models?": the fine-tuned model must show the behaviour (greedy answers to held-out queries;
# training stops at the first epoch with >= 80% attack success) and the queries are its own
# answers; the planted-response queries are the labelled second set. Three seeds each (another
# planted subset, LoRA initialisation and data order), mean ± sd.
#
# Sizes: 80 training samples (8 planted for backdoor/harmful; class: 4 tasks x 20), 12 held-out
# queries, LoRA r16 on all 210 Linears, lr 5e-3, LoGra rank 8 features (dim 13,440). About 6-8
# minutes per seed on 2 cores. LESS is left out of the seeded runs: its LoRA-gradient features
# with a dense projection cost about 13 minutes and 20 GB per seed at this adapter size
# (docs/reports/findings/li-2024.md). Every step resumes.
#
# Writes runs/findings/<kind>/ and copies the reports to docs/reports/findings/<kind>/.
set -euo pipefail
cd "$(dirname "$0")/.."
KINDS=${KINDS:-"backdoor harmful class"}
SEEDS=${SEEDS:-1,2,3}
METHODS=${METHODS:-dot,cosine,kfac,ekfac,datainf,lissa,repsim,repsim-mean,icp,one-step}
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
mkdir -p runs/findings
for k in $KINDS; do
  extra=()
  # Class attribution needs tasks with 20 + 3 records: the larger NI split.
  if [ "$k" = class ]; then extra=(--data ../shared/data/natural-instructions/train.jsonl --tasks 4); fi
  $I eval planted --kind "$k" --seeds "$SEEDS" --n-train 80 --methods "$METHODS" \
    --out "runs/findings/$k" "${extra[@]}" | tee "runs/findings/$k.txt"
  mkdir -p "docs/reports/findings/$k"
  cp "runs/findings/$k/report.json" runs/findings/$k/*.png "runs/findings/$k.txt" "docs/reports/findings/$k/"
  for s in ${SEEDS//,/ }; do
    mkdir -p "docs/reports/findings/$k/seed-$s"
    cp "runs/findings/$k/seed-$s/report.json" "runs/findings/$k/seed-$s/fine-tune.json" \
      "runs/findings/$k/seed-$s/queries-generated.jsonl" "docs/reports/findings/$k/seed-$s/"
  done
done
