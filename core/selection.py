"""Multi-model response selection (the group's arXiv 2606.05510): several runs answer the same
questions and one answer per question is chosen.

    python evaluate.py --select mbr    out/eval-uniform out/eval-balanced out/eval-curriculum \\
                       --bertscore-model models/bert-base-multilingual-cased --out out/eval-mbr
    python evaluate.py --select oracle out/eval-uniform out/eval-balanced out/eval-curriculum \\
                       --bertscore-model models/bert-base-multilingual-cased --out out/eval-oracle

mbr     minimum Bayes risk: for each question, the candidate with the highest mean BERTScore-F1
        against the other candidates (the consensus answer). It never looks at the reference, so a
        deployed system can do it.
oracle  the candidate with the highest BERTScore-F1 against the doctor's reference. It reads the
        answer it is scored against, so it is an UPPER BOUND on any selection, not a method; every
        file it writes says so (metrics.json config.select.upper_bound, report.md title,
        generations.jsonl "selection").
Ties go to the earlier run on the command line. The selection criterion is BERTScore-F1 with
--bertscore-model at --bertscore-layer, without idf (after --normalize when given).

Reads the run folders evaluate.py wrote (generations.jsonl with "generated"), matched by id (else by
position) as --compare does; they must hold the same questions and references. Writes a normal
run folder (generations.jsonl, metrics.json, report.md) that --compare accepts: every input field of
the first run's rows, "generated" (the chosen answer), "selected_from" (the run it came from) and
"selection" ({"method", "upper_bound", "scores": {run: criterion}}).
"""
from pathlib import Path

import numpy as np

from core import metrics as M
from core.common import UsageError, normalize_arabic
from core.sample import same_sample

METHODS = ("mbr", "oracle")
RESULT_FIELDS = ("generated", "scores", "selected_from", "selection")  # a run's outputs, not input fields


def mbr_select(candidates, score_fn):
    """candidates[r]: the answers to row r (one per run). score_fn(hyps, refs) -> array of
    similarities. Returns (chosen index per row, per-row array of each candidate's mean score
    against the row's other candidates)."""
    pairs = [(r, a, b) for r, cs in enumerate(candidates) for a in range(len(cs)) for b in range(len(cs)) if a != b]
    scores = score_fn([candidates[r][a] for r, a, _ in pairs], [candidates[r][b] for r, _, b in pairs])
    utility = [np.zeros(len(cs)) for cs in candidates]
    for (r, a, _), s in zip(pairs, scores):
        utility[r][a] += s / (len(candidates[r]) - 1)
    return [int(np.argmax(u)) for u in utility], utility  # argmax: the first of equal candidates


def oracle_select(candidates, references, score_fn):
    """The candidate closest to the reference (an upper bound: it uses the reference). Returns
    (chosen index per row, per-row array of each candidate's score against the reference)."""
    flat = [(r, a) for r, cs in enumerate(candidates) for a in range(len(cs))]
    scores = score_fn([candidates[r][a] for r, a in flat], [references[r] for r, _ in flat])
    per_row = [np.zeros(len(cs)) for cs in candidates]
    for (r, a), s in zip(flat, scores):
        per_row[r][a] = s
    return [int(np.argmax(s)) for s in per_row], per_row


def bertscore_f1_fn(args, device):
    """score_fn for the selection: BERTScore-F1 (percent) with --bertscore-model, no idf."""
    model, tokenizer, max_len, layer = M.load_bertscore_model(args.bertscore_model, device, args.bertscore_layer)
    prep = normalize_arabic if args.normalize else (lambda t: t)

    def score(hyps, refs):
        return 100 * M.bertscore([prep(h) for h in hyps], [prep(r) for r in refs], model, tokenizer, layer,
                                 batch_size=args.bertscore_batch_size, max_length=max_len)[2]
    return score, layer


def select_runs(args, device, load_run, align):
    """--select METHOD RUN1 RUN2 ...: (rows with the chosen answers, the config additions).
    load_run / align are evaluate.py's, so runs are read and matched as --compare does."""
    method, folders = args.select[0], [Path(f) for f in args.select[1:]]
    if method not in METHODS:
        raise UsageError(f"--select {method!r}: expected {' or '.join(METHODS)} followed by run folders")
    if len(folders) < 2:
        raise UsageError("--select needs at least two run folders to choose between")
    if not args.bertscore_model:
        raise UsageError("--select chooses by BERTScore: give --bertscore-model")
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        names = [str(f) for f in folders]
    loaded = [load_run(f) for f in folders]
    same_sample(folders, [meta for _, _, meta in loaded])  # core/sample.py: names the flag that differs
    base_rows = loaded[0][0]
    runs = [align(base_rows, rows, f / "generations.jsonl") for f, (rows, _, _) in zip(folders, loaded)]
    candidates = [[run[i]["generated"] for run in runs] for i in range(len(base_rows))]
    score_fn, layer = bertscore_f1_fn(args, device)
    if method == "mbr":
        chosen, scores = mbr_select(candidates, score_fn)
    else:
        chosen, scores = oracle_select(candidates, [r["answer"] for r in base_rows], score_fn)
    rows = []
    for row, cands, k, s in zip(base_rows, candidates, chosen, scores):
        rows.append({**{key: v for key, v in row.items() if key not in RESULT_FIELDS}, "generated": cands[k],
                     "selected_from": names[k],
                     "selection": {"method": method, "upper_bound": method == "oracle",
                                   "scores": {n: float(x) for n, x in zip(names, s)}}})
    criterion = ("mean BERTScore-F1 against the other candidates (no reference)" if method == "mbr" else
                 "BERTScore-F1 against the reference: an UPPER BOUND, not a deployable method")
    title = (f"MBR selection over {', '.join(names)}" if method == "mbr" else
             f"ORACLE selection over {', '.join(names)} (UPPER BOUND: it picks with the reference)")
    picked = {n: sum(1 for k in chosen if k == j) for j, n in enumerate(names)}
    extra = {"mode": "select", "title": title,
             "select": {"method": method, "upper_bound": method == "oracle", "runs": [str(f) for f in folders],
                        "names": names, "criterion": criterion, "layer": layer, "idf": False, "picked": picked}}
    if loaded[0][2]["config"].get("sample"):  # the runs' sample (and its weights) carries over
        extra["sample"] = loaded[0][2]["config"]["sample"]
    return rows, extra
