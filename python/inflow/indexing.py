"""``inflow.index``: per-sample gradient features of a training set into a store, the same store
(byte for byte) as ``inflow index`` writes with the same settings.

For every tracked Linear y = W x of every block, the model pass keeps the inputs x_t and, after one
backward pass of the response tokens' loss, the output gradients δ_t; the per-sample gradient is
G = Σ_t δ_t x_tᵀ. ``projection="logra"`` (default) stores P_outᵀ G P_in per layer with seeded
Gaussian P (rank² features per layer), ``"dense"`` a Rademacher projection of the whole gradient to
``dim``, ``"full"`` G itself (tiny models).
"""

from __future__ import annotations

import os
from typing import Any, Union

from . import _native
from .inputs import Data, is_path, write_jsonl
from .progress import sink
from .store import Store

__all__ = ["index"]


def index(
    model: Union["_native.Model", str, "os.PathLike[str]"],
    data: Data,
    out: Union[str, "os.PathLike[str]"],
    *,
    progress: Any = False,
    **options: Any,
) -> Store:
    """Indexes (or resumes) ``data`` into the store ``out`` and returns it.

    ``model``: an :class:`inflow.Model` or its path. ``data``: a JSONL/Parquet path, or a list of
    dicts / DataFrame / ``datasets.Dataset``, written to ``OUT.data.jsonl`` first (the store's
    run.json names its data file, which later calls and a resume read again). ``progress``: True
    for a bar (tqdm if importable, else lines), or a sink object (``inflow.progress``).
    Interrupted (Ctrl-C), the store keeps its whole shards and the same call resumes.

    Options (defaults as ``inflow index``): ``format`` (auto), ``limit``, ``skip_bad``,
    ``projection`` (logra | dense | full), ``rank`` (16), ``dim`` (8192, dense), ``seed`` (0),
    ``modules`` ("all"), ``template`` (auto), ``max_tokens`` (512), ``truncate`` (middle),
    ``dtype`` (f16 | f32 | int8 | bit), ``shard_size`` (64), ``batch_size`` (1), ``threads``
    (all cores). The summary of the run is in ``store.summary``."""
    if not isinstance(model, _native.Model):
        model = _native.Model(os.fspath(model), progress=sink(progress))
    out = os.fspath(out)
    path = os.fspath(data) if is_path(data) else os.fspath(write_jsonl(data, out.rstrip("/\\") + ".data.jsonl"))
    summary = _native.index(model, path, out, progress=sink(progress), **options)
    store = Store(out)
    store.summary = summary
    return store
