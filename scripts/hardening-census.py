#!/usr/bin/env python3
"""Bad-input census (issue 17): runs the same bad inputs through one or more `inflow` binaries
and sorts each outcome into the issue's categories.

    python3 scripts/hardening-census.py --bin OLD=path/to/old/inflow --bin NEW=target/release/inflow \
        --out docs/reports/hardening

Every case is something a user could do by mistake: an output over an input or a store file,
non-finite values in a store, a score file or the weights, nonsense flag values, files whose
parts disagree. Each must be refused. Outcome categories:
  clear        non-zero exit, and the error line names the culprit (the flag, file or tensor)
  vague        non-zero exit, but the culprit is not named
  abort        killed by a signal or a Rust panic (exit 101)
  silent wrong exit 0 (the bad input was accepted), or a file that was there changed
  hang         still running after --timeout seconds
Fixtures (a SmolLM2 store of 4 samples, score files, damaged copies) are made once with the
last binary given; every binary then runs every case in a fresh copy of them.
Needs: the reference model (scripts/fetch-model.sh), numpy and pyarrow.
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAIN = ROOT / "assets" / "data" / "train.jsonl"
PROBE = ROOT / "assets" / "data" / "probe.jsonl"


def sh(binary, args, cwd, timeout):
    t0 = time.time()
    try:
        p = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stderr, time.time() - t0
    except subprocess.TimeoutExpired:
        return None, "", time.time() - t0


def hashes(d):
    out = {}
    for p in sorted(Path(d).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def patch_f32(npy, row, col, value):
    """Writes `value` at (row, col) of a 2-d little-endian f32 .npy in place."""
    b = bytearray(npy.read_bytes())
    hlen = struct.unpack("<H", b[8:10])[0]
    header = b[10:10 + hlen].decode()
    cols = int(header.split("(")[1].split(")")[0].split(",")[1])
    at = 10 + hlen + (row * cols + col) * 4
    b[at:at + 4] = struct.pack("<f", value)
    npy.write_bytes(bytes(b))


def nan_in_safetensors(path, name):
    """Sets element 5 of tensor `name` (f32) of a .safetensors file to NaN, in place."""
    b = bytearray(path.read_bytes())
    n = struct.unpack("<Q", b[:8])[0]
    meta = json.loads(b[8:8 + n])
    start = meta[name]["data_offsets"][0]
    at = 8 + n + start + 5 * 4
    b[at:at + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(b))


def fixtures(binary, fx):
    """The inputs every case starts from, made once."""
    if (fx / "ready").exists():
        return
    shutil.rmtree(fx, ignore_errors=True)
    fx.mkdir(parents=True)
    run = lambda *a: subprocess.run([binary, *a], cwd=fx, check=True, capture_output=True)
    shutil.copy(TRAIN, fx / "d.jsonl")
    m = str(MODEL)
    run("index", "--model", m, "--data", "d.jsonl", "--limit", "4", "--max-tokens", "64",
        "--rank", "4", "--dtype", "f32", "--shard-size", "2", "--out", "S", "--threads", "2")
    run("fit", "--store", "S")
    run("score", "--store", "S", "--queries", str(PROBE), "--limit", "2", "--aggregate", "mean",
        "--out", "s.parquet")
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(fx / "s.parquet")
    meta = t.schema.metadata
    scores = t.column("score").to_numpy().copy()
    scores[1] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("score"), "score", pa.array(scores))
                   .replace_schema_metadata(meta), fx / "nan.parquet")
    pq.write_table(t.slice(2, 1).replace_schema_metadata(meta), fx / "partial.parquet")
    shutil.copytree(fx / "S", fx / "S_nan")
    patch_f32(fx / "S_nan" / "features-00000.npy", 1, 3, float("nan"))
    shutil.copytree(fx / "S", fx / "S_manifest")
    man = json.loads((fx / "S_manifest" / "manifest.json").read_text())
    man["shards"][0]["end_row"] = 99
    (fx / "S_manifest" / "manifest.json").write_text(json.dumps(man))
    # Models: read-only, so kept outside the per-case copies (big/), sharing one weights file
    # where they can.
    big = fx.parent / "big"
    shutil.rmtree(big, ignore_errors=True)
    big.mkdir()
    subprocess.run([binary, "convert", "--model", m, "--out", str(big / "hf")], check=True, capture_output=True)
    shutil.copytree(big / "hf", big / "hf_nan")
    nan_in_safetensors(big / "hf_nan" / "model.safetensors", "model.layers.3.mlp.up_proj.weight")
    for name in ["hf_2layers", "hf_shards"]:
        shutil.copytree(big / "hf", big / name, copy_function=os.link)
    cfg = json.loads((big / "hf" / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (big / "hf_2layers" / "config.json").unlink()
    (big / "hf_2layers" / "config.json").write_text(json.dumps(cfg))
    (big / "hf_shards" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model.safetensors",
        "model.layers.29.mlp.up_proj.weight": "model-00002-of-00002.safetensors"}}))
    g = bytearray(MODEL.read_bytes())
    key = b"llama.attention.head_count\x04\x00\x00\x00"
    at = g.find(key) + len(key)
    g[at:at + 4] = struct.pack("<I", 7)
    (big / "heads7.gguf").write_bytes(bytes(g))
    (fx / "ready").write_text("")


def with_flag(base, flag, value):
    """`base` with `flag` set to `value` (an earlier setting of it removed)."""
    out, skip = [], False
    for w in base:
        if skip:
            skip = False
        elif w == flag:
            skip = True
        else:
            out.append(w)
    return out + [f"{flag}={value}"]


def cases(big):
    """(name, issue category, argv, culprit words the error line must hold)."""
    m, q, idx = str(MODEL), str(PROBE), ["--data", "d.jsonl", "--limit", "2", "--max-tokens", "64"]
    hf = lambda name: str(big / name)
    index = ["index", "--model", m, *idx, "--rank", "4", "--out", "new"]
    score = ["score", "--store", "S", "--queries", q, "--limit", "2", "--out", "o.parquet"]
    train = ["train", "--model", m, *idx, "--max-steps", "1", "--out", "T"]
    sel = ["select", "--scores", "s.parquet", "--size", "2", "--data", "d.jsonl", "--out", "sel.jsonl"]
    gen = ["generate", "--model", m, "--prompts", q, "--limit", "1", "--max-new", "4", "--out", "a.jsonl"]
    out = [
        ("select --out over --data", "output", sel[:-1] + ["d.jsonl"], ["--out"]),
        ("score --out STORE/samples.parquet", "output", score[:-1] + ["S/samples.parquet"], ["--out"]),
        ("score --out STORE/manifest.json", "output", score[:-1] + ["S/manifest.json"], ["--out"]),
        ("score --full STORE/features-00000.npy", "output", score + ["--full", "S/features-00000.npy"], ["--full"]),
        ("score --out an earlier result", "output", score[:-1] + ["s.parquet"], ["--out", "--force"]),
        ("NaN feature row (another tool's store)", "non-finite", ["score", "--store", "S_nan", "--queries", q, "--limit", "2", "--out", "o.parquet"], ["row 1"]),
        ("NaN-weight model trained", "non-finite", ["train", "--model", hf("hf_nan"), *idx, "--max-steps", "1", "--out", "T"], ["model.layers.3.mlp.up_proj.weight"]),
        ("NaN weight named at load", "non-finite", ["logprob", "--model", hf("hf_nan"), "--text", "hi"], ["model.layers.3.mlp.up_proj.weight"]),
        ("compare with NaN scores", "non-finite", ["compare", "nan.parquet", "s.parquet", "--plot", "p.png"], ["nan.parquet"]),
        ("select with NaN scores", "non-finite", sel[:2] + ["nan.parquet"] + sel[3:], ["nan.parquet"]),
        ("datainf --damping -1", "non-finite", score + ["--method", "influence", "--preconditioner", "datainf", "--damping=-1"], ["--damping"]),
        ("exact --damping 0", "non-finite", score + ["--method", "influence", "--preconditioner", "exact", "--damping", "0"], ["--damping"]),
        ("index --rank 100000", "nonsense", with_flag(index, "--rank", "100000"), ["--rank"]),
        ("index --max-tokens 20000", "nonsense", ["index", "--model", m, "--data", "d.jsonl", "--limit", "2", "--max-tokens", "20000", "--out", "new"], ["--max-tokens"]),
        ("score --top-k 0", "nonsense", with_flag(score, "--top-k", "0"), ["--top-k"]),
        ("lissa --lissa-iters 0", "nonsense", score + ["--method", "influence", "--preconditioner", "lissa", "--lissa-iters", "0"], ["--lissa-iters"]),
        ("train --max-steps 0", "nonsense", with_flag(train, "--max-steps", "0"), ["--max-steps"]),
        ("train --beta1 1", "nonsense", train + ["--beta1", "1"], ["--beta1"]),
        ("train --beta2 -1", "nonsense", train + ["--beta2=-1"], ["--beta2"]),
        ("train --adam-eps 0", "nonsense", train + ["--adam-eps", "0"], ["--adam-eps"]),
        ("train --weight-decay -5", "nonsense", train + ["--weight-decay=-5"], ["--weight-decay"]),
        ("--threads 0", "nonsense", ["--threads", "0"] + score, ["--threads"]),
        ("index --limit 0", "nonsense", with_flag(index, "--limit", "0"), ["--limit"]),
        ("config of 2 layers over 30", "inconsistent", ["logprob", "--model", hf("hf_2layers"), "--text", "hi"], ["num_hidden_layers"]),
        ("score file covering 1 of 4 samples", "inconsistent", sel[:2] + ["partial.parquet"] + sel[3:], ["partial.parquet"]),
        ("GGUF with a wrong head count", "vague", ["logprob", "--model", hf("heads7.gguf"), "--text", "hi"], ["head_count"]),
        ("missing safetensors shard", "vague", ["logprob", "--model", hf("hf_shards"), "--text", "hi"], ["model-00002-of-00002.safetensors"]),
        ("bad manifest shard entry", "vague", ["score", "--store", "S_manifest", "--queries", q, "--out", "o.parquet"], ["manifest.json", "shard entry 0", "99"]),
        ("score --method bogus lists every method", "vague", score + ["--method", "bogus"], ["bogus", "encoder", "one-step"]),
    ]
    # Nonsense values of the numeric flags of the main verbs.
    flags = [
        (index, "--limit", ["0", "-2", "lots"]), (index, "--max-tokens", ["0", "-1"]),
        (index, "--shard-size", ["0", "-1"]), (index, "--batch-size", ["0"]), (index, "--dim", ["0"]),
        (score, "--top-k", ["-2", "1.5"]), (score, "--damping", ["nan", "inf", "-1"]),
        (score, "--limit", ["0"]), (score, "--show", ["-1"]), (score, "--rerank", ["0"]),
        (train, "--lr", ["0", "-1", "nan", "inf"]), (train, "--beta1", ["-0.1", "nan"]),
        (train, "--beta2", ["1", "nan"]), (train, "--adam-eps", ["-1", "nan"]),
        (train, "--weight-decay", ["nan"]), (train, "--epochs", ["0"]), (train, "--batch-size", ["0"]),
        (train, "--grad-accum", ["0"]), (train, "--lora-rank", ["0"]), (train, "--max-grad-norm", ["-1", "nan"]),
        (gen, "--max-new", ["0"]), (gen, "--temperature", ["-1", "nan"]), (gen, "--top-p", ["0", "1.5"]),
        (gen, "--batch-size", ["0"]), (sel, "--size", ["0", "-5%", "150%"]), (sel, "--threshold", ["nan"]),
        (["fit", "--store", "S"], "--draws", ["0"]),
    ]
    for base, flag, values in flags:
        for v in values:
            out.append((f"{base[0]} {flag} {v}", "nonsense", with_flag(base, flag, v), [flag]))
    return out


def classify(code, stderr, culprits, changed):
    if code is None:
        return "hang"
    if changed:
        return "silent wrong"
    if code == 0:
        return "silent wrong"
    if code < 0 or code == 101:
        return "abort"
    lines = [l for l in stderr.splitlines() if l.startswith("error")] or stderr.splitlines()[-1:]
    said = lines[-1] if lines else ""
    return "clear" if all(c in said for c in culprits) else "vague"


def resume_case(binary, work, timeout):
    """A resumed index must not trust a shard whose header disagrees with the manifest."""
    shard = work / "S" / "features-00000.npy"
    good = shard.read_bytes()
    b = bytearray(good)
    text = b[:128].decode("latin-1")
    old = text[text.index("("):text.index(")") + 1]
    rows, cols = old.strip("()").split(",")
    new = f"(1,{cols})".ljust(len(old))[: len(old)]
    b[text.index("("):text.index("(") + len(old)] = new.encode()
    shard.write_bytes(bytes(b))
    code, err, secs = sh(binary, ["index", "--model", str(MODEL), "--data", "d.jsonl", "--limit", "4",
                                  "--max-tokens", "64", "--rank", "4", "--dtype", "f32", "--shard-size", "2",
                                  "--out", "S", "--threads", "2"], work, timeout)
    if code is None:
        return "hang", err, secs
    if shard.read_bytes() == good:
        return "clear", "redone", secs
    if code != 0:
        return ("clear" if "features-00000.npy" in err else "vague"), err, secs
    return "silent wrong", "shard with a bad header kept as done", secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="LABEL=path")
    ap.add_argument("--out", default="docs/reports/hardening")
    ap.add_argument("--work", default="runs/hardening-census")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    work_root = Path(a.work).resolve()
    fx = work_root / "fixtures"
    fixtures(str(Path(bins[-1][1]).resolve()), fx)
    results = {}
    all_cases = cases(work_root / "big")
    for label, binary in bins:
        binary = str(Path(binary).resolve())
        rows = []
        for name, group, argv, culprits in all_cases + [("resumed index trusts a bad shard header", "inconsistent", None, None)]:
            work = work_root / "run"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(fx, work)
            if argv is None:
                cat, err, secs = resume_case(binary, work, a.timeout)
            else:
                before = hashes(work)
                code, err, secs = sh(binary, argv, work, a.timeout)
                after = hashes(work)
                changed = any(after.get(k) != v for k, v in before.items())
                cat = classify(code, err, culprits, changed)
            said = [l for l in err.splitlines() if l.startswith("error")]
            last = said[-1] if said else (err.strip().splitlines() or [""])[-1]
            rows.append({"case": name, "group": group, "category": cat, "secs": round(secs, 1),
                         "error": last[:300]})
            print(f"{label:4} {cat:13} {name}", flush=True)
        results[label] = rows
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "census.json").write_text(json.dumps(results, indent=1) + "\n")
    cats = ["clear", "vague", "abort", "silent wrong", "hang"]
    lines = ["| binary | cases | " + " | ".join(cats) + " |", "|---|---|" + "---|" * len(cats)]
    for label, rows in results.items():
        n = {c: sum(r["category"] == c for r in rows) for c in cats}
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(str(n[c]) for c in cats) + " |")
    (out / "census.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
