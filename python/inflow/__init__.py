"""inflow from Python: which training samples a causal LM learned a behaviour from.

    import inflow
    m = inflow.Model("models/SmolLM2-135M-Instruct.Q4_1.gguf")
    store = inflow.index(m, "train.jsonl", out="runs/ni", rank=16, progress=True)
    top = store.score(queries=[{"instruction": "...", "output": "..."}], method="cosine", top_k=10)
    feats = store.features(0)            # shard 0 as a read-only numpy memmap (zero-copy)
    store.fit(fisher="empirical")
    store.score(queries, method="influence", preconditioner="ekfac")
    sel = inflow.select(store, scores, size="5%", method="gdig", seed_set="probe.jsonl")

Every call runs the Rust library (the extension module ``inflow._native``, the code behind the
``inflow`` binary) with the GIL released, writes the same files as the CLI and raises the library's
errors as :class:`inflow.Error` (a ``ValueError``). Modules: ``indexing`` (index), ``store``
(Store: features, samples, score, fit), ``scores`` (score files as DataFrames), ``selection``
(select), ``inputs`` (in-memory data as JSONL files), ``progress`` (bars and lines).
"""

from ._native import Error, Model, methods, pool_threads
from ._native import __version__
from .indexing import index
from .scores import read_scores
from .selection import select
from .store import CheckpointStores, Store, open_store

__all__ = [
    "CheckpointStores",
    "Error",
    "Model",
    "Store",
    "__version__",
    "index",
    "methods",
    "open_store",
    "pool_threads",
    "read_scores",
    "select",
]
