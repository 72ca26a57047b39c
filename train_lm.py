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
                                                         # (docs/training.md "What fits where"; models/lora.py, models/parallel.py)
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
Rerunning the same command resumes (a finished run stops at once). A resume that would not continue
the same training is refused, naming the flag: another --max-steps (the cosine would be recomputed
mid-run), data, weights, batch settings, learning rate, number of processes. To train longer, start
a new run from the weights, with a fresh optimizer and schedule: --model <out>/last --out <another>.

The terminal: one line per step (its "weighted loss" is the training objective above, the same
number as "loss" in metrics.jsonl; plain "loss" under --weights uniform, where it is the usual
cross-entropy), one per validation (the plain token-mean CE, comparable across --weights, then the
weighted one and the plain CE per class), and one when a curriculum stage begins. --help shows every
flag's default. Bad input ends the run with one "error: ..." line (said once under torchrun).
--out is refused before any work (docs/files.md) if it is, holds or lies inside --data or --model, or is
a folder that is not a training run of this project holding only the names above (a user's file
inside it, even in last/ or best/, is never deleted); a full disk stops the run with one line.

Prompt format (core/prompt.py; evaluate.py uses the same): <question> "\\nالجواب:\\n" <answer> <EOS>;
--prompt-format chat uses the model folder's own chat template instead (instruct models; core/chat.py,
docs/prompts.md): loss on the assistant turn and its end-of-turn token, --system an optional system
message; recorded in meta.json ("prompt") and checked on resume.

Reading the code: train() at the end of the file is the run, top to bottom. Set-up (setup_run),
the model (load_model), the data and the severity weights (load_examples: severity_alpha,
example_weights), the batches (plan_batches, validation_batches), the optimizer (make_optimizer),
a resume (resume_or_start), then the loop: validate and keep the best (validate, save_best), save
the last checkpoint (save_last), then one optimizer step: the data position (advance), the loss
denominator (step_denominator), the weighted loss and its gradients (forward_backward), clipping,
optimizer.step(), one log line (step_record).
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
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from core.chat import add_prompt_flags, chat_format, describe as describe_prompt
from core.checkpoint import CHECKPOINT_FILES, check_resumable, check_run_folder, save_checkpoint
from core.curriculum import CURRICULA, curriculum_stages, describe, stage_at
from core.common import (DEMO_DATA, DataError, HelpFormatter, REPO, SEVERITIES, UsageError, adamw, bf16_supported,
                         check_finite_step, check_probs, cleanup_dist, device_arg, dumps, fraction, non_negative_float,
                         non_negative_int, out_path, positive_float, positive_int, print0, read_jsonl, rng_state,
                         run_main, seed_all, seed_int, set_rng_state, setup_dist, severity_class, stop_cleanly,
                         warn_high_lr, write_jsonl)
from core.outputs import classifier_warnings, mark_dir, output_lock, recover_dir, remove_stale_temps
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
# every name a training run folder (kind "training-run") holds: a folder with anything else is refused
RUN_FILES = {"last", "best", "metrics.jsonl", ".crashed"}

DEMO_TOKENIZER = REPO / "data" / "demo_tokenizer"
DEMO_GPT2 = dict(model_type="gpt2", n_positions=256, n_embd=128, n_layer=4, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # the from-scratch demo model
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux
BUCKET_WINDOW = 100  # length bucketing sorts windows of this many micro-batches


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # --help shows the defaults
    # data and model
    p.add_argument("--data", default=str(DEMO_DATA), help="input JSONL with question, answer, split, severity_probs")
    p.add_argument("--out", default=None, type=out_path, help="run folder (default out/lm-<weights>)")
    p.add_argument("--model", default=None, help="Hugging Face causal LM folder to fine-tune (docs/models.md: supported "
                                                 "architectures; default: a small GPT-2 from scratch with data/demo_tokenizer)")
    p.add_argument("--weights", default="balanced", type=weights_arg,
                   help=f"class weights: {', '.join(SEVERITY_WEIGHTS)} or 'a,b,c'")
    p.add_argument("--denominator", default="tokens", choices=["tokens", "weights"],
                   help="tokens: divide by the answer-token count (uniform == plain CE; weights scale each "
                        "example's gradient); weights: divide by the weight mass sum m*w (a weighted mean)")
    p.add_argument("--curriculum", default=None, choices=CURRICULA,
                   help="severity curriculum (core/curriculum.py): stages mild, moderate, critical; disjoint: stage k "
                        "trains on class k only, cumulative: on classes up to k; steps split by stage rows "
                        "(default: none)")
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
    # models that do not fit plain DDP (docs/training.md: "What fits where")
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
    return resolve_args(p, p.parse_args(argv))


def resolve_args(p, args):
    """The checks that span flags (parser p reports them) and the defaults that depend on other flags
    (--out on --weights, --lr on --model, --min-lr on --lr, --lora-alpha on --lora-rank)."""
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
# The phases of a run, in the order train() calls them


def setup_run(args, rank, world, device):
    """Set-up: refuse a launch that cannot work, recover the output folder after a kill, choose the
    precision. Returns what every later phase reads (a namespace): rank, world, device; the folders
    out, last_dir, best_dir; resume (whether <out>/last holds a run to continue); bf16, autocast (the
    context of every forward pass) and acc_dtype (of sums over many batches)."""
    if args.fsdp and world == 1:  # (checked before any data or model is loaded)
        raise UsageError("--fsdp shards the model over torchrun's ranks: run it under torchrun --nproc_per_node N")
    if args.force_ddp and not (dist.is_available() and dist.is_initialized()):
        raise UsageError("--force-ddp wraps the model in DDP under torchrun: run it under torchrun --nproc_per_node 1")
    out = Path(args.out)
    use_bf16 = args.dtype == "bf16" or (args.dtype == "auto" and bf16_supported(device))
    run = SimpleNamespace(rank=rank, world=world, device=device, out=out, last_dir=out / "last", best_dir=out / "best",
                          bf16=use_bf16, autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                                                         enabled=use_bf16),
                          acc_dtype=torch.float32 if device.type == "mps" else torch.float64)  # MPS has no float64
    if rank == 0:
        remove_stale_temps(out / "metrics.jsonl")  # left by a run killed while rewriting it
        for folder in (run.last_dir, run.best_dir):
            recover_dir(folder, "checkpoint", CHECKPOINT_FILES)  # a kill inside replace_dir left it in .<folder>.old
    if world > 1:
        dist.barrier()  # every rank decides about resuming after the recovery
    run.resume = args.resume == "auto" and (run.last_dir / "trainer_state.pt").is_file()
    return run


def pick_loss(args, device):
    """The training loss function (models/loss.py): the fused chunked lm_head + cross-entropy, or with
    --no-fused-loss its reference (the logits materialized). Both return sum_t w_t * ce_t."""
    if not args.fused_loss:
        return linear_cross_entropy_reference
    if args.compile and device.type == "cuda":  # the loss chunks' element-wise work compiled too
        return functools.partial(fused_linear_cross_entropy, compiled=True)  # (on a CPU it does not pay)
    return fused_linear_cross_entropy


def load_model(args, run):
    """The model and its tokenizer: <out>/last when resuming, else --model, else the demo's small GPT-2
    from scratch (data/demo_tokenizer); with --lora-rank the adapters are added (and, resuming, loaded).
    Fits --max-len to the model's positions. Returns (raw_model in train mode, tokenizer, pad_id, chat:
    the --prompt-format chat template, core/chat.py, or None for the plain format)."""
    if run.resume and not args.lora_rank:
        raw_model, tokenizer = load_pretrained(run.last_dir, device=run.device, expect="lm")
    elif args.model:
        raw_model, tokenizer = load_pretrained(args.model, device=run.device, expect="lm")
    else:
        tokenizer = Tokenizer.from_folder(DEMO_TOKENIZER)
        eos = tokenizer.eos_id
        raw_model = build_model({**DEMO_GPT2, "vocab_size": tokenizer.vocab_size, "bos_token_id": eos,
                                 "eos_token_id": eos, "pad_token_id": eos}).to(run.device)
    if args.lora_rank:  # only the adapters train; last/ holds merged weights, so a resume is base + last/adapter
        try:
            add_lora(raw_model, args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_targets)
        except ValueError as e:  # a --lora-targets name this model lacks: the valid names are listed
            raise UsageError(str(e)) from None
        if run.resume:
            load_adapter(raw_model, run.last_dir / "adapter")
    raw_model.train()
    chat = chat_format(args.prompt_format, args.system, tokenizer, raw_model, args.model or DEMO_TOKENIZER)
    if tokenizer.eos_id is None:
        raise UsageError("the tokenizer declares no EOS token (tokenizer_config.json eos_token): the model "
                         "could not learn where an answer ends")
    cfg = raw_model.config
    n_positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings")
    if args.max_len > n_positions:
        print0(f"--max-len {args.max_len} > the model's {n_positions} positions: using {n_positions}")
        args.max_len = n_positions
    if args.max_len < 16:
        raise UsageError(f"--max-len {args.max_len} is too short for a question and an answer")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id  # never a target: see labels
    return raw_model, tokenizer, pad_id, chat


def tokenize(rows, tokenizer, max_len, chat, name, quiet):
    """The rows as examples (core/prompt.py's format, or chat's template): input_ids and labels (int32
    arrays; label -100 = no loss), n_answer (the tokens with a loss), truncated (None, "question" or
    "answer"), id, cls."""
    examples = []
    for row in tqdm(rows, desc=f"tokenizing {name}", disable=quiet or len(rows) < 10_000):
        ex = build_example(tokenizer, row["question"], row["answer"], max_len, chat)
        examples.append({"id": row["id"], "cls": row["cls"], "n_answer": ex["n_answer"], "truncated": ex["truncated"],
                         "input_ids": np.array(ex["input_ids"], dtype=np.int32),
                         "labels": np.array(ex["labels"], dtype=np.int32)})
    return examples


def load_examples(args, tokenizer, chat, rank):
    """Data and weights: read --data, tokenize every row once, and give every example its severity
    weight w_i = p_i . alpha (example["weight"]). Returns (train examples, val examples, data_info,
    weights_info); the two infos go into meta.json (data_info's fingerprint guards a resume)."""
    train_rows, val_rows = read_rows(args.data, need_probs=args.weights != "uniform")
    if not train_rows:
        raise DataError(args.data, None, "split", "no rows with split 'train'")
    if not val_rows:
        print0(f"note: {args.data} has no 'val' rows: training without validation, so no best/ checkpoint is written")
    if args.weights != "uniform":
        for warning in classifier_warnings(args.data):
            print0(f"WARNING (severity classifier): {warning}")
    train_ex = tokenize(train_rows, tokenizer, args.max_len, chat, "train", quiet=rank != 0)
    val_ex = tokenize(val_rows, tokenizer, args.max_len, chat, "val", quiet=rank != 0)
    # THE WEIGHTS: alpha from the preset over the training rows (rescaled so the mean weight over the
    # training answer tokens is 1), then w_i = p_i . alpha for every example, train and val
    train_probs = [r["probs"] or [1 / 3] * 3 for r in train_rows]  # no probabilities: --weights uniform only
    alpha_raw, alpha = severity_alpha(args.weights, train_probs, [e["n_answer"] for e in train_ex])
    for rows, examples in ((train_rows, train_ex), (val_rows, val_ex)):
        w = example_weights(args.weights, [r["probs"] or [1 / 3] * 3 for r in rows], alpha)
        for ex, wi in zip(examples, w):
            ex["weight"] = float(wi)
    counts = {f"{name}_{kind}": sum(e["truncated"] == kind for e in examples)
              for name, examples in (("train", train_ex), ("val", val_ex)) for kind in ("question", "answer")}
    fingerprint = hashlib.sha1("\n".join(f"{e['id']} {len(e['input_ids'])} {e['weight']!r}" for e in train_ex).encode())
    data_info = {"train_examples": len(train_ex), "val_examples": len(val_ex), "fingerprint": fingerprint.hexdigest(),
                 "train_answer_tokens": int(sum(e["n_answer"] for e in train_ex)),
                 "truncated": counts, "max_len": args.max_len}
    weights_info = {"preset": args.weights, "alpha_raw": alpha_raw.tolist(), "alpha": alpha.tolist(),
                    "classes": list(SEVERITIES), "denominator": args.denominator,
                    "mean_example_weight": float(np.mean([e["weight"] for e in train_ex]))}
    print0(f"data: {len(train_ex)} train / {len(val_ex)} val examples, {data_info['train_answer_tokens']} train "
           f"answer tokens; truncated (question / answer): train {counts['train_question']} / "
           f"{counts['train_answer']}, val {counts['val_question']} / {counts['val_answer']}")
    print0(f"weights {args.weights}: alpha raw {np.round(alpha_raw, 4).tolist()} -> rescaled "
           f"{np.round(alpha, 4).tolist()} (mean weight over train answer tokens = 1)")
    return train_ex, val_ex, data_info, weights_info


def plan_batches(args, train_ex, data_info, world):
    """--curriculum's stages (core/curriculum.py; None without it; written into data_info), and the
    check that the training rows, and every stage's, fill the grad_accum * world micro-batches of one
    optimizer step. Returns (stages, train_lengths: each example's length, for length-bucketed batches)."""
    train_lengths = np.array([len(e["input_ids"]) for e in train_ex])
    stages = None
    if args.curriculum:
        stages = curriculum_stages([e["cls"] for e in train_ex], args.curriculum, args.max_steps)
        data_info["curriculum"] = describe(stages, args.curriculum)
        print0(f"curriculum {args.curriculum}: "
               + ", ".join(f"{s['name']} {len(s['rows'])} rows {s['steps']} steps" for s in stages))
    steps_batches = args.grad_accum * world  # micro-batches per optimizer step, over all ranks
    if len(make_batches(train_lengths, args.batch_size, args.seed, 0)) < steps_batches:
        raise UsageError(f"{len(train_ex)} training examples make fewer than grad_accum * world_size = "
                         f"{steps_batches} micro-batches of {args.batch_size}: lower --batch-size or --grad-accum")
    for st in stages or []:
        if len(stage_batches(train_lengths, args.batch_size, args.seed, 0, st)) < steps_batches:
            raise UsageError(f"--curriculum: stage {st['name']} has {len(st['rows'])} training rows, fewer than "
                             f"grad_accum * world_size = {steps_batches} micro-batches of {args.batch_size}")
    return stages, train_lengths


def validation_batches(val_ex, args):
    """The validation batches, fixed for the run: a seeded sample of at most eval_batches * batch_size
    rows, grouped by severity class (so one batch's loss is one class's loss), sorted by length.
    A list of (class, example indices)."""
    val_order = np.random.default_rng([args.seed, 10**6]).permutation(len(val_ex))
    if args.eval_batches > 0:
        val_order = val_order[:args.eval_batches * args.batch_size]
    val_batches = []
    for c in range(len(SEVERITIES) + 1):  # the last class: rows with no severity at all
        idx = sorted((i for i in val_order if val_ex[i]["cls"] == c), key=lambda i: len(val_ex[i]["input_ids"]))
        val_batches += [(c, idx[s:s + args.batch_size]) for s in range(0, len(idx), args.batch_size)]
    return val_batches


def make_optimizer(raw_model, args):
    """AdamW (fused where torch has it), weight decay on every >= 2-D tensor (matmuls and embeddings,
    as nanoGPT and HF Trainer do), none on biases and norm gains; only trainable parameters (LoRA: the
    adapters)."""
    decay = [p for p in raw_model.parameters() if p.dim() >= 2 and p.requires_grad]
    no_decay = [p for p in raw_model.parameters() if p.dim() < 2 and p.requires_grad]
    return adamw([{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                 lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def resume_or_start(args, run, sharded, optimizer, data_info):
    """Where the loop starts: step 0 of a fresh run (its --out marked as this project's), or, resuming,
    <out>/last's optimizer state, step, data position, best validation loss and random generators,
    once core/checkpoint.py's check_resumable agrees. Returns (step, epoch, data_pos, best_val)."""
    if not run.resume:
        if run.rank == 0:
            mark_dir(run.out, "training-run")  # created once every check has passed, marked (it may be resumed into)
        return 0, 0, 0, float("inf")
    state = torch.load(run.last_dir / "trainer_state.pt", map_location="cpu", weights_only=True)
    meta = json.loads((run.last_dir / "meta.json").read_text(encoding="utf-8"))
    check_resumable(meta, args, vars(get_args([])), run.world, data_info, run.last_dir)
    load_optimizer_state(sharded, optimizer, state["optimizer"])
    set_rng_state(state["rng"][run.rank % len(state["rng"])], run.device)
    print0(f"resumed from {run.last_dir} at step {state['step']}")
    return state["step"], state["epoch"], state["data_pos"], state["best_val"]


def wrap_model(raw_model, sharded, args, run):
    """The module the loop runs: FSDP2's (sharded), DDP's under torchrun (or --force-ddp), else the raw
    model; --compile compiles that. raw_model stays the plain module for validation and saving.
    Returns (model, parallel: "fsdp", "ddp" or "none")."""
    model = sharded if sharded is not None else raw_model
    parallel = "fsdp" if sharded is not None else "ddp" if run.world > 1 or args.force_ddp else "none"
    if parallel == "ddp":
        model = DDP(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if args.compile:  # compile the DDP module (PyTorch's guidance): its all-reduce still overlaps the backward
        model = torch.compile(model)
    return model, parallel


def start_metrics(run, args, step):
    """<out>/metrics.jsonl at the start (rank 0): a fresh run's first line is {"args": ...}; a resumed
    run drops the lines of steps after its checkpoint (they are redone) and adds {"args", "resumed_at"}."""
    path = run.out / "metrics.jsonl"
    if run.rank != 0:
        return
    if not run.resume:  # a fresh run: lines left by an earlier run in this folder are dropped
        write_jsonl(path, [{"args": vars(args)}])
        return
    if path.is_file():
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by the kill: its step is redone anyway
                pass
        write_jsonl(path, [r for r in records if r.get("step", 0) <= step])
    log_metrics(run, {"args": vars(args), "resumed_at": step})


def log_metrics(run, record):
    """Append one line to <out>/metrics.jsonl (rank 0)."""
    if run.rank == 0:
        with open(run.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(dumps(record))


def collate_step(examples, step_batches, pad_id, run, args):
    """This rank's micro-batches of one step: rank r takes every world-th. --compile: short ones padded
    to --batch-size rows and the sequence length marked dynamic, so one graph serves every step."""
    micro_batches = [collate(examples, idx, pad_id, run.device, rows=args.batch_size if args.compile else None)
                     for idx in step_batches[run.rank::run.world]]
    for mb in micro_batches if args.compile else []:  # one graph for every length, from the first step
        torch._dynamo.mark_dynamic(mb["input_ids"], 1)
    return micro_batches


def advance(args, stages, train_lengths, steps_batches, step, stage, epoch, data_pos, batches, say):
    """The data position for optimizer step `step` (0-based): a new curriculum stage starts on its own
    rows from the beginning (and says so); an epoch too short for one more step is over (its remainder
    dropped) and the next one shuffled. Returns (stage, epoch, data_pos, batches)."""
    if stages and stage_at(stages, step) is not stage:  # next curriculum stage: its rows, from the start
        stage, epoch, data_pos = stage_at(stages, step), 0, 0
        batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
        say(f"curriculum stage {stage['name']}: {len(stage['rows'])} rows, steps {stage['first_step'] + 1} to "
            f"{stage['first_step'] + stage['steps']}")
    if data_pos + steps_batches > len(batches):  # epoch over: drop the remainder, reshuffle
        epoch, data_pos = epoch + 1, 0
        batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
    return stage, epoch, data_pos, batches


def gather_losses(sums, world):
    """Every micro-batch's loss sum of the step on every rank, in step_batches order (one small
    collective per step)."""
    if world == 1:
        return sums
    gathered = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    return torch.stack(gathered, dim=1).flatten()  # back to step_batches order: [k, r] -> k * world + r


def crash_once_at(args, run, step):
    """--crash-at-step (tests): die once at this step as if killed (torchrun --max-restarts restarts us)."""
    if args.crash_at_step == step and run.rank == 0 and not (run.out / ".crashed").exists():
        (run.out / ".crashed").touch()
        raise SystemExit(f"simulated crash at step {step} (--crash-at-step)")


def check_finite(args, step, loss, grad_norm, mb_sums, step_batches, train_ex):
    """Stop at a non-finite loss or gradient norm: one line naming the step, --lr and the examples of
    the bad micro-batches (common.check_finite_step)."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    bad = [j for j, s in enumerate(mb_sums) if not math.isfinite(s)] or range(len(step_batches))
    ids = [train_ex[i]["id"] for j in bad for i in step_batches[j]]
    check_finite_step(step + 1, loss, grad_norm, f"lower --lr (now {args.lr:g})", f"; examples of the bad "
                      f"micro-batch(es): {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}")


@torch.no_grad()
def validate(raw_model, sharded, val_ex, val_batches, pad_id, run):
    """Validation loss: plain token-mean CE (comparable across --weights), the weighted one, and both
    per severity class; summed over ranks. None when the batches hold no answer token."""
    raw_model.eval()
    sums = torch.zeros(len(SEVERITIES) + 1, 3, dtype=run.acc_dtype, device=run.device)  # (class, [ce, w*ce, tokens])
    # FSDP: every forward is collective (it gathers weights), so every rank runs every batch
    for c, idx in (val_batches if sharded is not None else val_batches[run.rank::run.world]):
        mb = collate(val_ex, idx, pad_id, run.device)
        with run.autocast():
            w = mb["weights"][:, None].expand_as(mb["labels"]).flatten()
            if sharded is not None:  # FSDP: the loss inside the forward (models/parallel.py)
                ce, wce = sharded(mb["input_ids"], mb["labels"], torch.ones_like(w), w)
            else:  # the output layer on the labelled positions only, once for both losses
                pos = mb["label_pos"]
                hidden = raw_model(mb["input_ids"], return_hidden=True).flatten(0, 1).index_select(0, pos)
                ce_t = token_cross_entropy(hidden, raw_model.lm_head.weight, mb["labels"].flatten()[pos])
                ce, wce = ce_t.sum(), (ce_t * w[pos]).sum()
        sums[c] += torch.stack([ce, wce, torch.tensor(float(mb["n_tokens"]), device=run.device)]).to(run.acc_dtype)
    if run.world > 1 and sharded is None:
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


def report_val(run, step, res, say):
    """One validation's line in metrics.jsonl and on the terminal (nothing when res is None)."""
    if res is None:
        return
    log_metrics(run, {"step": step, **res})
    per_class = ", ".join(f"{n} {res[f'val_loss_{n}']:.4f}" for n in SEVERITIES if f"val_loss_{n}" in res)
    say(f"step {step}: val loss {res['val_loss']:.4f} (ppl {res['val_ppl']:.2f}), "
        f"weighted {res['val_loss_weighted']:.4f}, per class {per_class}")


def save_best(run, raw_model, sharded, tokenizer, meta):
    """<out>/best: the model folder and meta.json (core/checkpoint.py). Every rank calls it (FSDP gathers
    the weights to rank 0, which writes)."""
    with full_weights(raw_model, run.rank, sharded):  # FSDP: gathered to rank 0 (a no-op otherwise)
        if run.rank == 0:
            save_checkpoint(run.best_dir, raw_model, tokenizer, meta)


def save_last(run, raw_model, sharded, optimizer, tokenizer, meta, position):
    """<out>/last: the model folder, meta.json and trainer_state.pt (core/checkpoint.py): the optimizer,
    position (step, epoch, data_pos, best_val) and every rank's random generators, all a resume needs.
    Every rank calls it; none runs ahead before it is written."""
    rngs = [None] * run.world
    if run.world > 1:
        dist.all_gather_object(rngs, rng_state(run.device))
    else:
        rngs = [rng_state(run.device)]
    opt_state = optimizer_state(sharded, optimizer)  # FSDP: gathered from every rank
    with full_weights(raw_model, run.rank, sharded):  # FSDP: gathered to rank 0 (a no-op otherwise)
        if run.rank == 0:
            save_checkpoint(run.last_dir, raw_model, tokenizer, meta, {"optimizer": opt_state, **position, "rng": rngs})
    if run.world > 1:
        dist.barrier()  # nobody runs ahead of a checkpoint that is not written yet


def step_record(raw_model, args, run, train_ex, step_batches, dt, step, loss, lr, grad_norm, epoch, stage):
    """One step's line of metrics.jsonl: the step's weighted training loss, lr, grad norm, epoch,
    throughput (tokens/s of the sequences' lengths; MFU on CUDA, counted by step_flops), peak
    memory, curriculum stage."""
    lengths = [len(train_ex[i]["input_ids"]) for b in step_batches for i in b]
    peak_mem = (torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT) / 2**30
    mfu = step_flops(raw_model, lengths) / dt / (args.peak_flops * run.world) if run.device.type == "cuda" else None
    return {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "epoch": epoch,
            "tokens_per_s": sum(lengths) / dt, "step_ms": 1000 * dt, "mfu": mfu, "peak_mem_gb": peak_mem,
            "stage": stage["name"] if stage else None}


def step_line(record, weights):
    """The terminal line of one step (the same numbers as its metrics.jsonl line). Its loss is the
    training objective, the severity-weighted loss, and says so; under --weights uniform every weight
    is 1 and it is the plain cross-entropy."""
    mfu = f"mfu {100 * record['mfu']:.1f}% " if record["mfu"] is not None else ""
    loss = "loss" if weights == "uniform" else "weighted loss"
    return (f"step {record['step']}: {loss} {record['loss']:.4f} lr {record['lr']:.2e} grad norm "
            f"{record['grad_norm']:.3f} {record['tokens_per_s']:.0f} tok/s {mfu}mem {record['peak_mem_gb']:.2f} GB")


def print_done(run, step, best_val, val_batches):
    """The run's last line: its steps, the best validation loss and where the checkpoints are."""
    if val_batches:
        print0(f"done: {step} steps, best val loss {best_val:.4f}; checkpoints in {run.last_dir} and {run.best_dir}")
    else:
        print0(f"done: {step} steps without validation (no val rows); checkpoint in {run.last_dir}, no best/")


# -----------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    rank, world, device = setup_dist(args.device)
    progress = {"step": None}  # the loop's step, for the message when the run is stopped
    try:
        with stop_cleanly(args.out, progress, checkpoint=Path(args.out) / "last"):  # Ctrl-C, full disk: one line
            if rank == 0:
                check_run_folder(args.out, RUN_FILES, {"--data": args.data, "--model": args.model})  # before any work
            with output_lock(args.out) if rank == 0 else nullcontext():  # two runs cannot share an --out
                return train(args, rank, world, device, progress)
    finally:
        cleanup_dist()


def train(args, rank, world, device, progress):
    """One run: set-up, model, data and weights, optimizer (or resume), then the loop: validate and save
    at the top, then one optimizer step. progress["step"]: the loop's step. Returns {"step", "best_val"}."""
    run = setup_run(args, rank, world, device)  # launch checks, output folder, precision
    loss_fn = pick_loss(args, device)  # models/loss.py: fused, or --no-fused-loss its reference
    seed_all(args.seed)  # the same on every rank: identical initialization (and reproducible generator states)
    raw_model, tokenizer, pad_id, chat = load_model(args, run)  # <out>/last, --model or the demo GPT-2 (+ LoRA)
    torch.manual_seed(args.seed + rank)  # initialization was the same on every rank; dropout masks must not be

    # ---- data and weights: every example tokenized once, with its weight w_i = p_i . alpha
    train_ex, val_ex, data_info, weights_info = load_examples(args, tokenizer, chat, rank)
    stages, train_lengths = plan_batches(args, train_ex, data_info, world)  # --curriculum's stages, or None
    val_batches = validation_batches(val_ex, args)

    # ---- memory savers (models/parallel.py), optimizer, resume, the parallel wrapper, metrics.jsonl
    if args.activation_checkpointing:
        checkpoint_blocks(raw_model)  # recompute each block in the backward
    sharded = shard_model(raw_model, loss_fn, bf16=run.bf16) if args.fsdp else None  # FSDP2 over the ranks
    optimizer = make_optimizer(raw_model, args)
    step, epoch, data_pos, best_val = resume_or_start(args, run, sharded, optimizer, data_info)
    model, parallel = wrap_model(raw_model, sharded, args, run)
    meta = {"args": vars(args), "weights": weights_info, "data": data_info, "world_size": world, "parallel": parallel,
            "prompt": describe_prompt(chat)}
    start_metrics(run, args, step)

    # ---- the loop: validate / save at the top, then one optimizer step over grad_accum * world micro-batches
    steps_batches = args.grad_accum * world
    stage = stage_at(stages, max(step - 1, 0)) if stages else None  # the stage of the saved data position
    batches = stage_batches(train_lengths, args.batch_size, args.seed, epoch, stage)
    start_step, ahead = step, {}  # ahead: (stage, epoch, data_pos after a step) -> the next step's micro-batches
    with tqdm(total=args.max_steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc="train") as pbar:
        say = pbar.write if rank == 0 else (lambda text: None)  # log lines above the progress bar
        while True:
            last_step = step >= args.max_steps
            if val_batches and (step > start_step or step == 0) and (step % args.eval_every == 0 or last_step):
                res = validate(raw_model, sharded, val_ex, val_batches, pad_id, run)
                report_val(run, step, res, say)
                if res is not None and res["val_loss"] < best_val:  # best/: the lowest validation loss so far
                    best_val = res["val_loss"]
                    save_best(run, raw_model, sharded, tokenizer,
                              {**meta, "step": step, "best_val": best_val, "val": res})
            if step > start_step and (step % args.save_every == 0 or last_step):  # last/: all a resume needs
                save_last(run, raw_model, sharded, optimizer, tokenizer, {**meta, "step": step, "best_val": best_val},
                          {"step": step, "epoch": epoch, "data_pos": data_pos, "best_val": best_val})
            if last_step:
                break
            crash_once_at(args, run, step)

            t0 = time.time()
            stage, epoch, data_pos, batches = advance(args, stages, train_lengths, steps_batches, step, stage, epoch,
                                                      data_pos, batches, say)
            step_batches = batches[data_pos:data_pos + steps_batches]  # rank r takes every world-th
            data_pos += steps_batches
            micro_batches = (ahead.pop((stage and stage["name"], epoch, data_pos), None)
                             or collate_step(train_ex, step_batches, pad_id, run, args))
            # THE DENOMINATOR: answer tokens (or their weight mass) of the whole step, all micro-batches of all ranks,
            # before any backward: every token weighs the same however the batch is split (micro-batches, ranks)
            denom = step_denominator(train_ex, step_batches, args.denominator)  # a float: no copy, no all-reduce
            lr = lr_at(step, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums = forward_backward(model, raw_model.lm_head.weight, micro_batches, denom, world, loss_fn, run.autocast)
            grad_norm = plain(clip_grad_norm_(raw_model.parameters(), args.grad_clip or math.inf))  # 0: no clipping
            sums = gather_losses(sums, world)  # every rank learns every micro-batch's loss
            if data_pos + steps_batches <= len(batches):  # the next step's batches, while the device still works
                ahead = {(stage and stage["name"], epoch, data_pos + steps_batches):
                         collate_step(train_ex, batches[data_pos:data_pos + steps_batches], pad_id, run, args)}
            *mb_sums, gnorm = torch.cat([sums, grad_norm.float().view(1)]).tolist()  # the step's one host sync
            loss = sum(mb_sums) / denom
            check_finite(args, step, loss, gnorm, mb_sums, step_batches, train_ex)  # else stop, naming the examples
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress["step"] = step
            pbar.update(1)
            if step % args.log_every == 0 or step == args.max_steps:
                record = step_record(raw_model, args, run, train_ex, step_batches, time.time() - t0,
                                     step, loss, lr, gnorm, epoch, stage)
                log_metrics(run, record)
                say(step_line(record, args.weights))
    print_done(run, step, best_val, val_batches)
    return {"step": step, "best_val": best_val}


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
