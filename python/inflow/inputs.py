"""Training data and queries given as Python objects, turned into the files the library reads.

The library reads JSONL or Parquet files (formats ``alpaca``, ``chat``, ``prompt_completion``,
``text``). A path (``str`` or ``os.PathLike``) is passed through untouched. A list of dicts, a
pandas ``DataFrame`` or a Hugging Face ``datasets.Dataset`` is written as JSONL, one record per line
in order (so sample ``row`` i is the i-th record, and ids are ``{row}-{sha256 prefix}`` as for a
file):

* queries (``Store.score``, ``select``'s seed set) go to a temporary file, deleted after the call;
* training data (``index``) goes to ``OUT.data.jsonl`` beside the store and stays: the store's
  ``run.json`` names its data file, which ``score``, ``fit --fisher true`` and ``select`` read
  again, and whose sha256 a rerun (resume) must match.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

from ._native import Error

__all__ = ["Data", "as_file", "in_memory_error", "is_path", "write_jsonl"]

Data = Union[str, "os.PathLike[str]", list, Any]


def is_path(data: Any) -> bool:
    """Whether ``data`` names a file (``str`` or ``os.PathLike``)."""
    return isinstance(data, (str, os.PathLike))


def _plain(v: Any) -> Any:
    """``v`` as plain JSON values: numpy scalars and arrays as Python ones, NaN (pandas' missing
    value) as null."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy scalar or array
        return _plain(v.tolist())
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _records(data: Any) -> Iterable[dict]:
    """The records of a list of dicts, a pandas DataFrame or a datasets.Dataset."""
    if isinstance(data, dict):
        raise TypeError("data: expected a list of records (dicts), not one dict")
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas.DataFrame
        return data.to_dict(orient="records")
    if hasattr(data, "features") and hasattr(data, "column_names"):  # datasets.Dataset
        return iter(data)
    if isinstance(data, (list, tuple)):
        return data
    raise TypeError(
        f"data: expected a path, a list of dicts, a pandas DataFrame or a datasets.Dataset, not {type(data).__name__}"
    )


def write_jsonl(data: Any, path: Union[str, "os.PathLike[str]"]) -> Path:
    """Writes the records of ``data`` to ``path`` as JSONL (UTF-8) and returns the path."""
    path = Path(path)
    lines = []
    for i, r in enumerate(_records(data)):
        if not isinstance(r, dict):
            raise TypeError(f"data record {i}: expected a dict, not {type(r).__name__}")
        lines.append(json.dumps(_plain(r), ensure_ascii=False))
    text = "".join(line + "\n" for line in lines)
    # Unchanged data keeps its file (and its mtime) untouched.
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return path


def in_memory_error(e: Error, name: str, what: str) -> Error:
    """``e`` (an error naming the JSONL file ``name`` written from in-memory records) restated
    for the records themselves: line L of the file is record L - 1 (0-based)."""
    text = str(e)
    prefix = f"{name}:{e.line}: " if e.line is not None else f"{name}: "
    reason = text[len(prefix):] if text.startswith(prefix) else text
    where = f"record {e.line - 1}" if e.line is not None else "records"
    err = Error(f"{what} given in memory, {where} (written to the temporary file {name}): {reason}")
    err.kind, err.path, err.line = e.kind, None, e.line
    err.record = None if e.line is None else e.line - 1
    return err


@contextlib.contextmanager
def as_file(data: Data, what: str = "data") -> Iterator[str]:
    """A path for ``data`` for the duration of the ``with`` block: the path itself, or a
    temporary JSONL file of its records, deleted afterwards. An :class:`inflow.Error` naming the
    temporary file is restated as one naming the record (``e.record``, 0-based)."""
    if is_path(data):
        yield os.fspath(data)
        return
    fd, name = tempfile.mkstemp(prefix="inflow-", suffix=".jsonl")
    os.close(fd)
    try:
        write_jsonl(data, name)
        try:
            yield name
        except Error as e:
            if getattr(e, "path", None) is not None and os.fspath(e.path) == name:
                raise in_memory_error(e, name, what) from e
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(name)
