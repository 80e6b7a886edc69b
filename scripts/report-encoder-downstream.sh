#!/usr/bin/env bash
# Downstream figures of the amortized encoder (issue 12, "Downstream"): planted-data retrieval
# with an encoder distilled from the mix's own gradient store inside `eval planted`, beside the
# teacher's gradient methods, and one selection experiment (`eval selection`) with the
# encoder's selection beside the teacher's (gradient cosine, in-process LESS), random subsets
# (3 seeds) and the full pool. SmolLM2-135M-Instruct, the bundled NI samples, 2 threads.
# About 12-15 minutes per planted run and 18 for the selection on a shared 2-core machine;
# every step resumes. PLANTED="" skips the planted runs, SELECTION=0 the selection. Writes
# runs/enc-planted-*/, runs/enc-sel-*/ and copies the JSON reports (and their text tables) to
# docs/reports/encoder/downstream/.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-7}
THREADS=${THREADS:-2}
PLANTED=${PLANTED-"backdoor backdoor-strong harmful"}
SELECTION=${SELECTION-1}
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
OUT=docs/reports/encoder/downstream
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
mkdir -p runs "$OUT"
# The encoder of `eval planted`: `encoder train`'s defaults (k=6, last-mean pooling, MLP head
# 1,024 → 256, 600 steps, seed 0), anchors = the mix and the planted queries.
METHODS=dot,cosine,less,kfac,ekfac,datainf,repsim,encoder
# The settings these reports were made with (before `eval planted` moved to the paper's setting).
OLD="--until epochs --force-retrieval --lora-rank 8 --lora-modules q,v --generate 4"
for k in $PLANTED; do
  case $k in
    backdoor) how="--kind backdoor --epochs 2 --lr 1e-3" ;;
    # 8 of 80 planted, 3 epochs, lr 3e-3 (docs/reports/planted/backdoor-strong).
    backdoor-strong) how="--kind backdoor --n-train 80 --epochs 3 --lr 3e-3" ;;
    harmful) how="--kind harmful --epochs 2 --lr 1e-3" ;;
  esac
  /usr/bin/time -f '%e s wall, %U s user' -o "runs/enc-planted-$k.wall" \
    $I --threads "$THREADS" eval planted $how --seed "$SEED" --methods $METHODS $OLD \
    --out "runs/enc-planted-$k" | tee "runs/enc-planted-$k.txt"
  mkdir -p "$OUT/planted-$k"
  cp "runs/enc-planted-$k/report.json" "runs/enc-planted-$k.txt" "runs/enc-planted-$k.wall" \
    "runs/enc-planted-$k"/*.png "$OUT/planted-$k/"
done
if [ "$SELECTION" = 1 ]; then
  # The settings of docs/reports/selection (pool: the first 120 bundled samples; targets: the
  # 8 probes; 16 NI test samples of their tasks; 20%; 2 epochs at lr 1e-3) with the encoder
  # distilled from the pool's store (the targets as anchors) beside the teacher's cosine and
  # in-process LESS.
  [ -s runs/enc-sel-store/manifest.json ] || $I --threads "$THREADS" index --model $M \
    --data assets/data/train.jsonl --format alpaca --limit 120 --rank 8 --max-tokens 256 \
    --out runs/enc-sel-store
  /usr/bin/time -f '%e s wall, %U s user' -o runs/enc-sel-eval.wall \
    $I --threads "$THREADS" eval selection --model $M --pool assets/data/train.jsonl \
    --pool-limit 120 --targets assets/data/probe.jsonl \
    --test ../shared/data/natural-instructions/test.jsonl --test-limit 16 --size 20% \
    --methods random,cosine,less,encoder,full --store runs/enc-sel-store --random-seeds 3 \
    --epochs 2 --lr 1e-3 --max-new-tokens 16 --out runs/enc-sel-eval | tee runs/enc-sel-eval.txt
  mkdir -p "$OUT/selection"
  cp runs/enc-sel-eval/report.json runs/enc-sel-eval/methods.json runs/enc-sel-eval.txt \
    runs/enc-sel-eval.wall runs/enc-sel-eval/*.png "$OUT/selection/"
fi
