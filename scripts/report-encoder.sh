#!/usr/bin/env bash
# Reproduction report for issue 12: the amortized encoder (Influcoder) distilled from a LoGra
# teacher on Natural Instructions (SmolLM2-135M-Instruct).
# Inputs: TEACHER, a LoGra store of >= 2,000 training samples (`inflow index --data
# .../train.jsonl --limit 2048`), and QSTORE, an f32 store of the 848 probes indexed with the
# same settings (`inflow index --data .../probe.jsonl --dtype f32`). Indexing those two takes
# about 40 minutes on 2 cores; everything below about 15 minutes more (plus FULL=1: the whole
# pool, about 10 minutes).
# Steps whose output exists are skipped, and train/encode resume, so an interrupted run can be
# restarted. Writes runs/report-encoder/ and docs/reports/encoder/ (JSON, figures.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/natural-instructions}
TEACHER=${TEACHER:-../runs/ni-teacher}
QSTORE=${QSTORE:-../runs/ni-probes}
LAYERS=${LAYERS:-"3 6 2"}
FULL=${FULL:-1}
P=$DATA/probe.jsonl
D=$DATA/train.jsonl
R=runs/report-encoder
OUT=docs/reports/encoder
cargo build --release -p inflow-cli
I=target/release/inflow
mkdir -p "$R" "$OUT"
step() { local out=$1; shift; if [ -s "$out" ]; then echo "skip: $out exists"; else "$@" > "$out.tmp" && mv "$out.tmp" "$out"; fi; }
for k in $LAYERS; do
  step $R/train-k$k.json $I encoder train --teacher "$TEACHER" --queries $P --query-store "$QSTORE" \
    --out $R/enc-k$k --layers $k --json
  # encode vs index on the same 32 samples, interleaved, in one process.
  step $R/bench-k$k.json $I bench encode --encoder $R/enc-k$k --data $D --limit 32 --rounds 2 --json
done
k=${LAYERS%% *}
# A longer bench for the pool's encoder (start-up costs matter less).
step $R/bench128-k$k.json $I bench encode --encoder $R/enc-k$k --data $D --limit 128 --rounds 2 --json
if [ "$FULL" = 1 ]; then
  # The whole pool and the probes, forward only; then downstream `score` unchanged.
  step $R/encode-train.json bash -c "/usr/bin/time -f '%e %U %S' -o $R/encode-train.wall $I encode --encoder $R/enc-k$k --data $D --out $R/ni-enc --json"
  step $R/encode-probes.json bash -c "/usr/bin/time -f '%e %U %S' -o $R/encode-probes.wall $I encode --encoder $R/enc-k$k --data $P --out $R/ni-enc-probes --json"
  step $R/score-top3.json $I score --store $R/ni-enc --queries $R/ni-enc-probes --top-k 3 \
    --out $R/top3.parquet --json
fi
cp $R/train-*.json $R/bench*.json $R/encode-*.json "$OUT/" 2>/dev/null || true
python3 scripts/report-encoder.py "$R" "$OUT" "$P" "$D" $LAYERS
echo "wrote $OUT/figures.md (report.md quotes it)"
