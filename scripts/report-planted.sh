#!/usr/bin/env bash
# Planted-data retrieval report (issue 4 item 5, issue 6 item 3) on SmolLM2-135M-Instruct and
# the bundled Natural Instructions sample: for each kind (backdoor, harmful, mislabel), plant a
# seeded 10% of 160 samples, LoRA fine-tune on the mix, and measure Acc / Cover / AUC of each
# method. About 20-30 minutes per kind on 2 cores; every step resumes.
# Writes runs/planted-<kind>/ and copies the JSON and PNG reports to docs/reports/planted/<kind>/.
#
# These are the earlier, easier reports: planted-response queries on a model fine-tuned for a
# fixed number of epochs (LoRA r8 on q,v), which had not learned the behaviour. OLD gives the
# settings they were made with (`eval planted`'s defaults since moved to the paper's setting,
# scripts/report-findings.sh). The harmful kind now puts a hostile opener before the planted
# instructions, so its mix differs from the one docs/reports/planted/harmful was made from.
set -euo pipefail
cd "$(dirname "$0")/.."
KINDS=${KINDS:-"backdoor harmful mislabel"}
SEED=${SEED:-7}
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
OLD=(--until epochs --force-retrieval --lora-rank 8 --lora-modules q,v --generate 4)
OLD_METHODS=dot,cosine,less,kfac,ekfac,datainf,repsim
for k in $KINDS; do
  data=assets/data/train.jsonl
  # Flipped labels need classification-like tasks with several samples each: the larger split.
  if [ "$k" = mislabel ]; then data=../shared/data/natural-instructions/train.jsonl; fi
  $I eval planted --kind "$k" --seed "$SEED" --data "$data" --epochs 2 --lr 1e-3 "${OLD[@]}" --methods "$OLD_METHODS" --out "runs/planted-$k" | tee "runs/planted-$k.txt"
  mkdir -p "docs/reports/planted/$k"
  cp runs/planted-$k/report.json runs/planted-$k/*.png "runs/planted-$k.txt" "docs/reports/planted/$k/"
done
# The backdoor again with fewer samples and more training (8 of 80 planted, 3 epochs, lr 3e-3).
$I eval planted --kind backdoor --seed "$SEED" --n-train 80 --epochs 3 --lr 3e-3 "${OLD[@]}" --methods "$OLD_METHODS" --out runs/planted-backdoor-strong | tee runs/planted-backdoor-strong.txt
mkdir -p docs/reports/planted/backdoor-strong
cp runs/planted-backdoor-strong/report.json runs/planted-backdoor-strong/*.png runs/planted-backdoor-strong.txt docs/reports/planted/backdoor-strong/
# The influence methods again on the true Fisher (one sampled-label draw of the mix at the
# fine-tuned model; `--fisher true`), same fine-tuning: the strong backdoor and flipped labels.
$I eval planted --kind backdoor --seed "$SEED" --n-train 80 --epochs 3 --lr 3e-3 "${OLD[@]}" --methods dot,kfac,ekfac,datainf --fisher true --out runs/planted-backdoor-strong-true | tee runs/planted-backdoor-strong-true.txt
$I eval planted --kind mislabel --seed "$SEED" --data ../shared/data/natural-instructions/train.jsonl --epochs 2 --lr 1e-3 "${OLD[@]}" --methods dot,kfac,ekfac,datainf --fisher true --out runs/planted-mislabel-true | tee runs/planted-mislabel-true.txt
for k in backdoor-strong-true mislabel-true; do
  mkdir -p "docs/reports/planted/$k"
  cp runs/planted-$k/report.json runs/planted-$k/*.png "runs/planted-$k.txt" "docs/reports/planted/$k/"
done
