"""Checkpoint stores from Python: ``index(..., checkpoints=[…], lora_grads=True)`` writes the CLI's
stores, and ``score(method="tracin")`` / ``"less"`` over them equals ``inflow score``'s (the tiny
random model, LoRA-trained by the CLI for two checkpoints)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inflow
from conftest import PROBE, TRAIN, run_cli

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "assets" / "data" / "probe-tasks.jsonl"
# Small on purpose: the tiny model, 6 training samples, 32 dense features per checkpoint.
SETTINGS = dict(limit=6, max_tokens=64, projection="dense", dim=32, threads=1)
CLI_SETTINGS = ["--limit", "6", "--max-tokens", "64", "--projection", "dense", "--dim", "32", "--threads", "1"]


def store_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, but writer locks (they hold the pid)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "writer.lock"
    }


@pytest.fixture(scope="module")
def trained(inflow_bin, tiny, tmp_path_factory) -> list[Path]:
    """Two LoRA checkpoints of the tiny model (8 samples, 2 steps, one saved after each)."""
    out = tmp_path_factory.mktemp("train") / "lora"
    run_cli(
        inflow_bin, "train", "--model", str(tiny), "--data", str(TRAIN), "--limit", "8",
        "--max-tokens", "64", "--lora-rank", "4", "--modules", "q,v,down", "--lr", "5e-3",
        "--batch-size", "4", "--epochs", "1", "--save-every", "1", "--threads", "1",
        "--out", str(out),
    )
    cks = [out / "checkpoint-1", out / "checkpoint-2"]
    for ck in cks:
        assert ck.is_dir(), f"{ck}: the trainer saved no such checkpoint"
    return cks


@pytest.mark.parametrize(
    "method,adam,queries",
    [("tracin", False, PROBE), ("less", True, TASKS)],
)
def test_checkpoint_scores_equal_the_cli(inflow_bin, tiny, trained, tmp_path, method, adam, queries):
    cli, py = tmp_path / "cli", tmp_path / "py"
    extra = ["--adam"] if adam else []
    run_cli(
        inflow_bin, "index", "--model", str(tiny), "--checkpoints", *map(str, trained),
        "--lora-grads", *extra, "--data", str(TRAIN), *CLI_SETTINGS, "--out", str(cli),
    )
    store = inflow.index(str(tiny), TRAIN, py, checkpoints=trained, lora_grads=True, adam=adam, **SETTINGS)

    assert isinstance(store, inflow.CheckpointStores)
    assert [c["step"] for c in store.checkpoints()] == [1, 2]
    assert [r["summary"]["n_samples"] for r in store.summary] == [6, 6]
    assert len(store.samples()) == 6
    reopened = inflow.open_store(py)
    assert isinstance(reopened, inflow.CheckpointStores) and len(reopened) == 2
    with pytest.raises(inflow.Error, match="checkpoint stores"):
        inflow.Store(py)
    # The same stores as the CLI writes, byte for byte.
    a, b = store_files(cli), store_files(py)
    assert sorted(a) == sorted(b) and "checkpoint-2/manifest.json" in a
    for name in a:
        assert a[name] == b[name], f"{name} differs between the CLI's stores and Python's"

    cli_out = tmp_path / "cli.parquet"
    run_cli(
        inflow_bin, "score", "--store", str(cli), "--method", method, "--queries", str(queries),
        "--limit", "4", "--top-k", "3", "--threads", "1", "--out", str(cli_out),
    )
    want = inflow.read_scores(cli_out)
    got = store.score(queries, method=method, top_k=3, limit=4, threads=1, out=tmp_path / "py.parquet")
    assert len(got) > 0 and list(got.columns) == list(want.columns)
    assert got["train_id"].tolist() == want["train_id"].tolist()
    np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    assert np.isfinite(got["score"]).all() and np.abs(got["score"]).max() > 0
    assert got.attrs["method"] == method
    assert got.attrs["sign_convention"] == want.attrs["sign_convention"]
