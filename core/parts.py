"""Generation that survives a kill: evaluate.py's answers, kept batch by batch beside --out.

    .NAME.parts/                       the sibling of --out NAME that a generation run owns
        .written-by-severity-ft        the project's marker, kind eval-parts (docs/files.md)
        plan.json                      what the answers depend on (model, prompt format, decoding
                                       flags, the rows, the sample, the number of processes)
        rank0-of-2.jsonl ...           one line per finished batch of that torchrun rank:
                                       {"batch": b, "rows": [row indices], "generated": [...],
                                        "tokens": n}

Each batch's line is appended, flushed and fsync'ed as soon as the batch is decoded. A run killed at
any moment (kill -9, Ctrl-C, a lost node) leaves whole lines and at most one partial last line;
re-running the same command drops the partial line, keeps every whole batch and generates only the
batches that are missing. The batch plan (rows sorted by prompt length, cut every --batch-size) is
a pure function of the rows and the flags, and a batch's sampling seed is --seed + its index, so
a resumed run generates exactly what the killed one would have: a greedy run's generations.jsonl
is byte-identical to an uninterrupted run's. A rerun whose plan.json differs (another model,
prompt format, decoding flag, sample, data or number of processes) is refused with one line
naming the difference, before anything is generated.

The folder lives until the run folder has been swapped in whole (outputs.staged_dir); then rank 0
deletes it (finish). outputs.remove_stale_temps leaves it alone: it is not a temporary file but the
work a rerun continues from. Under torchrun every rank writes only its own file; rank 0 creates
and checks the folder, and a refusal reaches every rank (no rank waits forever).
"""
import json
import os
import shutil
from pathlib import Path

import torch.distributed as dist

from core.common import UsageError, write_json
from core.outputs import dir_refusal, mark_dir

PART_FILES = {"plan.json", "rank*-of-*.jsonl"}  # every name a parts folder (kind "eval-parts") holds
# how each plan.json key is named to the user when it differs
NAMES = {"model": "--model", "model_files": "the --model folder's files (changed since?)",
         "prompt_format": "the prompt format", "rows": "the evaluated rows (--data / --split / --limit)",
         "world_size": "the number of processes (torchrun --nproc_per_node x --nnodes)"}


def parts_dir(out):
    """The sibling folder of --out that holds a generation run's finished batches."""
    out = Path(out)
    return out.with_name(f".{out.name}.parts")


def model_files(model):
    """(name, size, mtime_ns) of the model folder's weight and config files: a model rewritten in
    place (train_lm.py saving a new best) is another model."""
    folder = Path(model)
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.iterdir())
            if p.suffix in (".safetensors", ".json") and p.is_file()]


def difference(old, new):
    """One line naming the first plan.json field that differs, or None."""
    for key in list(new) + [k for k in old if k not in new]:
        if old.get(key) != new.get(key):
            name = NAMES.get(key, "--" + key.replace("_", "-"))
            if key in ("model_files", "rows"):
                return f"{name} differ"
            return f"{name} was {old.get(key)!r}, now {new.get(key)!r}"
    return None


def _check_or_create(folder, plan):
    """rank 0: create the folder with plan.json, or check an existing one against plan. Returns
    an error message (str) or None."""
    if folder.exists():
        why = dir_refusal(folder, "eval-parts", PART_FILES)  # (docs/files.md: only our own kind is ours)
        if why:
            return f"{why}: it is in the way; move it away"
        try:
            old = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old is None:  # killed before plan.json landed: nothing can have been generated
            shutil.rmtree(folder)
        else:
            diff = difference(old, plan)
            if diff:
                return (f"{folder} holds an unfinished run generated with other settings: {diff}; rerun with "
                        f"its settings to continue, or delete {folder} to start over")
            return None
    mark_dir(folder, "eval-parts")
    write_json(folder / "plan.json", plan)
    return None


def start(out, plan, rank, world):
    """Collective under torchrun. Returns (path of this rank's file, {batch index: record}) with the
    whole batches an earlier run of the same plan finished; raises UsageError on another plan."""
    folder = parts_dir(out)
    error = _check_or_create(folder, plan) if rank == 0 else None
    if world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise UsageError(error)
    path = folder / f"rank{rank}-of-{world}.jsonl"
    return path, read_done(path)


def read_done(path):
    """{batch: record} of the whole lines of a rank file; a partial last line (a kill during the
    write) is cut off so the next append starts on a fresh line."""
    done = {}
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
                done[int(rec["batch"])] = rec
            except (ValueError, KeyError, TypeError):
                break
            good += len(raw)
    if good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def append(path, record):
    """Append one finished batch as one line, on disk before the next batch starts."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def finish(out):
    """rank 0, after the run folder was swapped in: the finished batches are no longer needed."""
    folder = parts_dir(out)
    if folder.is_dir() and not dir_refusal(folder, "eval-parts", PART_FILES):
        shutil.rmtree(folder)
