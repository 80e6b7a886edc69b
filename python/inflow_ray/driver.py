"""The driver: submits one Ray task per part, waits for them (``ray.wait``), shows progress, then
merges the parts with the ``inflow`` binary. It has no scheduler of its own: placement, retries
and worker failures are Ray's business, and resuming is inflow's (part stores resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from . import cluster, progress, worker

# What a forced cancel leaves a part: at most its current shard, which a rerun redoes.
INTERRUPTED = 130


@dataclass
class Part:
    """One task: inflow's arguments for part ``index`` of ``count`` and what it writes."""

    index: int
    count: int
    argv: list[str]
    outputs: list[str]

    @property
    def label(self) -> str:
        return part_label(self.index, self.count)


@dataclass
class Job:
    """A whole run: its parts, the merge commands to run after them, and where they put it."""

    verb: str
    parts: list[Part]
    merges: list[list[str]]
    out: str
    parts_dir: str
    extra_outputs: list[str] = field(default_factory=list)
    # "stores": parts are part stores (progress from their manifests); "files": partial results
    # (progress from the whole store's shard ranges, resumed by done markers).
    kind: str = "stores"
    # The whole store a score job reads (for its row counts).
    store: str | None = None
    # Files whose change makes a finished partial result stale (a score job's store manifest
    # and queries).
    inputs: list[str] = field(default_factory=list)


@dataclass
class Settings:
    """How to run: the options every subcommand shares."""

    address: str = "auto"
    cpus_per_task: int = 1
    retries: int = 3
    inflow: str | None = None
    num_cpus: int | None = None
    interval: float = 5.0
    env: dict = field(default_factory=dict)


def part_label(index: int, count: int) -> str:
    """``part-00003-of-00064``: how part folders and files are named."""
    return f"part-{index:05d}-of-{count:05d}"


def _say(msg: str) -> None:
    print(f"inflow_ray: {msg}", file=sys.stderr, flush=True)


def _done_marker(job: Job, part: Part) -> str:
    return os.path.join(job.parts_dir, part.label + ".done.json")


def _fingerprint(job: Job, part: Part) -> dict:
    stamps = {}
    for path in job.inputs:
        try:
            st = os.stat(path)
            stamps[path] = [st.st_size, st.st_mtime_ns]
        except OSError:
            stamps[path] = None
    return {"argv": part.argv, "inputs": stamps}


def _already_done(job: Job, part: Part) -> bool:
    """For partial result files (score), which inflow does not resume itself: whether a previous
    run finished this exact command line on the same inputs (its done marker) and its outputs are
    still there."""
    if job.kind != "files":
        return False
    try:
        with open(_done_marker(job, part), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return marker == _fingerprint(job, part) and all(os.path.exists(p) for p in part.outputs)


def _mark_done(job: Job, part: Part) -> None:
    if job.kind != "files":
        return
    path = _done_marker(job, part)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_fingerprint(job, part), f)
    os.replace(tmp, path)


def _attempts(job: Job, run_id: str) -> int:
    """Attempts this run made, from the attempt logs the tasks wrote."""
    total = 0
    for part in job.parts:
        path = os.path.join(job.parts_dir, "attempts", part.label + ".jsonl")
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        total += json.loads(line).get("run") == run_id
                    except ValueError:
                        continue
        except FileNotFoundError:
            continue
    return total


def _error_text(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return str(cause)
    return str(err)


def _rows(job: Job, done: set[int], store_manifest: dict | None) -> tuple[int, int | None]:
    if job.kind == "stores":
        rows, n = 0, None
        for part in job.parts:
            m = progress.read_manifest(part.outputs[0])
            rows += progress.committed_rows(m)
            if m and n is None and m.get("n_samples") is not None:
                n = int(m["n_samples"])
        return rows, n
    if not store_manifest:
        return 0, None
    rows = sum(
        progress.part_rows(store_manifest, p.index, p.count) for p in job.parts if p.index in done
    )
    n = store_manifest.get("n_samples")
    return rows, int(n) if n is not None else progress.committed_rows(store_manifest)


def _run_inflow(binary: str, argv: list[str]) -> None:
    """Runs one merge command here, in the driver; raises RuntimeError with its output's tail."""
    cmd = [binary] + argv
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-worker.STDERR_TAIL_LINES :])
        raise RuntimeError(f"`{' '.join(cmd)}` exited with status {proc.returncode}:\n{tail}")


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run(job: Job, settings: Settings) -> int:
    """Runs ``job`` on the cluster; returns the process exit status (0, 1 on a failed part or
    merge, 2 on a setup error, 130 when interrupted). Prints progress on stderr and one JSON line
    on stdout at the end: the only thing on stdout (what Ray prints there goes to stderr)."""
    stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        return _run(job, settings, stdout)
    finally:
        sys.stdout = stdout


def _run(job: Job, settings: Settings, stdout) -> int:
    started = time.time()
    try:
        local_inflow = worker.find_inflow(settings.inflow)
    except FileNotFoundError as e:
        _say(f"error: {e}")
        return 2
    os.makedirs(job.parts_dir, exist_ok=True)
    run_id = uuid.uuid4().hex
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    refs: dict = {}
    try:
        try:
            ray = cluster.connect(settings.address, settings.num_cpus)
        except (ConnectionError, RuntimeError, ValueError) as e:
            _say(f"error: cannot connect to Ray (--address {settings.address}): {e}")
            return 2
        try:
            import ray.cloudpickle as cloudpickle

            # Ship the task's code with it: workers need ray, not this package.
            cloudpickle.register_pickle_by_value(worker)
        except (ImportError, AttributeError, ValueError):
            pass
        task = ray.remote(
            num_cpus=settings.cpus_per_task,
            max_retries=settings.retries,
            retry_exceptions=True,
        )(worker.run_part)

        store_manifest = progress.read_manifest(job.store) if job.store else None
        done: set[int] = set()
        skipped = 0
        meter = progress.Meter(len(job.parts))
        for part in job.parts:
            if _already_done(job, part):
                done.add(part.index)
                skipped += 1
                continue
            spec = {
                "part": part.index,
                "count": part.count,
                "label": part.label,
                "argv": part.argv,
                "threads": settings.cpus_per_task,
                "inflow": settings.inflow,
                "fallback_inflow": local_inflow,
                "cwd": os.getcwd(),
                "parts_dir": job.parts_dir,
                "run_id": run_id,
                "env": settings.env,
            }
            refs[task.remote(spec)] = part
        # Rows a previous run already did do not count towards samples/s.
        meter.rows_at_start = _rows(job, done, store_manifest)[0] if job.kind == "stores" else 0
        _say(
            f"{job.verb}: {len(refs)} task(s) submitted for {len(job.parts)} part(s)"
            + (f" ({skipped} already done)" if skipped else "")
            + f", {settings.cpus_per_task} CPU(s) each, on {cluster.cluster_cpus(ray)} CPU(s); "
            f"parts in {job.parts_dir}"
        )
        results: list[dict] = []
        failures: dict[str, str] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(
                pending, num_returns=len(pending), timeout=settings.interval
            )
            for ref in ready:
                part = refs[ref]
                try:
                    results.append(ray.get(ref))
                    done.add(part.index)
                    _mark_done(job, part)
                except Exception as e:  # noqa: BLE001 (any task failure is reported per part)
                    failures[part.label] = _error_text(e)
                    _say(f"{part.label} failed (retries: up to {settings.retries})")
            rows, n = _rows(job, done, store_manifest)
            meter.show(len(done), rows, n, len(failures))
        attempts = _attempts(job, run_id)
        summary = {
            "command": job.verb,
            "parts": len(job.parts),
            "parts_run": len(refs),
            "parts_skipped": skipped,
            "attempts": attempts,
            "retries": max(0, attempts - len(refs)),
            "tasks": sorted(results, key=lambda r: r["part"]),
        }
        if failures:
            summary.update(
                failed=sorted(failures), seconds=round(time.time() - started, 3), out=None
            )
            for label in sorted(failures):
                _say(f"error: {label} failed: {failures[label]}")
            _say("rerun the same command to resume: completed parts are kept")
            print(json.dumps(summary), file=stdout, flush=True)
            return 1
        _say(f"all {len(job.parts)} part(s) done; merging into {job.out}")
        for merge in job.merges:
            try:
                _run_inflow(local_inflow, merge)
            except RuntimeError as e:
                _say(f"error: merge failed: {e}")
                summary.update(failed=["merge"], seconds=round(time.time() - started, 3), out=None)
                print(json.dumps(summary), file=stdout, flush=True)
                return 1
        rows = None
        if job.kind == "stores":
            merged = progress.read_manifest(job.out)
            rows = merged.get("n_samples") if merged else None
        elif store_manifest:
            rows = store_manifest.get("n_samples")
        task_overheads = [r["seconds"] - r["inflow_seconds"] for r in results]
        summary.update(
            rows=rows,
            seconds=round(time.time() - started, 3),
            out=job.out,
            outputs=[job.out] + job.extra_outputs,
            parts_dir=job.parts_dir,
            inflow_seconds=round(sum(r["inflow_seconds"] for r in results), 3),
            inflow_cpu_seconds=round(sum(r.get("inflow_cpu_seconds", 0) for r in results), 3),
            task_overhead_seconds=round(sum(task_overheads) / len(task_overheads), 4)
            if task_overheads
            else None,
        )
        print(json.dumps(summary), file=stdout, flush=True)
        return 0
    except KeyboardInterrupt:
        _say("interrupted: cancelling the tasks (rerun the same command to resume)")
        try:
            import ray

            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 (already finished or gone)
                    pass
        except ImportError:
            pass
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
