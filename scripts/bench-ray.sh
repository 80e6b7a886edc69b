#!/usr/bin/env bash
# Measures the Ray driver on this machine: `python -m inflow_ray index` on a one-node Ray cluster
# of 2 workers (--num-cpus=2, --cpus-per-task 1, so each task runs `inflow --threads 1`) against
# one process `inflow --threads 2 index`, on the same data, interleaved (ray, single, ray,
# single, …). For each run: wall seconds, CPU seconds, samples/s; then the ratio. CPU seconds of a
# Ray run are the driver's own plus what the cluster's processes (raylet, workers, the inflow
# processes they ran) used during the run, sampled from /proc every 0.2 s (inflow_cpu_s: the
# inflow processes alone, from their exit status). The per-task overhead comes from a
# second Ray run of many tiny parts (one 1-row shard each): (wall × CPUs − Σ inflow runtimes) /
# parts, i.e. what a task costs beyond its inflow process (scheduling, worker, driver, merge).
#
# Usage: scripts/bench-ray.sh OUT.json
# Settings (environment): N=48 samples, MAX_TOKENS=128, RANK=8, SHARD_SIZE=8, PARTS=2,
# ROUNDS=2 (pairs of runs), TINY=8 (tiny parts), DATA (default: the Natural Instructions extract
# ../shared/data/natural-instructions/train.jsonl, else the bundled assets/data/train.jsonl),
# MODEL (default models/SmolLM2-135M-Instruct.Q4_1.gguf), INFLOW_BIN (default
# target/release/inflow, built if missing). Needs ray (`pip install ray`); the driver comes from
# python/ through PYTHONPATH. The Ray head it starts listens on loopback only and is stopped by
# process id at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/bench-ray.sh OUT.json}
export N=${N:-48} MAX_TOKENS=${MAX_TOKENS:-128} RANK=${RANK:-8} SHARD_SIZE=${SHARD_SIZE:-8}
export PARTS=${PARTS:-2} ROUNDS=${ROUNDS:-2} TINY=${TINY:-8}
if [ -z "${DATA:-}" ]; then
  DATA=../shared/data/natural-instructions/train.jsonl
  [ -f "$DATA" ] || DATA=assets/data/train.jsonl
fi
export DATA MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ -z "${INFLOW_BIN:-}" ]; then
  [ -x target/release/inflow ] || cargo build --release -p inflow-cli
  INFLOW_BIN=target/release/inflow
fi
export INFLOW_BIN
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
[ -f "$MODEL" ] || { echo "error: $MODEL is missing: run ./scripts/fetch-model.sh" >&2; exit 1; }
python3 -c "import ray" 2>/dev/null || { echo "error: python3 cannot import ray: pip install ray" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
exec python3 - "$OUT" <<'PY'
import json, os, platform, secrets, shutil, signal, socket, subprocess, sys, tempfile, time

out_path = sys.argv[1]
env = os.environ
n, parts, rounds, tiny = int(env["N"]), int(env["PARTS"]), int(env["ROUNDS"]), int(env["TINY"])
flags = ["--max-tokens", env["MAX_TOKENS"], "--rank", env["RANK"]]
binary = os.path.abspath(env["INFLOW_BIN"])
model, data = os.path.abspath(env["MODEL"]), os.path.abspath(env["DATA"])
work = tempfile.mkdtemp(prefix="inflow-bench-ray-", dir=os.path.abspath("runs") if os.path.isdir("runs") else None)
temp = tempfile.mkdtemp(prefix="ifb-", dir="/tmp")  # short: Ray's Unix socket paths
CLK = os.sysconf("SC_CLK_TCK")


def procs():
    """pid -> (ppid, own CPU seconds (utime + stime), cmdline)."""
    table = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = open(f"/proc/{p}/stat").read()
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2 :].split()
        # Own time only: reaped children's (cutime) would count the inflow processes twice, and
        # Ray's workers die with their job without their parent adding them up.
        cpu = (int(f[11]) + int(f[12])) / CLK
        table[int(p)] = (int(f[1]), cpu, cmd)
    return table


roots = set()


def cluster():
    """The Ray processes this script started (their command line names its temp folder) and
    their descendants."""
    table = procs()
    roots.update(p for p, (_, _, c) in table.items() if temp in c and p != os.getpid())
    mine = set(roots)
    grew = True
    while grew:
        grew = False
        for p, (pp, _, _) in table.items():
            if pp in mine and pp > 1 and p not in mine:
                mine.add(p)
                grew = True
    return {p: table[p] for p in mine if p in table}


class CpuSampler:
    """CPU seconds the cluster's processes use while it runs: samples them every 0.2 s (the
    inflow processes and workers come and go) and sums each one's growth since it was first
    seen (from 0 for a process born during the run). A process loses at most its last 0.2 s."""

    def __init__(self):
        import threading

        self.first = {p: cpu for p, (_, cpu, _) in cluster().items()}
        self.last = dict(self.first)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self):
        for p, (_, cpu, _) in cluster().items():
            self.first.setdefault(p, 0.0)
            self.last[p] = max(cpu, self.last.get(p, 0.0))

    def loop(self):
        while not self.stop.wait(0.2):
            self.sample()

    def total(self):
        self.stop.set()
        self.thread.join()
        self.sample()
        return sum(self.last[p] - self.first[p] for p in self.last)


def stop():
    pids = list(cluster())
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
    shutil.rmtree(temp, ignore_errors=True)


def timed(cmd):
    """Runs cmd; (wall s, stdout, stderr). Exits when it fails."""
    t = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate()
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{stderr[-3000:]}")
    return wall, stdout, stderr


def children_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# Ray's token authentication, for this cluster only (the driver inherits it).
env["RAY_AUTH_MODE"] = "token"
env["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
address = f"127.0.0.1:{port}"
results = {"ray": [], "single": []}
try:
    subprocess.run(
        [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
         "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    print(f"ray head at {address}, processes {sorted(cluster())}", file=sys.stderr)

    def ray_run(tag, count, rows, shard_size):
        cmd = [sys.executable, "-m", "inflow_ray", "index", "--model", model, "--data", data,
               "--parts", str(count), "--out", os.path.join(work, tag), "--address", address,
               "--cpus-per-task", "1", "--inflow", binary, "--progress-interval", "30", "--",
               "--limit", str(rows), "--shard-size", str(shard_size)] + flags
        sampler, d0 = CpuSampler(), children_cpu()
        wall, stdout, _ = timed(cmd)
        cpu = sampler.total() + children_cpu() - d0
        summary = json.loads(stdout.strip().splitlines()[-1])
        return wall, cpu, summary

    def single_run(tag):
        cmd = [binary, "--threads", "2", "index", "--model", model, "--data", data, "--limit", str(n),
               "--shard-size", env["SHARD_SIZE"], "--out", os.path.join(work, tag)] + flags
        d0 = children_cpu()
        wall, _, _ = timed(cmd)
        return wall, children_cpu() - d0

    for r in range(rounds):
        wall, cpu, summary = ray_run(f"ray-{r}", parts, n, int(env["SHARD_SIZE"]))
        row = {"round": r, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
               "samples_per_s": round(n / wall, 4), "retries": summary.get("retries"),
               "inflow_seconds": summary.get("inflow_seconds"),
               "inflow_cpu_s": summary.get("inflow_cpu_seconds"),
               "in_task_overhead_s": summary.get("task_overhead_seconds")}
        results["ray"].append(row)
        print(f"ray    round {r}: {row}", file=sys.stderr)
        wall, cpu = single_run(f"single-{r}")
        row = {"round": r, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
               "samples_per_s": round(n / wall, 4)}
        results["single"].append(row)
        print(f"single round {r}: {row}", file=sys.stderr)

    # Many tiny parts: what a task costs beyond its inflow process.
    wall, cpu, summary = ray_run("tiny", tiny, tiny, 1)
    inflow_total = sum(t["inflow_seconds"] for t in summary["tasks"])
    tiny_row = {"parts": tiny, "rows": tiny, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "sum_inflow_s": round(inflow_total, 3),
                "mean_inflow_s": round(inflow_total / tiny, 3),
                "per_task_overhead_s": round((wall * 2 - inflow_total) / tiny, 3),
                "in_task_overhead_s": summary.get("task_overhead_seconds")}
    print(f"tiny parts: {tiny_row}", file=sys.stderr)
finally:
    stop()
    shutil.rmtree(work, ignore_errors=True)


def mean(rows, key):
    return round(sum(r[key] for r in rows) / len(rows), 4)


ray_sps, single_sps = mean(results["ray"], "samples_per_s"), mean(results["single"], "samples_per_s")
report = {
    "what": "inflow_ray index (Ray head on loopback, 2 CPUs, 1 CPU and --threads 1 per task) "
            "vs one `inflow --threads 2 index`, interleaved",
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "settings": {"samples": n, "data": env["DATA"], "model": env["MODEL"], "parts": parts,
                 "shard_size": int(env["SHARD_SIZE"]), "max_tokens": int(env["MAX_TOKENS"]),
                 "rank": int(env["RANK"]), "rounds": rounds},
    "ray": results["ray"],
    "single": results["single"],
    "mean": {"ray_wall_s": mean(results["ray"], "wall_s"), "single_wall_s": mean(results["single"], "wall_s"),
             "ray_cpu_s": mean(results["ray"], "cpu_s"), "single_cpu_s": mean(results["single"], "cpu_s"),
             "ray_samples_per_s": ray_sps, "single_samples_per_s": single_sps},
    "ratio_ray_over_single_samples_per_s": round(ray_sps / single_sps, 4),
    "tiny_parts": tiny_row,
}
with open(out_path, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(json.dumps(report["mean"]), file=sys.stderr)
print(f"ratio (ray / single samples/s): {report['ratio_ray_over_single_samples_per_s']}; "
      f"per-task overhead {tiny_row['per_task_overhead_s']} s; written to {out_path}", file=sys.stderr)
PY
