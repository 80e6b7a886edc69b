"""The example of python/examples runs end to end (real model, a few samples)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_quickstart_runs(smollm2, tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "python" / "examples" / "quickstart.py"), "--model", str(smollm2),
         "--limit", "8", "--out", str(tmp_path / "q")],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selected 2 of 8" in r.stdout and "G-DIG selected 2" in r.stdout
    assert (tmp_path / "q" / "gdig.jsonl").is_file()
