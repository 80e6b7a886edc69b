"""The library's errors arrive as inflow.Error (a ValueError) naming the file, line or field."""

from __future__ import annotations

import pytest

import inflow
from conftest import TRAIN


def test_a_malformed_record_names_file_and_line(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3\n')
    with pytest.raises(inflow.Error) as e:
        inflow.index(str(tiny), bad, tmp_path / "s")
    assert isinstance(e.value, ValueError)
    assert str(bad) in str(e.value) and ":2:" in str(e.value)
    assert str(e.value.path) == str(bad) and e.value.line == 2 and e.value.kind == "bad_input"


def test_a_missing_file_and_a_foreign_folder(tiny, tiny_store, tmp_path):
    with pytest.raises(inflow.Error, match="nope.jsonl"):
        tiny_store.score(tmp_path / "nope.jsonl")
    with pytest.raises(inflow.Error, match="not-a-model"):
        inflow.Model(tmp_path / "not-a-model")
    (tmp_path / "folder").mkdir()
    with pytest.raises(inflow.Error, match="folder"):
        inflow.open_store(tmp_path / "folder")


def test_in_memory_records_are_named_by_position(tiny_store):
    with pytest.raises(inflow.Error, match="queries given in memory, record 1") as e:
        tiny_store.score([{"instruction": "a", "output": "b"}, {"instruction": 3, "output": "b"}])
    assert e.value.record == 1 and e.value.path is None


def test_a_changed_setting_names_the_field(tiny, tiny_store):
    with pytest.raises(inflow.Error, match="max_tokens"):
        inflow.index(str(tiny), str(TRAIN), tiny_store.path, limit=40, max_tokens=64, rank=4, shard_size=16)
    with pytest.raises(inflow.Error, match="unknown method"):
        tiny_store.score(str(TRAIN), method="nope", limit=1)
