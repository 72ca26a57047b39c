"""What fits where: estimated peak memory per GPU of train_lm.py for each training mode.

    python tools/what_fits.py                  # docs/training.md's table: Qwen2.5 0.5B-7B, 1 and 8 GPUs of 80 GB
    python tools/what_fits.py --tokens 16384   # another micro-batch (tokens per GPU)

train_memory(...) is the whole model, an estimate written down so it can be checked
(bench/modes.py compares it with measured peaks). Per GPU it adds:

  model state, bytes per parameter (train_lm keeps fp32 master weights; bf16 autocast on GPUs):
    full (DDP), full + checkpointing   4 weights + 4 gradients + 8 AdamW moments = 16,
                                       + 2 for autocast's bf16 copy of the weights (GPU only)
    FSDP over N GPUs                   16 / N, + 2 bytes for the bf16 weights gathered at a time:
                                       the root (embeddings, lm_head) and two blocks (one prefetched)
    LoRA                               4 frozen weights (+ 2 autocast copy), + 16 per adapter parameter
  activations kept for the backward, per token and layer (bf16; 4 bytes per number on a CPU):
    without checkpointing              ~ (10 d + 3 I + 4 kv) numbers (inputs of every matmul, norm and
                                       activation; SDPA keeps no T x T scores); d hidden, I MLP width,
                                       kv the K/V width
    with checkpointing                 d numbers (the block input) per layer, + one block's full set
                                       during its recomputation
  the fused loss adds one chunk of logits; not counted. Allocator slack and the CUDA context
  (~1-3 GB) are not counted either: keep 10-15% of the card free.
"""
import argparse

# Qwen2.5 shapes (config.json of each): hidden d, layers L, MLP width I, KV width, vocab V, tied
QWEN25 = {
    "0.5B": dict(d=896, L=24, I=4864, kv=128, V=151936, tied=True),
    "1.5B": dict(d=1536, L=28, I=8960, kv=256, V=151936, tied=True),
    "3B": dict(d=2048, L=36, I=11008, kv=256, V=151936, tied=True),
    "7B": dict(d=3584, L=28, I=18944, kv=512, V=152064, tied=False),
}
MODES = ("full", "full+ckpt", "fsdp", "fsdp+ckpt", "lora", "lora+ckpt")


def param_counts(s, lora_rank=16):
    """(all parameters, one block's, the embeddings + lm_head, LoRA adapters on every projection)."""
    d, I, kv = s["d"], s["I"], s["kv"]
    block = 2 * d * d + 2 * d * kv + 3 * d * I + 2 * d + kv * 2 + d  # q, o; k, v; gate, up, down; norms, biases
    emb = s["V"] * d * (1 if s["tied"] else 2)
    lora = lora_rank * s["L"] * (2 * (d + d) + 2 * (d + kv) + 2 * (d + I) + (I + d))  # r * (in + out) per projection
    return s["L"] * block + emb + d, block, emb, lora


def train_memory(s, mode, n_gpus=1, tokens=8192, gpu=True, lora_rank=16):
    """Estimated peak bytes per GPU for shape `s` (a QWEN25 entry), `tokens` per micro-batch per GPU.
    gpu=True: bf16 autocast (2-byte activations, an extra bf16 weight copy); False: fp32 CPU run."""
    n, block, emb, lora = param_counts(s, lora_rank)
    copy = 2 if gpu else 0  # autocast's bf16 weight copy
    act_bytes = 2 if gpu else 4
    if mode in ("full", "full+ckpt"):
        state = (16 + copy) * n
    elif mode in ("fsdp", "fsdp+ckpt"):
        state = 16 * n / n_gpus + (2 if gpu else 4) * (emb + 2 * block)
    elif mode in ("lora", "lora+ckpt"):
        state = (4 + copy) * n + 16 * lora
    else:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    per_layer = (10 * s["d"] + 3 * s["I"] + 4 * s["kv"]) * act_bytes * tokens
    if mode.endswith("ckpt"):
        acts = s["L"] * s["d"] * act_bytes * tokens + per_layer
    else:
        acts = s["L"] * per_layer
    return state + acts


def table(tokens=8192, card_gb=80):
    """docs/training.md's "What fits where" table: GB per GPU, and whether it fits one card (~12% free)."""
    rows = ["| model | params | full (DDP) | full + ckpt | FSDP over 8 | FSDP over 8 + ckpt | LoRA r16 | LoRA r16 + ckpt |",
            "|---|---|---|---|---|---|---|---|"]
    for name, s in QWEN25.items():
        n = param_counts(s)[0]
        cells = []
        for mode, gpus in (("full", 1), ("full+ckpt", 1), ("fsdp", 8), ("fsdp+ckpt", 8), ("lora", 1), ("lora+ckpt", 1)):
            gb = train_memory(s, mode, gpus, tokens) / 1e9
            cells.append(f"{gb:.0f} GB {'fits' if gb < 0.88 * card_gb else '**no**'}")
        rows.append(f"| Qwen2.5-{name} | {n / 1e9:.2f}B | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="estimated train_lm.py memory per GPU (see the module docstring)")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per micro-batch per GPU (batch-size x length)")
    p.add_argument("--card-gb", type=float, default=80, help="GPU memory")
    a = p.parse_args()
    print(table(a.tokens, a.card_gb))
