"""Progress of a long call (index, fit, score, select), shown while it runs.

The native module calls four methods of a *sink* object, with the GIL taken back for each call:
``start(stage, total)``, ``update(stage, done, total, note)``, ``finish(stage)`` and
``note(line)``. ``progress=True`` gives :class:`Bars` (a ``tqdm.auto`` bar per stage, so a notebook
gets a widget) when tqdm is importable, else :class:`Lines` (plain lines on stderr). Any object
with those four methods may be passed instead.

Ctrl-C is seen by the native side between updates (every 200 ms at most): the work stops at the
next micro-batch and ``KeyboardInterrupt`` is raised; an interrupted ``index`` keeps its whole
shards, so calling it again resumes.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

__all__ = ["Bars", "Lines", "sink"]


class Lines:
    """Plain progress lines on ``stream`` (stderr), one per stage at most every ``every`` seconds."""

    def __init__(self, stream: Any = None, every: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self._last: dict[str, float] = {}

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def start(self, stage: str, total: int) -> None:
        self._last[stage] = time.monotonic()
        self._print(f"{stage}: started" + (f" ({total} to do)" if total else ""))

    def update(self, stage: str, done: int, total: int, note: str) -> None:
        now = time.monotonic()
        if now - self._last.get(stage, 0.0) < self.every:
            return
        self._last[stage] = now
        of = f"/{total}" if total else ""
        self._print(f"{stage}: {done}{of}" + (f"  {note}" if note else ""))

    def finish(self, stage: str) -> None:
        self._last.pop(stage, None)
        self._print(f"{stage}: done")

    def note(self, line: str) -> None:
        self._print(line)


class Bars:
    """One ``tqdm.auto`` bar per running stage (a widget in notebooks, a text bar elsewhere)."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}

    def start(self, stage: str, total: int) -> None:
        self._bars[stage] = self._tqdm(total=total or None, desc=stage, leave=False)

    def update(self, stage: str, done: int, total: int, note: str) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            return
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        if note:
            bar.set_postfix_str(note, refresh=False)
        bar.refresh()

    def finish(self, stage: str) -> None:
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def note(self, line: str) -> None:
        self._tqdm.write(line, file=sys.stderr)


def sink(progress: Any) -> Optional[Any]:
    """The sink for a ``progress=`` argument: True → :class:`Bars` (or :class:`Lines` without
    tqdm), False/None → nothing, an object with start/update/finish/note → itself."""
    if progress is None or progress is False:
        return None
    if progress is True:
        try:
            return Bars()
        except ImportError:
            return Lines()
    for method in ("start", "update", "finish", "note"):
        if not callable(getattr(progress, method, None)):
            raise TypeError(f"progress={progress!r}: expected True, False or an object with a {method}() method")
    return progress
