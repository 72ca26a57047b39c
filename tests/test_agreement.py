"""core/agreement.py against independent references: scikit-learn's cohen_kappa_score (with
sample_weight), statsmodels' fleiss_kappa (weights = replicated items), an exact binomial sum
written here with math.comb and scipy's binomtest for the sign test, and hand counts."""
import math
import random

import numpy as np
import pytest

from core import agreement as ag

# kappa = (p_o - p_e) / (1 - p_e) from shares that are float64 sums of n <= 400 terms of size <= 1, each
# off by <= n u (u = 2**-53): kappa is off by <= 3 n u / (1 - p_e), with 1 - p_e >= 0.3 in these tests, in
# each of the two implementations compared (measured <= 3.3e-16; a wrong formula moves kappa by 1e-2 and more).
# The shares, means and p-values below held to TOL are such sums themselves: within 400 u x their size <= 3.
TOL = 2 * 3 * 400 * 2**-53 / 0.3  # 8.9e-13


def random_ratings(n, k=3, seed=0, agree=0.6):
    rng = random.Random(seed)
    a = [rng.randrange(k) for _ in range(n)]
    b = [x if rng.random() < agree else rng.randrange(k) for x in a]
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohen_kappa_matches_sklearn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    a, b = random_ratings(80, seed=seed)
    assert ag.cohen_kappa(a, b) == pytest.approx(sklearn_metrics.cohen_kappa_score(a, b), abs=TOL)
    w = np.random.default_rng(seed).uniform(0.2, 3.0, len(a))
    ref = sklearn_metrics.cohen_kappa_score(a, b, sample_weight=w)
    assert ag.cohen_kappa(a, b, weights=w) == pytest.approx(ref, abs=TOL)


def test_cohen_kappa_by_hand():
    # table [[20, 5], [10, 15]]: p_o = 35/50 = 0.7, p_e = (25*30 + 25*20) / 2500 = 0.5, kappa = 0.4
    a = [0] * 25 + [1] * 25
    b = [0] * 20 + [1] * 5 + [0] * 10 + [1] * 15
    assert ag.cohen_kappa(a, b, num_classes=2) == pytest.approx(0.4, abs=TOL)
    assert ag.cohen_kappa([1, 1], [1, 1]) is None  # p_e = 1: undefined, not a division by zero


def fleiss_table(n_items, n_raters, k=3, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n_items):
        truth = rng.randrange(k)
        row = [0] * k
        for _ in range(n_raters):
            row[truth if rng.random() < 0.7 else rng.randrange(k)] += 1
        rows.append(row)
    return rows


@pytest.mark.parametrize("raters", [2, 3, 5])
def test_fleiss_kappa_matches_statsmodels(raters):
    irr = pytest.importorskip("statsmodels.stats.inter_rater")
    table = fleiss_table(60, raters, seed=raters)
    kappa, p_bar = ag.fleiss_kappa(table)
    assert kappa == pytest.approx(irr.fleiss_kappa(np.array(table), method="fleiss"), abs=TOL)
    # integer weights = each item replicated that many times
    reps = [1 + i % 3 for i in range(len(table))]
    replicated = [row for row, r in zip(table, reps) for _ in range(r)]
    kappa_w, _ = ag.fleiss_kappa(table, weights=reps)
    assert kappa_w == pytest.approx(irr.fleiss_kappa(np.array(replicated), method="fleiss"), abs=TOL)


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked in Wikipedia's "Fleiss' kappa" article: 10 items, 14 raters, 5 classes,
    # P_bar = 0.378, P_e = 0.213, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    kappa, p_bar = ag.fleiss_kappa(table)
    # the article rounds to 3 decimals: the exact value is within half a step, 5e-4 (measured 2.2e-5 and 6.9e-5)
    assert p_bar == pytest.approx(0.378, abs=5e-4)
    assert kappa == pytest.approx(0.210, abs=5e-4)


def test_two_raters_fleiss_percent_agreement_is_the_share_of_equal_pairs():
    a, b = random_ratings(50, seed=4)
    table = [[int(x == c) + int(y == c) for c in range(3)] for x, y in zip(a, b)]
    _, p_bar = ag.fleiss_kappa(table)
    assert p_bar == pytest.approx(sum(x == y for x, y in zip(a, b)) / 50, abs=TOL)
    # items with fewer than two ratings carry no agreement and are left out
    assert ag.fleiss_kappa(table + [[1, 0, 0], [0, 0, 0]]) == pytest.approx(ag.fleiss_kappa(table), abs=TOL)


def binomial_two_sided(w, l):
    """The exact sign test from its definition, with math.comb (independent of the implementation)."""
    n = w + l
    tail = sum(math.comb(n, k) for k in range(min(w, l) + 1))
    return min(1.0, 2 * tail / 2**n)


@pytest.mark.parametrize("wins,losses", [(0, 0), (1, 0), (5, 5), (9, 1), (2, 14), (30, 12), (600, 700)])
def test_sign_test_is_the_exact_binomial(wins, losses):
    # both are the same integer ratio 2 tail / 2**n, which Python's int / int rounds correctly: equal
    assert ag.sign_test(wins, losses) == binomial_two_sided(wins, losses)
    stats = pytest.importorskip("scipy.stats")
    if wins + losses:
        # scipy takes the two tails from Boost's regularized incomplete beta (binom.cdf + binom.sf), whose
        # relative error for parameters up to ~1000 is below ~5e-12 (Cephes' published peak for a, b <= 1000;
        # Boost's tables are tighter): 1e-11 (measured 2.2e-15 at n = 1300, 0 below)
        ref = stats.binomtest(wins, wins + losses, 0.5).pvalue
        assert ag.sign_test(wins, losses) == pytest.approx(ref, rel=1e-11)


def test_sign_test_hand_values():
    assert ag.sign_test(9, 1) == 22 / 1024  # 2 * (1 + 10) / 2^10, exact in binary
    assert ag.sign_test(3, 3) == 1.0


def test_stratum_weights_restore_population_shares():
    strata = ["mild"] * 10 + ["moderate"] * 10 + ["critical"] * 10
    w = ag.stratum_weights(strata, {"mild": 700, "moderate": 250, "critical": 50})
    assert w.mean() == pytest.approx(1.0, abs=TOL)
    assert w[:10].sum() / w.sum() == pytest.approx(0.7, abs=TOL)
    assert w[-10:].sum() / w.sum() == pytest.approx(0.05, abs=TOL)
    # a weighted accuracy equals the population's: accuracy 1.0 on mild, 0 elsewhere -> 0.7
    y = [0] * 10 + [1] * 10 + [2] * 10
    pred = [0] * 30
    stats = ag.classification_stats(y, pred, ["mild", "moderate", "critical"], weights=w, strata=strata,
                                    n_resamples=50)
    assert stats["accuracy"]["value"] == pytest.approx(0.7, abs=TOL)
    assert stats["recall_critical"]["value"] == 0.0
    assert stats["confusion"] == [[10, 0, 0], [10, 0, 0], [10, 0, 0]]


def test_bootstrap_interval_covers_and_shrinks():
    rng = np.random.default_rng(0)
    x = rng.random(400) < 0.3
    ci_small = ag.bootstrap(lambda idx: {"m": float(x[idx[:]].mean())}, 400, n_resamples=300)["m"]
    assert ci_small[0] < x.mean() < ci_small[1]
    # the binomial standard error at n = 400 is 0.023: the 95% interval is 2 x 1.96 = 3.92 of them wide.
    # With 300 resamples each percentile end has a Monte Carlo sd of sqrt(0.025 x 0.975 / 300) / phi(1.96)
    # = 0.009 / 0.058 = 0.16 se, and x's own share (0.26, not 0.3) moves se by 4%: the width is 3.92 se
    # +- 0.25 se (1 sd), so 2.5 .. 5.5 se is about 6 sd either side (measured 3.82 se); half or twice the
    # width (a wrong n, an interval of the mean of the resamples) falls outside
    se = math.sqrt(0.3 * 0.7 / 400)
    assert 2.5 * se < ci_small[1] - ci_small[0] < 5.5 * se
    # stratified resampling keeps each stratum's size: a statistic of the stratum sizes is constant
    strata = [0] * 100 + [1] * 300
    ci = ag.bootstrap(lambda idx: {"share": float((idx < 100).mean())}, 400, strata=strata, n_resamples=50)
    assert ci["share"] == [0.25, 0.25]


def test_classification_stats_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    a, b = random_ratings(120, seed=7)
    stats = ag.classification_stats(a, b, ["mild", "moderate", "critical"], n_resamples=20)
    assert stats["accuracy"]["value"] == pytest.approx(skm.accuracy_score(a, b), abs=TOL)
    assert stats["macro_f1"]["value"] == pytest.approx(skm.f1_score(a, b, average="macro"), abs=TOL)
    assert stats["recall_critical"]["value"] == pytest.approx(skm.recall_score(a, b, average=None)[2], abs=TOL)
    assert stats["precision_mild"]["value"] == pytest.approx(skm.precision_score(a, b, average=None)[0], abs=TOL)
    assert stats["confusion"] == skm.confusion_matrix(a, b).tolist()
    lo, hi = stats["macro_f1"]["ci"]
    assert lo <= stats["macro_f1"]["value"] <= hi
