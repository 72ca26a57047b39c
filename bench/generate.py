"""Generation throughput with and without the KV cache, measured side by side in one run.

    python bench/generate.py                         # the demo's default GPT-2, random weights, CPU
    python bench/generate.py --model out/demo/lm-balanced/best --new-tokens 128
    python bench/generate.py --device cuda --model models/aragpt2-base --batch 32

Prompts are questions of the demo sample in the training prompt format. EOS is disabled so
every row generates exactly --new-tokens tokens (equal work for both variants); greedy decoding,
so the two variants must produce the same tokens (checked). Prints one table, writes JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DEMO_DATA, pick_device, read_jsonl  # noqa: E402
from models import Tokenizer, build_model, load_pretrained  # noqa: E402
from models.generate import generate  # noqa: E402
from train_lm import DEMO_GPT2, DEMO_TOKENIZER, format_prompt  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="LM folder (default: the demo's GPT-2 config, random weights)")
    p.add_argument("--data", default=str(DEMO_DATA), help="JSONL with questions for the prompts")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=96, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (the fastest counts)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "generate.json"), help="JSON results file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(args.seed)
    if args.model:
        model, tok = load_pretrained(args.model, device=device)
    else:
        tok = Tokenizer.from_folder(DEMO_TOKENIZER)
        model = build_model({**DEMO_GPT2, "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_id}).to(device)
    model.eval()
    n_params = sum(t.numel() for t in model.parameters())
    questions = [row["question"] for _, row in read_jsonl(args.data, required=("question",))]
    max_prompt = getattr(model.config, "n_positions", 1024) - args.new_tokens

    results = []
    for B in [int(b) for b in args.batch.split(",")]:
        prompts = [tok.encode(format_prompt(q))[:max_prompt] for q in questions[:B]]
        row = {"batch": B, "new_tokens": args.new_tokens, "prompt_tokens": sum(map(len, prompts))}
        outputs = {}
        for use_cache in (True, False):
            times = []
            for _ in range(args.repeats + 1):  # the first call warms up
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = generate(model, prompts, args.new_tokens, eos_id=None, pad_id=tok.pad_id, use_cache=use_cache)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            outputs[use_cache] = out
            name = "kv_cache" if use_cache else "no_cache"
            row[name + "_s"] = min(times[1:])
            row[name + "_tok_s"] = B * args.new_tokens / min(times[1:])
        row["same_tokens"] = outputs[True] == outputs[False]
        row["speedup"] = row["kv_cache_tok_s"] / row["no_cache_tok_s"]
        results.append(row)

    print(f"device {device}, model {args.model or 'demo GPT-2 (random weights)'}, {n_params / 1e6:.2f}M parameters, "
          f"torch {torch.__version__}")
    print(f"{'batch':>5} {'new tok':>7} | {'KV cache tok/s':>14} {'no cache tok/s':>14} | {'speedup':>7} | same tokens")
    for r in results:
        print(f"{r['batch']:>5} {r['new_tokens']:>7} | {r['kv_cache_tok_s']:>14.1f} {r['no_cache_tok_s']:>14.1f} | "
              f"{r['speedup']:>6.2f}x | {r['same_tokens']}")
    Path(args.out).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "args": vars(args),
                                          "params": n_params, "results": results}, indent=2) + "\n")
    if not all(r["same_tokens"] for r in results):
        sys.exit("KV-cache generation differs from full recomputation")


if __name__ == "__main__":
    main()
