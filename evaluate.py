"""Generate answers with a fine-tuned language model, score them against the doctors' answers,
overall and per severity class, and compare runs.

Four modes (exactly one of --model, --generations, --compare, --select):

  1. generate + score    python evaluate.py --model out/lm-balanced/best --data scored.jsonl \\
                             --split test --bertscore-model models/bert-base-multilingual-cased --out out/eval-balanced
  2. score a file        python evaluate.py --generations out/eval-balanced/generations.jsonl \\
                             --bertscore-model models/bert-base-multilingual-cased --out out/rescored
  3. compare runs        python evaluate.py --compare out/eval-uniform out/eval-balanced --out out/compare
  4. select answers      python evaluate.py --select mbr out/eval-uniform out/eval-balanced \\
                             --bertscore-model models/bert-base-multilingual-cased --out out/eval-mbr
     (core/selection.py: mbr picks the consensus answer without the reference; oracle is an upper bound)

CPU or one GPU: the commands above (--device auto picks CUDA when there is one; the LM runs in
bf16 on GPUs that support it, BERTScore always in fp32). N GPUs: `torchrun --nproc_per_node N
evaluate.py --model ...` splits the rows over the ranks for generation (rank r takes rows r, r+N,
...); rank 0 gathers the answers, scores and writes. Scoring and comparing use one process.

At scale (docs/evaluation-at-scale.md): --sample N [--sample-seed S] [--sample-min-per-class K]
evaluates a seeded sample of the split, stratified by severity class (core/sample.py; proportional,
or at least K rows per class with the overall numbers re-weighted to the split's class shares; the
rule and the sampled ids in config.sample; --compare / --select refuse runs on other samples).
Answers are kept batch by batch in .OUT.parts/ beside --out (core/parts.py): after a kill (kill -9,
Ctrl-C, a lost node) the same command continues from the finished batches and writes the same
generations.jsonl as an uninterrupted run; another model, prompt format, decoding flag, sample, or
number of processes is refused by name (delete .OUT.parts/ to start over). --compile compiles the
decode step (a static KV cache, one graph per batch size; CUDA graphs on GPUs); eager is the
default and the reference. Multi-node: torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT evaluate.py ...; --out, --data and the model on a file system every node
sees; only global rank 0 writes (and holds the --out lock).

Generation (mode 1): the prompt is prompt.format_prompt(question) (question, "\\nالجواب:\\n"),
exactly what the model was trained on (built by prompt.build_example); a prompt too long for
the model's context minus --max-new-tokens loses the end of its question, as in training, and is
counted (config.prompts_truncated). --prompt-format chat (default: the format the model folder was
trained with, recorded in its meta.json, else plain) renders the model folder's own chat template
instead, with add_generation_prompt (core/chat.py, docs/prompts.md; --system a system message), and
stops at every end id (generation_config.json eos_token_id plus the tokenizer's EOS); recorded in
config.prompt_format. Batched (rows sorted by prompt length; the progress bar counts rows and
tokens/s), KV cache, greedy by default (--temperature > 0 samples, with --top-k --top-p;
--repetition-penalty, --no-repeat-ngram), stops at EOS or --max-new-tokens; token ids beyond the
tokenizer's vocabulary are never produced.

Scores (all reported in percent, 0-100; core/metrics.py documents how each matches its reference):
  bertscore_p / bertscore_r / bertscore_f1  BERTScore with --bertscore-model (a local BERT folder;
      a classifier folder's encoder works too) at --bertscore-layer (default: 9 for multilingual
      BERT, bert-score's choice for Arabic; the last layer for any other BERT -- pass the layer you
      mean), optional --idf from the references; no baseline rescaling. Its configuration string
      (config.bertscore.config_string) goes with every BERTScore number. Without
      --bertscore-model BERTScore is skipped (config.bertscore.skipped says so).
  bertscore_f1_rescaled  BERTScore-F1 rescaled as bert-score's rescale_with_baseline,
      (F - b) / (1 - b), beside the raw number. bert-score ships no Arabic baseline, so b is
      estimated on the evaluated set itself: the mean F1 of up to --baseline-pairs mismatched
      reference pairs (each doctor's answer scored against the answer to another question;
      metrics.bertscore_baseline). An unrelated answer lands near 0. The baseline depends only on
      the references and the BERTScore settings, so runs on the same rows share it
      (config.bertscore.baseline).
  chrf      corpus chrF (sacrebleu's CHRF: char order 6, beta 2; --chrf-word-order 2 = chrF++)
  rougeL    mean ROUGE-L F-measure on Arabic-aware tokens (rouge-score's tokenizer drops Arabic)
  urgent_rate      share of generated answers advising urgent care (lexicon.mentions_urgent_care,
      data/urgent_lexicon.tsv): for critical complaints the recall of urgent advice, for mild
      ones over-triage, overall the rate over all answers
  ref_urgent_rate  the same for the doctors' reference answers, side by side
--normalize applies common.normalize_arabic (as prepare_data) to generated and reference text
before BERTScore, chrF and ROUGE-L (the urgent lexicon normalizes by itself). 95% percentile
bootstrap intervals over examples (--bootstrap resamples; corpus chrF is recomputed from summed
sentence statistics in each resample). A row's severity class: its "severity" field (gold or rule
label) when present, else the argmax of "severity_probs"; rows with neither count only overall.

Reads: mode 1 --data JSONL rows with question, answer (and split unless --split all; severity
and/or severity_probs for the per-class numbers; all other fields are kept). Mode 2 rows with
question, answer, generated. Mode 3 run folders written by modes 1/2, holding the same examples
(matched by id, which must be unique, else by position) with the same reference answers.
Decoding and scoring values are checked before any model loads (--max-new-tokens >= 1,
--temperature >= 0, --top-p in (0, 1], --repetition-penalty > 0, --bootstrap >= 0, finite; a
--bertscore-layer beyond the BERTScore model stops when it loads, before generation): one `error:`
line (docs/reliability.md).

Writes --out (a folder, built in a temporary sibling and swapped in whole when complete, so an
interrupted run leaves the previous folder intact and no file of an earlier run survives beside
the new ones). Refused before any work (docs/files.md): an --out that is, holds or lies inside an
input (--model, --data, --generations, the --compare/--select runs, --bertscore-model), and a
folder that is not this mode's kind of output (an eval run, a selection, a comparison) holding
only the names listed here:
  generations.jsonl  the input rows, every field kept, + "generated" + "scores" (this row's
                     numbers: bertscore_p/r/f1, chrf (sentence chrF), rougeL, urgent,
                     ref_urgent, severity_class) -- mode 3 reads the BERTScore values from here
  metrics.json       {"overall": {metric: value}, "by_severity": {"mild"|"moderate"|"critical":
                     {...}}, "ci": {"overall": {metric: [lo, hi]}, "by_severity": {...}},
                     "n": {"overall", "mild", "moderate", "critical"[, "unlabeled"]}, "config": {...}}
  report.md          the same numbers as a Markdown table
Mode 3 writes compare.md and compare.json (and prints the table): every run's numbers per metric
and severity class, each run's difference to the first run (the baseline) and a one-sided paired
bootstrap p-value (Koehn 2004: share of resamples in which the run is not better than the
baseline). "Better" is higher, except urgent_rate on mild complaints (over-triage: lower is
better); for urgent_rate overall and on moderate complaints there is no better direction and the
p-value is two-sided. Mode 3 also writes the paper's table, table.md and table.json
(core/reporting.py: one row per model, one column per method -- zero-shot, plain, weighted,
curriculum, selection -- read from each run's metadata, BERTScore-F1 with 95% CIs per severity
class and the triage-safety rates; with --plot also table.png). report.md also shows degeneracy
flags (empty answers, distinct-1/2, answers that are mostly one repeated token or letter) and sample
generations per severity class. --plot also draws per-severity bars (and training curves, from the
metrics.jsonl train_lm.py writes next to the evaluated model) as PNG files; needs matplotlib.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from core import metrics as M
from core import reporting as R
from core.common import (DataError, HelpFormatter, SEVERITIES, UsageError, atomic_open, bf16_supported, cleanup_dist,
                         device_arg, non_negative_float, non_negative_int, normalize_arabic, out_path, pick_device,
                         positive_float, positive_int, proportion, read_jsonl, run_main, seed_int, setup_dist,
                         severity_class, write_json, write_jsonl)
from core.outputs import check_not_input, check_out_dir, output_lock, staged_dir
from models import load_pretrained
from models.generate import Decoder, generate
from core import parts as P  # generation that survives a kill
from core.prompt import build_example  # the prompt format is defined once, in core/prompt.py
from core.chat import add_prompt_flags, describe as describe_prompt, evaluation_format
from core.sample import apply_sample, row_weights, same_sample

METRICS = ("bertscore_p", "bertscore_r", "bertscore_f1", "bertscore_f1_rescaled", "chrf", "rougeL", "urgent_rate",
           "ref_urgent_rate")
BERTSCORE = ("bertscore_p", "bertscore_r", "bertscore_f1", "bertscore_f1_rescaled")
NAMES = {"bertscore_p": "BERTScore P", "bertscore_r": "BERTScore R", "bertscore_f1": "BERTScore F1",
         "bertscore_f1_rescaled": "BERTScore F1 rescaled",
         "chrf": "chrF", "rougeL": "ROUGE-L", "urgent_rate": "urgent advice (generated)",
         "ref_urgent_rate": "urgent advice (reference)"}
GROUPS = ("overall",) + SEVERITIES
# every name each kind of folder this script writes holds (a folder with anything else is never replaced)
PLOTS = {"metrics_by_severity.png", "training_curves.png"}
RUN_FILES = {"generations.jsonl", "metrics.json", "report.md"} | PLOTS  # kinds "eval-run" and "selection"
COMPARE_FILES = {"compare.json", "compare.md", "table.json", "table.md", "table.png"} | PLOTS  # kind "compare"


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # --help shows the defaults
    # what to do
    p.add_argument("--model", default=None, help="mode 1: language model folder to generate answers with")
    p.add_argument("--generations", default=None, help="mode 2: JSONL with question, answer, generated to score")
    p.add_argument("--compare", nargs="+", default=None, help="mode 3: run folders to compare; the first is the baseline")
    p.add_argument("--select", nargs="+", default=None, metavar="METHOD RUN",
                   help="mode 4: 'mbr' or 'oracle' (an upper bound) then two or more run folders (core/selection.py)")
    p.add_argument("--data", default=None, help="mode 1: input JSONL (question, answer, split, severity/severity_probs)")
    p.add_argument("--split", default="test", help="mode 1: rows whose split field equals this ('all': every row)")
    p.add_argument("--limit", type=positive_int, default=None, help="score only the first N rows (quick looks)")
    p.add_argument("--sample", type=positive_int, default=None, help="mode 1: a seeded sample of N rows, stratified "
                   "by severity class (core/sample.py; the same rows in every run)")
    p.add_argument("--sample-seed", type=seed_int, default=0, help="seed of --sample")
    p.add_argument("--sample-min-per-class", type=non_negative_int, default=0, help="--sample: at least K rows of "
                   "each class (the overall numbers are then re-weighted to the split's class shares)")
    p.add_argument("--compile", action="store_true", help="mode 1: torch.compile the decode step (eager is the "
                   "reference)")
    p.add_argument("--out", default="out/eval", type=out_path, help="output folder")
    p.add_argument("--device", default="auto", type=device_arg, help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", type=lambda s: {"float32": "fp32", "bfloat16": "bf16"}.get(s, s),
                   choices=("auto", "bf16", "fp32"),  # the names train_lm.py uses (float32/bfloat16 accepted)
                   help="LM weights dtype; auto = bf16 on GPUs that support it, else fp32")
    p.add_argument("--seed", type=seed_int, default=1337, help="seed for sampling and the bootstrap")
    add_prompt_flags(p, None)
    # decoding
    p.add_argument("--max-new-tokens", type=positive_int, default=128, help="longest generated answer, in tokens")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="prompts generated together (default 64 on CUDA, else 16)")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy; > 0 samples")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="sample from the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=proportion, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0,
                   help="> 1 discourages repeated tokens (1 = off)")
    p.add_argument("--no-repeat-ngram", type=non_negative_int, default=0,
                   help="never repeat an n-gram of this size (0 = off)")
    # scoring
    p.add_argument("--bertscore-model", default=None, help="local BERT folder for BERTScore (omitted: BERTScore skipped)")
    p.add_argument("--bertscore-layer", type=non_negative_int, default=None,
                   help="hidden layer for BERTScore (0 = embeddings); default 9 for multilingual BERT, else the last")
    p.add_argument("--bertscore-batch-size", type=positive_int, default=None,
                   help="sentences per BERT forward pass (default 256 on CUDA, else 64)")
    p.add_argument("--idf", action="store_true", help="BERTScore idf weights from the references")
    p.add_argument("--baseline-pairs", type=non_negative_int, default=1000,
                   help="mismatched reference pairs for the BERTScore rescaling baseline (0 = no rescaled score)")
    p.add_argument("--normalize", action="store_true",
                   help="normalize_arabic generated and reference text before BERTScore, chrF, ROUGE-L")
    p.add_argument("--chrf-word-order", type=int, default=0, choices=(0, 2), help="0 = chrF, 2 = chrF++")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for CIs and p-values (0 = none)")
    p.add_argument("--plot", action="store_true", help="also write PNG plots (needs matplotlib)")
    args = p.parse_args(argv)
    modes = [m for m in ("model", "generations", "compare", "select") if getattr(args, m)]
    if len(modes) != 1:
        p.error("give exactly one of --model, --generations, --compare, --select")
    if args.model and not args.data:
        p.error("--model needs --data")
    if args.select:  # before any work (core/selection.py says the same if called otherwise)
        from core.selection import METHODS
        if args.select[0] not in METHODS or len(args.select) < 3:
            p.error(f"--select: expected {' or '.join(METHODS)} followed by two or more run folders, got "
                    f"{' '.join(args.select)}")
        if not args.bertscore_model:
            p.error("--select chooses by BERTScore: give --bertscore-model")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install matplotlib (or drop --plot)")
    return args


# -----------------------------------------------------------------------------
# Rows


def read_rows(path, need_generated, split=None, limit=None):
    """[(line, row)] with question and answer (and generated when scoring a file)."""
    rows, splits = [], Counter()
    for line, row in read_jsonl(path, required=("question", "answer")):
        if need_generated and not isinstance(row.get("generated"), str):  # may be empty: EOS first
            problem = "missing" if "generated" not in row else "not a string"
            raise DataError(path, line, "generated", problem)
        if split not in (None, "all"):
            if "split" not in row:
                raise DataError(path, line, "split", "missing (use --split all to evaluate every row)")
            if row["split"] != split:
                splits[str(row["split"])] += 1
                continue
        severity_class(row, path, line)  # validate early
        rows.append((line, row))
        if limit is not None and len(rows) == limit:
            break
    if not rows and split not in (None, "all"):
        found = ", ".join(f"{name!r} ({n} rows)" for name, n in sorted(splits.items())) or "none"
        raise DataError(path, None, "split", f"no rows with split {split!r}; the splits in the file: {found}")
    if not rows:
        raise DataError(path, None, None, "no rows to evaluate")
    return rows


# -----------------------------------------------------------------------------
# Generation


def prompt_ids(tokenizer, question, max_len, chat=None):
    """Token ids of the prompt, built by prompt.build_example itself (so format and truncation
    are defined once): the prompt of an example whose answer is empty, i.e. prompt + EOS in
    max_len + 1 tokens. A question too long for max_len tokens loses its end, as in training.
    Returns (ids, truncated). chat: a core.chat.ChatFormat (--prompt-format chat)."""
    if chat is not None:
        return chat.prompt_ids(tokenizer, question, max_len)
    try:
        ex = build_example(tokenizer, question, "", max_len + 1)
    except UsageError:  # its message names train_lm's --max-len; here the room is the model's context
        ex = None
    if ex is None or len(ex["prompt_ids"]) > max_len:  # build_example keeps a quarter of max_len for the question
        raise UsageError(f"{max_len} prompt tokens leave no room for the separator and a question: "
                         "lower --max-new-tokens")
    return ex["prompt_ids"], ex["truncated"] is not None


def generate_answers(model, tokenizer, questions, args, show_progress=True, chat=None, parts=None, done=None):
    """Greedy/sampled answers (decoded text) for a list of questions; returns (answers, n_truncated).
    parts/done (core/parts.py): this rank's batch file and the batches an earlier run finished
    there; every new batch is appended to it as soon as it is decoded."""
    n_ctx = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    # generate() reads prompt + max_new_tokens - 1 positions: the last new token is never fed back
    max_prompt = n_ctx - args.max_new_tokens + 1
    if max_prompt < 8:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in {n_ctx} positions")
    encoded = [prompt_ids(tokenizer, q, max_prompt, chat) for q in questions]
    eos_id = tokenizer.eos_id if tokenizer.eos_id is not None else model.config.eos_token_id
    eos_id = chat.end_ids if chat is not None else eos_id  # chat: every end id the folder declares
    # the batch plan: a pure function of the prompts and --batch-size, so a resumed run replays it
    order = sorted(range(len(questions)), key=lambda i: -len(encoded[i][0]))  # similar lengths batch together
    batches = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    done = done or {}
    kept = sum(len(done[b]["rows"]) for b in done if b < len(batches))
    if done and show_progress:
        print(f"resuming: kept {kept} of this process's {len(questions)} rows ({len(done)} batches) "
              f"from {parts.parent}", flush=True)
    # --compile: one static cache length for the whole run, so the compiled step has one graph per batch size
    longest = max(len(ids) for ids, _ in encoded)
    decode = Decoder(model, longest + args.max_new_tokens - 1) if args.compile else None
    answers = [None] * len(questions)
    bar = tqdm(total=len(questions), initial=kept, desc="generate", unit="row", disable=not show_progress,
               dynamic_ncols=True)
    tokens, t0 = 0, time.perf_counter()
    for bi, idx in enumerate(batches):
        rec = done.get(bi)
        if rec is not None and rec["rows"] == idx:
            for i, a in zip(idx, rec["generated"]):
                answers[i] = a
            continue
        new = generate(model, [encoded[i][0] for i in idx], args.max_new_tokens, eos_id, tokenizer.pad_id,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                       repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram,
                       vocab_limit=tokenizer.vocab_size, seed=args.seed + bi, decoder=decode)
        for i, ids in zip(idx, new):
            answers[i] = tokenizer.decode(ids).strip()
        if parts is not None:
            P.append(parts, {"batch": bi, "rows": idx, "generated": [answers[i] for i in idx],
                             "tokens": sum(map(len, new))})
        tokens += sum(map(len, new))
        bar.update(len(idx))
        bar.set_postfix_str(f"{tokens / (time.perf_counter() - t0):.0f} tok/s")
    bar.close()
    return answers, sum(t for _, t in encoded)


# the flags the answers depend on: recorded in metrics.json and checked when a killed run resumes
DECODING_FLAGS = ("max_new_tokens", "batch_size", "temperature", "top_k", "top_p", "repetition_penalty",
                  "no_repeat_ngram", "seed", "compile")


def generation_plan(args, rows, world, dtype, chat):
    """What the answers depend on (core/parts.py's plan.json): a resume with another value is refused."""
    keys = "\n".join(str(r.get("id", r["question"])) + "\t" + r["question"] for r in rows)
    plan = {"model": str(Path(args.model).resolve()), "model_files": P.model_files(args.model),
            "prompt_format": describe_prompt(chat),
            "rows": hashlib.sha1(keys.encode("utf-8")).hexdigest(), "world_size": world}
    for k in DECODING_FLAGS + ("sample", "sample_seed", "sample_min_per_class"):
        plan[k] = getattr(args, k)
    plan["dtype"] = str(dtype).replace("torch.", "")
    return plan


def run_generation(args):
    """Mode 1: returns (rows with "generated", config additions) on rank 0, (None, None) elsewhere."""
    rank, world, device = setup_dist(args.device)
    args.batch_size = args.batch_size or (64 if device.type == "cuda" else 16)  # a GPU decodes 64 rows for ~16's time
    try:
        numbered, sample = apply_sample(read_rows(args.data, False, args.split, args.limit), args, args.data)
        rows = [row for _, row in numbered]
        dtype = torch.float32
        if args.dtype == "bf16" or (args.dtype == "auto" and bf16_supported(device)):
            dtype = torch.bfloat16
        torch.manual_seed(args.seed)
        model, tokenizer = load_pretrained(args.model, dtype=dtype, device=device, expect="lm")
        chat = evaluation_format(args, tokenizer, model)  # --prompt-format, default: as the model was trained
        parts, done = P.start(args.out, generation_plan(args, rows, world, dtype, chat), rank, world)
        mine = list(range(rank, len(rows), world))
        t0 = time.time()
        answers, n_trunc = generate_answers(model, tokenizer, [rows[i]["question"] for i in mine], args, rank == 0,
                                            chat, parts, done)
        seconds = time.time() - t0
        if world > 1:  # rank 0 collects every rank's answers
            gathered = [None] * world
            dist.all_gather_object(gathered, (mine, answers, n_trunc))
        else:
            gathered = [(mine, answers, n_trunc)]
        if rank != 0:
            return None, None
        n_trunc = 0
        for idx, ans, nt in gathered:
            n_trunc += nt
            for i, a in zip(idx, ans):
                rows[i] = {**rows[i], "generated": a}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        decoding = {k: getattr(args, k) for k in DECODING_FLAGS}
        extra = {"mode": "generate", "model": str(args.model), "data": str(args.data), "split": args.split,
                 "limit": args.limit, "decoding": {**decoding, "greedy": args.temperature == 0},
                 "prompt": "prompt.format_prompt (question + '\\nالجواب:\\n')" if chat is None else
                 "core.chat (the model folder's chat template)", "prompt_format": describe_prompt(chat),
                 "prompts_truncated": n_trunc,
                 "dtype": str(dtype).replace("torch.", ""), "world_size": world,
                 "generation_seconds": round(seconds, 2), "resumed_batches": len(done)}
        if sample is not None:
            extra["sample"] = sample
        return rows, extra
    finally:
        cleanup_dist()


# -----------------------------------------------------------------------------
# Scoring


def text_stats(rows, normalize, word_order):
    """Per-example chrF statistics [N, K] and ROUGE-L F (percent) of generated vs answer."""
    hyps, refs = [r["generated"] for r in rows], [r["answer"] for r in rows]
    if normalize:
        hyps, refs = [normalize_arabic(h) for h in hyps], [normalize_arabic(r) for r in refs]
    chrf = M.corpus_chrf_stats(hyps, refs, word_order=word_order)
    rouge = 100 * np.array([M.rouge_l(h, r)["fmeasure"] for h, r in zip(hyps, refs)])
    return {"chrf": chrf, "rougeL": rouge}


def bertscore_stats(rows, args, device, bertscore):
    """Per-example BERTScore P/R/F (percent) and the BERTScore config, or ({}, config with 'skipped').
    `bertscore`: what M.load_bertscore_model returned (loaded before generation), or None."""
    if bertscore is None:
        return {}, {"skipped": "no --bertscore-model given: BERTScore not computed"}
    model, tokenizer, max_len, layer = bertscore
    model.to(device)
    hyps, refs = [r["generated"] for r in rows], [r["answer"] for r in rows]
    if args.normalize:
        hyps, refs = [normalize_arabic(h) for h in hyps], [normalize_arabic(r) for r in refs]
    P, R, F = M.bertscore(hyps, refs, model, tokenizer, layer, idf=args.idf, batch_size=args.bertscore_batch_size,
                          max_length=max_len)
    name = Path(args.bertscore_model).absolute().name  # the name as given (a link keeps its own)
    config = {"model": str(args.bertscore_model), "layer": layer, "idf": args.idf, "max_length": max_len,
              "rescaled": False, "config_string": M.bertscore_config_string(name, layer, args.idf)}
    stats = {"bertscore_p": 100 * P, "bertscore_r": 100 * R, "bertscore_f1": 100 * F}
    base = None if not args.baseline_pairs else M.bertscore_baseline(
        refs, model, tokenizer, layer, idf=args.idf, batch_size=args.bertscore_batch_size, max_length=max_len,
        n_pairs=args.baseline_pairs, seed=args.seed)
    if base is not None:  # raw numbers stay as they are; the rescaled F1 goes beside them
        stats["bertscore_f1_rescaled"] = 100 * M.rescale_with_baseline(F, base[2])
        n_pairs = len(M.mismatched_pairs(refs, args.baseline_pairs, args.seed)[0])
        config["baseline"] = {"p": base[0], "r": base[1], "f1": base[2], "pairs": n_pairs,
                              "from": "mismatched reference pairs of the evaluated set"}
    return stats, config


def urgent_stats(rows):
    return {"urgent_rate": 100 * M.urgent_flags([r["generated"] for r in rows]),
            "ref_urgent_rate": 100 * M.urgent_flags([r["answer"] for r in rows])}


def corpus_fn(metric, word_order):
    """None for mean metrics; the corpus score of summed statistics for chrF."""
    if metric == "chrf":
        return lambda s: M.chrf_from_stats(s, word_order=word_order)
    return None


def point(stats, fn):
    return float(fn(stats.sum(0)) if fn is not None else stats.mean())


def groups_of(classes):
    """{"overall": all indices, "mild": [...], ...}"""
    classes = np.array([c if c is not None else "" for c in classes])
    return {"overall": np.arange(len(classes)), **{c: np.flatnonzero(classes == c) for c in SEVERITIES}}


def summarize(stats, classes, word_order, n_boot, seed, weights=None):
    """metrics.json's overall / by_severity / ci / n from per-example stats. weights (mean 1): the
    overall numbers and their bootstrap use weight x stats (core/sample.py: the split's class mix)."""
    groups = groups_of(classes)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    values = {g: {} for g in GROUPS}
    cis = {g: {} for g in GROUPS}
    for metric in METRICS:
        if metric not in stats:
            continue
        fn = corpus_fn(metric, word_order)
        for g, idx in groups.items():
            s = stats[metric][idx]
            if w is not None and g == "overall":
                s = s * (w if s.ndim == 1 else w[:, None])
            values[g][metric] = point(s, fn) if len(idx) else None
            ci = M.bootstrap_ci(s, fn, n_boot, seed) if n_boot and len(idx) else None
            cis[g][metric] = list(ci) if ci is not None else None
    n = {g: int(len(idx)) for g, idx in groups.items()}
    if sum(c is None for c in classes):
        n["unlabeled"] = int(sum(c is None for c in classes))
    return {"overall": values["overall"], "by_severity": {c: values[c] for c in SEVERITIES},
            "ci": {"overall": cis["overall"], "by_severity": {c: cis[c] for c in SEVERITIES}}, "n": n}


def score_rows(rows, classes, args, device, bertscore, weights=None):
    """All per-example stats, the summary dict and the per-row score dicts. weights: per-row
    weights of the overall numbers (a --sample with a minimum per class), or None."""
    stats = text_stats(rows, args.normalize, args.chrf_word_order)
    stats.update(urgent_stats(rows))
    bs, bs_config = bertscore_stats(rows, args, device, bertscore)
    stats.update(bs)
    summary = summarize(stats, classes, args.chrf_word_order, args.bootstrap, args.seed, weights)
    hyps = [normalize_arabic(r["generated"]) if args.normalize else r["generated"] for r in rows]
    refs = [normalize_arabic(r["answer"]) if args.normalize else r["answer"] for r in rows]
    per_row = []
    for i, c in enumerate(classes):
        s = {m: float(stats[m][i]) for m in BERTSCORE if m in stats}
        s["chrf"] = M.sentence_chrf(hyps[i], refs[i], word_order=args.chrf_word_order)
        s["rougeL"] = float(stats["rougeL"][i])
        s["urgent"], s["ref_urgent"] = bool(stats["urgent_rate"][i]), bool(stats["ref_urgent_rate"][i])
        s["severity_class"] = c
        per_row.append(s)
    return summary, bs_config, per_row


def fmt(value, ci=None):
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def report_markdown(result, title):
    lines = [f"# {title}", "", "All numbers in percent; [95% bootstrap interval]. chrF is corpus-level; the "
             "others are means over examples. urgent advice: share of answers advising urgent care "
             "(critical: recall; mild: over-triage).", ""]
    bs = result["config"]["bertscore"]
    lines.append(f"BERTScore: {bs.get('config_string') or bs.get('skipped')}")
    lines += ["", "| metric | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for m in METRICS:
        if m not in result["overall"]:
            continue
        cells = [fmt(result["overall"][m], result["ci"]["overall"][m])]
        cells += [fmt(result["by_severity"][c][m], result["ci"]["by_severity"][c][m]) for c in SEVERITIES]
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    lines.append("| n | " + " | ".join(str(result["n"][g]) for g in GROUPS) + " |")
    if "unlabeled" in result["n"]:
        lines += ["", f"{result['n']['unlabeled']} rows without a severity label count only overall."]
    return "\n".join(lines) + "\n"


def write_run(out, rows, per_row, summary, config):
    write_jsonl(out / "generations.jsonl", ({**r, "scores": s} for r, s in zip(rows, per_row)))
    result = {**summary, "config": config}
    write_json(out / "metrics.json", result)
    with atomic_open(out / "report.md") as f:
        title = config.get("title") or config.get("model") or config.get("generations")
        f.write(report_markdown(result, f"Evaluation: {title}")
                + R.quality_markdown(result["degeneracy"], rows, [s["severity_class"] for s in per_row]))
    return result


def run_scoring(args, rows, lines, path, extra, out, bertscore):
    """Score rows (mode 1 or 2) and write the run files into `out`; returns the metrics dict."""
    classes = [severity_class(r, path, ln) for r, ln in zip(rows, lines)]
    device = pick_device(args.device)
    summary, bs_config, per_row = score_rows(rows, classes, args, device, bertscore,
                                             row_weights(extra.get("sample"), classes))
    summary["degeneracy"] = R.degeneracy_by_group(rows, classes)
    config = {**extra, "bertscore": bs_config, "normalize": args.normalize,
              "chrf": {"char_order": M.CHRF_CHAR_ORDER, "word_order": args.chrf_word_order, "beta": M.CHRF_BETA,
                       "as": "sacrebleu CHRF defaults, corpus-level"},
              "rougeL": "mean LCS F-measure on metrics.arabic_tokens",
              "urgent": "lexicon.mentions_urgent_care (data/urgent_lexicon.tsv)",
              "bootstrap": {"resamples": args.bootstrap, "level": 0.95, "method": "percentile", "seed": args.seed},
              "scale": "percent", "seed": args.seed}
    result = write_run(out, rows, per_row, summary, config)
    print(report_markdown(result, f"Evaluation -> {args.out}"))
    return result


# -----------------------------------------------------------------------------
# Comparing runs


def load_run(folder):
    """(rows, classes, metrics.json) of a run folder written by modes 1/2."""
    folder = Path(folder)
    path = folder / "generations.jsonl"
    meta_path = folder / "metrics.json"
    if not meta_path.is_file():
        raise DataError(meta_path, None, None, "file not found (not a run folder written by evaluate.py?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(meta_path, e.lineno, None, f"malformed JSON ({e.msg})") from None
    numbered = read_rows(path, True)
    rows = [r for _, r in numbered]
    classes = [severity_class(r, path, ln) for ln, r in numbered]
    return rows, classes, meta


def align(base_rows, rows, path):
    """rows reordered to match base_rows: by id when every row has one (ids must be unique on
    both sides), else by position. The matched rows must have the same reference answer."""
    if all("id" in r for r in base_rows) and all("id" in r for r in rows):
        for which, rs in (("the baseline", base_rows), ("this run", rows)):
            dup = [i for i, n in Counter(str(r["id"]) for r in rs).items() if n > 1]
            if dup:
                raise DataError(path, None, "id", f"duplicate id {dup[0]!r} in {which}: rows cannot be matched")
        by_id = {str(r["id"]): r for r in rows}
        missing = [str(r["id"]) for r in base_rows if str(r["id"]) not in by_id]
        if missing or len(by_id) != len(base_rows):
            raise DataError(path, None, "id", f"not the baseline's examples (missing ids: {missing[:5]}, "
                                              f"{len(by_id)} vs {len(base_rows)} rows)")
        rows = [by_id[str(r["id"])] for r in base_rows]
    elif len(rows) != len(base_rows) or any(a["question"] != b["question"] for a, b in zip(base_rows, rows)):
        raise DataError(path, None, "question", "not the baseline's examples in the same order (and no ids)")
    for a, b in zip(base_rows, rows):
        if a["answer"] != b["answer"]:  # each run is scored against its own copy of the reference
            raise DataError(path, None, "answer", f"row {b.get('id', '?')!r}: another reference answer "
                                                  "than the baseline's (runs on different data?)")
    return rows


def direction(metric, group):
    """+1: higher is better, -1: lower is better, 0: no better direction (two-sided test)."""
    if metric == "urgent_rate":
        return {"critical": 1, "mild": -1}.get(group, 0)
    return 1


def paired_p(sa, sb, fn, n_boot, seed, sign):
    """p-value that B is not better than A (Koehn 2004), in the metric's better direction."""
    if sign > 0:
        return M.paired_bootstrap(sa, sb, fn, n_boot, seed)["p_value"]
    if sign < 0:
        return M.paired_bootstrap(sb, sa, fn, n_boot, seed)["p_value"]
    one = M.paired_bootstrap(sa, sb, fn, n_boot, seed)["p_value"]
    other = M.paired_bootstrap(sb, sa, fn, n_boot, seed)["p_value"]
    return min(1.0, 2 * min(one, other))


def run_compare(args, out):
    folders = [Path(f) for f in args.compare]
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        names = [str(f) for f in folders]
    runs = [load_run(f) for f in folders]
    same_sample(folders, [meta for _, _, meta in runs])  # core/sample.py: names the flag that differs
    base_rows, classes, base_meta = runs[0]
    normalize = base_meta["config"].get("normalize", False)
    word_order = base_meta["config"].get("chrf", {}).get("word_order", 0)
    bs_strings = {m["config"].get("bertscore", {}).get("config_string") for _, _, m in runs}
    notes = []
    all_stats = []
    for folder, (rows, _, meta) in zip(folders, runs):
        if meta["config"].get("normalize", False) != normalize:
            raise DataError(folder / "metrics.json", None, "config.normalize",
                            "runs were scored with different --normalize settings: rescore them alike")
        rows = align(base_rows, rows, folder / "generations.jsonl")
        stats = text_stats(rows, normalize, word_order)
        stats.update(urgent_stats(rows))
        if len(bs_strings) == 1 and None not in bs_strings:
            for m in BERTSCORE:
                stats[m] = np.array([r.get("scores", {}).get(m, np.nan) for r in rows], dtype=np.float64)
                if m == "bertscore_f1_rescaled" and np.isnan(stats[m]).any():  # scored without a baseline
                    del stats[m]
                elif np.isnan(stats[m]).any():
                    raise DataError(folder / "generations.jsonl", None, f"scores.{m}", "missing on some rows")
        all_stats.append(stats)
    if len(bs_strings) != 1 or None in bs_strings:
        notes.append(f"BERTScore not compared: the runs have different or missing BERTScore settings {sorted(map(str, bs_strings))}")
    groups = groups_of(classes)
    table = {}
    for m in METRICS:
        if any(m not in stats for stats in all_stats):
            continue
        fn = corpus_fn(m, word_order)
        table[m] = {}
        for name, stats in zip(names, all_stats):
            table[m][name] = {}
            for g, idx in groups.items():
                value = point(stats[m][idx], fn) if len(idx) else None
                cell = {"value": value}
                if name != names[0] and len(idx) and m != "ref_urgent_rate":
                    base = all_stats[0][m][idx]
                    cell["delta"] = value - point(base, fn)
                    cell["p_value"] = (paired_p(base, stats[m][idx], fn, args.bootstrap, args.seed, direction(m, g))
                                       if args.bootstrap else None)
                table[m][name][g] = cell
    result = {"runs": [{"name": n, "path": str(f)} for n, f in zip(names, folders)], "baseline": names[0],
              "metrics": table, "n": {g: int(len(idx)) for g, idx in groups.items()}, "notes": notes,
              "config": {"normalize": normalize, "chrf_word_order": word_order, "bertscore": sorted(map(str, bs_strings)),
                         "test": "one-sided paired bootstrap (Koehn 2004), p = (#{B not better} + 1) / (resamples + 1)",
                         "resamples": args.bootstrap, "seed": args.seed}}
    write_json(out / "compare.json", result)
    md = compare_markdown(result)
    with atomic_open(out / "compare.md") as f:
        f.write(md)
    print(md)
    return result


def compare_markdown(result):
    names = [r["name"] for r in result["runs"]]
    lines = ["# Comparison", "", f"Baseline: {names[0]}. Numbers in percent; for the other runs (difference to the "
             "baseline, one-sided paired bootstrap p-value that the run is not better). urgent advice: higher is "
             "better on critical complaints, lower on mild ones (over-triage), two-sided elsewhere.", ""]
    lines += [f"BERTScore: {', '.join(result['config']['bertscore'])}"] + [f"- {n}" for n in result["notes"]]
    lines += ["", "| metric | run | " + " | ".join(GROUPS) + " |", "|---|---|" + "---|" * len(GROUPS)]
    for m, per_run in result["metrics"].items():
        for i, name in enumerate(names):
            cells = []
            for g in GROUPS:
                c = per_run[name][g]
                text = fmt(c["value"])
                if "delta" in c:
                    p = f", p={c['p_value']:.3f}" if c.get("p_value") is not None else ""
                    text += f" ({c['delta']:+.2f}{p})"
                cells.append(text)
            lines.append(f"| {NAMES[m] if i == 0 else ''} | {name} | " + " | ".join(cells) + " |")
    lines.append("| n | | " + " | ".join(str(result["n"][g]) for g in GROUPS) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Plots (optional)


def make_plots(out, runs, compare_result=None):
    """Per-severity bars (one bar per run) and training curves when metrics.jsonl files exist."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # get_args refused --plot without matplotlib already
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    out = Path(out)
    metas = [meta for _, meta in runs]  # per-severity bars with 95% CIs and n (core/reporting.py draws)
    labels = [r["name"] for r in compare_result["runs"]] if compare_result is not None else [Path(runs[0][0]).name]
    colors = R.run_colors(f for f, _ in runs)  # a run keeps its colour from one plot to the next
    written = [R.plot_metric_bars(plt, out / "metrics_by_severity.png", labels, metas, METRICS, NAMES,
                                  [colors[str(f)] for f, _ in runs])]
    curves = []  # plain validation loss from train_lm's metrics.jsonl next to the evaluated model
    for label, (folder, meta) in zip(labels, runs):
        model = meta.get("config", {}).get("model")
        cand = Path(model).parent / "metrics.jsonl" if model else Path(folder) / "metrics.jsonl"
        if cand.is_file():
            recs = [json.loads(x) for x in cand.read_text(encoding="utf-8").splitlines() if x.strip()]
            curves.append((f"{label}: {R.training_label(meta) or cand.parent.name}", recs))
    written.append(R.plot_training_curves(plt, out / "training_curves.png", curves))
    if compare_result is not None:
        written.append(R.plot_paper_table(plt, out / "table.png", R.paper_table([f for f, _ in runs]), colors))
    return [w.name for w in written if w is not None]  # names: the folder they lie in is swapped in after


def print_written(out, names):
    """Say where the plots lie, once the run folder holding them is in place."""
    for name in names:
        print(f"wrote {Path(out) / name}")


# -----------------------------------------------------------------------------


def output_kind(args):
    """(kind, names) of the folder this run writes: a comparison, a selection or an evaluation run."""
    return ("compare", COMPARE_FILES) if args.compare else ("selection", RUN_FILES) if args.select else \
        ("eval-run", RUN_FILES)


def main(argv=None):
    args = get_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 writes --out
    if rank0:  # before any work: an input or a folder of the user's (or of another kind) is never replaced
        check_not_input(args.out, {"--model": args.model, "--data": args.data, "--generations": args.generations,
                                   "--compare": args.compare, "--select": (args.select or [])[1:],
                                   "--bertscore-model": args.bertscore_model})
        check_out_dir(args.out, *output_kind(args))
    with output_lock(args.out) if rank0 else nullcontext():  # two runs cannot write the same --out
        return run(args, rank0)


def run(args, rank0):
    """The four modes; the run folder is written staged and swapped in whole (outputs.staged_dir)."""
    if args.bertscore_batch_size is None:  # sized for the device: 256 on CUDA, 64 elsewhere
        args.bertscore_batch_size = 256 if pick_device(args.device).type == "cuda" else 64
    if args.compare:
        with staged_dir(args.out, "compare", COMPARE_FILES) as tmp:
            result = run_compare(args, tmp)
            table = R.paper_table(args.compare)
            write_json(tmp / "table.json", table)
            with atomic_open(tmp / "table.md") as f:
                f.write(R.paper_table_markdown(table))
            plots = make_plots(tmp, [(f, json.loads((Path(f) / "metrics.json").read_text(encoding="utf-8")))
                                     for f in args.compare], result) if args.plot else []
        print_written(args.out, plots)
        return result
    bertscore = None  # loaded before generation, so a bad folder fails in seconds, not after hours
    if args.bertscore_model and rank0:
        bertscore = M.load_bertscore_model(args.bertscore_model, "cpu", args.bertscore_layer)
    if args.model:
        rows, extra = run_generation(args)
        if rows is None:  # not rank 0
            return None
        lines = [None] * len(rows)
        path = args.data
    elif args.select:
        from core.selection import select_runs  # core/selection.py reads runs with load_run/align from here
        rows, extra = select_runs(args, pick_device(args.device), load_run, align)
        lines, path = [None] * len(rows), Path(args.select[1]) / "generations.jsonl"
    else:
        numbered = read_rows(args.generations, True, None, args.limit)
        lines, rows = [ln for ln, _ in numbered], [r for _, r in numbered]
        path = args.generations
        extra = {"mode": "score", "generations": str(args.generations), "limit": args.limit}
    with staged_dir(args.out, *output_kind(args)) as tmp:
        result = run_scoring(args, rows, lines, path, extra, tmp, bertscore)
        plots = make_plots(tmp, [(args.out, result)]) if args.plot else []
    print_written(args.out, plots)
    if args.model:
        P.finish(args.out)  # the run folder is in place: the finished batches are no longer needed
    return result


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
