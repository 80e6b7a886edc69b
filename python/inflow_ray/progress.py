"""Progress of a run, read from the shared filesystem: each part store's ``manifest.json`` lists
the shards committed so far (``{"index", "start_row", "end_row", …}``) and the whole data's row
count (``n_samples``), so rows done is known without asking the tasks anything."""

from __future__ import annotations

import json
import os
import sys
import time


def read_manifest(store: str) -> dict | None:
    """``store/manifest.json``, or None while it is missing or half written."""
    try:
        with open(os.path.join(store, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def committed_rows(manifest: dict | None) -> int:
    """Rows in the shards a manifest lists."""
    if not manifest:
        return 0
    total = 0
    for shard in manifest.get("shards") or []:
        try:
            total += int(shard["end_row"]) - int(shard["start_row"])
        except (KeyError, TypeError, ValueError):
            continue
    return total


def part_rows(store_manifest: dict, part: int, count: int) -> int:
    """Rows of part ``part`` of ``count`` of a whole store: shards
    ``[part*S/count, (part+1)*S/count)`` of its S shards."""
    shards = store_manifest.get("shards") or []
    s = len(shards)
    lo, hi = part * s // count, (part + 1) * s // count
    return committed_rows({"shards": shards[lo:hi]})


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Meter:
    """Prints ``parts done/total, rows done/n, samples/s, ETA`` to stderr. The rate counts only
    rows done since the driver started, so a resumed run does not look faster than it is."""

    def __init__(self, total_parts: int, stream=None):
        self.total_parts = total_parts
        self.stream = stream or sys.stderr
        self.started = time.time()
        self.rows_at_start: int | None = None

    def line(self, parts_done: int, rows: int, n: int | None, failed: int = 0) -> str:
        elapsed = time.time() - self.started
        if self.rows_at_start is None:
            self.rows_at_start = rows
        new = max(0, rows - self.rows_at_start)
        rate = new / elapsed if elapsed > 0 else 0.0
        words = [f"parts {parts_done}/{self.total_parts}"]
        if failed:
            words.append(f"failed {failed}")
        if n:
            words.append(f"rows {rows}/{n} ({100.0 * rows / n:.1f}%)")
        else:
            words.append(f"rows {rows}")
        words.append(f"{rate:.2f} samples/s")
        if n and rate > 0 and rows < n:
            words.append(f"ETA {_duration((n - rows) / rate)}")
        words.append(f"elapsed {_duration(elapsed)}")
        return "inflow_ray: " + ", ".join(words)

    def show(self, parts_done: int, rows: int, n: int | None, failed: int = 0) -> None:
        print(self.line(parts_done, rows, n, failed), file=self.stream, flush=True)
