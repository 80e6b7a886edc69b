"""A store on disk (the folder ``index`` writes) as a Python object: its shards as zero-copy numpy
memmaps, its samples as a DataFrame, and the verbs that work on it (``score``, ``fit``).

Layout (README, "The store"): ``manifest.json``, ``run.json``, per shard ``features-NNNNN.npy``
(rows × dim; f16, f32, int8 with ``scales-NNNNN.npy``, or bit: rows × ⌈dim/8⌉ uint8),
``norms-NNNNN.npy``, ``samples-NNNNN.parquet``, and ``samples.parquet`` once complete.

A folder of checkpoint stores (``index(..., checkpoints=[CK1, CK2])``, or ``inflow index
--checkpoints``: one store per training checkpoint, no manifest of its own) is a
:class:`CheckpointStores`; ``open_store`` returns whichever the folder is. Both score.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from . import _native
from .inputs import Data, as_file
from .progress import sink
from .scores import read_scores

__all__ = ["CheckpointStores", "Store", "open_store"]


class _Scoring:
    """``score``, shared by a store and a folder of checkpoint stores: the library's ``score``
    takes either path (``tracin`` and ``less`` sum over the checkpoint stores of a folder)."""

    path: Path

    def score(
        self,
        queries: Data,
        method: str = "cosine",
        top_k: int = 10,
        *,
        preconditioner: Optional[str] = None,
        aggregate: Optional[str] = None,
        out: Optional[Union[str, "os.PathLike[str]"]] = None,
        full: Optional[Union[str, "os.PathLike[str]"]] = None,
        force: Optional[bool] = None,
        progress: Any = False,
        **options: Any,
    ):
        """Scores ``queries`` against the training samples with ``method`` (any name of
        :func:`inflow.methods`) and returns the score file as a DataFrame (see
        :func:`inflow.read_scores`). See ``_native.score`` for every option and the formulas.

        ``queries``: a JSONL/Parquet path, a store of query features, a list of dicts, a
        DataFrame or a ``datasets.Dataset`` (the latter three through a temporary JSONL file).
        ``out`` defaults to ``STORE/scores-METHOD.parquet`` (as ``inflow score``); ``full`` also
        writes the dense queries × training ``.npy`` matrix (``df.attrs["full"]``).

        ``force``: replace an existing ``out``/``full``. By default the default ``out`` (the
        DataFrame's backing file) is rewritten on every call, while a path you name is never
        replaced unless ``force=True``."""
        kwargs = dict(options)
        kwargs["force"] = (out is None and full is None) if force is None else force
        if preconditioner is not None:
            kwargs["preconditioner"] = preconditioner
        with as_file(queries, "queries") as q:
            r = _native.score(
                os.fspath(self.path),
                q,
                method=method,
                top_k=top_k,
                aggregate=aggregate,
                out=None if out is None else os.fspath(out),
                full=None if full is None else os.fspath(full),
                progress=sink(progress),
                **kwargs,
            )
        df = read_scores(r["out"])
        if r["full"] is not None:
            df.attrs["full"] = r["full"]
        if r["report"] is not None:
            df.attrs["report"] = r["report"]
        return df


class Store(_Scoring):
    """The store at ``path``, checked by the library (a foreign or unreadable folder raises
    :class:`inflow.Error` naming it)."""

    #: The summary of the ``index`` call that returned this store (a list, one per checkpoint,
    #: when it indexed at an ``adapter``; None otherwise).
    summary: Optional[Union[dict, list]] = None

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        path = os.fspath(path)
        if _is_checkpoint_folder(path):
            # The library would only say "no manifest"; name the class that opens this folder.
            raise _native.Error(
                f"{path}: a folder of checkpoint stores, not one store; open it with "
                "inflow.open_store or inflow.CheckpointStores"
            )
        info = _native.open_store(path)
        self.path = Path(info["dir"])

    # -- reading ---------------------------------------------------------------------------

    def info(self) -> dict:
        """{dir, manifest, n_samples, dim, complete, whole}, read now (a store being indexed
        grows)."""
        return _native.open_store(os.fspath(self.path))

    @property
    def manifest(self) -> dict:
        """``manifest.json`` as a dict (spec, status, shards, …)."""
        return self.info()["manifest"]

    @property
    def n_samples(self) -> int:
        """Rows planned (all of them once the store is complete)."""
        return self.info()["n_samples"]

    @property
    def dim(self) -> int:
        """Feature dimension (for a bit store, the number of signs per row)."""
        return self.info()["dim"]

    @property
    def dtype(self) -> str:
        """Stored element type: ``f16``, ``f32``, ``int8`` or ``bit``."""
        return self.manifest["spec"]["dtype"]

    def run(self) -> dict:
        """``run.json``: where the model and data were, and the feature options."""
        return json.loads((self.path / "run.json").read_text(encoding="utf-8"))

    def _shard_files(self, key: str) -> list[Path]:
        return [self.path / s[key] for s in self.manifest["shards"] if s.get(key)]

    @staticmethod
    def _pick(arrays: list, shard: Optional[int]):
        if shard is None:
            return arrays
        return arrays[shard]

    def features(self, shard: Optional[int] = None):
        """The feature rows, memory-mapped read-only (``np.load(f, mmap_mode="r")``), never
        copied: a list with one ``numpy.memmap`` per shard in row order (shard i holds rows
        ``manifest["shards"][i]["start_row"]`` to ``end_row``), or shard ``shard``'s memmap
        alone. A store of one shard (at most ``shard_size`` rows, 64 by default) is
        ``store.features(0)``, n × dim. The arrays are float16/float32 as stored; an int8 store's
        rows are ``scales(i)[:, None] * features(i)``; a bit store's are packed signs
        (``np.unpackbits(a, axis=1, count=dim)``)."""
        import numpy as np

        return self._pick([np.load(f, mmap_mode="r") for f in self._shard_files("features")], shard)

    def norms(self, shard: Optional[int] = None):
        """The f32 L2 norm of each stored row, memory-mapped, per shard (as :meth:`features`)."""
        import numpy as np

        return self._pick([np.load(f, mmap_mode="r") for f in self._shard_files("norms")], shard)

    def scales(self, shard: Optional[int] = None):
        """An int8 store's per-row scales (x ≈ scale · q), memory-mapped, per shard."""
        import numpy as np

        return self._pick([np.load(f, mmap_mode="r") for f in self._shard_files("scales")], shard)

    def samples(self):
        """The samples table (``id, row, n_tokens, n_loss_tokens, loss, truncated,
        prompt_tokens_cut, response_tokens_cut, prompt, response``) as a DataFrame; the rows of
        the shards written so far while the store is incomplete."""
        import pandas as pd

        whole = self.path / "samples.parquet"
        if whole.exists():
            return pd.read_parquet(whole)
        parts = [pd.read_parquet(f) for f in self._shard_files("samples")]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    # -- verbs (score: _Scoring) -----------------------------------------------------------

    def fit(self, fisher: str = "empirical", *, progress: Any = False, **options: Any) -> dict:
        """Fits K-FAC and EK-FAC curvature (``curvature/kfac.safetensors``) on the ``empirical``
        Fisher F = 1/n Σ_i g_i g_iᵀ of the stored gradients, or the ``true`` Fisher (Gauss–Newton)
        from ``draws`` sampled-label model passes; then ``score(method="influence",
        preconditioner="ekfac")`` (or kfac, datainf, lissa, exact) uses it. Returns {out, fisher,
        n_samples}. Options: ``factors`` (samples | tokens), ``draws``, ``model``,
        ``batch_size``, ``threads``."""
        return _native.fit(os.fspath(self.path), fisher=fisher, progress=sink(progress), **options)

    def __repr__(self) -> str:
        i = self.info()
        state = "complete" if i["complete"] else "incomplete"
        return f"Store({os.fspath(self.path)!r}, {i['n_samples']} samples × {i['dim']} dims, {state})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def _is_checkpoint_folder(path: str) -> bool:
    """Whether ``path`` holds checkpoint stores (and no manifest of its own)."""
    if os.path.exists(os.path.join(path, "manifest.json")):
        return False
    try:
        _native.checkpoint_stores(path)
    except _native.Error:
        return False
    return True


class CheckpointStores(_Scoring):
    """A folder of checkpoint stores, as ``index(..., checkpoints=[CK1, CK2, …])`` or ``inflow
    index --checkpoints`` writes it: one :class:`Store` per training checkpoint
    (``path/{checkpoint name}``), each recording the checkpoint's step and learning rate η_c.

    ``score(queries, method="tracin")`` sums η_c φ_c(q)·φ_c(z) over the checkpoints (TracIn),
    ``method="less"`` η_c cos(Γ_c(z), φ_c(q)) over Adam-update stores (LESS, ``adam=True``);
    queries are featurized at each checkpoint with the stores' settings. A folder with no
    checkpoint store raises :class:`inflow.Error` naming it."""

    #: One summary per checkpoint of the ``index`` call that returned this folder (None
    #: otherwise).
    summary: Optional[list] = None

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = Path(os.fspath(path))
        #: The checkpoint stores, ordered by training step (the library's order).
        self.stores = [Store(p) for p in _native.checkpoint_stores(os.fspath(self.path))]

    def checkpoints(self) -> list[dict]:
        """Each store's checkpoint as its manifest records it ({path, kind, step, lr, sha256}),
        in step order."""
        return [s.manifest["spec"]["features"].get("checkpoint") for s in self.stores]

    def samples(self):
        """The training samples (the same in every checkpoint store) as a DataFrame."""
        return self.stores[0].samples()

    def __len__(self) -> int:
        return len(self.stores)

    def __repr__(self) -> str:
        return f"CheckpointStores({os.fspath(self.path)!r}, {len(self.stores)} checkpoints)"

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def open_store(path: Union[str, "os.PathLike[str]"]) -> Union[Store, CheckpointStores]:
    """The store at ``path`` (made by ``inflow.index`` or ``inflow index``), or a
    :class:`CheckpointStores` when ``path`` is a folder of checkpoint stores."""
    path = os.fspath(path)
    if _is_checkpoint_folder(path):
        return CheckpointStores(path)
    return Store(path)
