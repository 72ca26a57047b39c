"""score_severity.py: severity_probs equal softmax(logits / T) of a direct forward pass (through
transformers), rows keep their order and fields, torchrun with 2 ranks writes the same rows,
and bad input leaves no output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import score_severity as ss
import train_classifier as tc
from core.classifier import arabert_preprocess, load_classifier, save_classifier, scratch_tokenizer
from core.common import SEVERITIES, DataError, check_probs
from float64_run import float64_models

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURE = 1.7
QUESTIONS = ["أعاني من ألم شديد في الصدر منذ ساعة، ماذا أفعل؟", "عندي حَبُّ شبابٍ خفيف", "صداع 😢 منذ ٣أيام!!!",
             "ضغطي 150/95 وأشعر بدوار", "ابني عنده حمى وقيء", "هل الزكام خطير؟",
             "نزيف " * 30 + "ماذا أفعل",  # longer than max_len: cut
             "ضيق في التنفس", "حكة في الجلد بعد الأكل", "فقدان الوعي لثوان"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny random classifier folder (arabert preprocessing, T = 1.7, max_len 16). Weights
    drawn with std 0.5 so the probabilities differ clearly from row to row."""
    from models.bert import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    texts = [arabert_preprocess(q) for q in QUESTIONS] * 3
    tok = scratch_tokenizer(texts, 200, 16)
    config = BertConfig.from_dict(dict(tc.SMALL_BERT, hidden_size=32, intermediate_size=64, max_position_embeddings=32,
                                       vocab_size=tok.vocab_size, initializer_range=0.5,
                                       id2label=dict(enumerate(SEVERITIES))))
    model = BertForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("score") / "classifier"
    save_classifier(model, tok, folder, {}, dict(severity_temperature=TEMPERATURE, severity_preprocess="arabert",
                                                 severity_max_len=16, severity_labels=list(SEVERITIES)))
    return folder


def make_input(path, n=23):
    rows = [{"id": f"q{i}", "question": QUESTIONS[i % len(QUESTIONS)], "answer": "إجابة", "n": i,
             "nested": {"a": [1, 2.5, None], "ar": "نص"}, **({"severity_probs": [1, 0, 0]} if i == 3 else {})}
            for i in range(n)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text.replace("\n", "\n\n", 1), encoding="utf-8")  # a blank line is skipped
    return path, rows


def reference_probs(folder, questions):
    """softmax(logits / T) from transformers in float64, one unpadded row at a time: (probs, logits)."""
    transformers = pytest.importorskip("transformers")
    from models import Tokenizer
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval().double()
    tok = Tokenizer.from_folder(folder)
    probs, all_logits = [], []
    for q in questions:
        ids = tok.encode(arabert_preprocess(q))[:14]
        ids = torch.tensor([[tok.cls_id, *ids, tok.sep_id]])
        with torch.no_grad():
            logits = hf(input_ids=ids).logits[0]
        probs.append((logits / TEMPERATURE).softmax(-1))
        all_logits.append(logits)
    return torch.stack(probs), torch.stack(all_logits)


def test_matches_direct_forward_pass(classifier, tmp_path, monkeypatch):
    """score_severity with the classifier in float64 (tests/float64_run.py) against transformers in float64."""
    float64_models(monkeypatch)
    data, rows = make_input(tmp_path / "in.jsonl")
    out = tmp_path / "scored.jsonl"
    result = ss.main(["--data", str(data), "--model", str(classifier), "--out", str(out),
                      "--chunk-size", "7", "--batch-size", "3", "--device", "cpu"])
    assert result["rows"] == len(rows) and result["truncated"] == sum("نزيف نزيف" in r["question"] for r in rows)
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(rows)
    for i, (g, r) in enumerate(zip(got, rows)):
        # three values each within half a step (0.5e-6) of the rounding to 6 decimals, plus a few float64
        # roundings of the decimals and their sum (measured 2026-12-06: at most 1.0e-6)
        check_probs(g["severity_probs"], out, i + 1, tol=3 * 0.5e-6 + 8 * 2 ** -53)
        assert {k: v for k, v in g.items() if k != "severity_probs"} == {k: v for k, v in r.items() if k != "severity_probs"}
        assert list(g) == list(r) + ([] if "severity_probs" in r else ["severity_probs"])  # field order kept
    probs = torch.tensor([g["severity_probs"] for g in got], dtype=torch.float64)
    expected, logits = reference_probs(classifier, [r["question"] for r in rows])
    # both in float64 (they differ by ~1e-15 before any rounding), but our logits are rounded to float32
    # (models/bert.py, core/classifier.py), which moves logit / T by <= 2**-24 max|logit| / T and a softmax
    # probability by at most half that; then rounding to 6 decimals adds half a step: 5.9e-7 (measured
    # 2026-12-06: 4.9e-7; a wrong temperature, preprocessing or truncation moves them by >~ 1e-3)
    assert (logits / TEMPERATURE).abs().max() < 3
    torch.testing.assert_close(probs, expected, atol=0.5e-6 + 2 ** -24 * 3 / 2 + 1e-12, rtol=0)
    assert probs.max(-1).values.min() < 0.8 and (probs[:, 0].max() - probs[:, 0].min()) > 0.1  # not constant


def test_torchrun_two_ranks_same_output(classifier, tmp_path, monkeypatch):
    """2 ranks = 1 process, both with the classifier in float64 (tests/float64_run.py)."""
    float64_models(monkeypatch)
    data, rows = make_input(tmp_path / "in.jsonl")
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    ss.main(["--data", str(data), "--model", str(classifier), "--out", str(one), "--chunk-size", "5", "--device", "cpu"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "float64_run.py"), "score_severity.py", "--data", str(data), "--model", str(classifier),
           "--out", str(two),
           "--chunk-size", "5", "--batch-size", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # same rows, fields and order. The ranks batch, and so pad, other rows together: in float64 the
    # probabilities then differ by ~1e-15, or, where a logit's rounding to float32 (models/bert.py)
    # lands on the other neighbour, by at most max|d z| / 2 (softmax) = 2**-24 |logit| / T < 2e-7
    # (|logit| / T < 3 for this classifier); rounding to 6 decimals maps two values less than 1e-6
    # apart to the same or adjacent steps: |a - b| <= 1e-6
    a = [json.loads(line) for line in one.read_text(encoding="utf-8").splitlines()]
    b = [json.loads(line) for line in two.read_text(encoding="utf-8").splitlines()]
    assert [{**r, "severity_probs": None} for r in a] == [{**r, "severity_probs": None} for r in b]
    assert [r["id"] for r in b] == [r["id"] for r in rows]
    torch.testing.assert_close(torch.tensor([r["severity_probs"] for r in b], dtype=torch.float64),
                               torch.tensor([r["severity_probs"] for r in a], dtype=torch.float64),
                               atol=1e-6 + 1e-12, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "one.jsonl", "one.jsonl.meta.json", "two.jsonl",
                                                          "two.jsonl.meta.json"]  # shards and locks removed


@pytest.mark.parametrize("bad, line, field", [
    ('{"id": "x", "question": "سؤال"\n', 3, None),  # malformed JSON
    ('{"id": "x", "question": "  "}\n', 3, "question"),  # empty
    ('{"id": "x", "answer": "جواب"}\n', 3, "question"),  # missing
    ('{"id": "x", "question": 5}\n', 3, "question"),  # not a string
    ('["not", "an", "object"]\n', 3, None),
])
def test_bad_input_raises_and_writes_nothing(classifier, tmp_path, bad, line, field):
    data = tmp_path / "in.jsonl"
    good = '{"id": "a", "question": "صداع"}\n'
    data.write_text(good + good + bad + good, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError) as e:
        ss.main(["--data", str(data), "--model", str(classifier), "--out", str(out), "--chunk-size", "1", "--device", "cpu"])
    assert e.value.line == line and e.value.field == field and str(data) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temporary file


def test_missing_input_file_is_a_data_error(classifier, tmp_path):
    with pytest.raises(DataError, match="file not found") as e:
        ss.main(["--data", str(tmp_path / "nope.jsonl"), "--model", str(classifier), "--out", str(tmp_path / "o.jsonl"),
                 "--device", "cpu"])
    assert e.value.path == str(tmp_path / "nope.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_refuses_a_non_severity_model(classifier, tmp_path):
    from models import Tokenizer, save_pretrained
    from models.bert import BertConfig, BertForSequenceClassification
    tok = Tokenizer.from_folder(classifier)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=8, id2label={0: "neg", 1: "pos"})
    save_pretrained(BertForSequenceClassification(config), tok, tmp_path / "m")
    with pytest.raises(ValueError, match="not a severity classifier"):
        load_classifier(tmp_path / "m", torch.device("cpu"))


@pytest.mark.slow
def test_torchrun_bad_input_leaves_nothing(classifier, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text('{"question": "صداع"}\n' * 5 + '{"question": ""}\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "score_severity.py"), "--data", str(data), "--model", str(classifier),
           "--out", str(tmp_path / "out.jsonl"), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "line 6, field 'question'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no shards


def test_empty_input_or_a_folder_out_is_refused_and_keeps_the_old_output(classifier, tmp_path):
    from core.outputs import OutputError, write_sidecar
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    out.write_text("a good earlier output\n", encoding="utf-8")
    write_sidecar(out, "score_severity.py")  # an earlier output of this project (a user's file is refused)
    with pytest.raises(DataError, match="no rows"):
        ss.main(["--data", str(tmp_path / "empty.jsonl"), "--model", str(classifier), "--out", str(out)])
    assert out.read_text(encoding="utf-8") == "a good earlier output\n"
    make_input(tmp_path / "in.jsonl")
    (tmp_path / "afolder").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        ss.main(["--data", str(tmp_path / "in.jsonl"), "--model", str(classifier), "--out", str(tmp_path / "afolder")])
    with pytest.raises(OutputError, match="contains the input --data"):  # (the input's own folder)
        ss.main(["--data", str(tmp_path / "in.jsonl"), "--model", str(classifier), "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afolder", "empty.jsonl", "in.jsonl", "scored.jsonl",
                                                          "scored.jsonl.meta.json"]
