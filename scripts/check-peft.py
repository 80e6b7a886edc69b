#!/usr/bin/env python3
"""Checks that Python's PEFT loads an adapter written by `inflow train` without any warning and
computes the same mean response-token loss as `inflow eval-loss --adapter`.

usage: scripts/check-peft.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
           --adapter runs/ft/checkpoint-4 [--data assets/data/train.jsonl] [--limit 8] \
           [--inflow target/release/inflow] [--out /tmp/inflow-peft-pair] [--tol 1e-3]

Needs torch, transformers, peft and safetensors (not installed by CI: torch is too large).
Steps:
 1. `inflow export --unmerged` writes OUT/base (the model as a Hugging Face folder; a GGUF file is
    dequantized, so these are the weights the adapter was trained against) and OUT/adapter.
 2. `inflow eval-loss` gives the mean loss of the first --limit samples (alpaca JSONL), with and
    without the adapter, with a --max-tokens large enough that nothing is cut.
 3. With every Python warning an error (and PEFT's log warnings counted as failures), the same
    samples go through (a) PeftModel.from_pretrained(base, the training checkpoint itself) and
    (b) AutoPeftModelForCausalLM.from_pretrained(OUT/adapter), which finds its base through
    base_model_name_or_path; the base model alone is compared too.
(Deprecation notices that transformers and PEFT give each other are listed, not errors.)
Exits 1 when a loss differs from inflow's by more than --tol (relative) or PEFT warned.
"""
import argparse
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def samples(path, limit):
    """(user turn, output) of the first `limit` alpaca records, as inflow renders them."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            ins, inp = r.get("instruction", ""), r.get("input") or ""
            user = ins if not inp else (inp if not ins else f"{ins}\n\n{inp}")
            out.append((user, r["output"]))
            if len(out) == limit:
                break
    return out


def mean_loss(model, tok, data):
    import torch

    losses = []
    for user, output in data:
        msgs = [{"role": "user", "content": user}]
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(
            msgs + [{"role": "assistant", "content": output}], tokenize=False
        )
        response = full[len(prompt):] if full.startswith(prompt) else output + tok.eos_token
        p = tok(prompt, add_special_tokens=False).input_ids
        r = tok(response, add_special_tokens=False).input_ids
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        # Token t (a response token) is predicted from position t − 1.
        pred = logits[len(p) - 1 : len(p) + len(r) - 1]
        losses.append(torch.nn.functional.cross_entropy(pred, ids[0, len(p):]).item())
    return sum(losses) / len(losses)


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the base model inflow trained on")
    ap.add_argument("--adapter", required=True, help="a checkpoint folder of `inflow train`")
    ap.add_argument("--data", default="assets/data/train.jsonl")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--inflow", default="target/release/inflow")
    ap.add_argument("--out", default="/tmp/inflow-peft-pair")
    ap.add_argument("--tol", type=float, default=1e-3)
    a = ap.parse_args()

    run_json([a.inflow, "export", "--model", a.model, "--adapter", a.adapter, "--out", a.out,
              "--unmerged", "--json"])
    base_dir, pair_adapter = Path(a.out) / "base", Path(a.out) / "adapter"
    ev = [a.inflow, "eval-loss", "--model", a.model, "--data", a.data, "--limit", str(a.limit),
          "--format", "alpaca", "--max-tokens", "8192", "--json"]
    inflow_tuned = run_json(ev + ["--adapter", a.adapter])
    inflow_base = run_json(ev)
    assert inflow_tuned["n_truncated"] == 0, "a sample was cut: lower --limit"

    import torch
    import transformers
    import peft
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rec = Recorder()
    for name in ("peft", "transformers"):
        logging.getLogger(name).addHandler(rec)
    data = samples(a.data, a.limit)
    with warnings.catch_warnings(record=True) as deprecations:
        # Every warning is an error (PEFT's "Unexpected keyword arguments" is a UserWarning),
        # except the libraries' deprecation notices to each other, which are listed.
        warnings.simplefilter("error")
        warnings.simplefilter("always", FutureWarning)
        warnings.simplefilter("always", DeprecationWarning)
        tok = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        hf_base = mean_loss(base, tok, data)
        ck = PeftModel.from_pretrained(base, a.adapter).eval()
        peft_ck = mean_loss(ck, tok, data)
        auto = AutoPeftModelForCausalLM.from_pretrained(pair_adapter, dtype=torch.float32).eval()
        peft_pair = mean_loss(auto, tok, data)
    cfg = json.loads((Path(a.adapter) / "adapter_config.json").read_text())
    known = set(peft.LoraConfig.__dataclass_fields__)
    extra = sorted(set(cfg) - known)

    rows = [
        ("base model: inflow eval-loss", inflow_base["mean_loss"], None),
        ("base model: transformers", hf_base, inflow_base["mean_loss"]),
        ("adapter: inflow eval-loss --adapter", inflow_tuned["mean_loss"], None),
        ("adapter: PeftModel.from_pretrained(base, checkpoint)", peft_ck, inflow_tuned["mean_loss"]),
        ("adapter: AutoPeftModelForCausalLM(OUT/adapter)", peft_pair, inflow_tuned["mean_loss"]),
    ]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"{len(data)} samples of {a.data}")
    ok = True
    for label, v, ref in rows:
        note = ""
        if ref is not None:
            rel = abs(v - ref) / abs(ref)
            ok &= rel <= a.tol
            note = f"  (relative difference {rel:.1e})"
        print(f"  {label:<55} {v:.6f}{note}")
    print(f"  base_model_name_or_path of the checkpoint: {cfg.get('base_model_name_or_path')}")
    print(f"  config keys outside peft.LoraConfig: {extra or 'none'}")
    print(f"  PEFT/transformers log warnings: {rec.records or 'none'}")
    notes = sorted({f"{w.category.__name__}: {w.message}" for w in deprecations})
    print(f"  deprecation notices between the libraries (not errors): {notes or 'none'}")
    ok &= not extra and not [r for r in rec.records if r.startswith("peft")]
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
