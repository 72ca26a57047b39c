"""review.py without a browser: the stratified sample, blindness of the pages, the checks on
exported files, and results.json's numbers against independent references (scikit-learn's
cohen_kappa_score with sample weights, statsmodels' fleiss_kappa, counts by hand)."""
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import review
from conftest import write_rows
from core import review as rv
from core.common import DataError, UsageError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo.jsonl"
S = ("mild", "moderate", "critical")


def page_data(html):
    return json.loads(re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S).group(1))


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "page"
    review.main(["label", "--data", str(DEMO), "--n", "30", "--seed", "0", "--out", str(out)])
    return out


def export(folder, name, labels, stamp="2026-12-06T10:00:00Z", kind="label"):
    page = review.load_page(folder)
    field = "label" if kind == "label" else "choice"
    recs = [{"id": i, field: x, "note": ""} for i, x in zip(page["ids"], labels)]
    path = folder.parent / f"{name}-{stamp[:13]}.json"
    path.write_text(json.dumps({"page_id": page["page_id"], "kind": kind, "annotator": name, "timestamp": stamp,
                                "records": recs}), encoding="utf-8")
    return path


def test_stratified_sample_equal_shares_seeded():
    strata = ["mild"] * 100 + ["moderate"] * 40 + ["critical"] * 5
    chosen = rv.stratified_sample(strata, 30, seed=0)
    assert len(set(chosen)) == 30
    assert Counter(strata[i] for i in chosen) == {"critical": 5, "moderate": 13, "mild": 12} or \
        Counter(strata[i] for i in chosen) == {"critical": 5, "moderate": 12, "mild": 13}
    assert chosen == rv.stratified_sample(strata, 30, seed=0) != rv.stratified_sample(strata, 30, seed=1)
    assert sorted(rv.stratified_sample(strata, 500, seed=0)) == list(range(145))  # all of them
    # the page order is shuffled: not class by class
    assert [strata[i] for i in chosen] != sorted([strata[i] for i in chosen])


def test_label_page_is_blind(label_dir):
    data = page_data((label_dir / "label.html").read_text(encoding="utf-8"))
    assert all(set(it) == {"id", "question", "reference"} for it in data["items"])
    assert len(data["items"]) == 30
    items = [json.loads(x) for x in (label_dir / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [it["id"] for it in data["items"]] == [r["id"] for r in items]
    assert Counter(r["severity"] for r in items) == {"mild": 10, "moderate": 10, "critical": 10}
    page = json.loads((label_dir / "page.json").read_text(encoding="utf-8"))
    demo = DEMO.read_text(encoding="utf-8").splitlines()
    assert page["population"] == dict(Counter(json.loads(x)["severity"] for x in demo))


def test_script_text_cannot_close_the_data_element():
    html = rv.render_page("label", "p1", [{"id": "1", "question": "</script><b>x", "reference": ""}])
    assert page_data(html)["items"][0]["question"] == "</script><b>x"


def test_bad_exports_are_one_error_line(label_dir, tmp_path):
    good = export(label_dir, "A", ["mild"] * 30)
    data = json.loads(good.read_text(encoding="utf-8"))
    cases = {"other page": {**data, "page_id": "ffffffffffff"},
             "unknown id": {**data, "records": data["records"] + [{"id": "nope", "label": "mild"}]},
             "bad label": {**data, "records": [{**data["records"][0], "label": "severe"}]}}
    for what, content in cases.items():
        path = tmp_path / f"{what}.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(DataError, match=r"page|not on this page|label"):
            review.main(["results", "--page", str(label_dir), "--exports", str(path), "--out", str(tmp_path / "r")])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    run = subprocess.run([sys.executable, "review.py", "results", "--page", str(label_dir), "--exports", str(broken),
                          "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    assert "broken.json" in run.stderr and not (tmp_path / "r").exists()


def test_out_that_is_an_input_is_refused(label_dir, tmp_path):
    path = export(label_dir, "A", ["mild"] * 30)
    for out in (label_dir, label_dir.parent):
        with pytest.raises(UsageError, match="input"):
            review.main(["results", "--page", str(label_dir), "--exports", str(path), "--out", str(out)])
    with pytest.raises(UsageError, match="input"):
        review.main(["label", "--data", str(DEMO), "--out", str(DEMO.parent)])


def test_label_results_match_references(label_dir, tmp_path):
    skm = pytest.importorskip("sklearn.metrics")
    page = review.load_page(label_dir)
    truth = [json.loads(x)["severity"] for x in (label_dir / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = np.random.default_rng(0)
    a = [t if rng.random() < 0.8 else S[rng.integers(3)] for t in truth]
    b = [t if rng.random() < 0.7 else S[rng.integers(3)] for t in truth]
    b[0], b[1] = "cannot_tell", None  # left out of the agreement, counted
    old = export(label_dir, "B", ["mild"] * 30, stamp="2026-12-06T09:00:00Z")
    paths = [export(label_dir, "A", a), export(label_dir, "B", b, stamp="2026-12-06T11:00:00Z"), old]
    report = review.main(["results", "--page", str(label_dir), "--exports", *map(str, paths), "--resamples", "200",
                          "--out", str(tmp_path / "res")])
    assert len(report["warnings"]) == 1 and "B exported twice" in report["warnings"][0]  # the 11:00 export wins
    assert report["cannot_tell"] == 1 and report["unanswered"] == 1
    # Cohen's kappa re-weighted to the population: scikit-learn with the same weights as sample_weight
    strata = [page["strata"][i] for i in page["ids"]]
    pop = page["population"]
    w = {s: pop[s] / sum(pop.values()) / (strata.count(s) / 30) for s in S}
    keep = range(2, 30)
    ref = skm.cohen_kappa_score([a[k] for k in keep], [b[k] for k in keep], sample_weight=[w[strata[k]] for k in keep])
    kappa = report["agreement"]["kappa"]
    # shares that are float64 sums of 28 terms (each off by <= 28 u, u = 2**-53), kappa = (p_o - p_e) / (1 - p_e)
    # with 1 - p_e >= 0.3: <= 3 x 28 u / 0.3 in each implementation (tests/test_agreement.py; measured 1.1e-16)
    assert kappa["value"] == pytest.approx(ref, abs=2 * 3 * 28 * 2**-53 / 0.3)
    assert kappa["ci"][0] < kappa["value"] < kappa["ci"][1]
    # the consensus: a class from more than half of the answers; a disagreement of two is a tie, and
    # A's label against B's "cannot tell" is no majority; B's unanswered item leaves A's label alone
    gold = [json.loads(x) for x in (tmp_path / "res" / "gold.jsonl").read_text(encoding="utf-8").splitlines()]
    expect = {i: x for i, x, y in zip(page["ids"], a, b) if y is None or x == y}
    assert {g["id"]: g["severity"] for g in gold} == expect
    assert all(g["severity_source"] == "gold" for g in gold)
    assert report["consensus"]["unlabelled_cannot_tell"] == 1
    assert report["consensus"]["unlabelled_tie"] == 30 - len(expect) - 1
    md = (tmp_path / "res" / "results.md").read_text(encoding="utf-8")
    assert "re-weighted to the population's class shares" in md and "Rules vs gold" in md


def test_three_annotators_fleiss_matches_statsmodels(label_dir, tmp_path):
    irr = pytest.importorskip("statsmodels.stats.inter_rater")
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    for name in ("page.json", "items.jsonl"):
        (page_dir / name).write_bytes((label_dir / name).read_bytes())
    page = json.loads((page_dir / "page.json").read_text(encoding="utf-8"))
    page["population"] = dict(Counter(page["strata"].values()))  # population = sample: every weight is 1
    (page_dir / "page.json").write_text(json.dumps(page), encoding="utf-8")
    rng = np.random.default_rng(1)
    labels = [[S[rng.integers(3)] if rng.random() < 0.5 else S[k % 3] for k in range(30)] for _ in range(3)]
    paths = [export(page_dir, n, x) for n, x in zip("XYZ", labels)]
    report = review.main(["results", "--page", str(page_dir), "--exports", *map(str, paths), "--resamples", "50",
                          "--out", str(tmp_path / "res")])
    table = np.array([[sum(lab[k] == c for lab in labels) for c in S] for k in range(30)])
    assert report["agreement"]["statistic"] == "fleiss_kappa"
    # as Cohen's kappa above, from sums of 30 items x 3 raters (measured 1.1e-16)
    assert report["agreement"]["kappa"]["value"] == pytest.approx(irr.fleiss_kappa(table), abs=2 * 3 * 90 * 2**-53 / 0.3)


def test_compare_results_by_hand(tmp_path):
    rows = [{"id": str(k), "question": f"سؤال {k}", "answer": "جواب", "severity": S[k % 3]} for k in range(12)]
    runs = []
    for j in range(2):
        (tmp_path / f"r{j}").mkdir()
        write_rows(tmp_path / f"r{j}" / "generations.jsonl", [{**r, "generated": f"ج{j}"} for r in rows])
        runs.append(str(tmp_path / f"r{j}"))
    review.main(["compare", "--runs", *runs, "--n", "12", "--out", str(tmp_path / "page")])
    key = json.loads((tmp_path / "page" / "key.json").read_text(encoding="utf-8"))
    assert sum(it["first"] == 0 for it in key["items"]) == 6  # sides balanced
    # the annotator prefers run 0 on 9 items, run 1 on 1, a tie on 1, and leaves the last unanswered
    prefs = [0] * 9 + [1] + ["tie", None]
    choices = [p if p in ("tie", None) else "first" if it["first"] == p else "second"
               for it, p in zip(key["items"], prefs)]
    path = export(tmp_path / "page", "A", choices, kind="compare")
    report = review.main(["results", "--page", str(tmp_path / "page"), "--exports", str(path), "--resamples", "100",
                          "--out", str(tmp_path / "res")])
    allc = report["pairs"][0]["all"]
    assert allc["sign_test"] == {"wins": 9, "losses": 1, "ties_left_out": 1, "p_value": 22 / 1024}  # exact in binary
    # equal class shares in population and sample: the weights are 1 and the rates are plain shares
    # of the 11 judged items (the unanswered one is no answer, and its unset flags are not "safe")
    assert allc["n_items"] == 11 and report["flags"]["0"]["n_items"] == 11
    rates = (allc["win"]["value"], allc["tie"]["value"], allc["loss"]["value"])
    # weighted shares sum w s / sum w over 11 items, float64 sums of 11 terms each: <= 2 x 12 roundings (measured 0)
    assert rates == pytest.approx((9 / 11, 1 / 11, 1 / 11), rel=2 * 12 * 2**-53, abs=0)
    assert "sign test p" in (tmp_path / "res" / "results.md").read_text(encoding="utf-8")


def test_without_chromium_the_reason_says_how_to_install(monkeypatch):
    from tools import browser
    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    why = browser.missing()
    assert why is not None and "apt-get install chromium chromium-driver" in why and "pip install selenium" in why
