"""Ctrl-C during index stops it cleanly between micro-batches, and the same call resumes into the
store an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

import inflow
from conftest import TRAIN
from test_cli_parity import store_files

SETTINGS = dict(limit=64, max_tokens=256, rank=4, shard_size=8, threads=1)


def shards_done(out) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def test_ctrl_c_stops_index_and_a_rerun_resumes(tmp_path):
    model_dir = tmp_path / "m"
    inflow._native.write_tiny_model(str(model_dir), hidden=64, layers=4)
    model = inflow.Model(model_dir)
    out = tmp_path / "s"

    def interrupt_after_first_shard():
        # The signal arrives while the main thread runs Rust code with the GIL released.
        t = time.monotonic()
        while shards_done(out) < 1 and time.monotonic() - t < 60:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    killer = threading.Thread(target=interrupt_after_first_shard)
    killer.start()
    with pytest.raises(KeyboardInterrupt):
        inflow.index(model, TRAIN, out, **SETTINGS)
    killer.join()
    kept = shards_done(out)
    assert 1 <= kept < 8
    assert json.loads((out / "manifest.json").read_text())["status"] != "complete"

    resumed = inflow.index(model, TRAIN, out, **SETTINGS)
    assert resumed.summary["shards_reused"] == kept
    assert resumed.summary["shards_written"] == 8 - kept
    whole = inflow.index(model, TRAIN, tmp_path / "whole", **SETTINGS)
    assert store_files(out) == store_files(whole.path)
