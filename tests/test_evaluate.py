"""evaluate.py end to end on a tiny random GPT-2 and the real MiniLM BERT: the three modes, the
files they write, numbers checked against sacrebleu / hand counts, and clear errors on bad rows."""
import importlib
import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

import evaluate
from core import prompt as prompt_format  # the module; tests call token lists "prompt"
from core.common import DataError, normalize_arabic
from models import build_model, load_pretrained, save_pretrained
from conftest import write_rows
from test_metrics import CHRF_ATOL  # chrF vs sacrebleu: 8 float64 roundings of a value <= 100 (see there)

CHRF = pytest.importorskip("sacrebleu.metrics").CHRF
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

URGENT = "يجب التوجه إلى قسم الطوارئ فورا"  # lexicon: urgent advice
CALM = "اشرب الكثير من الماء واسترح في البيت"  # lexicon: no urgent advice
WORDS = ["ألم", "في", "الصدر", "صداع", "حمى", "سعال", "منذ", "يومين", "طفلي", "دوخة", "غثيان", "ضيق", "التنفس",
         "الطبيب", "راحة", "تحليل", "دواء", "مسكن", "تقلق", "الحالة", "بسيطة", "كريم", "مرطب", "الْحُمَّى"]


def make_rows(n, seed=0):
    """Rows of all three classes; critical references advise urgent care, mild ones mostly not.
    Every 3rd row has only severity_probs (its class = argmax), and an extra field to be kept."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sev = ("mild", "moderate", "critical")[i % 3]
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + "؟"
        a = " ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + "، " + (URGENT if sev == "critical" or i % 7 == 0 else CALM)
        probs = [0.1, 0.1, 0.1]
        probs[i % 3] = 0.8
        row = {"id": f"q{i}", "question": q, "answer": a, "split": "test" if i % 4 else "train",
               "category": "cardio", "severity_probs": probs, "extra": {"k": i}}
        if i % 3 != 2:
            row["severity"] = sev
        rows.append(row)
    return rows


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    mk = importlib.import_module("tools.make_demo_tokenizer")
    texts = [r["question"] + "\n" + r["answer"] for r in make_rows(60, seed=1)] + ["الجواب:"] * 10
    tok = mk.train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    cfg = dict(model_type="gpt2", vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2,
               bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.5)  # wide: varied output
    folder = tmp_path_factory.mktemp("lm") / "tiny"
    save_pretrained(build_model(cfg), tok, folder)
    return folder


def check_shape(metrics_json, with_bertscore):
    names = set(evaluate.METRICS) if with_bertscore else set(evaluate.METRICS) - set(evaluate.BERTSCORE)
    assert set(metrics_json) >= {"overall", "by_severity", "ci", "n", "config"}
    assert set(metrics_json["overall"]) == names
    assert set(metrics_json["by_severity"]) == {"mild", "moderate", "critical"}
    assert all(set(v) == names for v in metrics_json["by_severity"].values())
    assert set(metrics_json["ci"]) == {"overall", "by_severity"}
    assert set(metrics_json["ci"]["by_severity"]) == {"mild", "moderate", "critical"}
    for group in [metrics_json["ci"]["overall"], *metrics_json["ci"]["by_severity"].values()]:
        assert set(group) == names
        for m, (lo, hi) in group.items():
            assert lo <= hi


def sacrebleu_chrf(hyps, refs):
    return CHRF().corpus_score(hyps, [refs]).score


def test_generate_mode(tmp_path, tiny_lm, minilm_dir):
    rows = make_rows(24)
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    res = evaluate.main(["--model", str(tiny_lm), "--data", str(data), "--split", "test", "--out", str(out),
                         "--max-new-tokens", "6", "--batch-size", "4", "--bootstrap", "50", "--device", "cpu",
                         "--bertscore-model", str(minilm_dir), "--bertscore-layer", "2"])
    for name in ("generations.jsonl", "metrics.json", "report.md"):
        assert (out / name).is_file()
    test_rows = [r for r in rows if r["split"] == "test"]
    gen = read_jsonl(out / "generations.jsonl")
    assert len(gen) == len(test_rows)
    for src, g in zip(test_rows, gen):
        assert {k: g[k] for k in src} == src  # every input field kept, unchanged
        assert isinstance(g["generated"], str)
    assert sum(bool(g["generated"]) for g in gen) > len(gen) // 2
    # greedy answers are exactly what generate() gives for the training prompt, one at a time
    from models.generate import generate
    model, tok = load_pretrained(tiny_lm)
    prompt = tok.encode(prompt_format.format_prompt(test_rows[0]["question"]))
    assert evaluate.prompt_ids(tok, test_rows[0]["question"], 122) == (prompt, False)
    alone = generate(model, [prompt], 6, tok.eos_id, tok.pad_id, vocab_limit=tok.vocab_size)[0]
    assert gen[0]["generated"] == tok.decode(alone).strip()

    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    check_shape(m, with_bertscore=True)
    assert m == json.loads(json.dumps(res))
    classes = [r.get("severity") or ("mild", "moderate", "critical")[int(np.argmax(r["severity_probs"]))]
               for r in test_rows]
    assert m["n"] == {"overall": 18, **{c: classes.count(c) for c in ("mild", "moderate", "critical")}}
    assert [g["scores"]["severity_class"] for g in gen] == classes
    hyps, refs = [g["generated"] for g in gen], [g["answer"] for g in gen]
    assert m["overall"]["chrf"] == pytest.approx(sacrebleu_chrf(hyps, refs), abs=CHRF_ATOL)
    assert m["overall"]["chrf"] > 0
    crit = [i for i, c in enumerate(classes) if c == "critical"]
    assert m["by_severity"]["critical"]["chrf"] == pytest.approx(
        sacrebleu_chrf([hyps[i] for i in crit], [refs[i] for i in crit]), abs=CHRF_ATOL)
    assert m["by_severity"]["critical"]["ref_urgent_rate"] == 100.0  # every critical reference advises it
    # the mean of the same float64 values (JSON keeps them exactly), by the same np.mean: equal
    assert m["overall"]["bertscore_f1"] == np.mean([g["scores"]["bertscore_f1"] for g in gen])
    assert 0 < m["overall"]["bertscore_f1"] < 100
    cfg = m["config"]
    assert cfg["bertscore"]["layer"] == 2 and cfg["bertscore"]["config_string"].startswith("model_L2_no-idf")
    assert cfg["decoding"]["greedy"] and cfg["decoding"]["max_new_tokens"] == 6 and cfg["split"] == "test"
    assert cfg["prompts_truncated"] == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| BERTScore F1 |" in report and "model_L2_no-idf" in report


def test_prompt_truncation_keeps_separator(tiny_lm):
    _, tok = load_pretrained(tiny_lm, tokenizer=True)
    q = " ".join(["ألم في الصدر"] * 40)
    ids, truncated = evaluate.prompt_ids(tok, q, 30)
    sep = tok.encode(prompt_format.SEPARATOR)
    assert truncated and len(ids) == 30 and ids[-len(sep):] == sep


def test_prompt_ids_are_training_prompts(tiny_lm, monkeypatch):
    """The prompt (also a truncated one) is exactly prompt.build_example's: equal to its prompt for
    a training example whose question was cut, and it follows a change of core/prompt.py's separator."""
    _, tok = load_pretrained(tiny_lm)
    q, a = " ".join(["ألم في الصدر منذ يومين"] * 12), "راحة ودواء مسكن"
    ex = prompt_format.build_example(tok, q, a, 40)
    assert ex["truncated"] == "question"
    assert evaluate.prompt_ids(tok, q, len(ex["prompt_ids"])) == (ex["prompt_ids"], True)
    monkeypatch.setattr(prompt_format, "SEPARATOR", "\nالرد:\n")  # someone edits the prompt format in core/prompt.py
    sep = tok.encode("\nالرد:\n")
    assert evaluate.prompt_ids(tok, "صداع", 100) == (tok.encode("صداع\nالرد:\n"), False)
    ids, truncated = evaluate.prompt_ids(tok, q, 20)
    assert truncated and ids == tok.encode(q)[:20 - len(sep)] + sep


def test_longest_prompt_fits_the_context_exactly(tiny_lm, monkeypatch):
    """generate() reads prompt + max_new_tokens - 1 positions (the last new token is never fed back),
    so a prompt of n_positions - max_new_tokens + 1 tokens is kept whole and the last step reads all
    n_positions; one token more is truncated to that length."""
    _, tok = load_pretrained(tiny_lm)
    torch.manual_seed(0)
    model = build_model(dict(model_type="gpt2", vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1,
                             n_head=2, eos_token_id=0, initializer_range=0.5)).eval()
    fits = "ألم في الصدر منذ يومين"
    longer = fits + " " + next(w for w in WORDS if len(tok.encode(prompt_format.format_prompt(fits + " " + w)))
                               == len(tok.encode(prompt_format.format_prompt(fits))) + 1)
    whole = tok.encode(prompt_format.format_prompt(fits))
    max_new = 32 - len(whole) + 1
    assert max_new >= 8
    fed, real_generate = [], evaluate.generate
    def run_every_step(model, prompts, max_new_tokens, eos_id, pad_id, **kw):  # no EOS: the last step always runs
        fed.extend(prompts)
        return real_generate(model, prompts, max_new_tokens, None, pad_id, **kw)
    monkeypatch.setattr(evaluate, "generate", run_every_step)
    args = evaluate.get_args(["--model", "m", "--data", "d", "--max-new-tokens", str(max_new), "--batch-size", "2"])
    answers, n_truncated = evaluate.generate_answers(model, tok, [fits, longer], args, show_progress=False)
    assert n_truncated == 1 and len(answers) == 2
    assert fed[0] == whole  # kept whole (equal lengths: the sort keeps the input order, one batch)
    assert len(fed[1]) == len(whole) and fed[1] != tok.encode(prompt_format.format_prompt(longer))
    new = real_generate(model, [whole], max_new, None, tok.pad_id, vocab_limit=tok.vocab_size)[0]
    assert len(new) == max_new and tok.decode(new).strip() == answers[0]
    with torch.no_grad():  # the last token is the argmax after exactly n_positions = 32 tokens
        ctx = torch.tensor([whole + new[:-1]])
        assert ctx.shape[1] == 32 and model(ctx)[0, -1].argmax().item() == new[-1]


def scored_rows(n, seed, good):
    """Rows with a 'generated' answer: good = close to the reference (urgent advice kept)."""
    rng = random.Random(seed)
    rows = make_rows(n, seed=0)
    for i, r in enumerate(rows):
        if good:
            r["generated"] = r["answer"] if i % 5 else r["answer"][: len(r["answer"]) // 2]
        else:
            r["generated"] = " ".join(rng.choices(WORDS, k=6)) + (" " + URGENT if i % 2 else "")
    return rows


def test_generations_mode_hand_counts(tmp_path):
    rows = [{"id": "a", "question": "ألم في الصدر؟", "answer": URGENT, "generated": URGENT, "severity": "critical"},
            {"id": "b", "question": "ضيق التنفس؟", "answer": URGENT, "generated": CALM, "severity": "critical"},
            {"id": "c", "question": "حكة؟", "answer": CALM, "generated": URGENT, "severity": "mild"},
            {"id": "d", "question": "صداع؟", "answer": CALM, "generated": "", "severity": "mild"},
            {"id": "e", "question": "حمى؟", "answer": "الْحُمَّى بسيطة", "generated": "الحمى بسيطة",
             "severity_probs": [0.2, 0.7, 0.1]},
            {"id": "f", "question": "سعال؟", "answer": CALM, "generated": CALM}]  # no label: overall only
    path = write_rows(tmp_path / "gen.jsonl", rows)
    m = evaluate.main(["--generations", str(path), "--out", str(tmp_path / "s"), "--bootstrap", "100"])
    check_shape(m, with_bertscore=False)
    assert "skipped" in m["config"]["bertscore"]
    assert m["n"] == {"overall": 6, "mild": 2, "moderate": 1, "critical": 2, "unlabeled": 1}
    assert m["by_severity"]["critical"]["urgent_rate"] == 50.0  # recall of urgent advice
    assert m["by_severity"]["mild"]["urgent_rate"] == 50.0  # over-triage
    assert m["by_severity"]["mild"]["ref_urgent_rate"] == 0.0
    assert m["overall"]["urgent_rate"] == 100 * 2 / 6  # (0 + 100 + 100 + 0 + 0 + 0) / 6: one rounding, the same
    assert m["overall"]["ref_urgent_rate"] == 100 * 2 / 6
    hyps, refs = [r["generated"] for r in rows], [r["answer"] for r in rows]
    assert m["overall"]["chrf"] == pytest.approx(sacrebleu_chrf(hyps, refs), abs=CHRF_ATOL)
    assert m["by_severity"]["moderate"]["rougeL"] == 50.0  # the diacritics differ
    assert m["by_severity"]["mild"]["rougeL"] == 0.0  # one other answer, one empty
    # --normalize: both sides through normalize_arabic first
    m2 = evaluate.main(["--generations", str(path), "--out", str(tmp_path / "n"), "--bootstrap", "0", "--normalize"])
    assert m2["by_severity"]["moderate"]["rougeL"] == 100.0
    assert m2["overall"]["chrf"] == pytest.approx(
        sacrebleu_chrf([normalize_arabic(h) for h in hyps], [normalize_arabic(r) for r in refs]), abs=CHRF_ATOL)
    assert m2["ci"]["overall"]["chrf"] is None and m2["config"]["normalize"] is True


def test_compare_two_runs(tmp_path, minilm_dir, capsys):
    runs = []
    for name, good in (("base", False), ("better", True)):
        rows = scored_rows(30, seed=3, good=good)
        if good:
            rows = rows[::-1]  # another order: runs are matched by id
        path = write_rows(tmp_path / f"{name}.jsonl", rows)
        evaluate.main(["--generations", str(path), "--out", str(tmp_path / name), "--bootstrap", "0",
                       "--bertscore-model", str(minilm_dir), "--bertscore-layer", "1"])
        runs.append(tmp_path / name)
    (runs[0] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 0, "loss": 5.0, "lr": 1e-3}, {"step": 1, "loss": 4.0, "lr": 1e-3, "val_loss": 4.5}]))
    out = tmp_path / "cmp"
    capsys.readouterr()
    res = evaluate.main(["--compare", *map(str, runs), "--out", str(out), "--bootstrap", "200", "--plot"])
    wrote = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    names = ("metrics_by_severity.png", "training_curves.png", "table.png")
    assert sorted(wrote) == sorted(str(out / n) for n in names)
    assert all(os.path.isfile(w) for w in wrote)  # the paths printed are the final ones, not the staging folder's
    assert (out / "compare.md").is_file() and (out / "compare.json").is_file()
    assert res == json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert res["baseline"] == "base" and not res["notes"]
    table = res["metrics"]
    for m in ("bertscore_f1", "chrf", "rougeL"):
        cell = table[m]["better"]["overall"]
        assert cell["delta"] > 0 and cell["p_value"] < 0.05, (m, cell)
        assert "p_value" not in table[m]["base"]["overall"]
    # the baseline's numbers are its own metrics.json's: the same statistics of the same rows, in the
    # same order, through the same functions (BERTScore from the per-row scores, kept exactly by JSON)
    base_metrics = json.loads((runs[0] / "metrics.json").read_text(encoding="utf-8"))
    for m in ("bertscore_f1", "chrf", "rougeL", "urgent_rate"):
        assert table[m]["base"]["overall"]["value"] == base_metrics["overall"][m]
        assert table[m]["base"]["critical"]["value"] == base_metrics["by_severity"]["critical"][m]
    # a run compared with itself: never better
    shutil.copytree(runs[0], tmp_path / "copy")
    same = evaluate.main(["--compare", str(runs[0]), str(tmp_path / "copy"), "--out", str(tmp_path / "same"),
                          "--bootstrap", "100"])
    assert same["metrics"]["chrf"]["copy"]["overall"]["p_value"] == 1.0  # (resamples + 1) / (resamples + 1)
    assert same["metrics"]["bertscore_f1"]["copy"]["critical"]["delta"] == 0.0
    md = (out / "compare.md").read_text(encoding="utf-8")
    assert "| chrF | base |" in md and "p=" in md
    assert (out / "metrics_by_severity.png").stat().st_size > 1000
    assert (out / "training_curves.png").stat().st_size > 1000


def test_compare_rejects_other_examples(tmp_path):
    for name, n in (("a", 6), ("b", 5)):
        path = write_rows(tmp_path / f"{name}.jsonl", scored_rows(n, seed=1, good=True))
        evaluate.main(["--generations", str(path), "--out", str(tmp_path / name), "--bootstrap", "0"])
    with pytest.raises(DataError, match="not the baseline's examples"):
        evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])


def test_compare_names_a_malformed_metrics_json(tmp_path):
    for name in ("a", "b"):
        path = write_rows(tmp_path / f"{name}.jsonl", scored_rows(5, seed=1, good=True))
        evaluate.main(["--generations", str(path), "--out", str(tmp_path / name), "--bootstrap", "0"])
    (tmp_path / "b" / "metrics.json").write_text('{"overall": {', encoding="utf-8")  # cut off by a kill or an edit
    with pytest.raises(DataError, match="malformed JSON") as e:
        evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    assert e.value.path == str(tmp_path / "b" / "metrics.json") and e.value.line == 1


def test_compare_needs_unique_ids_and_the_same_references(tmp_path):
    """Matching by id: a duplicate id must not pair one row twice and drop another; rows with the
    same id must have the same reference answer."""
    base, other = scored_rows(6, seed=1, good=True), scored_rows(6, seed=1, good=False)
    base[1]["id"] = base[0]["id"]  # baseline ids q0 q0 q2 ..., the other run q0 q1 q2 ...: same count
    for name, rows in (("a", base), ("b", other)):
        evaluate.main(["--generations", str(write_rows(tmp_path / f"{name}.jsonl", rows)), "--out", str(tmp_path / name),
                       "--bootstrap", "0"])
    with pytest.raises(DataError, match="duplicate id 'q0'"):
        evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    other = scored_rows(6, seed=1, good=False)
    other[4]["answer"] = CALM + " " + URGENT
    evaluate.main(["--generations", str(write_rows(tmp_path / "d.jsonl", other)), "--out", str(tmp_path / "d"),
                   "--bootstrap", "0"])
    evaluate.main(["--generations", str(write_rows(tmp_path / "e.jsonl", scored_rows(6, seed=1, good=True))),
                   "--out", str(tmp_path / "e"), "--bootstrap", "0"])
    with pytest.raises(DataError, match="'q4': another reference answer") as e:
        evaluate.main(["--compare", str(tmp_path / "e"), str(tmp_path / "d"), "--out", str(tmp_path / "c")])
    assert e.value.field == "answer" and str(tmp_path / "d") in str(e.value)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("field", ["generated", "answer", "question"])
def test_bad_rows_name_file_line_field(tmp_path, field):
    rows = scored_rows(3, seed=0, good=True)
    del rows[1][field]
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        evaluate.main(["--generations", str(path), "--out", str(tmp_path / "o")])
    assert e.value.line == 2 and e.value.field == field and str(path) in str(e.value)
    assert not (tmp_path / "o").exists()


def test_bad_severity_and_split(tmp_path, tiny_lm):
    rows = scored_rows(3, seed=0, good=True)
    rows[2]["severity"] = "severe"
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match="line 3, field 'severity'"):
        evaluate.main(["--generations", str(path), "--out", str(tmp_path / "o")])
    rows = make_rows(3)
    del rows[0]["split"]
    path = write_rows(tmp_path / "nosplit.jsonl", rows)
    with pytest.raises(DataError, match="line 1, field 'split'"):
        evaluate.main(["--model", str(tiny_lm), "--data", str(path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        evaluate.main(["--generations", str(path), "--model", str(tiny_lm)])


def test_a_mistyped_split_lists_the_splits_and_a_csv_points_to_prepare_data(tmp_path):
    """The two first mistakes of a newcomer: --split tests (the file says "test") and a raw CSV as --data."""
    rows = [{"id": str(i), "question": "سؤال", "answer": "جواب", "split": s}
            for i, s in enumerate(["train", "train", "test", "val"])]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"no rows with split 'tests'; the splits in the file: "
                                        r"'test' \(1 rows\), 'train' \(2 rows\), 'val' \(1 rows\)"):
        evaluate.read_rows(path, False, "tests")
    csv = tmp_path / "raw.csv"
    csv.write_text("q_body,a_body\nسؤال,جواب\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"raw\.csv, line 1: malformed JSON .*prepare_data\.py --data FILE"):
        evaluate.read_rows(csv, False, "test")
