"""Generation throughput: ours eager (KV cache), ours compiled (--compile's static cache and
torch.compile'd decode step), ours without a cache, and transformers' generate, side by side.

    python bench/generate.py                         # the demo's default GPT-2, random weights, CPU
    python bench/generate.py --model out/demo/lm-balanced/best --new-tokens 128
    python bench/generate.py --device cuda --model models/aragpt2-base --batch 32
    python bench/generate.py --arch qwen2            # a demo-sized Qwen2 (grouped-query attention)
    python bench/generate.py --arch gemma3           # a demo-sized Gemma-3 (1 KV head, sliding layers)
    python bench/generate.py --batch 1,8,32 --new-tokens 128 --compile --no-recompute --threads 1  # docs/evaluation-at-scale.md

Prompts are questions of the demo sample in the training prompt format. EOS is disabled so
every row generates exactly --new-tokens tokens (equal work for every variant); greedy decoding,
so the variants must produce the same tokens (checked; in fp32). --compile adds ours compiled
(models/generate.py's Decoder; its cold compile is excluded: it runs in the warm-up round). Beside ours, when transformers is
installed: the same weights in transformers' class for the architecture (SDPA), generate() with
do_sample=False on the same left-padded prompts. Prints one table, writes JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.common import DEMO_DATA, pick_device, read_jsonl  # noqa: E402
from models import Tokenizer, build_model, load_pretrained  # noqa: E402
from models.generate import Decoder, generate  # noqa: E402
from core.prompt import format_prompt  # noqa: E402
from train_lm import DEMO_GPT2, DEMO_TOKENIZER  # noqa: E402


# without --model: demo-sized models with grouped-query attention, KV-head ratios as in Qwen2.5 / Qwen3-0.6B
# (2 query heads per KV head) and Gemma-3-1B (4 per KV head; 3 sliding layers with a window the answers outgrow)
DEMO_ARCHS = {
    "qwen2": dict(model_type="qwen2", hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", hidden_size=128, intermediate_size=512, num_hidden_layers=4, head_dim=32,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True),
    "gemma3": dict(model_type="gemma3_text", hidden_size=128, intermediate_size=512, num_hidden_layers=4, head_dim=32,
                   num_attention_heads=4, num_key_value_heads=1, query_pre_attn_scalar=32, sliding_window=32,
                   layer_types=["sliding_attention"] * 3 + ["full_attention"], max_position_embeddings=256),
}


def transformers_twin(model, device):
    """The same weights in transformers (fp32, SDPA attention), or None when it is not installed."""
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: measuring ours only")
        return None
    cfg = model.config.to_dict()
    arch = getattr(transformers, cfg["architectures"][0])
    hf = arch(transformers.AutoConfig.for_model(**cfg))
    missing, unexpected = hf.load_state_dict(model.hf_state_dict(), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    hf.tie_weights()
    return hf.to(device).eval()


@torch.no_grad()
def hf_generate(hf, prompts, new_tokens, pad, device):
    """Greedy transformers generate on left-padded prompts; the new tokens of each row."""
    L = max(len(q) for q in prompts)
    ids = torch.tensor([[pad] * (L - len(q)) + q for q in prompts], device=device)
    mask = torch.tensor([[0] * (L - len(q)) + [1] * len(q) for q in prompts], device=device)
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=None)
    return out[:, L:].tolist()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="LM folder (default: the demo's GPT-2 config, random weights)")
    p.add_argument("--data", default=str(DEMO_DATA), help="JSONL with questions for the prompts")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=96, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (the fastest counts)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    p.add_argument("--arch", default="gpt2", choices=["gpt2", *DEMO_ARCHS], help="without --model: the demo GPT-2, "
                   "or a Qwen2 / Qwen3 / Gemma-3 of about its size with grouped-query attention (DEMO_ARCHS)")
    p.add_argument("--no-recompute", action="store_true", help="skip our no-cache variant (quadratic)")
    p.add_argument("--compile", action="store_true", help="also ours compiled (evaluate.py --compile's decoder)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's); on a shared CPU, 1: "
                   "spinning OpenMP threads of busy neighbours make every variant many times slower")
    p.add_argument("--no-transformers", action="store_true", help="skip transformers' generate")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "generate.json"), help="JSON results file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.model:
        model, tok = load_pretrained(args.model, device=device)
    else:
        tok = Tokenizer.from_folder(DEMO_TOKENIZER)
        cfg = {**DEMO_GPT2, "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_id, "bos_token_id": tok.eos_id}
        if args.arch in DEMO_ARCHS:
            cfg = {**DEMO_ARCHS[args.arch], "vocab_size": tok.vocab_size, "eos_token_id": tok.eos_id,
                   "bos_token_id": tok.eos_id}
        model = build_model(cfg).to(device)
    model.eval()
    hf = None if args.no_transformers else transformers_twin(model, device)
    n_params = sum(t.numel() for t in model.parameters())
    questions = [row["question"] for _, row in read_jsonl(args.data, required=("question",))]
    n_ctx = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    max_prompt = n_ctx - args.new_tokens + 1  # the last new token is never fed back (as evaluate.py)

    results = []
    for B in [int(b) for b in args.batch.split(",")]:
        prompts = [tok.encode(format_prompt(q))[:max_prompt] for q in questions[:B]]
        row = {"batch": B, "new_tokens": args.new_tokens, "prompt_tokens": sum(map(len, prompts))}
        outputs = {}
        pad = tok.pad_id if tok.pad_id is not None else 0
        variants = {"kv_cache": lambda: generate(model, prompts, args.new_tokens, eos_id=None, pad_id=pad)}
        if args.compile:
            dec = Decoder(model, max(map(len, prompts)) + args.new_tokens - 1)
            variants["compiled"] = lambda: generate(model, prompts, args.new_tokens, eos_id=None, pad_id=pad,
                                                    decoder=dec)
        if not args.no_recompute:
            variants["no_cache"] = lambda: generate(model, prompts, args.new_tokens, eos_id=None, pad_id=pad,
                                                    use_cache=False)
        if hf is not None:
            variants["transformers"] = lambda: hf_generate(hf, prompts, args.new_tokens, pad, device)
        times = {name: [] for name in variants}
        for r in range(args.repeats + 1):  # the first round warms up; variants alternate within a round
            for name, fn in variants.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                outputs[name] = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
        for name in variants:
            row[name + "_s"] = min(times[name][1:])
            row[name + "_tok_s"] = B * args.new_tokens / row[name + "_s"]
        row["same_tokens"] = all(out == outputs["kv_cache"] for out in outputs.values())
        row["speedup"] = row["kv_cache_tok_s"] / row["no_cache_tok_s"] if "no_cache_tok_s" in row else None
        row["vs_transformers"] = row["kv_cache_tok_s"] / row["transformers_tok_s"] if hf is not None else None
        row["compiled_vs_eager"] = row["compiled_tok_s"] / row["kv_cache_tok_s"] if args.compile else None
        row["compiled_vs_transformers"] = (row["compiled_tok_s"] / row["transformers_tok_s"]
                                           if args.compile and hf is not None else None)
        results.append(row)

    print(f"device {device}, model {args.model or f'demo {args.arch} (random weights)'}, {n_params / 1e6:.2f}M parameters, "
          f"torch {torch.__version__}")
    fmt = lambda r, k, f: format(r[k], f) if r.get(k) is not None else "-"  # noqa: E731
    print(f"{'batch':>5} {'new tok':>7} | {'KV cache tok/s':>14} {'compiled':>9} {'no cache tok/s':>14} "
          f"{'transformers':>12} | {'cache/no':>8} {'ours/hf':>7} {'comp/eager':>10} {'comp/hf':>7} | same tokens")
    for r in results:
        print(f"{r['batch']:>5} {r['new_tokens']:>7} | {r['kv_cache_tok_s']:>14.1f} {fmt(r, 'compiled_tok_s', '.1f'):>9} "
              f"{fmt(r, 'no_cache_tok_s', '.1f'):>14} {fmt(r, 'transformers_tok_s', '.1f'):>12} | "
              f"{fmt(r, 'speedup', '.2f'):>8} {fmt(r, 'vs_transformers', '.2f'):>7} "
              f"{fmt(r, 'compiled_vs_eager', '.2f'):>10} {fmt(r, 'compiled_vs_transformers', '.2f'):>7} | "
              f"{r['same_tokens']}")
    Path(args.out).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "args": vars(args),
                                          "params": n_params, "results": results}, indent=2) + "\n")
    if not all(r["same_tokens"] for r in results):
        sys.exit("the variants generated different tokens")


if __name__ == "__main__":
    main()
