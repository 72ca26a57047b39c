"""review.py results: what the clinicians' exported files say, as numbers (results.json), a
report (results.md) and, for a labelling page, gold labels (gold.jsonl).

Every estimate is re-weighted to the population's class shares: an item of stratum s weighs
population share of s / sample share of s (core.agreement.stratum_weights), and each 95% interval
is a percentile bootstrap over items, resampled within strata. The sign test's p-value counts
items, unweighted (an exact test needs counts).
"""
from itertools import combinations

import numpy as np

from core import agreement as ag
from core.common import SEVERITIES, write_json, write_jsonl

CLASS_ORDER = ("critical", "moderate", "mild")  # the order reports list classes in: critical first


def write(page, exports, scored, warnings, out, n_resamples=1000, seed=0):
    """Compute and write results.json, results.md (and gold.jsonl for a labelling page) into out."""
    boot = dict(n_resamples=n_resamples, seed=seed)
    if page["kind"] == "label":
        report, gold = label_results(page, exports, scored, boot)
        write_jsonl(out / "gold.jsonl", gold)
        md = label_markdown(report)
    else:
        report = compare_results(page, exports, boot)
        md = compare_markdown(report)
    report["warnings"] = warnings
    write_json(out / "results.json", report)
    (out / "results.md").write_text(md + "".join(f"\nWARNING: {w}\n" for w in warnings), encoding="utf-8")
    return report


def with_ci(value, ci):
    return {"value": value, "ci": ci}


# -----------------------------------------------------------------------------
# labelling


def label_results(page, exports, scored, boot):
    ids, names = page["ids"], [e["annotator"] for e in exports]
    strata = [page["strata"][i] for i in ids]
    weights = ag.stratum_weights(strata, page["population"])
    ratings = [[(e["records"].get(i) or {}).get("label") for e in exports] for i in ids]
    counts = np.array([[r.count(c) for c in SEVERITIES] for r in ratings])
    report = {"kind": "label", "page_id": page["page_id"], "annotators": names, "n_items": len(ids),
              "population": page["population"], "reweighted": True,
              "cannot_tell": sum(r.count("cannot_tell") for r in ratings),
              "unanswered": sum(r.count(None) for r in ratings),
              "agreement": agreement(ratings, counts, weights, strata, boot)}
    gold, consensus, report_counts = [], [], {"labelled": 0, "unlabelled_tie": 0, "unlabelled_cannot_tell": 0,
                                              "unlabelled_no_class_label": 0}
    for i, r in zip(ids, ratings):
        label, why = majority(r)
        consensus.append(label)
        report_counts[why] = report_counts.get(why, 0) + 1
        if label is not None:
            votes = [x for x in r if x is not None]
            gold.append({"id": i, "severity": label, "severity_source": "gold",
                         "annotators": {n: x for n, x in zip(names, r) if x is not None},
                         "agreement": votes.count(label) / len(votes)})
    report["consensus"] = report_counts
    report["rules_vs_gold"] = rules_vs_gold(page["items"], consensus, weights, strata, boot)
    report["classifier_vs_gold"] = classifier_vs_gold(page["items"], consensus, weights, strata, scored, boot)
    return report, gold


def majority(ratings):
    """(label, why): the class more than half of the item's answers give ("cannot tell" is an
    answer, an unanswered item is not); else None and why: a tie between classes, a "cannot tell"
    that blocks the majority, or no class answer at all."""
    answers = [x for x in ratings if x is not None]
    votes = {c: answers.count(c) for c in SEVERITIES}
    top = max(votes.values())
    if top == 0:
        return None, "unlabelled_no_class_label"
    label = max(SEVERITIES, key=votes.get)
    if top > len(answers) / 2:
        return label, "labelled"
    return None, "unlabelled_tie" if list(votes.values()).count(top) > 1 else "unlabelled_cannot_tell"


def agreement(ratings, counts, weights, strata, boot):
    """Cohen's kappa for two annotators (items both gave a class), Fleiss' kappa for more (items
    with >= 2 class ratings); percent agreement = the mean share of agreeing pairs of ratings."""
    n_raters = len(ratings[0]) if ratings else 0
    if n_raters < 2:
        return {"statistic": None, "note": "one annotator: no agreement to measure"}
    if n_raters == 2:
        both = [k for k, r in enumerate(ratings) if r[0] in SEVERITIES and r[1] in SEVERITIES]
        a = np.array([SEVERITIES.index(ratings[k][0]) for k in both], dtype=int)
        b = np.array([SEVERITIES.index(ratings[k][1]) for k in both], dtype=int)
        w, s = weights[both], [strata[k] for k in both]
        def stat(idx):
            agree = float(w[idx] @ (a[idx] == b[idx]) / w[idx].sum()) if len(idx) else None
            return {"kappa": ag.cohen_kappa(a[idx], b[idx], 3, w[idx]), "percent_agreement": agree}
        name = "cohen_kappa"
    else:
        both = [k for k in range(len(ratings)) if counts[k].sum() >= 2]
        c, w, s = counts[both], weights[both], [strata[k] for k in both]

        def stat(idx):
            kappa, p_bar = ag.fleiss_kappa(c[idx], w[idx])
            return {"kappa": kappa, "percent_agreement": p_bar}
        name = "fleiss_kappa"
    point = stat(np.arange(len(both)))
    ci = ag.bootstrap(stat, len(both), s, **boot) if both else {}
    return {"statistic": name, "n_items": len(both),
            **{k: with_ci(v, ci.get(k)) for k, v in point.items()}}


def versus_gold(pred, consensus, weights, strata, boot):
    keep = [k for k, (p, g) in enumerate(zip(pred, consensus)) if g is not None and p is not None]
    y = [SEVERITIES.index(consensus[k]) for k in keep]
    yhat = [SEVERITIES.index(pred[k]) for k in keep]
    return ag.classification_stats(y, yhat, SEVERITIES, weights[keep], [strata[k] for k in keep], **boot)


def rules_vs_gold(items, consensus, weights, strata, boot):
    from core.lexicon import severity_of
    return versus_gold([severity_of(row["question"])[0] for row in items], consensus, weights, strata, boot)


def classifier_vs_gold(items, consensus, weights, strata, scored, boot):
    """argmax of severity_probs (from --data by id, else the item row), rows outside the train split."""
    pred = []
    for row in items:
        row = (scored or {}).get(str(row["id"]), row)
        probs = row.get("severity_probs")
        pred.append(SEVERITIES[int(np.argmax(probs))] if probs and row.get("split") != "train" else None)
    if not any(p is not None for p in pred):
        return None
    return versus_gold(pred, consensus, weights, strata, boot)


# -----------------------------------------------------------------------------
# answer review


def judgments(page, exports):
    """Per item: [(annotator, choice in run terms, flags per run)] with 'first'/'second' mapped to
    runs, for the annotators who made a choice on it."""
    out = []
    for item in page["items"]:
        runs = (item["first"], item["second"])
        per = []
        for e in exports:
            rec = e["records"].get(item["id"])
            if not rec or rec.get("choice") is None:  # not judged (yet): its unset flags are no answer either
                continue
            choice = {"first": runs[0], "second": runs[1]}.get(rec.get("choice"), rec.get("choice"))
            flags = {f: {runs[s]: bool(rec.get(f, [False, False])[s]) for s in (0, 1)}
                     for f in ("unsafe", "misses_urgent")}
            per.append((e["annotator"], choice, flags))
        out.append(per)
    return out


def compare_results(page, exports, boot):
    items, names = page["items"], [e["annotator"] for e in exports]
    strata = [it["stratum"] for it in items]
    weights = ag.stratum_weights(strata, page["population"])
    judged = judgments(page, exports)
    report = {"kind": "compare", "page_id": page["page_id"], "runs": page["runs"], "annotators": names,
              "n_items": len(items), "population": page["population"], "reweighted": True, "pairs": [],
              "flags": flag_rates(items, judged, weights, strata, len(page["runs"]), boot),
              "annotator_agreement": preference_agreement(items, exports)}
    for a, b in combinations(range(len(page["runs"])), 2):
        pair = {"a": page["runs"][a], "b": page["runs"][b]}
        for cls in ("all",) + CLASS_ORDER:
            keep = [k for k, it in enumerate(items) if {it["first"], it["second"]} == {a, b}
                    and (cls == "all" or strata[k] == cls) and judged[k]]
            pair[cls] = pair_rates(a, b, [judged[k] for k in keep], weights[keep], [strata[k] for k in keep], boot)
        report["pairs"].append(pair)
    return report


def pair_rates(a, b, judged, weights, strata, boot):
    """Win (a better) / tie / loss / both-unacceptable shares (each item's annotators averaged),
    weighted, with CIs; the sign test on items whose annotators prefer one run on balance."""
    outcomes = {"win": a, "loss": b, "tie": "tie", "both_unacceptable": "both_unacceptable"}
    share = {name: np.array([np.mean([c == v for _, c, _ in per if c is not None]) for per in judged])
             for name, v in outcomes.items()}
    net = [sum((c == a) - (c == b) for _, c, _ in per) for per in judged]
    wins, losses = sum(x > 0 for x in net), sum(x < 0 for x in net)

    def stat(idx):
        w = weights[idx]
        return {name: float(w @ s[idx] / w.sum()) if len(idx) else None for name, s in share.items()}
    ci = ag.bootstrap(stat, len(judged), strata, **boot) if judged else {}
    point = stat(np.arange(len(judged)))
    return {"n_items": len(judged), **{k: with_ci(v, ci.get(k)) for k, v in point.items()},
            "sign_test": {"wins": int(wins), "losses": int(losses), "ties_left_out": len(judged) - wins - losses,
                          "p_value": ag.sign_test(wins, losses)}}


def flag_rates(items, judged, weights, strata, n_runs, boot):
    """Per run: the weighted share of its shown answers flagged unsafe / misses urgent care."""
    out = {}
    for r in range(n_runs):
        keep = [k for k, it in enumerate(items) if r in (it["first"], it["second"]) and judged[k]]
        rates = {f: np.array([np.mean([fl[f][r] for _, _, fl in judged[k]]) for k in keep])
                 for f in ("unsafe", "misses_urgent")}
        w = weights[keep]

        def stat(idx):
            return {f: float(w[idx] @ v[idx] / w[idx].sum()) if len(idx) else None for f, v in rates.items()}
        ci = ag.bootstrap(stat, len(keep), [strata[k] for k in keep], **boot) if keep else {}
        point = stat(np.arange(len(keep)))
        out[str(r)] = {"n_items": len(keep), **{k: with_ci(v, ci.get(k)) for k, v in point.items()}}
    return out


def preference_agreement(items, exports):
    """Cohen's kappa and percent agreement of each pair of annotators on the choice (first /
    second / tie / both unacceptable), over the items both judged."""
    out = []
    def choice(e, item):
        return (e["records"].get(item["id"]) or {}).get("choice")

    for e1, e2 in combinations(exports, 2):
        both = [(choice(e1, it), choice(e2, it)) for it in items if choice(e1, it) and choice(e2, it)]
        codes = ["first", "second", "tie", "both_unacceptable"]
        x, y = [codes.index(p) for p, _ in both], [codes.index(q) for _, q in both]
        out.append({"annotators": [e1["annotator"], e2["annotator"]], "n_items": len(both),
                    "kappa": ag.cohen_kappa(x, y, 4) if both else None,
                    "percent_agreement": sum(p == q for p, q in both) / len(both) if both else None})
    return out


# -----------------------------------------------------------------------------
# reports


def fmt(entry, digits=3):
    if entry is None or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


REWEIGHT_NOTE = ("Every estimate is re-weighted to the population's class shares ({pop}): the sample holds as "
                 "many items of each class as it could, so an item of class s weighs (population share of s) / "
                 "(sample share of s). Intervals: 95% bootstrap over items, resampled within classes.\n")


def label_markdown(r):
    a = r["agreement"]
    lines = [f"# Severity labelling: page {r['page_id']}\n", f"Annotators: {', '.join(r['annotators'])}; "
             f"{r['n_items']} items; 'cannot tell' answers: {r['cannot_tell']}; unanswered: {r['unanswered']}.\n",
             REWEIGHT_NOTE.format(pop=r["population"]), "## Agreement between annotators\n"]
    if a["statistic"]:
        lines += [f"- {a['statistic'].replace('_', ' ')}: {fmt(a['kappa'])} "
                  f"({a['n_items']} items with two or more class labels)",
                  f"- percent agreement: {fmt(a['percent_agreement'])}\n"]
    else:
        lines.append(a["note"] + "\n")
    c = r["consensus"]
    lines.append(f"## Consensus (gold)\n\n{c['labelled']} items labelled (a class given by more than half of the "
                 f"item's answers); unlabelled: {c['unlabelled_tie']} ties, {c['unlabelled_cannot_tell']} held back by "
                 f"'cannot tell', {c['unlabelled_no_class_label']} without any class answer.\n")
    for title, key in (("Rules vs gold", "rules_vs_gold"), ("Classifier vs gold (rows outside its train split)",
                                                            "classifier_vs_gold")):
        lines += [f"## {title}\n"] + (versus_table(r[key]) if r[key] else ["no severity_probs on these items\n"])
    return "\n".join(lines)


def versus_table(s):
    rows = [f"{s['n']} items.\n", "| measure | value [95% CI] |", "|---|---|"]
    keys = ["accuracy", "macro_f1", "kappa"] + [f"{m}_{c}" for c in CLASS_ORDER for m in ("recall", "precision")]
    rows += [f"| {k.replace('_', ' ')} | {fmt(s[k])} |" for k in keys]
    rows += ["", "Confusion matrix (rows gold, columns predicted; counts, not weighted):", "",
             "| gold \\ predicted | " + " | ".join(SEVERITIES) + " |", "|---|---|---|---|"]
    rows += [f"| {SEVERITIES[t]} | " + " | ".join(str(x) for x in s["confusion"][t]) + " |" for t in range(3)]
    return rows + [""]


def compare_markdown(r):
    lines = [f"# Blind answer review: page {r['page_id']}\n", f"Annotators: {', '.join(r['annotators'])}; "
             f"{r['n_items']} items.\n", REWEIGHT_NOTE.format(pop=r["population"])]
    for p in r["pairs"]:
        lines += [f"## {p['a']} (A) vs {p['b']} (B)\n",
                  "| class | items | A better | tie | B better | both unacceptable "
                  "| sign test p (A wins / B wins / ties left out) |", "|---|---|---|---|---|---|---|"]
        for cls in ("all",) + CLASS_ORDER:
            x = p[cls]
            st = x["sign_test"]
            lines.append(f"| {cls} | {x['n_items']} | {fmt(x['win'])} | {fmt(x['tie'])} | {fmt(x['loss'])} | "
                         f"{fmt(x['both_unacceptable'])} | {st['p_value']:.3g} ({st['wins']} / {st['losses']} / "
                         f"{st['ties_left_out']}) |")
        lines.append("")
    lines += ["## Flags per run\n", "| run | items | unsafe | misses urgent care |", "|---|---|---|---|"]
    lines += [f"| {r['runs'][int(k)]} | {v['n_items']} | {fmt(v['unsafe'])} | {fmt(v['misses_urgent'])} |"
              for k, v in r["flags"].items()]
    lines += ["", "## Annotators' agreement on the preference\n"]
    def num(x):
        return "n/a" if x is None else f"{x:.3f}"
    lines += [f"- {' vs '.join(x['annotators'])}: kappa {num(x['kappa'])}, percent agreement "
              f"{num(x['percent_agreement'])} ({x['n_items']} items)" for x in r["annotator_agreement"]] \
        or ["one annotator: no agreement to measure"]
    return "\n".join(lines) + "\n"
