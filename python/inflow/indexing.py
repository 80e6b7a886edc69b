"""``inflow.index``: per-sample gradient features of a training set into a store, the same store
(byte for byte) as ``inflow index`` writes with the same settings.

For every tracked Linear y = W x of every block, the model pass keeps the inputs x_t and, after one
backward pass of the response tokens' loss, the output gradients δ_t; the per-sample gradient is
G = Σ_t δ_t x_tᵀ. ``projection="logra"`` (default) stores P_outᵀ G P_in per layer with seeded
Gaussian P (rank² features per layer), ``"dense"`` a Rademacher projection of the whole gradient to
``dim``, ``"full"`` G itself (tiny models).

At training checkpoints (``adapter=CK`` or ``checkpoints=[CK1, CK2, …]``, as ``inflow index
--adapter`` / ``--checkpoints``) the model is loaded at each checkpoint; ``lora_grads=True`` takes
the features of the LoRA parameters instead of the base Linears, and ``adam=True`` LESS's
Adam-update features Γ = m'/(√v'+ε) from the checkpoint's optimizer moments. The stores record each
checkpoint's step and learning rate η_c, which ``score(method="tracin")`` and ``"less"`` weight by.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from . import _native
from .inputs import Data, is_path, write_jsonl
from .progress import sink
from .store import CheckpointStores, Store, open_store

__all__ = ["index"]


def index(
    model: Union["_native.Model", str, "os.PathLike[str]"],
    data: Data,
    out: Union[str, "os.PathLike[str]"],
    *,
    progress: Any = False,
    adapter: Optional[Union[str, "os.PathLike[str]"]] = None,
    checkpoints: Optional[Sequence[Union[str, "os.PathLike[str]"]]] = None,
    lora_grads: bool = False,
    adam: bool = False,
    **options: Any,
) -> Union[Store, CheckpointStores]:
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
    (all cores). The summary of the run is in ``store.summary``.

    At checkpoints: ``adapter`` (one adapter or checkpoint folder: the store is ``out``) or
    ``checkpoints`` (several: one store each at ``out/{checkpoint name}``, returned as a
    :class:`inflow.CheckpointStores` that ``score(method="tracin")`` / ``"less"`` sums over);
    ``lora_grads`` and ``adam`` as above (``adam`` needs ``lora_grads``; use
    ``projection="dense"``). The model is then read from its path at each checkpoint, and
    ``summary`` is a list with one {checkpoint, out, seconds, summary} per checkpoint."""
    if adapter is not None or checkpoints or lora_grads or adam:
        return _index_checkpoints(model, data, out, progress, adapter, checkpoints, lora_grads, adam, options)
    if not isinstance(model, _native.Model):
        model = _native.Model(os.fspath(model), progress=sink(progress))
    out = os.fspath(out)
    path = os.fspath(data) if is_path(data) else os.fspath(write_jsonl(data, out.rstrip("/\\") + ".data.jsonl"))
    summary = _native.index(model, path, out, progress=sink(progress), **options)
    store = Store(out)
    store.summary = summary
    return store


def _index_checkpoints(model, data, out, progress, adapter, checkpoints, lora_grads, adam, options):
    """``index`` at checkpoints, through the library's ``pipeline::index::checkpoints`` (the
    code behind ``inflow index --checkpoints``)."""
    # The library loads the model afresh at each checkpoint (adapters attach to clean weights),
    # so a loaded Model is passed on by its path.
    model_path = model.path if isinstance(model, _native.Model) else model
    out = os.fspath(out)
    path = os.fspath(data) if is_path(data) else os.fspath(write_jsonl(data, out.rstrip("/\\") + ".data.jsonl"))
    results = _native.index_checkpoints(
        os.fspath(model_path),
        path,
        out,
        adapter=None if adapter is None else os.fspath(adapter),
        checkpoints=[os.fspath(c) for c in checkpoints or []],
        lora_grads=lora_grads,
        adam=adam,
        progress=sink(progress),
        **options,
    )
    store = open_store(out)
    store.summary = results
    return store
