"""``inflow.select``: a subset of the training data chosen by score (top-k / top-p%), by G-DIG
(samples that score well against a small seed set, spread over k-means clusters of their gradient
features) or by an ICP threshold; written in the data's own format with a manifest of why each
sample was chosen."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Optional, Union

from . import _native
from .inputs import Data, as_file
from .progress import sink
from .store import Store

__all__ = ["select"]


def _scores_path(scores: Any) -> Optional[str]:
    """A score file's path: given, or the file a DataFrame of :func:`read_scores` came from."""
    if scores is None:
        return None
    if isinstance(scores, (str, os.PathLike)):
        return os.fspath(scores)
    path = getattr(scores, "attrs", {}).get("path")
    if path is None:
        raise TypeError("scores: expected a path or a DataFrame returned by Store.score / read_scores")
    return path


def select(
    store: Union[Store, str, "os.PathLike[str]"],
    scores: Any = None,
    size: Optional[Union[str, int]] = None,
    method: str = "top",
    *,
    seed_set: Optional[Data] = None,
    data: Optional[Union[str, "os.PathLike[str]"]] = None,
    out: Optional[Union[str, "os.PathLike[str]"]] = None,
    force: Optional[bool] = None,
    progress: Any = False,
    **options: Any,
):
    """Selects ``size`` samples (a count like 500 or a percentage like "5%") of the store's
    training data and returns the manifest (``OUT.selection.parquet``: id, rank, score, … of
    each pick) as a DataFrame; ``.attrs`` has ``out`` (the selection, in the data's format),
    ``selected``, ``candidates`` and ``details``.

    ``method``: ``top`` (the best by ``scores``, a per-sample score file such as
    ``store.score(..., aggregate="mean")``), ``gdig`` (keep samples whose mean seed-set score is
    above ``quality_threshold``, k-means (``clusters``) over their L2-normalised gradient
    features, then take evenly across clusters; the seed set is scored with influence/EK-FAC
    when the store is fitted, else cosine, unless ``scores`` are given) or ``icp`` (scores above
    ``threshold``). ``data`` defaults to the store's data file (run.json), ``out`` to
    ``STORE/selection-METHOD.EXT``. ``seed_set`` may be a path or in-memory records. ``force``
    replaces an existing selection; by default only the default ``out`` is rewritten."""
    store = store if isinstance(store, Store) else Store(store)
    data = os.fspath(data) if data is not None else store.run()["data_path"]
    if force is None:
        force = out is None
    if out is None:
        out = store.path / f"selection-{method}{Path(data).suffix}"
    with contextlib.ExitStack() as stack:
        seed = None if seed_set is None else stack.enter_context(as_file(seed_set, "seed_set"))
        r = _native.select(
            data,
            os.fspath(out),
            force=force,
            method=method,
            scores=_scores_path(scores),
            size=None if size is None else str(size),
            store=os.fspath(store.path),
            seed_set=seed,
            progress=sink(progress),
            **options,
        )
    import pandas as pd

    df = pd.read_parquet(r["manifest"][0])
    for k in ("out", "selected", "candidates", "details"):
        df.attrs[k] = r[k]
    return df
