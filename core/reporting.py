"""What evaluate.py's reports show beyond the metric table, so that a reviewer can trust it:
degeneracy flags and sample generations per severity class (report.md), the paper's table (one row
per model, one column per method, from the runs' own metadata; compare mode), and the plots.

The paper's table reads each run folder's metrics.json and, for a generated run, the meta.json that
train_lm.py wrote next to the model it evaluated:
    method  zero-shot   the model folder has no train_lm meta.json (a base model, evaluated as is)
            plain       train_lm --weights uniform
            weighted    any other --weights
            curriculum  train_lm --curriculum (with whatever --weights)
            selection (MBR)        evaluate.py --select mbr
            oracle (upper bound)   evaluate.py --select oracle (it reads the reference)
    model   the --model the run was fine-tuned from (its folder name; "demo GPT-2 (from scratch)"
            without one), the evaluated folder's name for zero-shot, the source runs' common model
            for a selection ("A + B" when they differ)
When two runs share a model and a method, their columns carry the detail (the weights preset).
Matplotlib is only needed for the PNG files (plot_* functions); it is imported there.
"""
import json
from pathlib import Path

import numpy as np

from core import metrics as M
from core.common import SEVERITIES

GROUPS = ("overall",) + SEVERITIES
METHOD_ORDER = ("zero-shot", "plain", "weighted", "curriculum", "selection (MBR)", "oracle (upper bound)")
SAMPLES_PER_CLASS = 2
DEGENERACY_NAMES = {"empty": "empty answers %", "distinct1": "distinct-1 %", "distinct2": "distinct-2 %",
                    "repeated": "repetitive %"}


# -----------------------------------------------------------------------------
# report.md: degeneracy flags and sample generations


def degeneracy_by_group(rows, classes):
    """metrics.degeneracy of the generated answers, overall and per severity class."""
    out = {"overall": M.degeneracy([r["generated"] for r in rows])}
    for c in SEVERITIES:
        out[c] = M.degeneracy([r["generated"] for r, k in zip(rows, classes) if k == c])
    return out


def _short(text, n=160):
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= n else text[:n] + " ..."


def quality_markdown(degen, rows, classes):
    """The report.md section under the metric table: degeneracy flags, then sample generations
    (the first SAMPLES_PER_CLASS rows of each class in file order; reproducible, not cherry-picked)."""
    lines = ["", "## Degeneracy flags", "",
             "Garbage output can still score: check these. empty: no token; distinct-n: distinct n-grams / all "
             f"n-grams of the answers (- where there is none); repetitive: answers of >= {M.REPEAT_MIN_TOKENS} "
             f"tokens whose most frequent token is >= {int(100 * M.REPEAT_SHARE)}% of them, or of >= "
             f"{M.REPEAT_MIN_CHARS} letters whose most frequent letter is (a letter repeated inside a word).", "",
             "| flag | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for key, name in DEGENERACY_NAMES.items():
        cells = [("-" if degen[g][key] is None else f"{degen[g][key]:.1f}") for g in GROUPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Sample generations", ""]
    for c in SEVERITIES:
        picked = [r for r, k in zip(rows, classes) if k == c][:SAMPLES_PER_CLASS]
        lines.append(f"**{c}** ({'none' if not picked else len(picked)} shown)")
        for r in picked:
            lines += ["", f"- question: {_short(r['question'])}", f"  - reference: {_short(r['answer'])}",
                      f"  - generated: {_short(r['generated']) or '(empty)'}"]
            if r.get("selected_from"):
                lines.append(f"  - selected from: {r['selected_from']}")
        lines.append("")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# The paper's table: model x method


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def run_identity(meta):
    """(model, method, detail) of a run from its metrics.json (see the module docstring)."""
    cfg = meta.get("config", {})
    if cfg.get("mode") == "select":
        sel = cfg["select"]
        models = set()
        for folder in sel["runs"]:
            src = _read_json(Path(folder) / "metrics.json")
            models.add(run_identity(src)[0] if src else Path(folder).name)
        method = "oracle (upper bound)" if sel.get("upper_bound") else "selection (MBR)"
        return " + ".join(sorted(models)), method, f"over {len(sel['runs'])} runs"
    model = cfg.get("model")
    if not model:  # a scored file: nothing says what produced it
        return Path(str(cfg.get("generations", "?"))).parent.name, "unknown", ""
    train_meta = _read_json(Path(model) / "meta.json")
    if not train_meta or "weights" not in train_meta:
        return Path(model).name, "zero-shot", ""
    a = train_meta["args"]
    base = Path(a["model"]).name if a.get("model") else "demo GPT-2 (from scratch)"
    if a.get("curriculum"):
        return base, "curriculum", f"{a['curriculum']}, {a['weights']}"
    return base, "plain" if a["weights"] == "uniform" else "weighted", a["weights"]


def paper_table(folders):
    """The table as a dict: models, columns, and per (model, column) the run and its numbers."""
    runs = []
    for f in folders:
        meta = _read_json(Path(f) / "metrics.json")
        if meta is None:
            raise ValueError(f"{Path(f) / 'metrics.json'}: not readable (not a run folder written by evaluate.py?)")
        runs.append((str(f), meta, *run_identity(meta)))
    shared = {}
    for _, _, model, method, _ in runs:
        shared[(model, method)] = shared.get((model, method), 0) + 1
    cells, models, columns = {}, [], []
    for folder, meta, model, method, detail in runs:
        column = f"{method} ({detail})" if shared[(model, method)] > 1 and detail else method
        if (model, column) in cells:  # the same run twice, or identical identities: keep them apart
            column = f"{column} [{Path(folder).name}]"
        models += [model] if model not in models else []
        columns += [(method, column)] if (method, column) not in columns else []
        cells[(model, column)] = {"run": folder, "metrics": meta}
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    columns = [c for _, c in sorted(columns, key=lambda mc: rank.get(mc[0], len(rank)))]
    return {"models": models, "columns": columns,
            "cells": {f"{m}|{c}": cells[(m, c)] for m in models for c in columns if (m, c) in cells}}


def _value(meta, metric, group):
    if group == "overall":
        return meta["overall"].get(metric), meta["ci"]["overall"].get(metric)
    return meta["by_severity"][group].get(metric), meta["ci"]["by_severity"][group].get(metric)


def _cell(meta, metric, group, ci=True):
    v, c = _value(meta, metric, group)
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" [{c[0]:.2f}, {c[1]:.2f}]" if ci and c else "")


def paper_table_markdown(table):
    """Markdown: BERTScore-F1 [95% CI] per group (and rescaled, when the runs have it), then the
    triage-safety rates, each as a model x method table."""
    cols, models = table["columns"], table["models"]

    def block(title, fn):
        out = ["", f"### {title}", "", "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for m in models:
            out.append(f"| {m} | " + " | ".join(fn(table["cells"][f"{m}|{c}"]["metrics"]) if f"{m}|{c}" in
                                              table["cells"] else "" for c in cols) + " |")
        return out

    any_meta = next(iter(table["cells"].values()))["metrics"]
    lines = ["# Model x method", "", "Numbers in percent, [95% bootstrap interval] over examples. "
             "The oracle reads the reference: an upper bound, not a method.",
             f"BERTScore: {any_meta['config'].get('bertscore', {}).get('config_string', '-')}"]
    has_bs = "bertscore_f1" in any_meta["overall"]
    for g in GROUPS:
        n = any_meta["n"].get(g, 0)
        if has_bs:
            lines += block(f"BERTScore-F1, {g} (n = {n})", lambda meta, g=g: _cell(meta, "bertscore_f1", g))
    if "bertscore_f1_rescaled" in any_meta["overall"]:
        lines += block("BERTScore-F1 rescaled with the mismatched-reference baseline, overall",
                       lambda meta: _cell(meta, "bertscore_f1_rescaled", "overall"))
    lines += block("Triage safety: urgent advice on critical complaints (recall, higher is better) / on mild "
                   "ones (over-triage, lower is better)",
                   lambda meta: f"{_cell(meta, 'urgent_rate', 'critical', False)} / {_cell(meta, 'urgent_rate', 'mild', False)}")
    ref = any_meta["by_severity"]
    lines += ["", f"The doctors' own answers: {_cell(any_meta, 'ref_urgent_rate', 'critical', False)} / "
              f"{_cell(any_meta, 'ref_urgent_rate', 'mild', False)}." if ref["critical"].get("ref_urgent_rate")
              is not None else ""]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# Plots (matplotlib imported by the caller's check; these only draw)


def run_colors(folders):
    """One colour per run folder (matplotlib's default cycle, in the order given), so a run has the same
    colour in every plot of a comparison whatever order a plot lists the runs in."""
    return {str(f): f"C{i % 10}" for i, f in enumerate(folders)}


def _bars(ax, labels, per_label, title, ns, colors):
    """Grouped bars: one group per GROUPS entry, one bar per label; per_label[label] = [(v, ci)].
    Bars start at 0 (a bar's length is its value) and the legend goes outside the axes."""
    width = 0.8 / max(1, len(labels))
    for i, name in enumerate(labels):
        xs = np.arange(len(GROUPS)) + i * width
        vals = [v if v is not None else np.nan for v, _ in per_label[name]]
        err = np.array([[v - c[0], c[1] - v] if v is not None and c else [0, 0] for v, c in per_label[name]]).T
        ax.bar(xs, vals, width, yerr=err, capsize=2, label=name, color=colors[i])
    ax.set_xticks(np.arange(len(GROUPS)) + width * (len(labels) - 1) / 2,
                  [f"{g}\nn = {ns.get(g, 0)}" for g in GROUPS], fontsize=8)
    ax.set_ylim(0, None)
    ax.set_title(title, fontsize=10)


def _legend_below(fig, ax, n):
    """The runs' legend under the panels, never over a bar."""
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize=8, ncol=min(n, 3), frameon=False)
    fig.tight_layout(rect=(0, 0.06 * ((n + 2) // 3), 1, 1))


def plot_metric_bars(plt, path, labels, metas, metrics, names, colors):
    """One panel per metric, per-severity bars per run with 95% CIs; x labels carry n (an empty
    class shows n = 0 and no bar); colors: one per label."""
    metrics = [m for m in metrics if any(m in meta["overall"] for meta in metas)]
    cols = min(3, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows + 0.4 * len(labels)), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        per = {lab: [_value(meta, m, g) if m in meta["overall"] else (None, None) for g in GROUPS]
               for lab, meta in zip(labels, metas)}
        _bars(ax, labels, per, names.get(m, m) + " (%)", metas[0]["n"], colors)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    _legend_below(fig, axes.flat[0], len(labels))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(plt, path, runs):
    """Plain (unweighted) validation loss per run, comparable across --weights; runs: [(label,
    records of train_lm's metrics.jsonl)]. Returns None when no run has validation records."""
    runs = [(lab, [(r["step"], r["val_loss"]) for r in recs if r.get("val_loss") is not None]) for lab, recs in runs]
    runs = [(lab, pts) for lab, pts in runs if pts]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lab, pts in runs:
        ax.plot(*zip(*pts), "o-", label=lab)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (plain token-mean CE)")
    ax.set_title("Validation loss, unweighted (comparable across --weights)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_label(meta):
    """'model, weights[, curriculum]' of the train_lm run a metrics.json evaluated, else None."""
    model = meta.get("config", {}).get("model")
    tm = _read_json(Path(model) / "meta.json") if model else None
    if not tm or "weights" not in tm:
        return None
    a = tm["args"]
    base = Path(a["model"]).name if a.get("model") else "demo GPT-2"
    return f"{base}, {a['weights']}" + (f", curriculum {a['curriculum']}" if a.get("curriculum") else "")


def plot_paper_table(plt, path, table, colors):
    """The paper's table as bars: one panel per severity group, BERTScore-F1 per model x method
    with 95% CIs; colors: run folder -> colour (run_colors), as in the other plots."""
    keys = [f"{m}|{c}" for m in table["models"] for c in table["columns"] if f"{m}|{c}" in table["cells"]]
    labels = [k.replace("|", " | ") if len(table["models"]) > 1 else k.split("|", 1)[1] for k in keys]
    metas = [table["cells"][k]["metrics"] for k in keys]
    if "bertscore_f1" not in metas[0]["overall"]:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(labels) + 4), 4.5 + 0.3 * len(labels)))
    per = {lab: [_value(meta, "bertscore_f1", g) for g in GROUPS] for lab, meta in zip(labels, metas)}
    _bars(ax, labels, per, "BERTScore-F1 (%) by model x method, 95% CI", metas[0]["n"],
          [colors[table["cells"][k]["run"]] for k in keys])
    _legend_below(fig, ax, len(labels))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
