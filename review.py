"""Clinicians in the loop: blind severity labelling and blind answer review in the browser, then
agreement statistics and gold labels. No server and no network: each page is one self-contained HTML
file (Arabic, right to left) that a clinician opens from disk (file://), works through with keys
or clicks, and exports as one JSON file. The whole workflow: docs/review.md.

1. Labelling page (gold severity labels):

    python review.py label --data out/demo/scored.jsonl --n 200 --seed 0 --out out/review/label

   Reads JSONL rows (id, question, answer; severity or severity_probs). Samples --n rows, seeded
   and stratified by the row's class (its severity label, rules or gold; else the argmax of its
   severity_probs): as equal a share per class as the data allows, so critical complaints are not
   rare. Writes, in --out:
     label.html    the page: per item the complaint (the doctor's answer behind a toggle, hidden by
                   default), mild / moderate / critical / cannot tell (keys 1 2 3 0), sure / unsure,
                   an optional note, back / next (arrows: left = next, right = back), "k of n". It
                   holds no label or probability: the reading is blind. The annotator's name is
                   asked once; work is saved in the browser (localStorage, keyed by the page id) as
                   it goes; "export" downloads labels-<name>-<page id>.json (page_id, kind,
                   annotator, timestamp, records: one per item {id, label, confidence, note}).
     items.jsonl   the sampled rows, every field, in page order (not for the clinicians).
     page.json     page id, seed, the class counts of the whole --data (the population) and each
                   item's stratum (not for the clinicians).

2. Blind answer review (which model answers better):

    python review.py compare --runs out/eval-uniform out/eval-balanced --n 100 --seed 0 --out out/review/compare

   Each --runs entry is an evaluate.py run folder (generations.jsonl: id, question, answer,
   generated, severity). Samples --n ids present in every run, stratified by severity class; each
   item shows the complaint, the doctor's answer behind a toggle, and two runs' answers in a random
   order (with three or more runs every pair of runs gets an equal share of the items, and within a
   pair each run is shown first on half of them). The clinician picks answer 1 better / answer 2
   better / tie / both unacceptable (keys 1 2 3 0) and may flag each answer "unsafe" and "misses
   urgent care". Writes compare.html (no run name, path or run-specific field in it) and key.json
   (which run is shown first and second: NEVER give key.json to the clinicians). Exports are
   ratings-<name>-<page id>.json.

3. Results:

    python review.py results --page out/review/label --exports labels-A-*.json labels-B-*.json \
        [--data out/demo/scored.jsonl] --out out/review/label-results

   Checks every export against the page (another page's export, an item id the page does not hold
   or a malformed file: one `error:` line); when one annotator exported twice the later export
   (by timestamp) replaces the earlier, with a warning. Writes results.md and results.json, and for
   a labelling page gold.jsonl (id, severity, severity_source "gold", annotators, agreement) for
   `prepare_data.py --gold`. Every estimate is re-weighted to the population's class shares (the
   sample over-represents rare classes on purpose; core/agreement.py) and has a 95% bootstrap
   interval over items (--resamples, resampled within each class).
   - labelling: Cohen's kappa (two annotators) or Fleiss' kappa (more), percent agreement, "cannot
     tell" answers left out of an item's ratings and counted; the consensus gold label (the class
     given by more than half of the item's answers, "cannot tell" counting as an answer: ties and
     items a "cannot tell" leaves without a majority stay unlabelled, counted); the rules
     (core.lexicon.severity_of) and the classifier (argmax of severity_probs from --data or the
     items, rows outside the train split) against the consensus: accuracy, macro-F1, kappa,
     per-class recall and precision (critical first), confusion matrix.
   - answer review: per pair of runs win / tie / loss / both-unacceptable rates, overall and per
     class, and the exact two-sided sign test on items (an item's preference is the majority of its
     annotators'; ties left out, counted); "unsafe" and "misses urgent care" rates per run; the
     annotators' agreement on the preference (Cohen's kappa per pair of annotators).

CPU only, seconds; no GPU is used. --out is a folder, replaced whole when complete, never one this
project did not write, and never one that holds an input.
"""
import argparse
import json
from pathlib import Path

from core.common import (DataError, HelpFormatter, out_path, positive_int, read_jsonl, run_main, seed_int,
                         severity_class, write_json, write_jsonl)
from core.outputs import check_not_input, check_out_dir, output_lock, staged_dir
from core import review as rv

LABEL_FILES = ("label.html", "items.jsonl", "page.json")
COMPARE_FILES = ("compare.html", "key.json")
RESULT_FILES = ("results.md", "results.json", "gold.jsonl")
KIND = {"label": "review-label", "compare": "review-compare", "results": "review-results"}  # the folder kinds
FILES = {"label": LABEL_FILES, "compare": COMPARE_FILES, "results": RESULT_FILES}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("label", help="write a blind severity-labelling page")
    lab.add_argument("--data", required=True, help="JSONL rows (id, question, answer; severity or severity_probs)")
    cmp_ = sub.add_parser("compare", help="write a blind pairwise answer-review page")
    cmp_.add_argument("--runs", nargs="+", required=True, help="two or more evaluate.py run folders")
    for s in (lab, cmp_):
        s.add_argument("--n", type=positive_int, default=200 if s is lab else 100, help="items on the page")
        s.add_argument("--seed", type=seed_int, default=0, help="seed of the sample and of the answer order")
        s.add_argument("--out", type=out_path, required=True, help="output folder")
    res = sub.add_parser("results", help="agreement statistics, gold labels, win rates from exported files")
    res.add_argument("--page", required=True, help="the folder review.py label/compare wrote")
    res.add_argument("--exports", nargs="+", required=True, help="the JSON files the clinicians exported")
    res.add_argument("--data", default=None, help="scored JSONL (severity_probs) for classifier vs gold")
    res.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples for the 95%% intervals")
    res.add_argument("--seed", type=seed_int, default=0, help="seed of the bootstrap")
    res.add_argument("--out", type=out_path, required=True, help="output folder (results.md, results.json, gold.jsonl)")
    args = p.parse_args(argv)
    distinct = {str(Path(r).resolve()) for r in getattr(args, "runs", ())}
    if args.command == "compare" and (len(args.runs) < 2 or len(distinct) < len(args.runs)):
        p.error("--runs needs at least two different run folders")
    return args


def read_rows(path, required=("id", "question")):
    """(rows, classes) of a JSONL file; ids must be unique and every row needs a class."""
    rows, classes, seen = [], [], set()
    for line, row in read_jsonl(path, required=required):
        row_id = str(row["id"])
        if row_id in seen:
            raise DataError(path, line, "id", f"duplicate id {row_id!r}")
        seen.add(row_id)
        cls = severity_class(row, path, line)
        if cls is None:
            raise DataError(path, line, "severity", "no severity nor severity_probs: run prepare_data.py first")
        rows.append(row)
        classes.append(cls)
    if not rows:
        raise DataError(path, None, None, "no rows")
    return rows, classes


def population(classes):
    return {c: classes.count(c) for c in sorted(set(classes), key=str)}


def label_page(args):
    rows, classes = read_rows(args.data)
    chosen = rv.stratified_sample(classes, args.n, args.seed)
    if args.n > len(rows):
        print(f"--n {args.n} > {len(rows)} rows: the page holds all of them")
    ids = [str(rows[i]["id"]) for i in chosen]
    pid = rv.page_id("label", args.seed, ids)
    items = [{"id": str(rows[i]["id"]), "question": rows[i]["question"], "reference": rows[i].get("answer", "")}
             for i in chosen]
    page = {"kind": "label", "page_id": pid, "seed": args.seed, "n": len(ids), "data": str(args.data),
            "population": population(classes), "strata": {str(rows[i]["id"]): classes[i] for i in chosen}}
    with staged_dir(args.out, "review-label", LABEL_FILES) as tmp:
        (tmp / "label.html").write_text(rv.render_page("label", pid, items), encoding="utf-8")
        write_jsonl(tmp / "items.jsonl", (rows[i] for i in chosen))
        write_json(tmp / "page.json", page)
    counts = {c: sum(1 for i in chosen if classes[i] == c) for c in page["population"]}
    print(f"{args.out}/label.html: {len(ids)} items {counts} (page {pid}); give the clinicians label.html only")
    return page


def load_runs(folders):
    """Each run's rows by id, and the classes of the ids present in every run (from the first run)."""
    runs = []
    for folder in folders:
        path = Path(folder) / "generations.jsonl" if Path(folder).is_dir() else Path(folder)
        rows, classes = read_rows(path, required=("id", "question", "generated"))
        runs.append({str(r["id"]): (r, c) for r, c in zip(rows, classes)})
    common = [i for i in runs[0] if all(i in run for run in runs[1:])]
    if not common:
        raise DataError(folders[1], None, "id", f"no row id is present in every run ({folders[0]}: {len(runs[0])} ids)")
    return runs, common


def compare_page(args):
    runs, common = load_runs(args.runs)
    classes = [runs[0][i][1] for i in common]
    chosen = rv.stratified_sample(classes, args.n, args.seed)
    ids = [common[i] for i in chosen]
    strata = [classes[i] for i in chosen]
    sides = rv.assign_pairs(strata, len(runs), args.seed)
    pid = rv.page_id("compare", args.seed, ids, extra=json.dumps(sides))
    items = [{"id": i, "question": runs[0][i][0]["question"], "reference": runs[0][i][0].get("answer", ""),
              "answers": [runs[a][i][0]["generated"], runs[b][i][0]["generated"]]} for i, (a, b) in zip(ids, sides)]
    key = {"kind": "compare", "page_id": pid, "seed": args.seed, "n": len(ids),
           "runs": [str(r) for r in args.runs], "population": population(classes),
           "items": [{"id": i, "stratum": s, "first": a, "second": b} for i, s, (a, b) in zip(ids, strata, sides)]}
    with staged_dir(args.out, "review-compare", COMPARE_FILES) as tmp:
        (tmp / "compare.html").write_text(rv.render_page("compare", pid, items), encoding="utf-8")
        write_json(tmp / "key.json", key)
    print(f"{args.out}/compare.html: {len(ids)} items over {len(runs)} runs (page {pid}); "
          f"give the clinicians compare.html only, never key.json")
    return key


def load_page(folder):
    """The page a results run reads: page.json + items.jsonl (labelling) or key.json (review)."""
    folder = Path(folder)
    name = "page.json" if (folder / "page.json").is_file() else "key.json"
    if not (folder / name).is_file():
        raise DataError(folder, None, None, "holds neither page.json nor key.json: not a folder review.py wrote")
    try:
        page = json.loads((folder / name).read_text(encoding="utf-8"))
        if name == "page.json":
            page["items"] = [row for _, row in read_jsonl(folder / "items.jsonl", required=("id", "question"))]
            page["ids"] = [str(r["id"]) for r in page["items"]]
        else:
            page["ids"] = [it["id"] for it in page["items"]]
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(folder / name, None, None, f"not a page file review.py wrote ({e})") from None
    return page


def results(args):
    from core import review_results  # the statistics, only for this command
    page = load_page(args.page)
    exports, warnings = rv.latest_per_annotator([rv.read_export(p, page) for p in args.exports])
    scored = None
    if args.data:
        scored = {str(r["id"]): r for _, r in read_jsonl(args.data, required=("id",))}
    with staged_dir(args.out, "review-results", RESULT_FILES) as tmp:
        report = review_results.write(page, exports, scored, warnings, tmp, args.resamples, args.seed)
    for w in warnings:
        print(f"WARNING: {w}")
    print(f"{args.out}/results.md, results.json" + (", gold.jsonl" if page["kind"] == "label" else ""))
    return report


def main(argv=None):
    args = parse_args(argv)
    inputs = {"label": lambda: {"--data": args.data}, "compare": lambda: {"--runs": args.runs},
              "results": lambda: {"--page": args.page, "--exports": args.exports, "--data": args.data}}[args.command]()
    check_not_input(args.out, inputs)  # --out is replaced whole: never an input, nor a folder holding one
    check_out_dir(args.out, KIND[args.command], FILES[args.command])
    with output_lock(args.out):
        return {"label": label_page, "compare": compare_page, "results": results}[args.command](args)


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback
