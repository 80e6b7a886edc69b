"""Shared fixtures: the repository, the CLI binary, the bundled data and models.

These tests need the extension installed (``pip install ./python``), the ``inflow`` binary
(``cargo build --release -p inflow-cli``, or the README's cargo test command) and the reference
model (``./scripts/fetch-model.sh``); a missing one fails the test, naming what to run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "assets" / "data" / "train.jsonl"
PROBE = REPO / "assets" / "data" / "probe.jsonl"
SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def inflow_bin() -> Path:
    """The CLI binary: $INFLOW_BIN, else $CARGO_TARGET_DIR (or target/)/release/inflow."""
    env = os.environ.get("INFLOW_BIN")
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    path = Path(env) if env else target / "release" / "inflow"
    if not path.is_file():
        pytest.fail(f"{path}: no inflow binary; run `cargo build --release -p inflow-cli` (or set INFLOW_BIN)")
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2}: missing; run ./scripts/fetch-model.sh")
    return SMOLLM2


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """The library's tiny random Llama (width 16, 2 blocks, byte tokenizer) as a HF folder."""
    import inflow

    path = tmp_path_factory.mktemp("models") / "tiny"
    inflow._native.write_tiny_model(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_store(tiny, tmp_path_factory):
    """40 bundled samples indexed with the tiny model (3 shards), fitted."""
    import inflow

    out = tmp_path_factory.mktemp("stores") / "tiny"
    store = inflow.index(str(tiny), str(TRAIN), out, limit=40, max_tokens=96, rank=4, shard_size=16)
    store.fit()
    return store


def run_cli(inflow_bin: Path, *args: str) -> str:
    """Runs the CLI, failing the test with its output if it fails."""
    r = subprocess.run([str(inflow_bin), *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"inflow {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout
