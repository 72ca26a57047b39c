"""Throughput, MFU and peak memory of one train_lm.py training step, beside transformers.

    python bench/train.py                                  # CPU: tiny + small shapes, ~2-3 minutes
    python bench/train.py --shapes aragpt2-base,qwen2.5-0.5b --seq 512,1024 --batch 8   # one GPU
    python bench/train.py --shapes small-aragpt2,small-qwen3,small-llama3,small-gemma3   # CPU, new families
    python bench/train.py --shapes aragpt2-mega,qwen3-0.6b,gemma-3-1b,llama-3.2-1b --seq 1024   # GPU, real sizes
    python bench/train.py --shapes small --seq 256 --compile --no-transformers   # compiled: dynamic vs static T

One step = forward to the final hidden states, the fused weighted cross-entropy
(models/loss.py), backward, AdamW step: exactly train_lm.forward_backward on one micro-batch
with random weights (no checkpoint needed), random token ids, the first --prompt-share of every
row masked as prompt (-100; default: the share measured on the demo data, 42%) and a random weight
per row, collated by train_lm.collate (so the output layer runs on the answer positions only, as in
training). Tokens/s counts the real tokens of the batch (no padding). Beside it, when transformers
is installed, the same architecture and the same weights in transformers (GPT2LMHeadModel,
Qwen2/Qwen3/Llama/Gemma3ForCausalLM, SDPA attention; none for AraGPT2-large/-mega, which
transformers lacks) with the usual loss: logits.float(), F.cross_entropy(reduction="none") times the
weights. Both run in the same process on the same inputs; the first step's losses are reported
so the comparison is visibly like for like.

--compile adds ours under torch.compile twice, each from the same initial weights and a fresh
compile cache: "compiled" as train_lm.py --compile runs it in one process (the sequence dimension
marked dynamic, so one graph serves every batch length; on CUDA the loss chunks compiled too) and
"compiled static" (the shapes of this batch baked in: what padding every batch to one fixed length
would run, at the price of a compile per length). Their ratio is the cost of the dynamic graph.

Both use the same optimizer as train_lm.py: AdamW, fused where torch has it (CUDA; CPU from torch
2.4), which is also the Hugging Face Trainer's default (adamw_torch_fused) from torch 2.8.
CUDA: bf16 autocast, timings after torch.cuda.synchronize, peak memory =
torch.cuda.max_memory_allocated per configuration, MFU against --peak-flops (default 989e12:
H100 dense bf16). CPU: fp32; memory and MFU are not measured (null).
FLOPs per step = 6 * (matmul parameters) * tokens + 12 * layers * d_model * seq^2 * batch.

Prints one table and writes --out (default bench/train.json).
"""
import argparse
import copy
import functools
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch
import torch._dynamo  # (not imported by `import torch` on every version)
import torch.nn.functional as F

import train_lm
from core.common import adamw, bf16_supported, pick_device
from models import build_model
from models.loss import fused_linear_cross_entropy
from core.prompt import build_example

NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
LLAMA3_ROPE = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)  # Llama-3.2-1B/3B
SHAPES = {
    "tiny": dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=4, vocab_size=4000, n_positions=1024, **NO_DROPOUT),
    "small": dict(model_type="gpt2", n_embd=256, n_layer=4, n_head=4, vocab_size=16000, n_positions=1024, **NO_DROPOUT),
    "aragpt2-base": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=64000, n_positions=1024,
                         **NO_DROPOUT),
    "aragpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16, vocab_size=64000,
                           n_positions=1024, **NO_DROPOUT),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768),
    # the second wave (models/aragpt2.py, qwen3.py, gemma3.py; Llama-3 RoPE in models/rope.py)
    "aragpt2-large": dict(model_type="aragpt2", n_embd=1280, n_layer=36, n_head=20, vocab_size=64000,
                          n_positions=1024, **NO_DROPOUT),
    "aragpt2-mega": dict(model_type="aragpt2", n_embd=1536, n_layer=48, n_head=24, vocab_size=64000,
                         n_positions=1024, **NO_DROPOUT),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, vocab_size=151936, rope_theta=1e6,
                         rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768),
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=3072, vocab_size=151936,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960),
    "qwen3-1.7b": dict(model_type="qwen3", hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=6144, vocab_size=151936,
                       rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=131072,
                         rope_parameters=dict(LLAMA3_ROPE, rope_theta=5e5)),
    "gemma-3-1b": dict(model_type="gemma3_text", hidden_size=1152, num_hidden_layers=26, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=256, intermediate_size=6912, vocab_size=262144,
                       sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       max_position_embeddings=32768, pad_token_id=0),
    # CPU-sized versions of the same architectures (d 256, 4 layers, V 16000 like "small"); gemma's window
    # 64 < seq, so its sliding layers are exercised
    "small-aragpt2": dict(model_type="aragpt2", n_embd=256, n_layer=4, n_head=4, vocab_size=16000, n_positions=1024,
                          **NO_DROPOUT),
    "small-qwen3": dict(model_type="qwen3", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=64, intermediate_size=768, vocab_size=16000,
                        tie_word_embeddings=True, max_position_embeddings=1024),
    "small-llama3": dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=768, vocab_size=16000, tie_word_embeddings=True,
                         max_position_embeddings=1024, rope_parameters=dict(LLAMA3_ROPE, rope_theta=5e5)),
    "small-gemma3": dict(model_type="gemma3_text", hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=64, intermediate_size=768, vocab_size=16000,
                         sliding_window=64, sliding_window_pattern=2, query_pre_attn_scalar=64,
                         max_position_embeddings=1024, pad_token_id=0),
}


def get_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description="train_lm.py step throughput vs transformers (see the module docstring)")
    p.add_argument("--shapes", default="aragpt2-base,aragpt2-medium,qwen2.5-0.5b" if cuda else "tiny,small",
                   help=f"comma-separated, from: {', '.join(SHAPES)}")
    p.add_argument("--seq", default="512,1024" if cuda else "128,256", help="comma-separated sequence lengths")
    p.add_argument("--batch", type=int, default=8 if cuda else 4, help="sequences per step")
    p.add_argument("--steps", type=int, default=10 if cuda else 6, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3 if cuda else 1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per implementation; the fastest counts")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--prompt-share", type=float, default=None,
                   help="share of each row that is prompt (no loss); default: measured on data/demo.jsonl")
    p.add_argument("--layers", type=int, default=None, help="override every shape's layer count (a quick "
                                                            "run of a big shape on a CPU; say so with the figures)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="device peak FLOP/s for MFU (CUDA only)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers comparison")
    p.add_argument("--compile", action="store_true", help="also time ours torch.compile'd, with the sequence "
                   "dimension dynamic (as train_lm.py --compile) and static (see the module docstring)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "train.json"), help="JSON results file")
    return p.parse_args(argv)


def hf_model(cfg):
    """The same architecture in transformers (random init; weights are copied in afterwards), or
    None where transformers has no class for it (AraGPT2's Grover layout)."""
    import transformers
    hf_cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    classes = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
               "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "llama": ("LlamaConfig", "LlamaForCausalLM"),
               "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM")}
    if cfg["model_type"] not in classes:
        return None
    config_cls, model_cls = (getattr(transformers, n) for n in classes[cfg["model_type"]])
    return model_cls(config_cls(**hf_cfg))


def demo_prompt_share():
    """Share of the demo data's tokens that are prompt (question + separator): they carry no loss."""
    from core.common import DEMO_DATA, read_jsonl
    from models import Tokenizer
    tok = Tokenizer.from_folder(train_lm.DEMO_TOKENIZER)
    n_all = n_answer = 0
    for _, row in read_jsonl(DEMO_DATA, required=("question", "answer")):
        ex = build_example(tok, row["question"], row["answer"], 1024)
        n_all, n_answer = n_all + len(ex["input_ids"]), n_answer + ex["n_answer"]
    return 1 - n_answer / n_all


def make_batch(B, T, V, device, prompt_share, seed=0):
    """B rows of T random tokens, the first prompt_share of each with no loss, through train_lm.collate."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    y[:, :round(prompt_share * T)] = -100  # the prompt: no loss
    w = 0.5 + torch.rand(B, generator=g)
    exs = [{"input_ids": x[r].numpy(), "labels": y[r].numpy(), "weight": float(w[r]),
            "n_answer": int((y[r] != -100).sum())} for r in range(B)]
    return train_lm.collate(exs, list(range(B)), 0, device)


def dynamic_seq(mb):
    """mb with a copy of input_ids whose sequence dimension is marked dynamic, as train_lm.py --compile
    marks every micro-batch (a copy: the mark stays on the tensor, and the static run must not see it)."""
    x = mb["input_ids"].clone()
    torch._dynamo.mark_dynamic(x, 1)
    return {**mb, "input_ids": x}


def compiled_step(device):
    """ours_step as train_lm.py --compile runs it: on CUDA the loss chunks' element-wise work compiled too."""
    if device.type != "cuda":
        return ours_step
    return functools.partial(ours_step, loss_fn=functools.partial(fused_linear_cross_entropy, compiled=True))


def ours_step(model, opt, mb, autocast, loss_fn=fused_linear_cross_entropy):
    denom = float(mb["n_tokens"])
    sums = train_lm.forward_backward(model, model.lm_head.weight, [mb], denom, 1, loss_fn, autocast)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return sums[0] / denom


def hf_step(model, opt, mb, autocast):
    with autocast():
        logits = model(input_ids=mb["input_ids"]).logits  # (B, T, V)
        ce = F.cross_entropy(logits.float().flatten(0, 1), mb["labels"].flatten(), reduction="none")
        w = mb["weights"][:, None].expand_as(mb["labels"]).flatten()
        loss = (ce * w).sum() / mb["n_tokens"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def measure(step_fn, model, mb, args, device, autocast):
    opt = adamw(model.parameters(), lr=1e-5)  # fused on CUDA and (torch >= 2.4) CPU, as train_lm.py and HF Trainer
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    first = step_fn(model, opt, mb, autocast).item()
    for _ in range(args.warmup - 1):
        step_fn(model, opt, mb, autocast)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step_fn(model, opt, mb, autocast)
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"first_loss": first, "step_ms": 1000 * dt, "peak_mem_gb": mem}


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    use_bf16 = bf16_supported(device)
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    have_hf = False
    if not args.no_transformers:
        try:
            import transformers  # noqa: F401
            have_hf = True
        except ImportError:
            print("transformers is not installed: measuring ours only")
    share = demo_prompt_share() if args.prompt_share is None else args.prompt_share
    results = []
    for name in args.shapes.split(","):
        cfg = SHAPES[name]
        if args.layers:
            cfg = {**cfg, ("n_layer" if cfg["model_type"] == "gpt2" else "num_hidden_layers"): args.layers}
        for T in [int(s) for s in args.seq.split(",")]:
            torch.manual_seed(0)
            ours = build_model(cfg).train()
            pristine = copy.deepcopy(ours) if args.compile else None  # the compiled runs start from these weights
            L = getattr(ours.config, "n_layer", None) or ours.config.num_hidden_layers
            mb = make_batch(args.batch, T, cfg["vocab_size"], device, share)
            flops = train_lm.step_flops(ours, [T] * args.batch)
            impls = [("ours", ours, ours_step)]
            theirs = hf_model(cfg) if have_hf else None
            if theirs is not None:
                missing, unexpected = theirs.load_state_dict(ours.hf_state_dict(), strict=False)
                assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
                theirs.tie_weights()
                impls.append(("transformers", theirs.train(), hf_step))
            row = {"shape": name, "seq": T, "batch": args.batch, "prompt_share": share, "layers": L,
                   "params": sum(p.numel() for p in ours.parameters())}
            runs = {impl: [] for impl, _, _ in impls}
            for _ in range(args.rounds):  # alternate ours / transformers; each one's fastest round counts
                for impl, model, fn in impls:
                    model.to(device)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    runs[impl].append(measure(fn, model, mb, args, device, autocast))
                    model.cpu()  # free the device for the next one
            for impl, batch in (("compiled", dynamic_seq(mb)), ("compiled static", mb)) if args.compile else ():
                torch._dynamo.reset()  # a fresh cache: the other mode's graphs would pass these guards
                model = torch.compile(copy.deepcopy(pristine).to(device))
                runs[impl] = [measure(compiled_step(device), model, batch, args, device, autocast)
                              for _ in range(args.rounds)]  # the first warm-up compiles
                del model
            for impl, rs in runs.items():
                best = min(rs, key=lambda r: r["step_ms"])
                row[impl] = {**best, "first_loss": rs[0]["first_loss"],  # loss of the untrained weights
                             "tokens_per_s": args.batch * T / (best["step_ms"] / 1000),  # all real: no padding
                             "mfu": (flops / (best["step_ms"] / 1000) / args.peak_flops
                                     if device.type == "cuda" else None)}
            if args.compile:
                row["dynamic_vs_static"] = row["compiled"]["tokens_per_s"] / row["compiled static"]["tokens_per_s"]
            if theirs is not None:
                row["speedup"] = row["ours"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
                if device.type == "cuda":
                    row["memory_ratio"] = row["ours"]["peak_mem_gb"] / row["transformers"]["peak_mem_gb"]
            results.append(row)
            del ours, impls, theirs, pristine

    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ndevice: {device} ({device_name}), "
          f"{'bf16 autocast' if use_bf16 else 'fp32'}, torch {torch.__version__}, prompt share {share:.3f}"
          f"{f', {args.layers} layers' if args.layers else ''}")
    print(f"{'shape':<15}{'seq':>6}{'batch':>6}  {'impl':<16}{'tok/s':>10}{'ms/step':>10}{'MFU':>7}{'mem GB':>8}"
          f"{'loss@1':>9}{'ours/hf':>9}")
    for row in results:
        for impl in ("ours", "transformers", "compiled", "compiled static"):
            if impl not in row:
                continue
            r = row[impl]
            mfu = fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f")
            print(f"{row['shape']:<15}{row['seq']:>6}{row['batch']:>6}  {impl:<16}{r['tokens_per_s']:>10.0f}"
                  f"{r['step_ms']:>10.1f}{mfu:>7}{fmt(r['peak_mem_gb'], '.2f'):>8}{r['first_loss']:>9.4f}"
                  f"{fmt(row.get('speedup') if impl == 'ours' else None, '.2f'):>9}")
        if "dynamic_vs_static" in row:
            print(f"{'':<29}compiled with a dynamic sequence dimension / static: {row['dynamic_vs_static']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": str(device), "bf16": use_bf16, "torch": torch.__version__,
                                          "args": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
