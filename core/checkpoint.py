"""train_lm.py's checkpoints: how one is written, and when a run may resume from one.

A checkpoint is a Hugging Face model folder (config.json, model.safetensors, tokenizer files) plus
meta.json (the run's arguments, step, data fingerprint) and, for <out>/last, trainer_state.pt
(optimizer, step, epoch, data position, best validation loss, every rank's random generators). It is
written to a temporary folder and renamed into place (outputs.staged_dir), so a run killed at any
moment leaves the old or the new checkpoint whole; with LoRA the folder holds the merged model and
adapter/ the adapters alone, in PEFT's layout. Resuming is refused, with the reason, when the run
would not continue the same training (check_resumable).
"""
from pathlib import Path

import torch

from core.common import UsageError, naming_full_disk, write_json
from core.outputs import check_not_input, check_out_dir, staged_dir
from models.hf_io import MODEL_FILES, write_pretrained
from models.lora import merged, save_adapter


# every name a checkpoint folder (kind "checkpoint") holds
CHECKPOINT_FILES = MODEL_FILES | {"meta.json", "trainer_state.pt", "adapter"}


def check_run_folder(out, run_files, inputs):
    """Refuse, before any work, an --out that is not a training run folder of this project (or
    empty, or new), whose last/ or best/ is not a checkpoint, or that is or holds an input."""
    check_out_dir(out, "training-run", run_files)
    for name in ("last", "best"):
        check_out_dir(Path(out) / name, "checkpoint", CHECKPOINT_FILES)
    check_not_input(out, inputs)


def save_checkpoint(folder, raw_model, tokenizer, meta, trainer_state=None):
    """A Hugging Face model folder + meta.json (+ trainer_state.pt), atomically (temp folder, rename)."""
    with staged_dir(folder, "checkpoint", CHECKPOINT_FILES) as tmp:  # always the old or the new whole checkpoint
        with merged(raw_model):  # LoRA: the folder holds the merged model (a no-op without adapters)
            write_pretrained(raw_model, tokenizer, tmp)
        if hasattr(raw_model, "lora_config"):  # and the adapters alone, in PEFT's layout
            save_adapter(raw_model, tmp / "adapter", meta["args"]["model"])
        write_json(tmp / "meta.json", meta)
        if trainer_state is not None:  # through a Python file: a full disk is an OSError, not torch's RuntimeError
            with naming_full_disk(Path(folder) / "trainer_state.pt"), open(tmp / "trainer_state.pt", "wb") as f:
                torch.save(trainer_state, f)


def check_resumable(meta, args, defaults, world, data_info, last_dir):
    """Refuse to resume from last_dir (meta: its meta.json) a run that would not continue the same
    training: another --max-steps (the schedule) or other flags that shape it, another number of
    processes (so another data order), other training rows or weights, other curriculum stages.
    Raises UsageError naming the change.
    defaults: train_lm.py's flags with their default values (what a run made before a flag existed
    ran with)."""
    for key in ("data", "weights", "denominator", "batch_size", "grad_accum", "seed", "max_len", "model", "lr",
                "min_lr", "warmup_steps", "weight_decay", "curriculum", "lora_rank", "lora_alpha", "lora_targets",
                "fsdp", "prompt_format", "system"):
        if meta["args"].get(key, defaults[key]) != getattr(args, key):  # a key an older run lacks: the default
            raise UsageError(f"{last_dir} was trained with --{key.replace('_', '-')} {meta['args'].get(key)}, "
                             f"not {getattr(args, key)}: use another --out, or --resume never to start over")
    if meta.get("world_size", world) != world:  # another global batch: the data order would differ
        raise UsageError(f"{last_dir} was trained on {meta['world_size']} processes, not {world} (the global batch "
                         f"is batch_size * grad_accum * processes): resume with the same number of processes, "
                         f"use another --out, or --resume never to start over")
    if meta["data"]["fingerprint"] != data_info["fingerprint"]:  # same file name, other rows or weights
        raise UsageError(f"{last_dir} was trained on other training rows (or severity weights) than {args.data} "
                         f"holds now: use another --out, or --resume never to start over")
    if meta["args"]["max_steps"] != args.max_steps:  # the cosine (and a curriculum's stages) depend on it
        raise UsageError(f"{last_dir} was trained with --max-steps {meta['args']['max_steps']}, not {args.max_steps}: "
                         f"the learning-rate schedule (and a curriculum's stages) would change mid-run. To train "
                         f"longer, start a new run from its weights (a fresh optimizer and schedule): --model "
                         f"{last_dir} --out <another folder>; or --resume never to start over")
    if meta["data"].get("curriculum") != data_info.get("curriculum"):
        raise UsageError(f"{last_dir} was trained with other curriculum stages: use another --out, or --resume never")
