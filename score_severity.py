"""Add calibrated severity probabilities to every row of a JSONL file.

For each row, the severity classifier saved by train_classifier.py reads the row's `question`
(the text field it was trained on) and this script adds

    "severity_probs": [p_mild, p_moderate, p_critical] = softmax(logits / T)

where T is the temperature fitted on the val split (config.json "severity_temperature"; 1.0 if a
folder has none). Probabilities are rounded to 6 decimals (they sum to 1 within 2e-6). Every other
field is kept unchanged, rows stay in their input order, and an existing severity_probs is
replaced. The text gets the same preprocessing as in training (config "severity_preprocess") and
is cut to the same length (config "severity_max_len", or --max-len); the number of cut rows is
printed.

Run it:

    # CPU
    python score_severity.py --data labeled.jsonl --model out/classifier --out scored.jsonl

    # one GPU (bf16 autocast)
    python score_severity.py --data maqa.jsonl --model runs/classifier --out scored.jsonl --device cuda

    # N GPUs (or N CPU processes with gloo) on one machine
    torchrun --standalone --nproc_per_node 8 score_severity.py --data maqa.jsonl \
        --model runs/classifier --out scored.jsonl

Streaming: the input is read once, --chunk-size rows at a time (never held whole in memory, so
430k MAQA rows are fine); each chunk is sorted by length so batches carry little padding, scored,
put back in order and written. Under torchrun, rank r scores rows r, r + N, r + 2N, ... (every
rank reads and validates the whole file, so bad input fails on all ranks alike) and writes a
shard file next to --out; after a barrier rank 0 interleaves the shards back into the input
order, writes --out and deletes the shards. The shards must be on a file system all ranks see
(one machine, or a shared disk).

Reads: --data (JSONL; each row needs a non-empty string `question`), --model (a classifier folder
from train_classifier.py). Writes: --out, atomically (temporary file, then rename): a malformed
line or a missing/empty question raises DataError naming the file, line and field, and leaves no
output behind; a full disk is one line and leaves the previous --out as it was. A classifier
whose config.json holds a severity_temperature that is not a finite number > 0, or a
severity_max_len that is not an integer >= 3, is refused (docs/reliability.md). Beside --out:
--out.meta.json (written_by, the classifier, its warnings). An existing --out is replaced only if
such a sidecar says this project wrote it, or if it is --data itself (rewritten in place, every row
kept); an --out inside --model is refused (docs/files.md).
"""
import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from contextlib import nullcontext

from core.common import (DEMO_DATA, DataError, HelpFormatter, atomic_open, cleanup_dist, device_arg, dumps, out_path,
                         positive_int, print0, read_jsonl, run_main, setup_dist)
from core.outputs import check_not_input, check_out_file, output_lock, write_sidecar
from core.classifier import PREPROCESSORS, encode_texts, load_classifier, predict_logits


def severity_probs(logits, temperature):
    """softmax(logits / T) per row, in float64, as lists of floats rounded to 6 decimals."""
    probs = (logits.double() / temperature).softmax(-1)
    return [[round(p, 6) for p in row] for row in probs.tolist()]


def count_rows(path):
    """Number of lines (an upper bound on rows; only for the progress bar)."""
    with open(path, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))


def shard_path(out, rank, world):
    return out.with_name(f".{out.name}.rank{rank}-of-{world}")


def merge_shards(shards, out):
    """Interleave shard files (row i is line i // N of shard i % N) into `out`, atomically."""
    files = [open(s, encoding="utf-8") for s in shards]
    try:
        with atomic_open(out) as f:
            i = 0
            while line := files[i % len(files)].readline():
                f.write(line)
                i += 1
            if any(g.readline() for g in files):
                raise RuntimeError(f"shards of {out} do not interleave: a shard has extra rows")
    finally:
        for g in files:
            g.close()
    return i


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # --help shows the defaults
    parser.add_argument("--data", default=str(DEMO_DATA), help="input JSONL (rows with a question)")
    parser.add_argument("--model", default="out/classifier", help="classifier folder written by train_classifier.py")
    parser.add_argument("--out", default="out/scored.jsonl", type=out_path,
                        help="output JSONL: the input rows plus severity_probs")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="rows per forward pass (per rank; default 256 on "
                                                                    "CUDA, where 64 leaves the GPU idle, else 64)")
    parser.add_argument("--chunk-size", type=positive_int, default=4096,
                        help="rows read, length-sorted and scored at a time")
    parser.add_argument("--max-len", type=positive_int, default=None,
                        help="maximum tokens per question (default: the length the classifier was trained with)")
    parser.add_argument("--device", default="auto", type=device_arg,
                        help="auto, cpu, cuda, mps (under torchrun: cuda:LOCAL_RANK)")
    args = parser.parse_args(argv)
    if args.max_len is not None and args.max_len < 3:
        parser.error("--max-len must be >= 3 ([CLS], a token, [SEP])")

    if not Path(args.data).is_file():  # before the model loads (and before count_rows opens it)
        raise DataError(args.data, None, None, "file not found")
    out = Path(args.out)
    in_place = out.resolve() == Path(args.data).resolve()  # rewriting --data itself, every row kept, is allowed
    check_not_input(out, {"--model": args.model, "--data": None if in_place else args.data})
    check_out_file(out, in_place)  # a folder, a user's file or an unwritable place: refused before the model loads
    rank, world, device = setup_dist(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    shard = shard_path(out, rank, world) if world > 1 else None
    try:
        with output_lock(out) if rank == 0 else nullcontext():  # two runs cannot write the same --out
            if world > 1:
                dist.barrier()  # rank 0 removed stale shards of killed runs before anyone writes one
            return score_file(args, out, rank, world, device, shard)
    finally:
        if shard is not None and shard.exists():  # rank 0 removed it after a successful merge
            os.remove(shard)  # a failed run leaves no shard behind
        cleanup_dist()


def score_file(args, out, rank, world, device, shard):
    """Score every row of args.data into `out` (under torchrun: this rank's shard, then merged)."""
    model, tokenizer, settings = load_classifier(args.model, device)
    t0 = time.time()  # after loading: rows/s is the scoring rate
    preprocess, field, T = PREPROCESSORS[settings["preprocess"]], settings["text_field"], settings["temperature"]
    max_len = min(args.max_len or settings["max_len"], model.config.max_position_embeddings)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    print0(f"scoring {args.data} with {args.model} (T = {T:.4f}, preprocess={settings['preprocess']}, "
           f"max_len={max_len}) on {world} x {device}")
    for warning in settings["warnings"]:
        print0(f"WARNING (from {Path(args.model) / 'metrics.json'}): {warning}")

    def score(chunk):
        """(lineno, row) pairs -> rows with severity_probs, in the same order."""
        seqs, cut = encode_texts(tokenizer, [preprocess(row[field]) for _, row in chunk], max_len)
        logits = predict_logits(model, seqs, pad_id, args.batch_size, device)
        for (_, row), p in zip(chunk, severity_probs(logits, T)):
            row["severity_probs"] = p
        return [row for _, row in chunk], cut

    n_rows, n_cut = 0, 0
    bar = tqdm(total=count_rows(args.data), disable=rank != 0, desc="score", unit="row", leave=False)
    with bar, atomic_open(shard or out) as f:
        chunk = []
        for i, item in enumerate(read_jsonl(args.data, required=(field,))):
            bar.update(1)
            if i % world != rank:  # rank r takes rows r, r + world, ...
                continue
            chunk.append(item)
            if len(chunk) == args.chunk_size:
                rows, cut = score(chunk)
                f.writelines(dumps(row) for row in rows)
                n_rows, n_cut, chunk = n_rows + len(rows), n_cut + cut, []
        if chunk:
            rows, cut = score(chunk)
            f.writelines(dumps(row) for row in rows)
            n_rows, n_cut = n_rows + len(rows), n_cut + cut
        if world == 1 and n_rows == 0:  # raised inside atomic_open: a good earlier --out is kept
            raise DataError(args.data, None, None, "no rows to score (the file is empty)")

    if world > 1:
        counts = torch.tensor([n_rows, n_cut], device=device)
        dist.all_reduce(counts)  # also the barrier: every shard is complete after this
        n_rows, n_cut = counts.tolist()
        if n_rows == 0:
            raise DataError(args.data, None, None, "no rows to score (the file is empty)")
        if rank == 0:
            shards = [shard_path(out, r, world) for r in range(world)]
            merge_shards(shards, out)
            for s in shards:
                os.remove(s)
        dist.barrier()
    if n_cut:
        print0(f"{n_cut} of {n_rows} questions were longer than {max_len} tokens and were cut")
    elapsed = time.time() - t0
    if rank == 0:
        write_sidecar(out, "score_severity.py", {"data": str(args.data), "classifier": str(args.model), "rows": n_rows,
                            "temperature": T, "warnings": settings["warnings"]})
    print0(f"wrote {out}: {n_rows} rows in {elapsed:.1f}s ({n_rows / max(elapsed, 1e-9):.0f} rows/s)")
    return dict(rows=n_rows, truncated=n_cut, seconds=elapsed)


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
