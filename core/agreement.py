"""Agreement and classification statistics for the clinician review (review.py) and the severity
classifier (train_classifier.py): confusion matrix, per-class precision/recall/F1, macro-F1,
Cohen's and Fleiss' kappa, the exact two-sided sign test, bootstrap confidence intervals over
items, and the weights that carry a stratified sample back to the population's class shares.

Every statistic takes optional per-item weights (default 1). review.py samples items stratified by
class (so critical complaints are not rare), which over-represents the rare classes; weighting an
item of class s by  w_s = population share of s / sample share of s  makes each estimate the one
the whole population would give (a Horvitz-Thompson style estimate). The bootstrap resamples items
within each stratum (the sampling design) and keeps each item's weight.

Only numpy and the standard library: the references these are tested against (scikit-learn's
cohen_kappa_score, statsmodels' fleiss_kappa, scipy's binomtest) are test-only.
"""
import math

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes=3, weights=None):
    """conf[t][p] = (weighted) number of items with true class t predicted as p (rows true,
    columns predicted). Integer counts without weights, floats with them."""
    y_true, y_pred = (np.asarray(y if isinstance(y, np.ndarray) else list(y), dtype=np.int64) for y in (y_true, y_pred))
    if weights is None:
        flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
        return flat.reshape(num_classes, num_classes).tolist()
    flat = np.bincount(y_true * num_classes + y_pred, weights=np.asarray(weights, dtype=np.float64),
                       minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).tolist()


def accuracy(y_true, y_pred):
    y_true, y_pred = list(y_true), list(y_pred)
    return sum(int(t) == int(p) for t, p in zip(y_true, y_pred)) / max(len(y_true), 1)


def per_class_prf(conf):
    """Precision, recall, F1 and support of each class from a confusion matrix (0 where undefined)."""
    k = len(conf)
    out = []
    for c in range(k):
        tp = conf[c][c]
        predicted = sum(conf[t][c] for t in range(k))
        support = sum(conf[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.append(dict(precision=precision, recall=recall, f1=f1, support=support))
    return out


def macro_f1(y_true, y_pred, num_classes=3):
    """Unweighted mean of the per-class F1 over all classes."""
    prf = per_class_prf(confusion_matrix(y_true, y_pred, num_classes))
    return sum(c["f1"] for c in prf) / num_classes


def kappa_from_confusion(conf):
    """Cohen's kappa (p_o - p_e) / (1 - p_e) of a (weighted) two-rater table; None if p_e = 1."""
    conf = np.asarray(conf, dtype=np.float64)
    total = conf.sum()
    if total <= 0:
        return None
    p_o = np.trace(conf) / total
    p_e = float(conf.sum(1) @ conf.sum(0)) / total**2  # chance agreement from the two marginals
    return None if p_e >= 1 - 1e-12 else float((p_o - p_e) / (1 - p_e))


def cohen_kappa(a, b, num_classes=3, weights=None):
    """Cohen's kappa of two raters' class ids on the same items (optionally item-weighted)."""
    return kappa_from_confusion(confusion_matrix(a, b, num_classes, weights))


def fleiss_kappa(counts, weights=None):
    """Fleiss' kappa of counts [items, classes] (counts[i][j] = raters who put item i in class j).

    Items may have different numbers of ratings n_i (a "cannot tell" is left out of an item's
    ratings); items with n_i < 2 carry no agreement and are skipped. Per item
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)); P_bar = weighted mean of P_i;
    p_j = sum_i w_i n_ij / sum_i w_i n_i; P_e = sum_j p_j^2; kappa = (P_bar - P_e) / (1 - P_e).
    With the same n for every item and no weights this is Fleiss (1971) exactly.
    Returns (kappa or None, P_bar = the mean pairwise percent agreement or None).
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, np.shape(counts)[-1] if len(counts) else 1)
    w = np.ones(len(counts)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = counts.sum(1)
    keep = n >= 2
    if not keep.any():
        return None, None
    counts, w, n = counts[keep], w[keep], n[keep]
    p_item = ((counts**2).sum(1) - n) / (n * (n - 1))
    p_bar = float(w @ p_item / w.sum())
    p_class = (w @ counts) / (w @ n)
    p_e = float((p_class**2).sum())
    kappa = None if p_e >= 1 - 1e-12 else (p_bar - p_e) / (1 - p_e)
    return kappa, p_bar


def sign_test(wins, losses):
    """Exact two-sided sign test of wins vs losses (ties left out by the caller):
    p = min(1, 2 * P(X <= min(wins, losses))), X ~ Binomial(wins + losses, 1/2)."""
    n, m = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail, c = 0, 1  # c = C(n, k), built up with exact integers so large n does not underflow
    for k in range(m + 1):
        tail += c
        c = c * (n - k) // (k + 1)
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded


def stratum_weights(strata, population):
    """Per-item weights w_i = population share of s_i / sample share of s_i.

    strata: each item's class in the sampling frame; population: {class: rows in the population}.
    Weights average to 1 over the sample. A class the population lacks gets weight 0."""
    strata = list(strata)
    total = sum(population.values())
    sample = {s: strata.count(s) for s in set(strata)}
    return np.array([population.get(s, 0) / total / (sample[s] / len(strata)) for s in strata])


def bootstrap(stat, n_items, strata=None, n_resamples=1000, seed=0, level=0.95):
    """Percentile bootstrap intervals over items of stat(idx) -> {name: float or None}.

    Each resample draws, within each stratum, as many items as it holds, with replacement (the
    sampling design; strata=None: one stratum). Resamples where a statistic is undefined (None,
    NaN) are left out of its interval. Returns {name: [lo, hi] or None}."""
    groups = {}
    for i, s in enumerate(strata if strata is not None else [0] * n_items):
        groups.setdefault(s, []).append(i)
    groups = [np.array(g) for g in groups.values()]
    rng = np.random.default_rng(seed)
    values = {}
    for _ in range(n_resamples):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups]) if groups else np.zeros(0, int)
        for name, v in stat(idx).items():
            if v is not None and math.isfinite(v):
                values.setdefault(name, []).append(v)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    out = {}
    for name in stat(np.arange(n_items)):
        vs = values.get(name)
        out[name] = [float(x) for x in np.percentile(vs, q)] if vs else None
    return out


def classification_stats(y_true, y_pred, names, weights=None, strata=None, n_resamples=1000, seed=0):
    """Accuracy, macro-F1, Cohen's kappa, per-class precision and recall (each with a bootstrap
    CI) and the confusion matrix (weighted and raw) of predictions y_pred against y_true.
    names: the class names, in class-id order."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    w = np.ones(len(y_true)) if weights is None else np.asarray(weights, dtype=np.float64)
    k = len(names)

    def stat(idx):
        conf = confusion_matrix(y_true[idx], y_pred[idx], k, w[idx])
        prf = per_class_prf(conf)
        total = sum(map(sum, conf))
        out = {"accuracy": sum(conf[c][c] for c in range(k)) / total if total else None,
               "macro_f1": sum(c["f1"] for c in prf) / k,
               "kappa": kappa_from_confusion(conf)}
        for c, name in enumerate(names):
            out[f"recall_{name}"] = prf[c]["recall"] if prf[c]["support"] else None
            out[f"precision_{name}"] = prf[c]["precision"] if any(conf[t][c] for t in range(k)) else None
        return out

    point = stat(np.arange(len(y_true)))
    ci = bootstrap(stat, len(y_true), strata, n_resamples, seed) if len(y_true) else {}
    return {"n": int(len(y_true)),
            **{name: {"value": v, "ci": ci.get(name)} for name, v in point.items()},
            "confusion_weighted": confusion_matrix(y_true, y_pred, k, w),
            "confusion": confusion_matrix(y_true, y_pred, k)}
