#!/usr/bin/env bash
# LDS of EK-FAC on the empirical vs the true (Gauss–Newton) Fisher, and with token vs sample
# Kronecker factors, on SmolLM2-135M-Instruct: the run of docs/reports/lds/ (64 samples,
# 8 queries, 16 subsets, α 0.5, one thread) with three more score matrices from `inflow score
# --full` on a store built with eval lds's own feature settings (LoGra rank 16, all Linears,
# 128 tokens, base model). About 35 minutes on 2 cores.
# Writes runs/lds-fisher/ and docs/reports/lds-fisher/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --release -p inflow-cli
I=target/release/inflow
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
D=assets/data/train.jsonl
Q=assets/data/probe.jsonl
R=runs/lds-fisher
OUT=docs/reports/lds-fisher
mkdir -p $R $OUT
$I index --model $M --data $D --limit 64 --rank 16 --max-tokens 128 --out $R/store
score() { # name, fit arguments...
  local name=$1; shift
  $I fit --store $R/store "$@"
  $I score --store $R/store --queries $Q --method influence --preconditioner ekfac \
    --out $R/$name.parquet --full $R/$name.npy --json > $R/$name.json
}
score ekfac-tokens-empirical --fisher empirical --factors tokens
score ekfac-samples-empirical --fisher empirical --factors samples
score ekfac-tokens-true --fisher true --factors tokens
score ekfac-samples-true --fisher true --factors samples
$I --threads 1 eval lds --model $M --data $D --queries $Q --limit 64 --subsets 16 --ratio 0.5 \
  --methods cosine,dot,ekfac,datainf \
  --scores ext-ekfac-tokens-empirical=$R/ekfac-tokens-empirical.npy \
  --scores ext-ekfac-samples-empirical=$R/ekfac-samples-empirical.npy \
  --scores ext-ekfac-tokens-true=$R/ekfac-tokens-true.npy \
  --scores ext-ekfac-samples-true=$R/ekfac-samples-true.npy \
  --out $R/lds | tee $R/lds.txt
cp $R/lds/lds.json $R/lds/*.png $R/lds.txt $OUT/
