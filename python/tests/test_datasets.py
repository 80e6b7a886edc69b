"""A Hugging Face ``datasets.Dataset`` is accepted wherever a file is: as training data it indexes
to the same features and ids as the same records in a JSONL file, and as queries it scores like
them."""

from __future__ import annotations

import json

import numpy as np

import inflow
from conftest import TRAIN


def test_a_dataset_indexes_and_scores_like_its_file(tiny, tmp_path):
    import datasets  # installed by .ci/run: a real Dataset, not a stand-in

    records = [json.loads(line) for line in TRAIN.read_text().splitlines()[:6]]
    src = tmp_path / "six.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    opts = dict(rank=2, max_tokens=64, threads=1)
    from_ds = inflow.index(str(tiny), datasets.Dataset.from_list(records), tmp_path / "ds", **opts)
    from_file = inflow.index(str(tiny), str(src), tmp_path / "file", **opts)
    np.testing.assert_array_equal(np.asarray(from_ds.features(0)), np.asarray(from_file.features(0)))
    assert list(from_ds.samples()["id"]) == list(from_file.samples()["id"])

    q = datasets.Dataset.from_list(records[:2])
    a = from_ds.score(q, method="cosine", top_k=3)
    b = from_file.score(records[:2], method="cosine", top_k=3)
    assert list(a["train_id"]) == list(b["train_id"])
    np.testing.assert_array_equal(a["score"].to_numpy(), b["score"].to_numpy())
    # Each query is a training record: it finds itself first, at cosine 1.
    first = a[a["rank"] == 1]
    assert list(first["query_id"]) == list(first["train_id"])
    np.testing.assert_allclose(first["score"].to_numpy(), 1.0, atol=1e-3)
