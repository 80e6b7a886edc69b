"""What one Ray task does: run the ``inflow`` binary on one part, on whatever node Ray chose.

The worker contract is ``(part i of N) → immutable part store``:

* ``inflow index … --shard i/N --out PART_DIR`` (likewise ``encode``) writes part ``i`` of ``N``:
  a contiguous range of whole shards, committed shard by shard into ``PART_DIR/manifest.json``.
  Rerunning the same command resumes (a killed run loses at most its current shard); once the
  part is complete, rerunning it does nothing. A second writer on the same ``PART_DIR`` fails at
  once (writer lock); the lock of a killed holder is taken over.
* ``inflow score … --part i/N --out P_i.parquet`` scores part ``i``'s shards of a whole store.

So a task is idempotent and a retry simply reruns the same command line: Ray's own retries
(``max_retries``, ``retry_exceptions``) are the whole recovery story. The driver never schedules
anything itself.

This module must import nothing but the standard library: the driver ships it to the workers by
value (``cloudpickle.register_pickle_by_value``), so nodes need ``ray`` and the ``inflow`` binary,
not this package.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time

# Lines of the command's stderr quoted in a failure.
STDERR_TAIL_LINES = 20

_PR_SET_PDEATHSIG = 1


def find_inflow(explicit: str | None, fallback: str | None = None) -> str:
    """The ``inflow`` binary on this node: ``explicit`` (``--inflow PATH``), else ``$INFLOW_BIN``,
    else ``inflow`` on ``PATH``, else ``fallback`` (the driver's own binary) if that path exists
    here. Raises ``FileNotFoundError`` saying what was tried."""
    host = socket.gethostname()
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise FileNotFoundError(
            f"--inflow {explicit}: no executable file there on node {host}"
        )
    env = os.environ.get("INFLOW_BIN")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise FileNotFoundError(f"INFLOW_BIN={env}: no executable file there on node {host}")
    found = shutil.which("inflow")
    if found:
        return found
    if fallback and os.path.isfile(fallback) and os.access(fallback, os.X_OK):
        return fallback
    raise FileNotFoundError(
        f"no inflow binary on node {host}: pass --inflow PATH, set INFLOW_BIN, or put "
        "inflow on PATH (cargo build --release -p inflow-cli builds target/release/inflow)"
    )


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the worker dies (a forced ``ray.cancel`` or
    a lost worker must not leave an orphan holding the part's writer lock). Linux only; a no-op
    elsewhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _record_attempt(spec: dict) -> int:
    """Appends this attempt to the part's attempt log (``PARTS/attempts/<label>.jsonl``, one JSON
    object a line) and returns its number within this run (1 for the first). The driver counts
    retries from these lines."""
    folder = os.path.join(spec["parts_dir"], "attempts")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, spec["label"] + ".jsonl")
    previous = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("run") == spec["run_id"]:
                        previous += 1
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    line = {
        "run": spec["run_id"],
        "attempt": previous + 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return previous + 1


def _tail(path: str, n: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = collections.deque(f, maxlen=n)
    except OSError:
        return ""
    return "".join(lines).rstrip()


def run_part(spec: dict) -> dict:
    """Runs one part: ``inflow --threads T <argv>`` with the part's ``--shard i/N`` or
    ``--part i/N`` already in ``spec["argv"]``. Its stdout and stderr go to
    ``PARTS/logs/<label>.attempt-K.log``.

    Returns ``{"part", "label", "attempt", "host", "seconds", "inflow_seconds",
    "inflow_cpu_seconds"}`` when the command exits 0. Raises ``RuntimeError`` naming the part, the command and the last lines of its output
    otherwise, so that Ray retries the task (the command resumes where the killed run stopped).

    ``spec`` keys: ``part``, ``count``, ``label``, ``argv`` (inflow's arguments after the global
    ``--threads``), ``threads``, ``inflow`` (explicit binary or None), ``fallback_inflow``,
    ``cwd`` (the driver's working folder, used where it exists on the node), ``parts_dir``,
    ``run_id``, ``env`` (extra environment variables).
    """
    started = time.time()
    attempt = _record_attempt(spec)
    binary = find_inflow(spec.get("inflow"), spec.get("fallback_inflow"))
    cmd = [binary, "--threads", str(spec["threads"])] + list(spec["argv"])
    logs = os.path.join(spec["parts_dir"], "logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, f"{spec['label']}.attempt-{attempt}.log")
    cwd = spec.get("cwd")
    if not (cwd and os.path.isdir(cwd)):
        cwd = None
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    host = socket.gethostname()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {host} pid {os.getpid()} attempt {attempt}: {' '.join(cmd)}\n")
        log.flush()
        t0 = time.time()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            preexec_fn=_die_with_parent,
        )
        try:
            # wait4, not wait: the child's CPU time comes with its exit status.
            _, status, usage = os.wait4(proc.pid, 0)
            rc = proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            # Cancelled (KeyboardInterrupt from ray.cancel) or the worker is going down: take the
            # child with us so that it does not keep the part's writer lock.
            proc.kill()
            proc.wait()
            raise
        inflow_seconds = time.time() - t0
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise RuntimeError(
            f"part {spec['label']} (attempt {attempt}, node {host}): `{' '.join(cmd)}` {how}; "
            f"log {log_path}; its last lines:\n{_tail(log_path, STDERR_TAIL_LINES)}"
        )
    return {
        "part": spec["part"],
        "label": spec["label"],
        "attempt": attempt,
        "host": host,
        "seconds": time.time() - started,
        "inflow_seconds": inflow_seconds,
        "inflow_cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
