"""Tokens/s and peak memory of train_lm.py in each mode, side by side, against tools/what_fits.py.

    python bench/modes.py                     # CPU: a 26M-parameter Qwen2-style model, ~5 minutes
    python bench/modes.py --device cuda --d 2048 --layers 24 --seq 1024   # one GPU (FSDP needs 2)

Each mode is a fresh `train_lm.py` process (FSDP: `torchrun --nproc_per_node 2`) on the shipped
demo data (--weights uniform) and a random-weight model with the demo tokenizer, in this order:
full, full + activation checkpointing, LoRA (rank 16, every projection), FSDP over 2 processes,
FSDP + checkpointing, each process with one thread. Reported per mode: the median tokens/s of the
steps after the first (FSDP: both ranks' tokens, on two cores), and the peak memory train_lm logs (CPU: the process's peak RSS;
CUDA: max_memory_allocated; FSDP: rank 0). The process baseline (imports, data, allocator) is in
every CPU figure alike, so the check against the estimate uses differences to full fine-tuning:
measured peak(full) - peak(mode) beside what_fits.train_memory's full - mode (gpu=False on a CPU).

Prints one table and writes --out (default bench/modes.json).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402

import what_fits  # noqa: E402
from models import Tokenizer, build_model, save_pretrained  # noqa: E402

MODES = {  # name: (extra train_lm flags, processes)
    "full": ([], 1),
    "full+ckpt": (["--activation-checkpointing"], 1),
    "lora": (["--lora-rank", "16", "--lora-dropout", "0"], 1),
    "fsdp": (["--fsdp"], 2),
    "fsdp+ckpt": (["--fsdp", "--activation-checkpointing"], 2),
}


def get_args(argv=None):
    p = argparse.ArgumentParser(description="train_lm.py modes side by side (see the module docstring)")
    p.add_argument("--d", type=int, default=512, help="hidden size")
    p.add_argument("--layers", type=int, default=8, help="decoder layers")
    p.add_argument("--seq", type=int, default=128, help="--max-len (demo rows are shorter; they are padded per batch)")
    p.add_argument("--batch", type=int, default=8, help="--batch-size per process")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per mode")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from: {', '.join(MODES)}")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=str(ROOT / "bench" / "modes.json"), help="JSON results file")
    return p.parse_args(argv)


def shape(args):
    """A Qwen2-style shape (head size 64, one KV head per 256 of d, MLP 3d) with the demo tokenizer's vocabulary, as what_fits sees it."""
    V = Tokenizer.from_folder(ROOT / "data" / "demo_tokenizer").vocab_size
    return dict(d=args.d, L=args.layers, I=3 * args.d, kv=64 * max(1, args.d // 256), V=V, tied=True)


def run_mode(name, args, model_dir, work):
    extra, procs = MODES[name]
    out = work / name
    cmd = ["train_lm.py", "--model", str(model_dir), "--out", str(out), "--weights", "uniform", "--device", args.device,
           "--max-steps", str(args.steps), "--batch-size", str(args.batch), "--grad-accum", "1", "--max-len",
           str(args.seq), "--eval-every", "1000", "--eval-batches", "1", "--save-every", "1000", "--resume", "never",
           *extra]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # one thread per process: spinning OpenMP threads on a busy CPU distort
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    steps = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "tokens_per_s" in m]
    tok_s = statistics.median(m["tokens_per_s"] for m in steps[1:])  # train_lm logs the whole step's tokens (all ranks)
    tokens = statistics.median(m["tokens_per_s"] * m["step_ms"] / 1000 for m in steps) / procs  # per rank
    return {"mode": name, "processes": procs, "tokens_per_s": tok_s, "peak_mem_gb": steps[-1]["peak_mem_gb"],
            "tokens_per_step": tokens}


def main(argv=None):
    args = get_args(argv)
    s = shape(args)
    gpu = args.device.startswith("cuda")
    n = what_fits.param_counts(s)[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = Tokenizer.from_folder(ROOT / "data" / "demo_tokenizer")
        cfg = dict(model_type="qwen2", vocab_size=s["V"], hidden_size=s["d"], intermediate_size=s["I"],
                   num_hidden_layers=s["L"], num_attention_heads=s["d"] // 64, num_key_value_heads=s["kv"] // 64,
                   tie_word_embeddings=True, max_position_embeddings=max(args.seq, 256), bos_token_id=tok.eos_id,
                   eos_token_id=tok.eos_id)
        torch.manual_seed(0)
        save_pretrained(build_model(cfg), tok, work / "model")
        results = []
        for m in args.modes.split(","):
            results.append(run_mode(m, args, work / "model", work))
            print(results[-1], flush=True)  # partial results survive an interrupted run
    tokens = round(statistics.median(r["tokens_per_step"] for r in results))  # real (unpadded) tokens per micro-batch
    full = next((r for r in results if r["mode"] == "full"), None)
    for r in results:
        r["predicted_gb"] = what_fits.train_memory(s, r["mode"], r["processes"], tokens, gpu=gpu) / 2**30
        if full is not None:
            r["measured_saving_gb"] = full["peak_mem_gb"] - r["peak_mem_gb"]
            r["predicted_saving_gb"] = (what_fits.train_memory(s, "full", 1, tokens, gpu=gpu) / 2**30
                                        - r["predicted_gb"])
    print(f"\n{n / 1e6:.1f}M parameters (d {s['d']}, {s['L']} layers, V {s['V']}), batch {args.batch} rows, "
          f"{tokens} tokens per micro-batch, {args.device}, one thread per process, torch {torch.__version__}")
    print(f"{'mode':<11}{'procs':>6}{'tok/s':>9}{'vs full':>9}{'peak GB':>9}{'saved GB':>10}{'predicted':>11}")
    for r in results:
        rel = r["tokens_per_s"] / full["tokens_per_s"] if full else float("nan")
        print(f"{r['mode']:<11}{r['processes']:>6}{r['tokens_per_s']:>9.0f}{rel:>9.2f}{r['peak_mem_gb']:>9.3f}"
              f"{r.get('measured_saving_gb', float('nan')):>10.3f}{r.get('predicted_saving_gb', float('nan')):>11.3f}")
    Path(args.out).write_text(json.dumps({"args": vars(args), "shape": s, "params": n, "torch": torch.__version__,
                                          "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
