"""What --sample N buys: the width of evaluate.py's 95% bootstrap interval for N evaluated rows,
overall and for the critical class, proportional or with a minimum per class.

    python bench/ci_width.py                          # per-row scores of the demo sample (see below)
    python bench/ci_width.py --run out/maqa/aragpt2-base-balanced-eval   # a real run's per-row scores

Per-row scores: with --run, the "scores" of a run's generations.jsonl (bertscore_f1 when present,
rougeL, sentence chrF); without, a zero-skill system on the demo sample: each answer scored against
the answer of another row (ROUGE-L and sentence chrF), the spread a weak model's answers have.
For each N, rows are drawn with replacement from those scores and the interval is computed exactly
as evaluate.py does (core/metrics.py's bootstrap_ci, 1000 percentile resamples), averaged over
--trials draws. A mean's interval is about 2 x 1.96 x sd / sqrt(n): a per-row sd of s points gives
a width of 3.92 s / sqrt(n) points, so the table carries over to other metrics by their sd.
The critical class: --critical-share of the rows (MAQA-like default 0.05) under the proportional
rule, or max(share x N, --min-per-class) with a minimum. Prints a Markdown table, writes JSON.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core import metrics as M  # noqa: E402
from core.common import DEMO_DATA, read_jsonl  # noqa: E402


def demo_scores(data):
    """Per-row ROUGE-L and sentence chrF (percent) of each answer against another row's answer."""
    answers = [row["answer"] for _, row in read_jsonl(data, required=("answer",))]
    others = answers[1:] + answers[:1]
    return {"rougeL": np.array([100 * M.rouge_l(h, r)["fmeasure"] for h, r in zip(others, answers)]),
            "chrf (sentence)": np.array([M.sentence_chrf(h, r) for h, r in zip(others, answers)])}


def run_scores(folder):
    rows = [row for _, row in read_jsonl(Path(folder) / "generations.jsonl", required=("question",))]
    out = {}
    for key in ("bertscore_f1", "rougeL", "chrf"):
        vals = [r.get("scores", {}).get(key) for r in rows]
        if all(v is not None for v in vals):
            out[key if key != "chrf" else "chrf (sentence)"] = np.array(vals, dtype=np.float64)
    return out


def width(scores, n, trials, rng):
    """Mean width of the 95% bootstrap interval of the mean of n rows drawn from scores."""
    ws = []
    for t in range(trials):
        lo, hi = M.bootstrap_ci(rng.choice(scores, size=n, replace=True), None, 1000, int(rng.integers(1 << 31)))
        ws.append(hi - lo)
    return float(np.mean(ws))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="an evaluate.py run folder (default: the demo sample, zero-skill)")
    p.add_argument("--data", default=str(DEMO_DATA), help="without --run: JSONL whose answers are scored")
    p.add_argument("--sizes", default="250,500,1000,2000,5000,10000", help="comma-separated N")
    p.add_argument("--critical-share", type=float, default=0.05, help="share of critical rows in the split")
    p.add_argument("--min-per-class", type=int, default=300, help="the --sample-min-per-class compared")
    p.add_argument("--trials", type=int, default=20, help="draws per N (the widths are averaged)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "ci_width.json"), help="JSON results file")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    scores = run_scores(args.run) if args.run else demo_scores(args.data)
    results = []
    lines = ["| N | metric | per-row sd | overall | 3.92 sd / sqrt(N) | critical, proportional (n) | critical, min "
             f"{args.min_per_class} (n) |", "|---|---|---|---|---|---|---|"]
    for n in [int(x) for x in args.sizes.split(",")]:
        crit_prop = max(1, round(n * args.critical_share))
        crit_min = min(n, max(crit_prop, args.min_per_class))
        for metric, s in scores.items():
            r = {"n": n, "metric": metric, "sd": float(s.std(ddof=1)), "overall": width(s, n, args.trials, rng),
                 "critical_proportional": width(s, crit_prop, args.trials, rng), "n_critical_proportional": crit_prop,
                 "critical_min": width(s, crit_min, args.trials, rng), "n_critical_min": crit_min}
            results.append(r)
            lines.append(f"| {n} | {metric} | {r['sd']:.1f} | {r['overall']:.2f} | {3.92 * r['sd'] / n ** 0.5:.2f} | "
                         f"{r['critical_proportional']:.2f} "
                         f"({crit_prop}) | {r['critical_min']:.2f} ({crit_min}) |")
    print("95% bootstrap interval width, in points (percent scale)\n")
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
