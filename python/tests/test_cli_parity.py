"""Index and score from Python give the CLI's bytes and scores (the real model, bundled data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import inflow
from conftest import PROBE, TRAIN, run_cli

SETTINGS = dict(limit=8, max_tokens=96, shard_size=4)


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, but the writer lock (it holds the writer's pid)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "writer.lock"
    }


def test_index_and_score_equal_the_cli(inflow_bin, smollm2, tmp_path):
    cli, py = tmp_path / "cli", tmp_path / "py"
    run_cli(
        inflow_bin, "index", "--model", str(smollm2), "--data", str(TRAIN), "--limit", "8",
        "--max-tokens", "96", "--shard-size", "4", "--out", str(cli),
    )
    m = inflow.Model(smollm2)
    store = inflow.index(m, TRAIN, py, **SETTINGS)
    assert store.summary["n_samples"] == 8 and store.summary["shards_written"] == 2
    a, b = store_files(cli), store_files(py)
    assert sorted(a) == sorted(b)
    assert "features-00001.npy" in a
    for name in a:
        assert a[name] == b[name], f"{name} differs between the CLI's store and Python's"

    cli_out = tmp_path / "cli.parquet"
    run_cli(
        inflow_bin, "score", "--store", str(cli), "--queries", str(PROBE), "--limit", "3",
        "--top-k", "5", "--out", str(cli_out),
    )
    want = inflow.read_scores(cli_out)
    got = store.score(PROBE, top_k=5, limit=3)
    assert list(got.columns) == ["query_id", "train_id", "score", "rank", "method"]
    assert list(got.columns) == list(want.columns)
    assert len(got) == 15
    for c in ["query_id", "train_id", "rank", "method"]:
        assert got[c].tolist() == want[c].tolist()
    np.testing.assert_array_equal(got["score"].to_numpy(), want["score"].to_numpy())
    assert got.attrs["sign_convention"] == want.attrs["sign_convention"]
    assert got.attrs["method"] == "cosine"
