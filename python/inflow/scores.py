"""Score files as pandas DataFrames: the columns of the Parquet file, its ``inflow.*`` metadata
in ``df.attrs``.

Top-k files (``Store.score``) have the columns ``query_id, train_id, score, rank, method``;
per-sample files (``aggregate="mean"``, ``method="less"``) ``train_id, score, rank, n_queries,
method``. ``df.attrs`` holds every ``inflow.*`` key of the file's metadata without its prefix —
``method``, ``sign_convention`` (for gradient methods a positive score means a gradient step on
the training sample lowers the query's loss to first order), and ``aggregate`` where there is
one — plus ``path``, the file read.
"""

from __future__ import annotations

import os
from typing import Union

__all__ = ["read_scores"]


def read_scores(path: Union[str, "os.PathLike[str]"]):
    """The score file at ``path`` (written by ``Store.score`` or ``inflow score``) as a
    ``pandas.DataFrame`` with its metadata in ``.attrs``."""
    import pyarrow.parquet as pq

    path = os.fspath(path)
    table = pq.read_table(path)
    df = table.to_pandas()
    meta = table.schema.metadata or {}
    for k, v in meta.items():
        key = k.decode("utf-8", "replace")
        if key.startswith("inflow."):
            df.attrs[key[len("inflow."):]] = v.decode("utf-8", "replace")
    df.attrs["path"] = path
    return df
