"""Temperature scaling for the severity classifier, kept only when it helps.

fit_temperature is Guo et al. (2017): the T minimizing the NLL of softmax(logits / T) on the val
split. On a small or easy val split that T runs to its bound (separable data pushes T -> 0) and,
applied anyway, makes the probabilities far worse on new rows (a 100-row run: test NLL 0.88 ->
7.93). So choose_temperature keeps a fitted T only if
  1. it lies strictly inside T_BOUNDS, and
  2. it lowers the NLL on val rows it was not fitted on: K-fold cross-validation over the val
     split (each fold scored with the T fitted on the other folds) against T = 1 on the same rows;
otherwise T = 1, and the report says why (train_classifier.py writes it into metrics.json and a
warning).
"""
import math

import torch
import torch.nn.functional as F

T_BOUNDS = (0.05, 20.0)  # the fitted temperature is clamped to this range
MIN_ROWS = 10  # fewer val rows than this: no calibration at all


def nll(logits, labels, temperature=1.0, reduction="mean"):
    """Negative log-likelihood of softmax(logits / T), in float64."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    return F.cross_entropy(logits / temperature, torch.as_tensor(labels), reduction=reduction).item()


def fit_temperature(logits, labels, t_min=T_BOUNDS[0], t_max=T_BOUNDS[1]):
    """Temperature scaling (Guo et al., 2017): T minimizing the NLL of softmax(logits / T).

    Optimizes log T (so T stays positive) with L-BFGS + strong Wolfe line search in float64,
    starting at T = 1; the result is clamped to [t_min, t_max]. Separable data pushes T -> 0, and
    L-BFGS stops early there (the gradient vanishes), so a bound whose NLL is no higher than the
    optimizer's is returned instead: the minimizer over [t_min, t_max].
    """
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    if len(labels) == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = log_t.exp().item()
    t = min(max(t, t_min), t_max) if math.isfinite(t) else 1.0
    best = min((nll(logits, labels, c), c != t, c) for c in (t, t_min, t_max))  # ties prefer t
    return best[2]


def inside_bounds(t, bounds=T_BOUNDS):
    return bounds[0] * 1.001 < t < bounds[1] * 0.999


def choose_temperature(logits, labels, n_folds=5, seed=0):
    """(T to use, report). T = the temperature fitted on all val rows if it is inside T_BOUNDS and
    its cross-validated val NLL is lower than the NLL at T = 1; else 1.0."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels)
    n = len(labels)
    report = {"fitted": None, "bounds": list(T_BOUNDS), "folds": 0, "val_nll_t1": None,
              "val_nll_cross_validated": None, "kept": False}
    if n < MIN_ROWS:
        return 1.0, {**report, "reason": f"only {n} val rows (< {MIN_ROWS}): no calibration"}
    fitted = fit_temperature(logits, labels)
    k = min(n_folds, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held_t = held_1 = 0.0
    for f in range(k):
        test = perm[f::k]
        rest = torch.cat([perm[g::k] for g in range(k) if g != f])
        t_f = fit_temperature(logits[rest], labels[rest])
        held_t += nll(logits[test], labels[test], t_f, reduction="sum")
        held_1 += nll(logits[test], labels[test], 1.0, reduction="sum")
    report.update(fitted=fitted, folds=k, val_nll_t1=held_1 / n, val_nll_cross_validated=held_t / n)
    if not inside_bounds(fitted):
        reason = (f"the fitted temperature {fitted:.3g} hit its bound {T_BOUNDS} "
                  f"(the val split is too small or too easy)")
    elif not held_t < held_1:
        reason = (f"the fitted temperature {fitted:.3g} does not lower the NLL on held-out val folds "
                  f"({held_t / n:.4f} vs {held_1 / n:.4f} at T = 1)")
    else:
        return fitted, {**report, "kept": True, "reason": "inside its bounds and lowers the cross-validated val NLL"}
    return 1.0, {**report, "reason": reason + ": T = 1 (no calibration)"}
