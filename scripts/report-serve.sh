#!/usr/bin/env bash
# Screenshots of every page of `inflow serve` (docs/serve/*.png) on the real model and the
# bundled data: index 40 samples, fit EK-FAC, score the 8 bundled probes with cosine, EK-FAC
# and RepSim, serve them with a live model, run one live query, and shoot each page in
# headless Chromium (Debian's `chromium`). About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh >/dev/null
cargo build --release -q -p inflow-cli
BIN=target/release/inflow
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
S=runs/serve-demo
OUT=docs/serve
mkdir -p "$OUT"
$BIN index --model $M --data assets/data/train.jsonl --limit 40 --max-tokens 256 --out $S
[ -f $S/curvature/kfac.safetensors ] || $BIN fit --store $S
for m in cosine ekfac repsim; do
  $BIN score --store $S --queries assets/data/probe.jsonl --method $m --top-k 5 --out $S/top-$m.parquet --force >/dev/null
done
$BIN score --store $S --queries assets/data/probe.jsonl --method cosine --aggregate mean --out $S/mean-cosine.parquet --force >/dev/null

LOG=$(mktemp)
$BIN serve --store $S --scores $S/top-cosine.parquet $S/top-ekfac.parquet $S/top-repsim.parquet $S/mean-cosine.parquet \
  --queries assets/data/probe.jsonl --model $M --port 0 >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q "^serving" "$LOG" && break; sleep 0.2; done
URL=$(grep -o 'http://[^ ]*' "$LOG" | head -1)
echo "server: $URL"

# One live query, shown by its job link.
JOB=$(curl -s -X POST "$URL/api/live" -H 'content-type: application/json' \
  -d '{"prompt": "Write a question about the order of events in this sentence: She watered the plants and then went to work.", "response": "What did she do before going to work?", "method": "cosine", "top_k": 5}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"])')
for _ in $(seq 200); do
  curl -s "$URL/api/live/$JOB" | grep -q '"state":"done"' && break; sleep 0.2
done

# A training sample that keeps showing up in cosine's lists, for the sample page.
SAMPLE=$(curl -s "$URL/api/overview" | python3 -c 'import json,sys; o=json.load(sys.stdin); print([m for m in o["methods"] if m.get("frequent")][0]["frequent"][0]["index"])')

PROFILE=$(mktemp -d)
shoot() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$PROFILE" --virtual-time-budget=8000 --window-size=1400,"$3" \
    --screenshot="$OUT/$1.png" "$URL/#/$2" 2>/dev/null
  echo "wrote $OUT/$1.png"
}
shoot overview "" 1500
shoot queries "queries?q=question" 900
shoot query "query/2" 1700
shoot sample "sample/$SAMPLE" 1300
shoot live "live?job=$JOB" 1500
shoot select "select?q=question" 1100
rm -rf "$PROFILE"
