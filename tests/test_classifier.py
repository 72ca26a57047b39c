"""train_classifier.py and core/classifier.py: it learns, its folder opens in transformers, and its
metrics are right.

References: hand-computed confusion/F1/ECE values, a grid search for the temperature, NLL from
F.cross_entropy in float64, and transformers' BertForSequenceClassification for the saved folder.
"""
import copy
import json
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from core import classifier
import train_classifier as tc
from core.common import SEVERITIES, DataError, pad_batch
from conftest import write_rows

# a keyword decides the class; the rest of the sentence is shared filler
KEYWORDS = {"mild": ["حبوب الشباب", "قشرة الشعر", "جفاف الجلد", "زكام خفيف"],
            "moderate": ["حمى مستمرة", "التهاب الحلق", "قيء متكرر", "ألم الظهر"],
            "critical": ["ألم شديد في الصدر", "نزيف حاد", "فقدان الوعي", "ضيق التنفس"]}
TEMPLATES = ["أعاني من {k} منذ {n} أيام، ماذا أفعل؟", "عندي {k} {w}", "ابني لديه {k} {w} فهل هذا خطير",
             "{k} {w} وأشعر بالتعب", "السلام عليكم، عندي {k}"]
WHEN = ["منذ الصباح", "منذ أسبوع", "بعد الأكل", "في الليل", "منذ يومين"]


def make_rows(n, seed=0, mix=(3, 2, 1)):
    """n synthetic labeled rows; classes in proportion `mix` (mild, moderate, critical);
    splits 60/20/20 by row number."""
    rng = random.Random(seed)
    cycle = [s for s, m in zip(SEVERITIES, mix) for _ in range(m)]
    rows = []
    for i in range(n):
        sev = cycle[i % len(cycle)]
        q = rng.choice(TEMPLATES).format(k=rng.choice(KEYWORDS[sev]), n=rng.randint(2, 9), w=rng.choice(WHEN))
        split = "train" if i % 10 < 6 else ("val" if i % 10 < 8 else "test")
        rows.append(dict(id=f"r{i}", question=q, answer="راجع الطبيب", category="عام", split=split,
                         severity=sev, severity_source="rules"))
    return rows


pytestmark = pytest.mark.usefixtures("one_thread")

U64 = 2.0 ** -53  # float64 unit roundoff


def within_roundings(x, n):
    """x up to n float64 roundings (of its size): a value computed by a few float64 operations."""
    return pytest.approx(x, rel=n * U64, abs=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small BERT trained from scratch on the keyword task: (folder, metrics, rows)."""
    tmp = tmp_path_factory.mktemp("clf")
    rows = make_rows(240)
    data = write_rows(tmp / "labeled.jsonl", rows)
    out = tmp / "classifier"
    metrics = tc.main(["--data", str(data), "--out", str(out), "--epochs", "8", "--patience", "2",
                       "--batch-size", "16", "--lr", "1e-3", "--max-len", "32", "--seed", "0", "--device", "cpu"])
    return out, metrics, rows


def test_learns_keyword_task(trained):
    out, metrics, rows = trained
    assert metrics["test"]["accuracy"] >= 0.9, metrics["history"]
    assert metrics["test"]["macro_f1"] >= 0.9
    assert sum(map(sum, metrics["test"]["confusion"])) == metrics["test"]["n"] == sum(r["split"] == "test" for r in rows)
    # inverse-frequency class weights N / (3 * n_c) from the (imbalanced 3:2:1) train split
    counts = [sum(r["split"] == "train" and r["severity"] == s for r in rows) for s in SEVERITIES]
    for s, n in zip(SEVERITIES, counts):
        assert metrics["class_weights"][s] == sum(counts) / (3 * n)  # the same one division: exact
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["test"] == metrics["test"]


def test_saved_folder_opens_in_transformers(trained):
    transformers = pytest.importorskip("transformers")
    out, metrics, rows = trained
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.id2label == {0: "mild", 1: "moderate", 2: "critical"}
    assert hf.config.label2id == {"mild": 0, "moderate": 1, "critical": 2}
    assert hf.config.severity_temperature == metrics["temperature"]  # JSON keeps a float exactly

    from models import load_pretrained
    ours, tok = load_pretrained(out)
    texts = [r["question"] for r in rows if r["split"] == "test"]
    seqs, _ = classifier.encode_texts(tok, texts, 32)
    assert seqs == transformers.AutoTokenizer.from_pretrained(out)(texts)["input_ids"]
    ids, mask = pad_batch(seqs, tok.pad_id, "cpu")
    # compared in float64 (float64 copies of both, the saved float32 weights): the two then differ by
    # float64 rounding, in sums of at most 256 terms (the intermediate size), about 8 in a row per block,
    # 2 blocks, values <~ 5: <= 8 x 256 x 2 x u x 5 = 2.3e-12; and predict_logits returns float32 logits,
    # 2**-24 of their size: rtol 2**-24 (measured 2026-12-06: 5.9e-8 on logits <~ 1.5; in float32 7.2e-7)
    with torch.no_grad():
        ref = copy.deepcopy(hf).double()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert max(h.abs().max() for h in ref.hidden_states) < 5  # the magnitude the bound assumes
    ours64 = copy.deepcopy(ours).double()
    got = classifier.predict_logits(ours64, seqs, tok.pad_id, batch_size=5, device=torch.device("cpu"))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref.logits, rtol=2 ** -24, atol=8 * 256 * 2 * U64 * 5)

    # metrics.json holds the numbers of the saved (best) weights: the test split scored again as
    # train_classifier.py scored it (float32, its --eval-batch-size 128, one thread) gives the same logits
    # bit for bit, so the same numbers exactly
    labels = [SEVERITIES.index(r["severity"]) for r in rows if r["split"] == "test"]
    logits = classifier.predict_logits(ours, seqs, tok.pad_id, batch_size=128, device=torch.device("cpu"))
    again = tc.split_metrics(logits, labels, metrics["temperature"])
    assert again["confusion"] == metrics["test"]["confusion"]
    assert again["nll"] == metrics["test"]["nll"]
    assert tc.split_metrics(ref.logits, labels, metrics["temperature"])["confusion"] == metrics["test"]["confusion"]


def test_fine_tunes_on_a_pretrained_encoder(trained, tmp_path):
    """--model: the encoder starts from the folder's weights, the head is new; a folder named
    *arabert* gets AraBERT preprocessing by default."""
    from models import load_pretrained
    src = tmp_path / "tiny-arabertv02"
    shutil.copytree(trained[0], src)
    rows = trained[2]
    data = write_rows(tmp_path / "labeled.jsonl", rows[:60])
    out = tmp_path / "ft"
    m = tc.main(["--data", str(data), "--out", str(out), "--model", str(src), "--epochs", "1", "--lr", "1e-12",
                 "--batch-size", "32", "--max-len", "32", "--device", "cpu"])
    a, _ = load_pretrained(src)
    b, _ = load_pretrained(out)
    # 2 AdamW steps at lr <= 1e-12: each moves a weight by lr (|m^ / (sqrt(v^) + eps)| + wd |w|), where Adam's
    # ratio is <= 1.0014 for t <= 2 (Cauchy-Schwarz on its bias-corrected moments), plus 2 float32 roundings
    # (decay, update) of u32 |w| each (measured 2026-12-06: 3.6e-12, 1.95e-12 beyond the roundings); a
    # re-initialized or unloaded encoder is 1e-2 .. 1 away
    steps, wd = m["history"][-1]["step"], m["args"]["weight_decay"]
    w_max = max(v.abs().max().item() for v in a.bert.state_dict().values())
    assert steps == 2 and m["args"]["lr"] == 1e-12
    for (k, va), (_, vb) in zip(a.bert.state_dict().items(), b.bert.state_dict().items()):
        torch.testing.assert_close(vb, va, rtol=steps * 2 * 2 ** -24, atol=steps * 1e-12 * (1.0014 + wd * w_max), msg=k)
    assert (a.classifier.weight - b.classifier.weight).abs().max() > 1e-3  # a fresh head (0.087 away)
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["severity_preprocess"] == "arabert"


def test_lr_schedule():
    lrs = [tc.lr_at(step, 100, 10, 1.0) for step in range(101)]
    # 1 / 10, 10 / 10, 90 / 90 and 45 / 90: one correctly rounded division each, exact
    assert lrs[0] == 0.1 and lrs[9] == lrs[10] == 1.0
    assert lrs[55] == 0.5 and lrs[100] == 0.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_confusion_and_macro_f1_by_hand():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 1, 2, 2, 2, 0, 1]
    assert tc.confusion_matrix(y_true, y_pred) == [[2, 1, 0], [0, 1, 1], [1, 1, 2]]
    prf = tc.per_class_prf(tc.confusion_matrix(y_true, y_pred))
    # counts divided once (exact), F1 = 2PR / (P + R) 4 roundings from the fraction, macro-F1 3 more
    assert [c["precision"] for c in prf] == [2 / 3, 1 / 3, 2 / 3]
    assert [c["recall"] for c in prf] == [2 / 3, 1 / 2, 1 / 2]
    assert [c["f1"] for c in prf] == within_roundings([2 / 3, 2 / 5, 4 / 7], 4)
    assert tc.macro_f1(y_true, y_pred) == within_roundings(172 / 315, 8)
    assert tc.accuracy(y_true, y_pred) == 5 / 9
    # a class never predicted and never true: precision = recall = F1 = 0, still in the macro mean
    assert tc.macro_f1([0, 1], [0, 1]) == 2 / 3  # (1 + 1 + 0) / 3


def test_ece_by_hand():
    probs = [[0.90, 0.05, 0.05],  # conf 0.90, right   bin (13/15, 14/15]
             [0.81, 0.09, 0.10],  # conf 0.81, wrong   bin (12/15, 13/15]
             [0.20, 0.50, 0.30],  # conf 0.50, right   bin (7/15, 8/15]
             [0.29, 0.29, 0.42],  # conf 0.42, wrong   bin (6/15, 7/15]
             [0.62, 0.30, 0.08],  # conf 0.62, right   bin (9/15, 10/15] with the next row:
             [0.64, 0.26, 0.10]]  # conf 0.64, wrong   acc 0.5, mean conf 0.63
    labels = [0, 1, 1, 0, 0, 2]
    expected = (0.10 + 0.81 + 0.50 + 0.42 + 2 * abs(0.5 - 0.63)) / 6
    # the decimals are binary roundings, and the code (5 bins x ~6 operations) and this expression (~12)
    # round values <= 1 about 40 times between them: within 64 u (measured 2026-12-06: equal)
    assert tc.expected_calibration_error(probs, labels) == pytest.approx(expected, abs=64 * U64)
    # a single bin: |accuracy - mean confidence|
    assert tc.expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(
        abs(3 / 6 - (0.90 + 0.81 + 0.50 + 0.42 + 0.62 + 0.64) / 6), abs=64 * U64)


def test_temperature_scaling_fixes_overconfidence():
    g = torch.Generator().manual_seed(0)
    z = 1.5 * torch.randn(6000, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)  # calibrated by construction
    logits = 5 * z  # the same ranking, 5x overconfident
    fit, held = slice(0, 3000), slice(3000, None)
    T = tc.fit_temperature(logits[fit], labels[fit])
    # reference: the NLL minimum on a fine grid, NLL from F.cross_entropy in float64
    grid = torch.linspace(4, 6, 2001, dtype=torch.float64)
    nlls = F.cross_entropy((logits[fit] / grid[:, None, None]).transpose(1, 2),  # (grid, 3, N)
                           labels[fit].expand(len(grid), -1), reduction="none").mean(1)
    # the grid's best point is within one step (1e-3) of the minimum; L-BFGS stops at a loss change below
    # 1e-12 (core/calibration.py), which with the NLL's curvature in log T (0.41 here) leaves T within
    # T sqrt(2e-12 / 0.4) = 1.1e-5 of it (measured 2026-12-06: 3.7e-4 from the grid point)
    step = (grid[1] - grid[0]).item()
    assert T == pytest.approx(grid[nlls.argmin()].item(), abs=step + T * math.sqrt(2e-12 / 0.4))
    assert 4 < T < 6
    before = tc.expected_calibration_error(logits[held].softmax(-1), labels[held])
    after = tc.expected_calibration_error((logits[held] / T).softmax(-1), labels[held])
    assert before > 0.1 and after < before / 3
    assert tc.nll(logits[held], labels[held], T) < tc.nll(logits[held], labels[held])
    assert tc.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_temperature_kept_only_inside_bounds_and_when_it_helps_held_out_rows():
    from core.calibration import choose_temperature, nll
    g = torch.Generator().manual_seed(1)
    z = 1.5 * torch.randn(300, 3, generator=g, dtype=torch.float64)
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    # 5x overconfident: the fitted T (about 5) is inside its bounds and lowers the held-out NLL
    t, report = choose_temperature(5 * z, labels)
    assert report["kept"] and t == report["fitted"] and 3 < t < 8
    assert report["val_nll_cross_validated"] < report["val_nll_t1"]
    # recompute the cross-validated NLL independently: the same folds, a T fitted on the other four
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for f in range(5):  # the other folds' rows in fold order, as core/calibration.py takes them
        rest = torch.cat([perm[g::5] for g in range(5) if g != f])
        total += nll(5 * z[perm[f::5]], labels[perm[f::5]], tc.fit_temperature(5 * z[rest], labels[rest]), "sum")
    assert report["val_nll_cross_validated"] == total / 300  # the same float64 sums in the same order: exact
    # separable val (the demo's 12-row case): T runs to its 0.05 bound -> T = 1 and the reason says so
    sep = torch.nn.functional.one_hot(labels, 3).double() * 4.0
    t, report = choose_temperature(sep, labels)
    assert t == 1.0 and not report["kept"] and "bound" in report["reason"] and report["fitted"] == 0.05
    # too few rows: no calibration
    assert choose_temperature(5 * z[:6], labels[:6])[0] == 1.0


def test_split_metrics_bootstrap_intervals():
    y = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    logits = torch.nn.functional.one_hot(y, 3).double()
    logits[::4] = torch.tensor([1.0, 0, 0], dtype=torch.float64)  # every 4th row predicted mild
    m = tc.split_metrics(logits, y, 1.0)
    assert m["critical_recall"] == 8 / 10  # critical rows 50..59: 52 and 56 predicted mild (one division)
    lo, hi = m["macro_f1_ci"]
    assert lo < m["macro_f1"] < hi
    lo, hi = m["critical_recall_ci"]
    assert lo < m["critical_recall"] < hi


@pytest.mark.parametrize("change, field", [
    (dict(severity="severe"), "severity"),
    (dict(severity=None), "severity"),
    (dict(split="dev"), "split"),
    (dict(question=""), "question"),
])
def test_bad_rows_raise_data_error(tmp_path, change, field):
    rows = make_rows(30)
    rows[7].update(change)
    rows[7] = {k: v for k, v in rows[7].items() if v is not None}
    data = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        tc.main(["--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1"])
    assert e.value.line == 8 and e.value.field == field
    assert not (tmp_path / "out").exists()


def test_missing_val_split_raises(tmp_path):
    rows = [dict(r, split="train") for r in make_rows(12)]
    with pytest.raises(DataError, match="val"):
        tc.main(["--data", str(write_rows(tmp_path / "d.jsonl", rows)), "--out", str(tmp_path / "o")])


def test_arabert_preprocess():
    p = classifier.arabert_preprocess
    assert p("مَرْحَباً بِكُمْ") == "مرحبا بكم"  # tashkeel stripped
    assert p("ألم شديــــد") == "ألم شديد"  # tatweel stripped
    assert p("أعاني من ألم!!!") == "أعاني من ألم ! !"  # 3+ repeats -> 2, punctuation spaced
    assert p("عمري ٣٥سنة، وأشعر بدوخة؟") == "عمري 35 سنة ، وأشعر بدوخة ؟"
    assert p("ضغط 120/80") == "ضغط 120 - 80"  # "/" is not in AraBERT v2's vocabulary
    assert p("صداع 😢 &quot;حمى&quot; & دوار") == 'صداع " حمى " دوار'  # emoji, "&" dropped; HTML unescaped
    assert p("راجع https://example.com/page") == "راجع [رابط]"
    assert p("إبرة آلام مؤلمة ئ ى ة") == "إبرة آلام مؤلمة ئ ى ة"  # letters NOT unified
    assert classifier.resolve_preprocess("auto", "models/bert-base-arabertv02") == "arabert"
    assert classifier.resolve_preprocess("auto", "models/all-MiniLM-L6-v2") == "none"
    assert classifier.resolve_preprocess("auto", None) == "none"
    assert classifier.resolve_preprocess("none", "bert-base-arabertv02") == "none"


def test_wordpiece_keeps_arabic_letters():
    tok = classifier.train_wordpiece([r["question"] for r in make_rows(60)] + ["آلام إبرة مؤلم قائمة مستشفى"], 500)
    norm = tok.normalizer.normalize_str
    assert norm("أَلَمٌ شديـــد") == "ألم شديد"  # tashkeel and tatweel removed
    assert norm("آلام إبرة مؤلم قائمة مستشفى") == "آلام إبرة مؤلم قائمة مستشفى"  # hamza/madda letters kept
    enc = tok.encode("ألم في الصدر")
    assert enc.tokens[0] == "[CLS]" and enc.tokens[-1] == "[SEP]"
    assert tok.token_to_id("[PAD]") == 0


def test_wordpiece_vocabulary_is_deterministic():
    """Same texts, same ids (tokenizers' own trainer breaks frequency ties differently each run)."""
    texts = [r["question"] for r in make_rows(60)]
    vocabs = [classifier.train_wordpiece(texts, 300).get_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    tok = classifier.train_wordpiece(["صداع صداع شديد", "صداع خفيف خفيف"], 100, min_count=2)
    vocab = tok.get_vocab()
    # specials, then the 5 characters, their ## forms, then words seen twice by frequency
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][-2:] == ["صداع", "خفيف"]
    assert "شديد" not in vocab and tok.encode("شديد").tokens[1:-1] == ["ش", "##د", "##ي", "##د"]
    # the default keeps words seen once too (small data: a word in one training row is one token)
    vocab = classifier.train_wordpiece(["صداع صداع شديد", "صداع خفيف خفيف"], 100).get_vocab()
    assert [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][-3:] == ["صداع", "خفيف", "شديد"]


# ----------------------------------------------------------------------------- honest warnings


def fake_metrics(temperature, val_support, test_support, train_loss):
    def split(support):
        return {"n": sum(support), "macro_f1_present": 0.5,
                "per_class": {c: {"support": n} for c, n in zip(("mild", "moderate", "critical"), support)}}
    from core.calibration import inside_bounds
    check = {"kept": inside_bounds(temperature), "reason": "hit its bound"}
    return ({"temperature": temperature, "temperature_check": check, "val": split(val_support),
             "test": split(test_support)},
            [{"train_loss": train_loss}])


@pytest.mark.parametrize("case,expect", [
    ((1.3, (40, 20, 10), (40, 20, 10), 0.4), []),
    ((20.0, (40, 20, 10), (40, 20, 10), 0.4), ["temperature"]),
    ((0.05, (40, 20, 10), (40, 20, 10), 0.4), ["temperature"]),
    ((1.3, (40, 20, 10), (40, 20, 10), 1.09), ["chance"]),
    ((1.3, (40, 20, 0), (40, 0, 10), 0.4), ["val split has no critical", "test split has no moderate"]),
    ((1.3, (10, 5, 5), (40, 20, 10), 0.4), ["only 20 val rows"]),
])
def test_run_warnings(case, expect):
    run_warnings = tc.run_warnings
    warnings = run_warnings(*fake_metrics(*case))
    assert len(warnings) == len(expect) and all(e in w for e, w in zip(expect, warnings)), warnings


def test_small_val_without_a_class_warns_everywhere(tmp_path, capsys):
    """A real run: 12 val rows and no critical one in val -> warnings in metrics.json and on
    stdout, macro-F1 over the classes present beside the 3-class one; score_severity repeats them."""
    import score_severity
    rows = make_rows(60, seed=3)
    for r in rows:
        if r["split"] == "val" and r["severity"] == "critical":
            r["split"] = "train"
    data = write_rows(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "clf"
    tc.main(["--data", str(data), "--out", str(out), "--epochs", "1", "--device", "cpu"])
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert any("val split has no critical" in w for w in m["warnings"])
    assert any("val rows (< 30)" in w for w in m["warnings"])
    present = [c for c in ("mild", "moderate", "critical") if m["val"]["per_class"][c]["support"]]
    assert m["val"]["macro_f1_present"] == (  # the same sum in the same order: exact
        sum(m["val"]["per_class"][c]["f1"] for c in present) / len(present))
    assert "WARNING: the val split has no critical" in capsys.readouterr().out
    score_severity.main(["--data", str(data), "--model", str(out), "--out", str(tmp_path / "scored.jsonl")])
    assert "WARNING (from" in capsys.readouterr().out
    side = json.loads((tmp_path / "scored.jsonl.meta.json").read_text(encoding="utf-8"))
    assert side["warnings"] == m["warnings"] and side["rows"] == len(rows)


def test_gold_rows_train_and_report_separately(tmp_path):
    """Gold rows (severity_source gold) train beside rule rows; val/test numbers on gold rows alone;
    a temperature that is not kept leaves T = 1 and says why."""
    rows = make_rows(60, seed=5)
    for r in rows[::3]:
        r["severity_source"] = "gold"
    data = write_rows(tmp_path / "rows.jsonl", rows)
    m = tc.main(["--data", str(data), "--out", str(tmp_path / "clf"), "--epochs", "1", "--gold-weight", "2",
                 "--device", "cpu"])
    gold_test = [r for r in rows if r["split"] == "test" and r["severity_source"] == "gold"]
    assert m["test_gold"]["n"] == len(gold_test) > 0 and m["gold_weight"] == 2.0
    assert m["gold_rows"] == {s: sum(r["split"] == s and r["severity_source"] == "gold" for r in rows) for s in
                              ("train", "val", "test")}
    assert sum(map(sum, m["test_gold"]["confusion"])) == len(gold_test)
    check = m["temperature_check"]
    assert check["kept"] == (m["temperature"] != 1.0)
    if not check["kept"]:
        assert any(w.startswith("temperature not applied") for w in m["warnings"])
    saved = json.loads((tmp_path / "clf" / "config.json").read_text(encoding="utf-8"))
    assert saved["severity_temperature"] == m["temperature"]
