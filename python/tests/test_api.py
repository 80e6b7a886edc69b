"""The verbs from Python on the tiny model: every registry method, in-memory data, select,
threads and the GIL."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import inflow
from conftest import PROBE, TRAIN

# Methods that score from one store (after fit); the others need checkpoint stores (tracin,
# less) or an encoder store (encoder), and say so.
STORE_METHODS = [
    "cosine", "dot", "repsim", "repsim-mean", "influence", "identity", "kfac", "ekfac",
    "datainf", "lissa", "exact", "icp", "one-step",
]
REFUSED = {"tracin": "checkpoint", "less": "checkpoint", "encoder": "encoder"}


def test_every_registry_method_is_reachable(tiny_store):
    names = [m["name"] for m in inflow.methods()]
    assert sorted(names) == sorted(STORE_METHODS + list(REFUSED))
    for name in STORE_METHODS:
        df = tiny_store.score(PROBE, method=name, top_k=3, limit=2)
        assert len(df) > 0, name
        assert df.attrs["sign_convention"], name
        assert df["score"].notna().all(), name
    for name, word in REFUSED.items():
        with pytest.raises(inflow.Error, match=word):
            tiny_store.score(PROBE, method=name, top_k=3, limit=2)


def test_influence_with_a_preconditioner_and_aggregate(tiny_store):
    df = tiny_store.score(PROBE, method="influence", preconditioner="kfac", top_k=2, limit=2)
    assert set(df["method"]) == {"influence-kfac"}
    agg = tiny_store.score(PROBE, method="cosine", aggregate="mean", limit=4)
    assert list(agg.columns) == ["train_id", "score", "rank", "n_queries", "method"]
    assert len(agg) == 40 and agg.attrs["aggregate"]


def test_in_memory_data_indexes_like_its_file(tiny, tiny_store, tmp_path):
    records = pd.read_json(TRAIN, lines=True).head(40)
    store = inflow.index(str(tiny), records, tmp_path / "df", max_tokens=96, rank=4, shard_size=16)
    assert (tmp_path / "df.data.jsonl").is_file()
    for a, b in zip(store.features(), tiny_store.features()):
        np.testing.assert_array_equal(a, b)
    # The same call again resumes: nothing to write.
    again = inflow.index(str(tiny), records, tmp_path / "df", max_tokens=96, rank=4, shard_size=16)
    assert again.summary["shards_reused"] == 3 and again.summary["shards_written"] == 0
    queries = records.head(2).to_dict(orient="records")
    from_list = tiny_store.score(queries, top_k=3)
    assert from_list["query_id"].nunique() == 2


def test_select_top_and_gdig(tiny_store, tmp_path):
    agg = tiny_store.score(PROBE, method="cosine", aggregate="mean", limit=4, out=tmp_path / "mean.parquet")
    top = inflow.select(tiny_store, agg, size="10%", out=tmp_path / "top.jsonl")
    assert top.attrs["selected"] == 4 and len(top) == 4
    assert len((tmp_path / "top.jsonl").read_text().splitlines()) == 4
    seed = pd.read_json(PROBE, lines=True).head(3)
    g = inflow.select(tiny_store, size=5, method="gdig", seed_set=seed, clusters=2, out=tmp_path / "g.jsonl")
    assert g.attrs["selected"] == 5


def test_the_gil_is_released_while_indexing(tiny, tmp_path):
    done = threading.Event()

    def work():
        inflow.index(str(tiny), str(TRAIN), tmp_path / "gil", limit=40, max_tokens=256, rank=4, threads=1)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    spins = 0
    while not done.is_set() and t.is_alive():
        spins += 1  # pure Python: runs only while the index does not hold the GIL
    t.join()
    assert done.is_set()
    assert spins > 10_000
    assert inflow.pool_threads() >= 1
