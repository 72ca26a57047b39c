"""Severity-weighted fine-tuning of a causal language model (GPT-2 / AraGPT2, Qwen2 / Qwen2.5).

Every training example i is a patient's question and a doctor's answer, with the severity
probabilities p_i = (p_mild, p_moderate, p_critical) that score_severity.py wrote. With class
weights alpha (--weights) the example weighs w_i = sum_c p_ic * alpha_c, and the loss of one
optimizer step is

    loss = sum_i sum_t m_it * w_i * ce_it  /  sum_i sum_t m_it

m_it = 1 on answer tokens (the answer and its EOS), 0 on the question, the separator and padding.
The denominator counts the answer tokens of the whole step: all micro-batches, all ranks. With
every w_i = 1 (--weights uniform) this is exactly the usual token-mean cross-entropy. That is why
it is the default: a weight then scales its example's gradient, nothing else, and since alpha is
rescaled so the mean weight over training answer tokens is 1, the learning rate means the same for
every preset. --denominator weights divides by sum m*w instead (a weighted mean: each step's
gradient scale is fixed, so a batch of critical rows counts no more than a batch of mild ones).

Run it:
    python train_lm.py                                   # CPU demo: data/demo.jsonl, a small GPT-2 from scratch
    python train_lm.py --model models/aragpt2-base --weights balanced --out out/base-balanced
    torchrun --nproc_per_node 8 train_lm.py --model models/qwen2.5-0.5b --weights ramp
    python train_lm.py --weights balanced --curriculum cumulative   # stages mild, moderate, critical (core/curriculum.py)
    python train_lm.py --model models/qwen2.5-7b --lora-rank 16 --activation-checkpointing   # LoRA, one GPU
    torchrun --nproc_per_node 8 train_lm.py --model models/qwen2.5-7b --fsdp  # FSDP2 instead of DDP
                                                         # (README "what fits where"; models/lora.py, models/parallel.py)
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --nproc_per_node 8 --max-restarts 3 train_lm.py ...
                                                         # restarted workers resume from <out>/last by themselves
(The variable: torchrun >= 2.5 keeps one rendezvous store across restarts, and restarted workers
can read the previous attempt's addresses and fail to connect; pytorch/pytorch#135712, #167288.)
A rank that fails exits at once, so torchrun ends or restarts the job; a collective waits at most
SEVERITY_FT_COLLECTIVE_TIMEOUT seconds (default 600) for a lost peer. Bad flag values (--lr <= 0,
--min-lr > --lr, --seed < 0, an unavailable --device, ...) stop at parsing, and a loss or gradient
norm that stops being finite stops the run naming the step (docs/reliability.md).
Without --model a 4-layer GPT-2 (d 128, 256 positions) is trained from scratch with the shipped
tokenizer data/demo_tokenizer/ (tools/make_demo_tokenizer.py), so the demo runs offline on a CPU
in a couple of minutes. One GPU or N GPUs: the same command under torchrun (DDP, nccl; gloo on CPU;
with one process no DDP unless --force-ddp, which checks the multi-GPU path on one GPU).
The global batch is batch_size * grad_accum * world_size sequences.

Reads --data (JSONL; common.read_jsonl): fields question, answer, split ("train" rows are
trained on, "val" rows validated on, "test" rows ignored), id (named in errors), severity_probs
(required unless --weights uniform), severity (per-class validation groups rows by it, else
by the argmax of severity_probs, as evaluate.py does).
All rows are tokenized once at start-up (430k MAQA rows: a few minutes and ~1 GB per rank).

Writes --out (default out/lm-<weights>):
    last/     the latest checkpoint: a Hugging Face model folder (config.json, model.safetensors,
              tokenizer files) + meta.json + trainer_state.pt (optimizer, step, data position, RNG)
    best/     the checkpoint with the lowest validation loss (model folder + meta.json)
              with --lora-rank both are the merged model and also hold adapter/ (PEFT's layout)
    metrics.jsonl  first line {"args": ...}; then one line per step and one per validation
Checkpoints (core/checkpoint.py) are written to a temporary folder and renamed into place, so a run killed
at any moment resumes from a complete checkpoint; resuming gives the same weights as not stopping.

Prompt format (core/prompt.py; evaluate.py uses the same): <question> "\\nالجواب:\\n" <answer> <EOS>;
--prompt-format chat uses the model folder's own chat template instead (instruct models; core/chat.py,
docs/prompts.md): loss on the assistant turn and its end-of-turn token, --system an optional system
message; recorded in meta.json ("prompt") and checked on resume.
"""
import argparse
import functools
import hashlib
import json
import math
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from core.chat import add_prompt_flags, chat_format, describe as describe_prompt
from core.checkpoint import check_resumable, save_checkpoint
from core.curriculum import CURRICULA, curriculum_stages, describe, stage_at
from core.common import (DEMO_DATA, DataError, REPO, SEVERITIES, UsageError, adamw, bf16_supported,
                        check_finite_step, check_out_dir, check_probs, classifier_warnings, cleanup_dist,
                        device_arg, dumps, fraction, mark_dir, non_negative_float, non_negative_int, out_path,
                        output_lock, positive_float, positive_int, print0, read_jsonl, recover_dir,
                        remove_stale_temps, rng_state, run_main, seed_all, seed_int, set_rng_state, setup_dist,
                        severity_class, stop_cleanly, warn_high_lr, write_jsonl)
from models import Tokenizer, build_model, load_pretrained
from models.loss import fused_linear_cross_entropy, linear_cross_entropy_reference, token_cross_entropy
from models.lora import add_lora, load_adapter
from models.parallel import (LossModel, checkpoint_blocks, full_weights, load_optimizer_state, optimizer_state, plain,
                             shard_model)
from core.prompt import build_example

# Class weights alpha = (mild, moderate, critical). Fixed presets are rescaled at start-up so the
# mean weight over the training answer tokens is 1: the learning rate means the same for all.
SEVERITY_WEIGHTS = {
    "uniform": (1.0, 1.0, 1.0),  # plain cross-entropy: the baseline
    "ramp": (1.0, 1.5, 2.0),  # a critical answer counts twice a mild one
    "steep": (1.0, 2.0, 4.0),
    "balanced": None,  # computed: alpha_c = N / (3 * sum_i p_ic), inverse soft class frequency
}                      # anything else: a custom "a,b,c", e.g. --weights 1,1.2,3
# what a run folder written before the project marked its folders may hold (it may be resumed into)
RUN_FILES = {"last", "best", "metrics.jsonl", ".crashed", "last.old", "best.old", ".last.tmp", ".best.tmp"}

DEMO_TOKENIZER = REPO / "data" / "demo_tokenizer"
DEMO_GPT2 = dict(model_type="gpt2", n_positions=256, n_embd=128, n_layer=4, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the from-scratch demo model
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
BUCKET_WINDOW = 100  # length bucketing sorts windows of this many micro-batches


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data and model
    p.add_argument("--data", default=str(DEMO_DATA), help="input JSONL with question, answer, split, severity_probs")
    p.add_argument("--out", default=None, type=out_path, help="run folder (default out/lm-<weights>)")
    p.add_argument("--model", default=None, help="Hugging Face causal LM folder to fine-tune (README: supported "
                                                 "architectures; default: a small GPT-2 from scratch with data/demo_tokenizer)")
    p.add_argument("--weights", default="balanced", type=weights_arg,
                   help=f"class weights: {', '.join(SEVERITY_WEIGHTS)} or 'a,b,c'")
    p.add_argument("--denominator", default="tokens", choices=["tokens", "weights"],
                   help="tokens: divide by the answer-token count (uniform == plain CE; weights scale each "
                        "example's gradient); weights: divide by the weight mass sum m*w (a weighted mean)")
    p.add_argument("--curriculum", default=None, choices=CURRICULA,
                   help="severity curriculum (core/curriculum.py): stages mild, moderate, critical; disjoint: stage k "
                        "trains on class k only, cumulative: on classes up to k; steps split by stage rows")
    p.add_argument("--max-len", type=positive_int, default=512,
                   help="longest example in tokens (question + separator + "
                                                            "answer + EOS); longer ones are truncated and counted")
    add_prompt_flags(p, "plain")
    # optimization
    p.add_argument("--max-steps", type=int, default=300, help="optimizer steps (the demo default; MAQA needs ~10k)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch per rank")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step per rank")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default 5e-5 with --model, 1e-3 from scratch)")
    p.add_argument("--min-lr", type=non_negative_float, default=None,
                   help="final learning rate of the cosine (default lr / 10)")
    p.add_argument("--warmup-steps", type=non_negative_int, default=20, help="linear warmup steps")
    p.add_argument("--weight-decay", type=non_negative_float, default=0.1, help="AdamW weight decay on >= 2-D weights")
    p.add_argument("--grad-clip", type=non_negative_float, default=1.0, help="clip the global gradient norm (0 = off)")
    # evaluation, checkpoints, logging
    p.add_argument("--eval-every", type=int, default=50, help="validate every N steps (and at the end)")
    p.add_argument("--eval-batches", type=non_negative_int, default=20,
                   help="validate on a fixed sample of N * batch-size val rows (0 = all)")
    p.add_argument("--save-every", type=int, default=100, help="write <out>/last every N steps (and at the end)")
    p.add_argument("--resume", default="auto", choices=["auto", "never"],
                   help="auto: continue from <out>/last when it exists (so torchrun --max-restarts works)")
    p.add_argument("--log-every", type=int, default=1, help="print and record every N steps")
    p.add_argument("--peak-flops", type=positive_float, default=989e12,
                   help="per-device peak FLOP/s for the MFU estimate "
                                                                    "(H100 bf16 dense; MFU is null on CPU)")
    # system
    p.add_argument("--seed", type=seed_int, default=1337, help="seed for initialization, data order and dropout")
    p.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 autocast on GPUs that support it, fp32 elsewhere (weights stay fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the raw module is saved); on "
                                                          "CUDA also the fused loss's per-chunk element-wise work")
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="chunked lm_head + cross-entropy (models/loss.py); --no-fused-loss materializes the logits "
                        "in training (validation always uses the chunked per-token loss)")
    p.add_argument("--force-ddp", action="store_true", help="under torchrun, wrap the model in DDP with one "
                   "process too: a check of the multi-GPU code path on one GPU (same results, some overhead)")
    # models that do not fit plain DDP (README: "what fits where")
    p.add_argument("--lora-rank", type=non_negative_int, default=0,
                   help="train LoRA adapters of this rank on the frozen model "
                                                            "(models/lora.py; 0 = full fine-tuning)")
    p.add_argument("--lora-alpha", type=positive_float, default=None,
                   help="LoRA scale alpha / rank (default alpha = 2 * rank)")
    p.add_argument("--lora-dropout", type=fraction, default=0.05, help="dropout on the input of the LoRA path")
    p.add_argument("--lora-targets", default="auto", help="comma-separated linear layer names to adapt; auto: every "
                                                          "attention and MLP projection (GPT-2 c_attn,c_proj,c_fc; "
                                                          "Qwen2/Llama q,k,v,o,gate,up,down_proj)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in the backward instead of keeping its activations (models/parallel.py)")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and optimizer state "
                                                      "over the ranks with FSDP2 instead of DDP (models/parallel.py)")
    p.add_argument("--crash-at-step", type=int, default=None, help=argparse.SUPPRESS)  # tests: die once, see the loop
    args = p.parse_args(argv)
    for flag in ("max_steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.out = args.out or f"out/lm-{args.weights.replace(',', '_')}"
    args.lr = args.lr if args.lr is not None else (5e-5 if args.model else 1e-3)
    args.min_lr = args.min_lr if args.min_lr is not None else args.lr / 10
    if args.min_lr > args.lr:
        p.error(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}: the cosine decays from --lr to --min-lr")
    warn_high_lr(args.lr)
    if args.fsdp and (args.lora_rank or args.compile):  # not built or tested together; LoRA needs no sharding
        p.error("--fsdp does not combine with --lora-rank or --compile")
    if args.fsdp and args.force_ddp:
        p.error("--force-ddp and --fsdp: choose one way to parallelize")
    args.lora_alpha = args.lora_alpha if args.lora_alpha is not None else 2.0 * args.lora_rank
    return args


# -----------------------------------------------------------------------------
# Data: rows, severity weights, length-bucketed batches


def read_rows(path, need_probs):
    """(train, val) lists of {id, question, answer, probs, cls} from a JSONL file."""
    splits = {"train": [], "val": []}
    for lineno, row in read_jsonl(path, required=("question", "answer", "split")):
        if row["split"] not in ("train", "val", "test"):
            raise DataError(path, lineno, "split", f"expected train, val or test, got {row['split']!r}")
        if row["split"] == "test":
            continue
        probs = row.get("severity_probs")
        if probs is not None:
            probs = check_probs(probs, path, lineno)
        elif need_probs:
            raise DataError(path, lineno, "severity_probs", "missing: score the file with score_severity.py "
                                                            "first, or train the baseline with --weights uniform")
        label = severity_class(row, path, lineno)  # per-class validation groups rows as evaluate.py does
        cls = SEVERITIES.index(label) if label else len(SEVERITIES)
        splits[row["split"]].append({"id": str(row.get("id", f"line {lineno}")), "question": row["question"],
                                     "answer": row["answer"], "probs": probs, "cls": cls})
    return splits["train"], splits["val"]


def custom_alpha(text):
    """The class weights of a custom --weights 'a,b,c': three finite non-negative numbers, not all
    0; None for anything else."""
    try:
        raw = [float(x) for x in text.split(",")]
    except ValueError:
        return None
    return raw if len(raw) == 3 and all(math.isfinite(x) and x >= 0 for x in raw) and sum(raw) > 0 else None


def weights_arg(text):
    """argparse type of --weights: a preset name or three finite non-negative numbers, not all 0."""
    if text in SEVERITY_WEIGHTS or custom_alpha(text) is not None:
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(SEVERITY_WEIGHTS)} or three "
                                     f"finite non-negative numbers 'mild,moderate,critical', not all 0")


def severity_alpha(preset, probs, n_answer):
    """Class weights for a preset: (raw alpha, alpha rescaled so the token-mean weight is 1).

    probs [N, 3] of the training rows, n_answer [N] their answer tokens. Example weights are
    w_i = probs_i . alpha; the rescaling makes sum_i n_i w_i / sum_i n_i = 1.
    """
    probs, n_answer = np.asarray(probs, dtype=np.float64), np.asarray(n_answer, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # check_probs allows sums 1 +- 1e-3
    if preset == "balanced":
        mass = probs.sum(axis=0)
        if (mass <= 0).any():
            raise UsageError(f"--weights balanced: no training probability mass on {SEVERITIES[int(np.argmin(mass))]}")
        raw = len(probs) / (3 * mass)
    elif preset in SEVERITY_WEIGHTS:
        raw = np.array(SEVERITY_WEIGHTS[preset], dtype=np.float64)
    else:
        raw = custom_alpha(preset)
        if raw is None:
            raise UsageError(f"--weights {preset!r}: expected one of {', '.join(SEVERITY_WEIGHTS)} or three "
                             f"non-negative numbers 'mild,moderate,critical'")
        raw = np.array(raw, dtype=np.float64)
    unit = raw / raw.max()  # alpha is scale-free: so weights of 1e308 cannot overflow the sums below
    token_mean = float((n_answer * (probs @ unit)).sum() / n_answer.sum())
    if not token_mean > 0:
        raise UsageError(f"--weights {preset}: every training example would weigh 0 (no probability mass on the "
                         f"classes with a non-zero weight)")
    alpha = unit / token_mean
    if not np.isfinite(alpha).all():
        raise UsageError(f"--weights {preset}: the rescaled weights {alpha.tolist()} are not finite: the raw weights "
                         f"span too many orders of magnitude")
    return raw, alpha


def example_weights(preset, probs, alpha):
    """w_i = p_i . alpha; exactly 1 under uniform (rows may lack probabilities there)."""
    if preset == "uniform":
        return np.ones(len(probs))
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(SEVERITIES))  # also for no rows
    return (probs / probs.sum(axis=1, keepdims=True)) @ alpha


def make_batches(lengths, batch_size, seed, epoch):
    """One epoch of micro-batches (arrays of example indices), a pure function of (seed, epoch).

    Shuffle, sort each window of BUCKET_WINDOW * batch_size examples by length (so a batch pads
    little), cut into micro-batches, shuffle the micro-batches.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = BUCKET_WINDOW * batch_size
    batches = []
    for s in range(0, len(order), window):
        chunk = order[s:s + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def stage_batches(lengths, batch_size, seed, epoch, stage=None):
    """One epoch of micro-batches (indices into all training rows): make_batches over every row,
    or, under --curriculum, over the rows of one stage (its own seed, so stages shuffle independently)."""
    if stage is None:
        return make_batches(lengths, batch_size, seed, epoch)
    rows = stage["rows"]
    stage_seed = seed + 7919 * (1 + SEVERITIES.index(stage["name"]))
    return [rows[b] for b in make_batches(lengths[rows], batch_size, stage_seed, epoch)]


def collate(examples, indices, pad_id, device, rows=None):
    """A right-padded micro-batch: input_ids [B, T], labels [B, T] (-100 = no loss), weights [B],
    label_pos [K]: the flat (B * T) positions that carry a label, found here on the host so the
    device can gather them without a sync. rows: pad to this many rows (all padding, no labels)."""
    T = max(len(examples[i]["input_ids"]) for i in indices)
    B = max(rows or 0, len(indices))
    pin = torch.device(device).type == "cuda"  # page-locked host memory: the copies run asynchronously
    x = torch.full((B, T), pad_id, dtype=torch.long, pin_memory=pin)
    y = torch.full((B, T), -100, dtype=torch.long, pin_memory=pin)
    for r, i in enumerate(indices):
        n = len(examples[i]["input_ids"])
        x[r, :n] = torch.from_numpy(examples[i]["input_ids"])
        y[r, :n] = torch.from_numpy(examples[i]["labels"])
    w = torch.tensor([examples[i]["weight"] for i in indices] + [0.0] * (B - len(indices)), dtype=torch.float32)
    pos = (y.view(-1) != -100).nonzero().view(-1)
    to_dev = lambda t: (t.pin_memory() if pin and not t.is_pinned() else t).to(device, non_blocking=pin)  # noqa: E731
    return {"input_ids": to_dev(x), "labels": to_dev(y), "weights": to_dev(w), "label_pos": to_dev(pos),
            "n_tokens": sum(examples[i]["n_answer"] for i in indices)}


def step_denominator(examples, step_batches, denominator):
    """The loss denominator of one optimizer step, on the host: the answer tokens ("tokens") or
    their weight mass ("weights") of every micro-batch of the step, all ranks' included. Every
    rank knows every micro-batch of the step, so no device copy and no all-reduce are needed."""
    if denominator == "tokens":
        return float(sum(examples[i]["n_answer"] for b in step_batches for i in b))
    mass = float(sum(examples[i]["n_answer"] * examples[i]["weight"] for b in step_batches for i in b))
    return mass or 1.0  # a step whose every example weighs 0 (--weights 0,0,1): loss 0, gradient 0, not 0 / 0


# -----------------------------------------------------------------------------
# The loss, the learning rate, checkpoints


def forward_backward(model, lm_head_weight, micro_batches, denom, world_size, loss_fn, autocast):
    """Accumulate the gradients of one optimizer step; returns the micro-batches' weighted loss sums.

    Each micro-batch contributes loss_sum / denom * world_size: denom is the global denominator
    of the whole step, and DDP averages gradients over ranks, so the world_size turns that mean
    back into the sum over ranks. Gradients are all-reduced only after the last micro-batch.
    """
    sums = []
    for k, mb in enumerate(micro_batches):
        last = k == len(micro_batches) - 1
        with model.no_sync() if isinstance(getattr(model, "_orig_mod", model), DDP) and not last else nullcontext():
            with autocast():
                # right padding under a causal mask: real tokens never see the padding, so no
                # attention mask is needed (SDPA keeps its fastest is_causal kernel)
                token_weights = mb["weights"][:, None].expand_as(mb["labels"])  # (B, T)
                if isinstance(getattr(model, "_orig_mod", model), LossModel):  # FSDP: the loss inside the forward
                    loss_sum = model(mb["input_ids"], mb["labels"], token_weights)[0]  # (models/parallel.py)
                else:
                    hidden = model(mb["input_ids"], return_hidden=True)  # (B, T, C)
                    h, y, w = hidden.flatten(0, 1), mb["labels"].flatten(), token_weights.flatten()
                    if loss_fn is not linear_cross_entropy_reference:  # fused: the output layer only where there is loss
                        h, y, w = (t.index_select(0, mb["label_pos"]) for t in (h, y, w))
                    loss_sum = loss_fn(h, lm_head_weight, y, w)
            (loss_sum / denom * world_size).backward()
        sums.append(loss_sum.detach())
    return torch.stack(sums)


def lr_at(step, args):
    """Linear warmup to args.lr, then cosine down to args.min_lr at args.max_steps."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps))
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (args.lr - args.min_lr)


def matmul_params(model):
    """Parameters that take part in matmuls: all but the input embeddings (the lm_head counts)."""
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    return n + (model.lm_head.weight.numel() if id(model.lm_head.weight) in emb else 0)


def step_flops(model, lengths):
    """A training step's FLOPs over sequences of these lengths, as MFU counts them (PaLM): 6 per matmul
    parameter per token, plus 12 * layers * d_model * T^2 per sequence of T tokens for attention."""
    c = model.config
    n_layer, d_model = getattr(c, "n_layer", None) or c.num_hidden_layers, getattr(c, "n_embd", None) or c.hidden_size
    return 6 * matmul_params(model) * sum(lengths) + 12 * n_layer * d_model * sum(t * t for t in lengths)


# -----------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    rank, world, device = setup_dist(args.device)
    progress = {"step": None}  # the loop's step, for the message when the run is stopped
    try:
        with stop_cleanly(args.out, progress, checkpoint=Path(args.out) / "last"):  # Ctrl-C, full disk: one line
            if rank == 0:
                check_out_dir(args.out, RUN_FILES)  # before any work: a folder of the user's is never written into
            with output_lock(args.out) if rank == 0 else nullcontext():  # two runs cannot share an --out
                return train(args, rank, world, device, progress)
    finally:
        cleanup_dist()


def train(args, rank, world, device, progress):
    # ---- setup: seed, precision, output folder
    if args.fsdp and world == 1:  # (checked before any data or model is loaded)
        raise UsageError("--fsdp shards the model over torchrun's ranks: run it under torchrun --nproc_per_node N")
    if args.force_ddp and not (dist.is_available() and dist.is_initialized()):
        raise UsageError("--force-ddp wraps the model in DDP under torchrun: run it under torchrun --nproc_per_node 1")
    out = Path(args.out)
    last_dir, best_dir = out / "last", out / "best"
    use_bf16 = args.dtype == "bf16" or (args.dtype == "auto" and bf16_supported(device))
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    loss_fn = fused_linear_cross_entropy if args.fused_loss else linear_cross_entropy_reference
    if args.fused_loss and args.compile and device.type == "cuda":  # the loss chunks' element-wise work too
        loss_fn = functools.partial(fused_linear_cross_entropy, compiled=True)  # (on a CPU it does not pay)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    if rank == 0:
        remove_stale_temps(out / "metrics.jsonl")  # left by a run killed while rewriting it
        for folder in (last_dir, best_dir):
            recover_dir(folder)  # a kill inside replace_dir left the previous checkpoint in .<folder>.old
    if world > 1:
        dist.barrier()  # every rank decides about resuming after the recovery
    resume = args.resume == "auto" and (last_dir / "trainer_state.pt").is_file()
    seed_all(args.seed)  # the same on every rank: identical initialization (and reproducible generator states)

    # ---- model and tokenizer: the last checkpoint, --model, or a small GPT-2 from scratch
    if resume and not args.lora_rank:
        raw_model, tokenizer = load_pretrained(last_dir, device=device, expect="lm")
    elif args.model:
        raw_model, tokenizer = load_pretrained(args.model, device=device, expect="lm")
    else:
        tokenizer = Tokenizer.from_folder(DEMO_TOKENIZER)
        eos = tokenizer.eos_id
        raw_model = build_model({**DEMO_GPT2, "vocab_size": tokenizer.vocab_size, "bos_token_id": eos,
                                 "eos_token_id": eos, "pad_token_id": eos}).to(device)
    if args.lora_rank:  # only the adapters train; last/ holds merged weights, so a resume is base + last/adapter
        try:
            add_lora(raw_model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
        except ValueError as e:  # a --lora-targets name this model lacks: the valid names are listed
            raise UsageError(str(e)) from None
        if resume:
            load_adapter(raw_model, last_dir / "adapter")
    raw_model.train()
    torch.manual_seed(args.seed + rank)  # initialization was the same on every rank; dropout masks must not be
    chat = chat_format(args.prompt_format, args.system, tokenizer, raw_model, args.model or DEMO_TOKENIZER)
    if tokenizer.eos_id is None:
        raise UsageError("the tokenizer declares no EOS token (tokenizer_config.json eos_token): the model "
                         "could not learn where an answer ends")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id  # never a target: see labels
    cfg = raw_model.config
    n_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings")
    if args.max_len > n_positions:
        print0(f"--max-len {args.max_len} > the model's {n_positions} positions: using {n_positions}")
        args.max_len = n_positions
    if args.max_len < 16:
        raise UsageError(f"--max-len {args.max_len} is too short for a question and an answer")

    # ---- data: read, tokenize once, weigh
    train_rows, val_rows = read_rows(args.data, need_probs=args.weights != "uniform")
    if not train_rows:
        raise DataError(args.data, None, "split", "no rows with split 'train'")
    if not val_rows:
        print0(f"note: {args.data} has no 'val' rows: training without validation, so no best/ checkpoint is written")
    if args.weights != "uniform":
        for warning in classifier_warnings(args.data):
            print0(f"WARNING (severity classifier): {warning}")
    examples = {}
    for name, rows in (("train", train_rows), ("val", val_rows)):
        examples[name] = []
        for row in tqdm(rows, desc=f"tokenizing {name}", disable=rank != 0 or len(rows) < 10_000):
            ex = build_example(tokenizer, row["question"], row["answer"], args.max_len, chat)
            examples[name].append({"id": row["id"], "cls": row["cls"], "n_answer": ex["n_answer"],
                                   "truncated": ex["truncated"],
                                   "input_ids": np.array(ex["input_ids"], dtype=np.int32),
                                   "labels": np.array(ex["labels"], dtype=np.int32)})
    train_probs = [r["probs"] or [1 / 3] * 3 for r in train_rows]
    alpha_raw, alpha = severity_alpha(args.weights, train_probs, [e["n_answer"] for e in examples["train"]])
    for name, rows in (("train", train_rows), ("val", val_rows)):
        w = example_weights(args.weights, [r["probs"] or [1 / 3] * 3 for r in rows], alpha)
        for ex, wi in zip(examples[name], w):
            ex["weight"] = float(wi)
    train_ex, val_ex = examples["train"], examples["val"]
    train_lengths = np.array([len(e["input_ids"]) for e in train_ex])
    counts = {f"{name}_{kind}": sum(e["truncated"] == kind for e in examples[name])
              for name in ("train", "val") for kind in ("question", "answer")}
    fingerprint = hashlib.sha1("\n".join(f"{e['id']} {len(e['input_ids'])} {e['weight']!r}" for e in train_ex).encode())
    data_info = {"train_examples": len(train_ex), "val_examples": len(val_ex), "fingerprint": fingerprint.hexdigest(),
                 "train_answer_tokens": int(sum(e["n_answer"] for e in train_ex)),
                 "truncated": counts, "max_len": args.max_len}
    weights_info = {"preset": args.weights, "alpha_raw": alpha_raw.tolist(), "alpha": alpha.tolist(),
                    "classes": list(SEVERITIES), "denominator": args.denominator,
                    "mean_example_weight": float(np.mean([e["weight"] for e in train_ex]))}
    stages = curriculum_stages([e["cls"] for e in train_ex], args.curriculum, args.max_steps) if args.curriculum else None
    if stages:
        data_info["curriculum"] = describe(stages, args.curriculum)
        print0(f"curriculum {args.curriculum}: " + ", ".join(f"{s['name']} {len(s['rows'])} rows {s['steps']} steps" for s in stages))
    print0(f"data: {len(train_ex)} train / {len(val_ex)} val examples, {data_info['train_answer_tokens']} train "
           f"answer tokens; truncated (question / answer): train {counts['train_question']} / "
           f"{counts['train_answer']}, val {counts['val_question']} / {counts['val_answer']}")
    print0(f"weights {args.weights}: alpha raw {np.round(alpha_raw, 4).tolist()} -> rescaled "
           f"{np.round(alpha, 4).tolist()} (mean weight over train answer tokens = 1)")
    steps_batches = args.grad_accum * world  # micro-batches per optimizer step, over all ranks
    if len(make_batches(train_lengths, args.batch_size, args.seed, 0)) < steps_batches:
        raise UsageError(f"{len(train_ex)} training examples make fewer than grad_accum * world_size = "
                         f"{steps_batches} micro-batches of {args.batch_size}: lower --batch-size or --grad-accum")
    for st in stages or []:
        if len(stage_batches(train_lengths, args.batch_size, args.seed, 0, st)) < steps_batches:
            raise UsageError(f"--curriculum: stage {st['name']} has {len(st['rows'])} training rows, fewer than "
                             f"grad_accum * world_size = {steps_batches} micro-batches of {args.batch_size}")

    # validation batches, fixed: a seeded sample of at most eval_batches * batch_size rows,
    # grouped by severity class so one batch's loss is one class's loss, sorted by length
    val_order = np.random.default_rng([args.seed, 10**6]).permutation(len(val_ex))
    if args.eval_batches > 0:
        val_order = val_order[:args.eval_batches * args.batch_size]
    val_batches = []
    for c in range(len(SEVERITIES) + 1):  # the last class: rows with no severity at all
        idx = sorted((i for i in val_order if val_ex[i]["cls"] == c), key=lambda i: len(val_ex[i]["input_ids"]))
        val_batches += [(c, idx[s:s + args.batch_size]) for s in range(0, len(idx), args.batch_size)]

    # ---- memory savers (models/parallel.py): recompute blocks in backward; FSDP2 shards over ranks
    if args.activation_checkpointing:
        checkpoint_blocks(raw_model)
    sharded = shard_model(raw_model, loss_fn, bf16=use_bf16) if args.fsdp else None

    # ---- optimizer: AdamW, weight decay on every >= 2-D tensor (matmuls and embeddings, as
    # nanoGPT and HF Trainer do), none on biases and norm gains
    decay = [p for p in raw_model.parameters() if p.dim() >= 2 and p.requires_grad]  # LoRA: the adapters only
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2 and p.requires_grad]
    optimizer = adamw([{"params": decay, "weight_decay": args.weight_decay},  # fused where torch has it
                       {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    # ---- resume: optimizer, step, data position, best val, random generators
    step, epoch, data_pos, best_val = 0, 0, 0, float("inf")
    if resume:
        state = torch.load(last_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
        meta = json.loads((last_dir / "meta.json").read_text(encoding="utf-8"))
        check_resumable(meta, args, vars(get_args([])), world, data_info, last_dir)
        load_optimizer_state(sharded, optimizer, state["optimizer"])
        step, epoch, data_pos, best_val = state["step"], state["epoch"], state["data_pos"], state["best_val"]
        set_rng_state(state["rng"][rank % len(state["rng"])], device)
        print0(f"resumed from {last_dir} at step {step}")
    elif rank == 0:
        mark_dir(out)  # created once every check has passed, marked as the project's (so it may be resumed into)

    model = sharded if sharded is not None else raw_model
    parallel = "fsdp" if sharded is not None else "ddp" if world > 1 or args.force_ddp else "none"
    if parallel == "ddp":
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:  # compile the DDP module (PyTorch's guidance): its all-reduce still overlaps the backward
        model = torch.compile(model)
    metrics_path = out / "metrics.jsonl"
    meta = {"args": vars(args), "weights": weights_info, "data": data_info, "world_size": world, "parallel": parallel,
            "prompt": describe_prompt(chat)}

    def log(record):
        if rank == 0:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(dumps(record))

    if rank == 0:
        if resume and metrics_path.is_file():  # drop lines of steps after the checkpoint: they are redone
            records = []
            for line in metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by the kill: its step is redone anyway
                    pass
            write_jsonl(metrics_path, [r for r in records if r.get("step", 0) <= step])
        if resume:
            log({"args": vars(args), "resumed_at": step})
        else:  # a fresh run: lines left by an earlier run in this folder are dropped
            write_jsonl(metrics_path, [{"args": vars(args)}])

    @torch.no_grad()
    def evaluate():
        """Validation loss: plain token-mean CE (comparable across --weights), the weighted one,
        and both per severity class; summed over ranks."""
        raw_model.eval()
        sums = torch.zeros(len(SEVERITIES) + 1, 3, dtype=acc_dtype, device=device)  # (class, [ce, w*ce, tokens])
        # FSDP: every forward is collective (it gathers weights), so every rank runs every batch
        for c, idx in (val_batches if sharded is not None else val_batches[rank::world]):
            mb = collate(val_ex, idx, pad_id, device)
            with autocast():
                w = mb["weights"][:, None].expand_as(mb["labels"]).flatten()
                if sharded is not None:  # FSDP: the loss inside the forward (models/parallel.py)
                    ce, wce = sharded(mb["input_ids"], mb["labels"], torch.ones_like(w), w)
                else:  # the output layer on the labelled positions only, once for both losses
                    pos = mb["label_pos"]
                    hidden = raw_model(mb["input_ids"], return_hidden=True).flatten(0, 1).index_select(0, pos)
                    ce_t = token_cross_entropy(hidden, raw_model.lm_head.weight, mb["labels"].flatten()[pos])
                    ce, wce = ce_t.sum(), (ce_t * w[pos]).sum()
            sums[c] += torch.stack([ce, wce, torch.tensor(float(mb["n_tokens"]), device=device)]).to(acc_dtype)
        if world > 1 and sharded is None:
            dist.all_reduce(sums)
        raw_model.train()
        total = sums.sum(0).tolist()
        if total[2] == 0:
            return None
        res = {"val_loss": total[0] / total[2], "val_loss_weighted": total[1] / total[2]}
        res["val_ppl"] = math.exp(min(res["val_loss"], 50.0))
        for c, name in enumerate(SEVERITIES):
            ce, _, n = sums[c].tolist()
            if n > 0:
                res[f"val_loss_{name}"], res[f"val_ppl_{name}"] = ce / n, math.exp(min(ce / n, 50.0))
        return res

    # ---- the loop: validate / save at the top, then one optimizer step
    stage = stage_at(stages, max(step - 1, 0)) if stages else None  # the stage of the saved data position
    batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
    pbar = tqdm(total=args.max_steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc="train")
    say = pbar.write if rank == 0 else (lambda text: None)  # log lines above the progress bar
    start_step = step
    ahead = {}  # (stage, epoch, data_pos after a step) -> the next step's micro-batches, collated during the step

    def collate_step(step_batches):
        """This rank's micro-batches of one step (--compile: short ones padded, so one shape)."""
        return [collate(train_ex, idx, pad_id, device, rows=args.batch_size if args.compile else None)
                for idx in step_batches[rank::world]]

    while True:
        last_step = step >= args.max_steps  # >=: a run resumed with a lower --max-steps stops at once
        if val_batches and (step > start_step or step == 0) and (step % args.eval_every == 0 or last_step):
            res = evaluate()
            if res is not None:
                log({"step": step, **res})
                per_class = ", ".join(f"{n} {res[f'val_loss_{n}']:.4f}" for n in SEVERITIES if f"val_loss_{n}" in res)
                say(f"step {step}: val loss {res['val_loss']:.4f} (ppl {res['val_ppl']:.2f}), "
                    f"weighted {res['val_loss_weighted']:.4f}, per class {per_class}")
                if res["val_loss"] < best_val:
                    best_val = res["val_loss"]
                    with full_weights(raw_model, rank, sharded):  # FSDP: gathered to rank 0 (a no-op otherwise)
                        if rank == 0:
                            save_checkpoint(best_dir, raw_model, tokenizer, {**meta, "step": step,
                                                                             "best_val": best_val, "val": res})
        if step > start_step and (step % args.save_every == 0 or last_step):
            rngs = [None] * world
            if world > 1:
                dist.all_gather_object(rngs, rng_state(device))
            else:
                rngs = [rng_state(device)]
            opt_state = optimizer_state(sharded, optimizer)  # FSDP: gathered from every rank
            with full_weights(raw_model, rank, sharded):  # FSDP: gathered to rank 0 (a no-op otherwise)
                if rank == 0:
                    trainer_state = {"optimizer": opt_state, "step": step, "epoch": epoch,
                                     "data_pos": data_pos, "best_val": best_val, "rng": rngs}
                    save_checkpoint(last_dir, raw_model, tokenizer, {**meta, "step": step, "best_val": best_val},
                                    trainer_state)
            if world > 1:
                dist.barrier()  # nobody runs ahead of a checkpoint that is not written yet
        if last_step:
            break
        if args.crash_at_step == step and rank == 0 and not (out / ".crashed").exists():
            (out / ".crashed").touch()  # tests: die once here, as if killed; torchrun restarts us
            raise SystemExit(f"simulated crash at step {step} (--crash-at-step)")

        # one optimizer step over grad_accum * world micro-batches; rank r takes every world-th
        t0 = time.time()
        if stages and stage_at(stages, step) is not stage:  # next curriculum stage: its rows, from the start
            stage, epoch, data_pos = stage_at(stages, step), 0, 0
            batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
        if data_pos + steps_batches > len(batches):  # epoch over: drop the remainder, reshuffle
            epoch, data_pos = epoch + 1, 0
            batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
        step_batches = batches[data_pos:data_pos + steps_batches]
        data_pos += steps_batches
        micro_batches = ahead.pop((stage and stage["name"], epoch, data_pos), None) or collate_step(step_batches)
        for mb in micro_batches if args.compile else []:  # one graph for every length, from the first step
            torch._dynamo.mark_dynamic(mb["input_ids"], 1)
        # THE DENOMINATOR: answer tokens (or their weight mass) of the whole optimizer step,
        # summed over every micro-batch of every rank before any backward (on the host: step_denominator),
        # so every token weighs the same however the batch is split into micro-batches and ranks
        denom = step_denominator(train_ex, step_batches, args.denominator)  # a float: no copy, no all-reduce
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = forward_backward(model, raw_model.lm_head.weight, micro_batches, denom, world, loss_fn, autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), args.grad_clip if args.grad_clip > 0 else math.inf)
        grad_norm = plain(grad_norm)  # FSDP: a DTensor
        if world > 1:  # every rank learns every micro-batch's loss (one small collective per step)
            gathered = [torch.empty_like(sums) for _ in range(world)]
            dist.all_gather(gathered, sums)
            sums = torch.stack(gathered, dim=1).flatten()  # back to step_batches order: [k, r] -> k * world + r
        if data_pos + steps_batches <= len(batches):  # the next step's batches, while the device still works
            ahead = {(stage and stage["name"], epoch, data_pos + steps_batches):
                     collate_step(batches[data_pos:data_pos + steps_batches])}
        stats = torch.cat([sums, grad_norm.float().view(1)]).tolist()  # the step's one host sync
        mb_sums, gnorm = stats[:-1], stats[-1]
        loss = sum(mb_sums) / denom
        if not (math.isfinite(loss) and math.isfinite(gnorm)):  # one line naming the step and the flag
            bad = [j for j, s in enumerate(mb_sums) if not math.isfinite(s)] or range(len(step_batches))
            ids = [train_ex[i]["id"] for j in bad for i in step_batches[j]]
            check_finite_step(step + 1, loss, gnorm, f"lower --lr (now {args.lr:g})", f"; examples of the bad "
                              f"micro-batch(es): {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress["step"] = step
        pbar.update(1)

        if step % args.log_every == 0 or step == args.max_steps:
            dt = time.time() - t0
            lengths = [len(train_ex[i]["input_ids"]) for b in step_batches for i in b]
            flops = step_flops(raw_model, lengths)
            peak_mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT) / 2**30
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, "epoch": epoch,
                      "tokens_per_s": sum(lengths) / dt, "step_ms": 1000 * dt,
                      "mfu": flops / dt / (args.peak_flops * world) if device.type == "cuda" else None,
                      "peak_mem_gb": peak_mem, "stage": stage["name"] if stage else None}
            log(record)
            mfu = f"mfu {100 * record['mfu']:.1f}% " if record["mfu"] is not None else ""
            say(f"step {step}: loss {loss:.4f} lr {lr:.2e} grad norm {gnorm:.3f} "
                f"{record['tokens_per_s']:.0f} tok/s {mfu}mem {peak_mem:.2f} GB")
    pbar.close()
    if val_batches:
        print0(f"done: {step} steps, best val loss {best_val:.4f}; checkpoints in {last_dir} and {best_dir}")
    else:
        print0(f"done: {step} steps without validation (no val rows); checkpoint in {last_dir}, no best/")
    return {"step": step, "best_val": best_val}


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
