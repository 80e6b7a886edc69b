"""Store.features() is a zero-copy view of the memory-mapped .npy shards."""

from __future__ import annotations

import mmap

import numpy as np


def test_features_share_memory_with_the_mmap(tiny_store):
    shards = tiny_store.features()
    m = tiny_store.manifest
    assert len(shards) == len(m["shards"]) == 3
    assert sum(a.shape[0] for a in shards) == tiny_store.n_samples == 40
    for a, sh in zip(shards, m["shards"]):
        assert isinstance(a, np.memmap)
        assert a.shape == (sh["end_row"] - sh["start_row"], tiny_store.dim)
        assert a.dtype == np.float16
        assert not a.flags.owndata and not a.flags.writeable
        # The base chain ends at the file's mmap, and the array's bytes are inside it.
        base = a
        while not isinstance(base, mmap.mmap):
            base = base.base
            assert base is not None
        assert np.shares_memory(a, np.frombuffer(base, dtype=np.uint8))
        np.testing.assert_array_equal(a, np.load(tiny_store.path / sh["features"]))
    assert tiny_store.features(2).shape == (8, tiny_store.dim)
    norms = tiny_store.norms(0)
    np.testing.assert_allclose(norms, np.linalg.norm(shards[0].astype(np.float32), axis=1), rtol=1e-5)


def test_samples_table(tiny_store):
    s = tiny_store.samples()
    assert len(s) == 40 and {"id", "row", "loss", "prompt", "response"} <= set(s.columns)
