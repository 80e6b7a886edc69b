"""``python -m inflow_ray {index,encode,score} …``: the command line.

Everything after a lone ``--`` goes to every part's ``inflow`` command unchanged, e.g.
``python -m inflow_ray index --model M --data D --parts 64 --out runs/ni -- --limit 1000 --rank 8``.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import driver, progress


def _path(p: str) -> str:
    """An input that may be a local path (made absolute, so that every node and the driver agree)
    or something else, e.g. a Hugging Face model id (kept as it is)."""
    return os.path.abspath(p) if os.path.exists(p) else p


def _out(p: str) -> str:
    return os.path.abspath(p.rstrip("/") or p)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text}: expected KEY=VALUE")
    return key, value


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster")
    g.add_argument(
        "--address",
        default="auto",
        help="auto (a running cluster: $RAY_ADDRESS or the one `ray start` recorded), HOST:PORT, "
        "or local (start an in-process cluster here) [default: auto]",
    )
    g.add_argument(
        "--cpus-per-task",
        type=_positive,
        default=1,
        help="CPUs Ray reserves for each part's task; also the task's `inflow --threads` [default: 1]",
    )
    g.add_argument(
        "--retries",
        type=int,
        default=3,
        help="how many times Ray reruns a failed part (it resumes where it stopped) [default: 3]",
    )
    g.add_argument(
        "--inflow",
        metavar="PATH",
        help="the inflow binary on every node [default: $INFLOW_BIN, else `inflow` on PATH]",
    )
    g.add_argument(
        "--parts-dir",
        metavar="DIR",
        help="where the parts go, on a filesystem every node shares [default: OUT.parts]",
    )
    g.add_argument(
        "--num-cpus",
        type=_positive,
        help="with --address local: CPUs of the local cluster [default: all]",
    )
    g.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_env_pair,
        help="an environment variable for every part's inflow command (repeatable)",
    )
    g.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines on stderr [default: 5]",
    )
    return p


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(
        prog="python -m inflow_ray",
        description="Runs inflow over a Ray cluster: one task per part (part i of N -> an "
        "immutable part store or partial result), then one merge. Arguments after `--` go to "
        "every part's inflow command.",
    )
    sub = top.add_subparsers(dest="verb", required=True)

    # index and encode both write a store in parts (`--shard i/N`) that `store merge` joins;
    # they differ only in what featurizes the data.
    for verb, source, value in (("index", "--model", "M"), ("encode", "--encoder", "ENC")):
        p = sub.add_parser(
            verb,
            parents=[common],
            help=f"inflow {verb} in N parts, then inflow store merge",
            description=f"Each task runs `inflow --threads T {verb} {source} {value} --data D "
            "--shard i/N --out PARTS/part-i-of-N [extra]`; then `inflow store merge` writes OUT.",
        )
        p.add_argument(source, required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--parts", type=_positive, required=True, help="N: how many parts (tasks)")
        p.add_argument("--out", required=True, help="the merged store")

    p = sub.add_parser(
        "score",
        parents=[common],
        help="inflow score in N parts of a store, then inflow scores merge",
        description="Each task runs `inflow --threads T score --store S --queries Q --part i/N "
        "--out PARTS/part-i-of-N.parquet [extra]` over part i's shards; then `inflow scores "
        "merge` writes OUT (and --full's matrix).",
    )
    p.add_argument("--store", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--out", required=True, help="the merged top-k Parquet file")
    p.add_argument("--top-k", type=_positive)
    p.add_argument("--method", help="passed to inflow score [default: inflow's]")
    p.add_argument("--full", metavar="OUT.npy", help="also the dense score matrix, merged")
    p.add_argument(
        "--parts",
        type=_positive,
        help="N [default: the cluster's CPUs / --cpus-per-task, at most the store's shards]",
    )
    return top


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """The driver's own arguments and those after the first lone ``--``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _store_job(args, extra: list[str]) -> driver.Job:
    out = _out(args.out)
    parts_dir = _out(args.parts_dir) if args.parts_dir else out + ".parts"
    parts = []
    for i in range(args.parts):
        part_dir = os.path.join(parts_dir, driver.part_label(i, args.parts))
        if args.verb == "index":
            head = ["index", "--model", _path(args.model)]
        else:
            head = ["encode", "--encoder", _path(args.encoder)]
        argv = head + [
            "--data",
            _path(args.data),
            "--shard",
            f"{i}/{args.parts}",
            "--out",
            part_dir,
        ] + extra
        parts.append(driver.Part(i, args.parts, argv, [part_dir]))
    merge = ["store", "merge"] + [p.outputs[0] for p in parts] + ["--out", out]
    return driver.Job(args.verb, parts, [merge], out, parts_dir, kind="stores")


def _score_parts(args, store_manifest: dict | None, cpus: int | None) -> int:
    if args.parts:
        return args.parts
    shards = len((store_manifest or {}).get("shards") or []) or 1
    workers = max(1, (cpus or 1) // args.cpus_per_task)
    return max(1, min(shards, workers))


def _score_job(args, extra: list[str], n_parts: int) -> driver.Job:
    out = _out(args.out)
    parts_dir = _out(args.parts_dir) if args.parts_dir else out + ".parts"
    full = _out(args.full) if args.full else None
    store = _path(args.store)
    parts = []
    for i in range(n_parts):
        base = os.path.join(parts_dir, driver.part_label(i, n_parts))
        argv = ["score", "--store", store, "--queries", _path(args.queries)]
        if args.method:
            argv += ["--method", args.method]
        if args.top_k:
            argv += ["--top-k", str(args.top_k)]
        argv += ["--part", f"{i}/{n_parts}", "--out", base + ".parquet"]
        outputs = [base + ".parquet"]
        if full:
            argv += ["--full", base + ".npy"]
            outputs.append(base + ".npy")
        parts.append(driver.Part(i, n_parts, argv + extra, outputs))
    merges = [["scores", "merge"] + [p.outputs[0] for p in parts] + ["--out", out]]
    if full:
        merges.append(["scores", "merge"] + [p.outputs[1] for p in parts] + ["--out", full])
    return driver.Job(
        "score",
        parts,
        merges,
        out,
        parts_dir,
        extra_outputs=[full] if full else [],
        kind="files",
        store=store,
        inputs=[os.path.join(store, "manifest.json"), _path(args.queries)],
    )


def _settings(args) -> driver.Settings:
    return driver.Settings(
        address=args.address,
        cpus_per_task=args.cpus_per_task,
        retries=args.retries,
        inflow=os.path.abspath(args.inflow) if args.inflow else None,
        num_cpus=args.num_cpus,
        interval=args.progress_interval,
        env=dict(args.env),
    )


def plan(argv: list[str]):
    """Parses ``argv`` into ``(job or None, settings, args)``: None for score without ``--parts``,
    whose part count depends on the cluster (see ``main``)."""
    own, extra = split_extra(argv)
    args = parser().parse_args(own)
    settings = _settings(args)
    if args.verb in ("index", "encode"):
        return _store_job(args, extra), settings, args
    if args.parts:
        return _score_job(args, extra, args.parts), settings, args
    return None, settings, (args, extra)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job, settings, rest = plan(argv)
    if job is None:
        # score without --parts: as many parts as the cluster runs at once, at most one a shard.
        args, extra = rest
        from . import cluster

        store_manifest = progress.read_manifest(_path(args.store))
        if store_manifest is None:
            print(f"inflow_ray: error: {args.store}: no manifest.json", file=sys.stderr)
            return 2
        try:
            ray = cluster.connect(settings.address, settings.num_cpus)
            cpus = cluster.cluster_cpus(ray)
        except KeyboardInterrupt:
            return driver.INTERRUPTED
        job = _score_job(args, extra, _score_parts(args, store_manifest, cpus))
    return driver.run(job, settings)
