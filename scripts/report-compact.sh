#!/usr/bin/env bash
# Compact-store report (issue 13): the trade-off curve of `store compress` on a real store
# (LoGra rank 16 of 2,048 Natural Instructions training samples, the 848 probes as queries),
# and `bench score` at 100k / 1M / 4M rows. Every step resumes or is reused.
# Indexing the teacher and probe stores takes about 35 + 15 minutes on 2 cores (skipped when
# they exist); the rest about 10 minutes. Writes docs/reports/compact/.
set -euo pipefail
cd "$(dirname "$0")/.."
NI=../shared/data/natural-instructions
TEACHER=${TEACHER:-runs/ni-2k}
PROBES=${PROBES:-runs/ni-probes}
OUT=runs/compact
REPORT=docs/reports/compact
BENCH_ROWS=${BENCH_ROWS:-"100000 1000000 4000000"}
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$OUT" "$REPORT"
$I index --model $M --data $NI/train.jsonl --limit 2048 --out "$TEACHER"
# The probes' features once, as f32 (exact): every score below reuses them.
$I index --model $M --data $NI/probe.jsonl --dtype f32 --out "$PROBES"

# Reference: exact cosine on the uncompressed store.
$I score --store "$TEACHER" --queries "$PROBES" --top-k 100 --full "$OUT/full-f16.npy" \
  --out "$OUT/full-f16.parquet" --json > /dev/null
for dim in 256 1024 4096 full; do
  for dtype in f16 int8 bit; do
    name="$dim-$dtype"
    [ "$name" = full-f16 ] && continue
    store="$OUT/store-$name"
    dimarg=""; [ "$dim" != full ] && dimarg="--dim $dim"
    # Compressed once (a rerun would only time the no-op resume).
    if ! grep -qs '"status": "complete"' "$store/manifest.json"; then
      /usr/bin/time -f "%e s wall, %U s user, %M KiB peak" -o "$OUT/compress-$name.time" \
        $I store compress --store "$TEACHER" --out "$store" $dimarg --dtype $dtype --json > "$OUT/compress-$name.json"
    fi
    /usr/bin/time -f "%e s wall, %U s user" -o "$OUT/score-$name.time" \
      $I score --store "$store" --queries "$PROBES" --top-k 100 --full "$OUT/$name.npy" \
      --out "$OUT/$name.parquet" --json > /dev/null
    /usr/bin/time -f "%e s wall, %U s user" -o "$OUT/rerank-$name.time" \
      $I score --store "$store" --queries "$PROBES" --top-k 100 --rerank 100 \
      --out "$OUT/$name-rerank.parquet" --json > /dev/null
  done
done
# Bits at 8160 dims: 1,020 bytes plus the 4-byte norm, 1 KiB a row.
grep -qs '"status": "complete"' "$OUT/store-8160-bit/manifest.json" || \
  $I store compress --store "$TEACHER" --out "$OUT/store-8160-bit" --dim 8160 --dtype bit --json > "$OUT/compress-8160-bit.json"
$I score --store "$OUT/store-8160-bit" --queries "$PROBES" --top-k 100 --full "$OUT/8160-bit.npy" --out "$OUT/8160-bit.parquet" --force --json > /dev/null
$I score --store "$OUT/store-8160-bit" --queries "$PROBES" --top-k 100 --rerank 100 --out "$OUT/8160-bit-rerank.parquet" --force --json > /dev/null
python3 scripts/report-compact.py "$OUT" "$TEACHER" "$REPORT"

# Throughput at scale: synthetic stores written once under runs/bench-score/, streamed.
[ "${BENCH:-1}" = 1 ] || exit 0
for rows in $BENCH_ROWS; do
  $I bench score --rows "$rows" --dim 1024 --dtype int8 --queries 100 --json > "$REPORT/bench-$rows-int8.json"
done
for dtype in f16 bit; do
  $I bench score --rows 1000000 --dim 1024 --dtype $dtype --queries 100 --json > "$REPORT/bench-1000000-$dtype.json"
done
python3 scripts/report-compact.py --bench "$REPORT"
