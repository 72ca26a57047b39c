"""prepare_data.py on small hand-made inputs: CSV (BOM, multi-line quoted fields, big fields),
TSV, JSONL; every bad input raises a DataError naming file, line and field and leaves no output
(and no temporary file); the split is deterministic and stable when rows are added."""
import csv
import json
import math
import random

import pytest

import prepare_data
from core.common import DataError, UsageError, normalize_arabic, stable_hash
from core.outputs import write_sidecar
from core.lexicon import severity_of

HEADER = ["q_body", "a_body", "q_body_count", "a_body_count", "category", "category_id"]


def write_csv(path, rows, header=HEADER, bom=True, delimiter=","):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_out(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run(*argv):
    return prepare_data.main([str(a) for a in argv])


def test_csv_with_bom_multiline_urls_digits_and_extra_columns(tmp_path):
    src = write_csv(tmp_path / "in.csv", [
        ["اشعر بالم في الصدر\nمع تعرق منذ ساعه", "توجه فورا الى الطوارئ لعمل تخطيط للقلب", "7", "7", "قلب", "3"],
        ["عندي حب شباب في الوجه عمري ١٩ سنه", "استخدم غسول لطيف مرتين يوميا  وراجع https://example.com/acne للمزيد", "8", "9", "جلديه", "5"],
        ["ابني عنده حمى منذ يومين and a cough", "اعطه خافض حراره مثل paracetamol بالجرعه المناسبه لوزنه", "8", "8", "اطفال", "1"],
    ])
    stats = run("--data", src, "--out", tmp_path / "out.jsonl")
    rows = read_out(tmp_path / "out.jsonl")
    assert [r["question"] for r in rows] == [
        "اشعر بالم في الصدر مع تعرق منذ ساعه",  # the quoted line break became a space
        "عندي حب شباب في الوجه عمري 19 سنه",  # Eastern digits -> ASCII
        "ابني عنده حمى منذ يومين and a cough"]  # not normalized (ى kept) without --normalize
    assert rows[1]["answer"] == "استخدم غسول لطيف مرتين يوميا وراجع للمزيد"  # URL stripped
    assert [r["severity"] for r in rows] == ["critical", "mild", "moderate"]
    assert all(r["severity_source"] == "rules" for r in rows)
    assert [r["category"] for r in rows] == ["قلب", "جلديه", "اطفال"]
    for r in rows:  # other columns kept unchanged (as strings); mapped columns renamed
        assert set(r) == {"id", "question", "answer", "category", "split", "severity",
                          "severity_source", "q_body_count", "a_body_count", "category_id"}
        assert r["id"] == f"{stable_hash(normalize_arabic(r['question']) + chr(10) + normalize_arabic(r['answer'])):016x}"
    assert rows[0]["q_body_count"] == "7" and rows[2]["category_id"] == "1"
    assert list(rows[0])[:7] == ["id", "question", "answer", "category", "split", "severity", "severity_source"]
    assert stats["rows_read"] == 3 and stats["kept"] == 3
    assert sum(stats["splits"][s]["critical"] for s in ("train", "val", "test")) == 1


def test_keep_urls_and_big_fields(tmp_path):
    big = "كلمه " * 60000  # 300k characters: over csv's default 128 KiB field limit
    src = write_csv(tmp_path / "in.csv", [["سؤال عن الصداع النصفي", big + " https://x.org/a", "", "", "اعصاب", ""]])
    run("--data", src, "--out", tmp_path / "out.jsonl", "--keep-urls")
    [row] = read_out(tmp_path / "out.jsonl")
    assert row["answer"].endswith("كلمه https://x.org/a") and len(row["answer"].split()) == 60001


def test_tsv_custom_columns_and_normalize(tmp_path):
    src = write_csv(tmp_path / "in.tsv", [
        ["s1", "أعاني من ألمٍ في المَعِدة", "اشرب الماء وتجنّب الأطعمة الحارّة", "باطنية"],
        ["s2", "هل الحمّى خطيرة عند الكبار", "الحمى عرض وليست مرضا وتحتاج لمعرفة السبب", "باطنية"],
    ], header=["rid", "question", "response", "specialty"], bom=False, delimiter="\t")
    run("--data", src, "--out", tmp_path / "out.jsonl", "--question-col", "question",
        "--answer-col", "response", "--category-col", "specialty", "--id-col", "rid", "--normalize")
    rows = read_out(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == ["s1", "s2"]
    assert rows[0]["question"] == "اعاني من الم في المعده"
    assert rows[0]["answer"] == "اشرب الماء وتجنب الاطعمه الحاره"
    assert rows[1]["question"] == "هل الحمي خطيره عند الكبار"
    assert [r["severity"] for r in rows] == ["mild", "moderate"]
    assert rows[0]["category"] == "باطنية"  # categories are kept as given, not normalized
    assert set(rows[0]) == {"id", "question", "answer", "category", "split", "severity", "severity_source"}


def test_jsonl_gold_labels_probs_and_unknown_fields(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = [
        {"q_body": "عندي صداع خفيف بعد العمل", "a_body": "خذ قسطا من الراحه واشرب الماء", "severity": "Critical",
         "severity_probs": [0.1, 0.2, 0.7], "meta": {"source": "x", "tags": [1, 2]}},
        {"q_body": "اشعر بالم في الصدر عند الجري", "a_body": "راجع طبيب القلب لعمل تخطيط وفحص جهد", "severity": ""},
        {"q_body": "كيف اتخلص من القشره", "a_body": "استخدم شامبو مضاد للقشره مرتين في الاسبوع", "rating": 5},
    ]
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    stats = run("--data", src, "--out", tmp_path / "out.jsonl")
    rows = read_out(tmp_path / "out.jsonl")
    assert [(r["severity"], r["severity_source"]) for r in rows] == [
        ("critical", "gold"), ("critical", "rules"), ("mild", "rules")]
    assert rows[0]["severity_probs"] == [0.1, 0.2, 0.7]
    assert rows[0]["meta"] == {"source": "x", "tags": [1, 2]} and rows[2]["rating"] == 5
    assert stats["severity_source"] == {"gold": 1, "rules": 2, "none": 0}

    run("--data", src, "--out", tmp_path / "none.jsonl", "--label", "none")
    rows = read_out(tmp_path / "none.jsonl")
    assert [r.get("severity") for r in rows] == ["critical", None, None]
    assert "severity_source" not in rows[1]


def test_empty_or_null_probs_are_no_probs(tmp_path):
    """An empty severity_probs cell (CSV) or null (JSONL) is no vector: the output row has no
    severity_probs field (an empty string there would break train_lm and evaluate)."""
    src = write_csv(tmp_path / "in.csv", [["سؤال عن الم الظهر المزمن", "جواب الطبيب المفصل هنا", ""],
                                          ["سؤال عن حب الشباب", "جواب الطبيب المفصل هنا ايضا", "[0.2, 0.3, 0.5]"]],
                    header=["q_body", "a_body", "severity_probs"])
    run("--data", src, "--out", tmp_path / "out.jsonl")
    rows = read_out(tmp_path / "out.jsonl")
    assert "severity_probs" not in rows[0] and rows[1]["severity_probs"] == [0.2, 0.3, 0.5]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"q_body": "سؤال عن الم الظهر", "a_body": "جواب الطبيب المفصل هنا",
                               "severity_probs": None}, ensure_ascii=False) + "\n", encoding="utf-8")
    run("--data", src, "--out", tmp_path / "out2.jsonl")
    [row] = read_out(tmp_path / "out2.jsonl")
    assert "severity_probs" not in row


def test_jsonl_bom_is_fine_and_bad_utf8_names_the_line(tmp_path):
    good = json.dumps({"q_body": "سؤال عن الم الظهر", "a_body": "جواب الطبيب المفصل هنا"}, ensure_ascii=False)
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + good.encode() + b"\n")  # a BOM, as Windows tools write
    run("--data", src, "--out", tmp_path / "out.jsonl")
    assert read_out(tmp_path / "out.jsonl")[0]["question"] == "سؤال عن الم الظهر"
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(good.encode() + b"\n" + '{"q_body": "caf\u00e9 au lait", "a_body": "x y z"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as e:
        run("--data", src, "--out", tmp_path / "bad.jsonl")
    assert e.value.line == 2 and "not UTF-8" in str(e.value) and str(src) in str(e.value)
    assert not (tmp_path / "bad.jsonl").exists()


def test_rerun_on_own_output_is_identical(tmp_path):
    src = write_csv(tmp_path / "in.csv", [[f"سؤال رقم {i} عن الم في الصدر" if i % 3 == 0 else f"سؤال رقم {i} عن حب الشباب",
                                          f"جواب الطبيب رقم {i} مع النصائح", "", "", "عام", ""] for i in range(50)])
    run("--data", src, "--out", tmp_path / "a.jsonl")
    run("--data", tmp_path / "a.jsonl", "--out", tmp_path / "b.jsonl", "--question-col", "question",
        "--answer-col", "answer", "--val-frac", "0.5", "--seed", "9")
    assert read_out(tmp_path / "a.jsonl") == read_out(tmp_path / "b.jsonl")


def test_duplicates_and_short_rows_are_dropped_and_counted(tmp_path):
    src = write_csv(tmp_path / "in.csv", [
        ["عندي صداع منذ يومين", "اشرب الماء ونم جيدا", "", "", "", ""],
        ["عندي صُداع منذ يومين", "اشرب الماء ونم جيدا", "", "", "", ""],  # same after normalization
        ["عندي صداع منذ يومين", "اشرب  الماء\nونم جيدا", "", "", "", ""],  # same after whitespace
        ["عندي صداع منذ يومين", "راجع الطبيب", "", "", "", ""],  # 2 words < 3
        ["عندي صداع منذ اسبوع", "", "", "", "", ""],  # empty answer
        ["صداع", "اشرب الماء ونم جيدا الليله", "", "", "", ""],  # 1-word question
        ["عندي صداع منذ شهر", "راجع طبيب الاعصاب قريبا", "", "", "", ""],
    ])
    stats = run("--data", src, "--out", tmp_path / "out.jsonl")
    assert stats["rows_read"] == 7 and stats["kept"] == 2
    assert stats["dropped"] == {"short_question": 1, "short_answer": 2, "duplicate": 2}
    assert len(read_out(tmp_path / "out.jsonl")) == 2
    stats = run("--data", src, "--out", tmp_path / "out2.jsonl", "--min-answer-words", "1",
                "--min-question-words", "1")
    assert stats["dropped"] == {"short_question": 0, "short_answer": 1, "duplicate": 2}


def make_rows(n, start=0):
    complaints = ["صداع", "الم في الصدر", "حب شباب", "حمى", "اسهال", "تساقط الشعر", "ضيق تنفس", "ارق"]
    return [[f"المريض رقم {i} يشكو من {complaints[i % len(complaints)]} منذ فتره",
             f"اجابه الطبيب للمريض رقم {i} مع بعض النصائح", "", "", "عام", ""] for i in range(start, start + n)]


def test_split_is_deterministic_proportional_and_stable(tmp_path):
    rows = make_rows(2000)
    run("--data", write_csv(tmp_path / "a.csv", rows), "--out", tmp_path / "a.jsonl")
    a = read_out(tmp_path / "a.jsonl")
    counts = {s: sum(r["split"] == s for r in a) for s in ("train", "val", "test")}
    # each row's hash is a uniform draw: a share p of n = 2000 rows has binomial standard error sqrt(p (1 - p) / n)
    # = 0.0067; the seed fixes the draw, within 3 se (measured: test 1.6 se, val 0.3 se); a fraction ignored or
    # swapped is 15 se off
    se = math.sqrt(0.1 * 0.9 / 2000)
    assert abs(counts["val"] / 2000 - 0.1) < 3 * se and abs(counts["test"] / 2000 - 0.1) < 3 * se
    for r in a:  # the documented rule: a uniform number from the id's hash and the seed
        u = stable_hash(r["id"], 0) / 2**64
        assert r["split"] == ("test" if u < 0.1 else "val" if u < 0.2 else "train")

    # more rows, shuffled: every old row keeps its id and split
    more = rows + make_rows(700, start=2000)
    random.Random(1).shuffle(more)
    run("--data", write_csv(tmp_path / "b.csv", more), "--out", tmp_path / "b.jsonl")
    b = {r["id"]: r for r in read_out(tmp_path / "b.jsonl")}
    assert len(b) == 2700
    assert all(b[r["id"]]["split"] == r["split"] and b[r["id"]]["question"] == r["question"] for r in a)

    # same input twice: byte-identical output; another seed: another split
    run("--data", tmp_path / "a.csv", "--out", tmp_path / "a2.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "a2.jsonl").read_bytes()
    run("--data", tmp_path / "a.csv", "--out", tmp_path / "s.jsonl", "--seed", "1", "--val-frac", "0.2", "--test-frac", "0")
    s = read_out(tmp_path / "s.jsonl")
    assert {r["split"] for r in s} == {"train", "val"}
    assert abs(sum(r["split"] == "val" for r in s) / 2000 - 0.2) < 3 * math.sqrt(0.2 * 0.8 / 2000)  # 0.06 se
    assert [r["id"] for r in s] == [r["id"] for r in a]  # ids do not depend on the seed


def test_labels_come_from_the_rules(tmp_path):
    run("--data", write_csv(tmp_path / "a.csv", make_rows(40)), "--out", tmp_path / "a.jsonl")
    rows = read_out(tmp_path / "a.jsonl")
    assert all(r["severity"] == severity_of(r["question"])[0] for r in rows)
    assert {r["severity"] for r in rows} == {"mild", "moderate", "critical"}


GOOD = ["عندي صداع منذ يومين", "اشرب الماء ونم جيدا", "", "", "عام", ""]


def bad_csv(tmp_path, rows, header=HEADER, extra=()):
    """A CSV whose first row (line 2) is good; `extra` fills the good row's other columns."""
    good = GOOD if header == HEADER else GOOD[:2] + list(extra)
    return write_csv(tmp_path / "bad.csv", [good] + rows, header=header)


def bad_jsonl(tmp_path, objs):
    path = tmp_path / "bad.jsonl"
    good = {"q_body": GOOD[0], "a_body": GOOD[1]}
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)
                              for o in [good] + objs) + "\n", encoding="utf-8")
    return path


BAD = {  # name -> (make input, extra flags, line, field, words in the message)
    "missing column": (lambda t: write_csv(t / "bad.csv", [GOOD[:2]], header=["q_body", "answer"]),
                       [], 1, "a_body", ["column not found", "q_body, answer"]),
    "missing column jsonl": (lambda t: bad_jsonl(t, [{"q_body": "سؤال عن الصداع"}]), [], 2, "a_body", ["available columns"]),
    "missing category column": (lambda t: bad_csv(t, []), ["--category-col", "specialty"], 1, "specialty", ["not found"]),
    "malformed json": (lambda t: bad_jsonl(t, ['{"q_body": "سؤال", "a_body": ']), [], 2, None, ["malformed JSON"]),
    "json not a string": (lambda t: bad_jsonl(t, [{"q_body": 5, "a_body": "جواب الطبيب المفصل هنا"}]), [], 2, "q_body", ["expected text"]),
    "empty question": (lambda t: bad_csv(t, [GOOD, ["  ", "جواب طويل بما يكفي هنا", "", "", "", ""]]), [], 4, "q_body", ["empty question"]),
    "bad severity": (lambda t: bad_csv(t, [["سؤال عن الم الظهر", "جواب الطبيب المفصل هنا", "severe"]],
                                       header=["q_body", "a_body", "severity"], extra=["Mild "]), [], 3, "severity", ["'severe'", "mild"]),
    "probs wrong length": (lambda t: bad_jsonl(t, [{"q_body": "سؤال عن الم الظهر", "a_body": "جواب الطبيب المفصل هنا",
                                                    "severity_probs": [0.5, 0.5]}]), [], 2, "severity_probs", ["got 2"]),
    "probs nan": (lambda t: bad_jsonl(t, ['{"q_body": "سؤال عن الم الظهر", "a_body": "جواب الطبيب المفصل هنا", '
                                          '"severity_probs": [NaN, 0.5, 0.5]}']), [], 2, "severity_probs", ["nan"]),
    "probs csv not json": (lambda t: bad_csv(t, [["سؤال عن الم الظهر", "جواب الطبيب المفصل هنا", "0.2;0.8"]],
                                             header=["q_body", "a_body", "severity_probs"], extra=["[0.2, 0.3, 0.5]"]), [], 3, "severity_probs", ["not a JSON list"]),
    "bad split": (lambda t: bad_jsonl(t, [{"q_body": "سؤال عن الم الظهر", "a_body": "جواب الطبيب المفصل هنا", "split": "dev"}]),
                  [], 2, "split", ["'dev'"]),
    "duplicate id": (lambda t: bad_csv(t, [["سؤال عن الم الظهر", "جواب الطبيب المفصل هنا", "7"],
                                           ["سؤال عن الم الركبه", "جواب اخر مفصل هنا", "7"]],
                                       header=["q_body", "a_body", "rid"], extra=["1"]), ["--id-col", "rid"], 4, "rid", ["duplicate id '7'"]),
    "duplicate column": (lambda t: write_csv(t / "bad.csv", [GOOD[:3]], header=["q_body", "a_body", "q_body"]),
                         [], 1, "q_body", ["appears twice"]),
    "wrong field count": (lambda t: bad_csv(t, [["سؤال", "جواب", "زياده"]], header=["q_body", "a_body"]), [], 3, None,
                          ["3 fields", "header has 2"]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_and_leaves_nothing(tmp_path, name):
    make, flags, line, field, words = BAD[name]
    src = make(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "kept.jsonl").write_text("old\n", encoding="utf-8")  # an earlier output stays intact
    write_sidecar(out_dir / "kept.jsonl", "prepare_data.py")  # (one of the project's: else it is refused first)
    for out in (out_dir / "new.jsonl", out_dir / "kept.jsonl"):
        with pytest.raises(DataError) as e:
            run("--data", src, "--out", out, *flags)
        msg = str(e.value)
        assert e.value.path == str(src) and msg.startswith(str(src))
        assert e.value.line == line and f"line {line}" in msg
        assert e.value.field == field and (field is None or f"field '{field}'" in msg)
        for w in words:
            assert w in msg, msg
    assert sorted(p.name for p in out_dir.iterdir()) == ["kept.jsonl", "kept.jsonl.meta.json"]  # no output, no temp
    assert (out_dir / "kept.jsonl").read_text(encoding="utf-8") == "old\n"


def test_unterminated_quote_and_unknown_extension(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text('q_body,a_body\n"سؤال عن الصداع,"جواب\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2.*malformed CSV"):
        run("--data", src, "--out", tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    txt = tmp_path / "x.txt"
    txt.write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="--format"):
        run("--data", txt, "--out", tmp_path / "o.jsonl")


@pytest.mark.parametrize("script", ["prepare_data.py", "evaluate.py"])
def test_command_line_reports_bad_input_without_traceback(tmp_path, script):
    import subprocess
    import sys
    from core.common import REPO
    src = tmp_path / "in.jsonl"
    src.write_text('{"q_body": "سؤال", "question": "سؤال"}\n{"oops"\n', encoding="utf-8")
    flags = ["--data", str(src)] if script == "prepare_data.py" else ["--generations", str(src)]
    proc = subprocess.run([sys.executable, str(REPO / script), *flags, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {src}, line ") and not (tmp_path / "o").exists()


def test_shipped_demo_raw_csv(tmp_path):
    """data/demo_raw.csv: MAQA layout, the intended label mix by the rules, answers that fit the
    labels, and exactly what tools/make_demo_data.py regenerates."""
    import sys
    from core.common import DATA_DIR
    from core.lexicon import mentions_urgent_care
    sys.path.insert(0, str(DATA_DIR.parent / "tools"))
    import make_demo_data

    shipped = DATA_DIR / "demo_raw.csv"
    with open(shipped, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["q_body", "a_body", "category"]
        rows = list(reader)
    assert 300 <= len(rows) <= 400
    assert len({r["q_body"] for r in rows}) == len(rows)
    assert len({r["category"] for r in rows}) >= 10
    labels = [severity_of(r["q_body"])[0] for r in rows]
    share = {lv: labels.count(lv) / len(rows) for lv in ("mild", "moderate", "critical")}
    assert 0.55 <= share["mild"] <= 0.60 and 0.27 <= share["moderate"] <= 0.33 and 0.08 <= share["critical"] <= 0.12
    for r, label in zip(rows, labels):
        assert mentions_urgent_care(r["a_body"]) == (label == "critical"), r
        assert 15 <= len(r["a_body"].split()) <= 60
        assert normalize_arabic(r["q_body"]) == r["q_body"] and normalize_arabic(r["a_body"]) == r["a_body"]

    make_demo_data.main(["--out", str(tmp_path / "again.csv")])
    assert (tmp_path / "again.csv").read_bytes() == shipped.read_bytes()


# ----------------------------------------------------------------------------- the first hour with real files


def test_own_row_format_needs_no_column_flags(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"id": "a1", "question": "عندي ألم في الصدر مع ضيق نفس", "answer": "اذهب الى الطوارئ الان",
                               "split": "val"}, ensure_ascii=False) + "\n", encoding="utf-8")
    run("--data", src, "--out", tmp_path / "out.jsonl")
    [row] = read_out(tmp_path / "out.jsonl")
    assert (row["id"], row["question"], row["split"], row["severity"]) == ("a1", "عندي ألم في الصدر مع ضيق نفس", "val",
                                                                           "critical")
    assert "q_body" not in row and "a_body" not in row


def test_spreadsheet_header_with_trailing_empty_columns(tmp_path):
    src = tmp_path / "export.csv"
    src.write_text("q,a,,,\nعندي صداع خفيف منذ الصباح,اشرب الماء وارتح قليلا,,,\n", encoding="utf-8")
    run("--data", src, "--out", tmp_path / "out.jsonl", "--question-col", "q", "--answer-col", "a")
    [row] = read_out(tmp_path / "out.jsonl")
    assert row["question"] == "عندي صداع خفيف منذ الصباح" and "" not in row


def test_other_encodings_get_a_hint_and_read_with_encoding(tmp_path):
    src = tmp_path / "win.csv"
    src.write_bytes("q,a\nعندي سعال منذ أسبوع,خذ شراب السعال وراجع الطبيب\n".encode("cp1256"))
    with pytest.raises(DataError, match="pass --encoding"):
        run("--data", src, "--out", tmp_path / "out.jsonl", "--question-col", "q", "--answer-col", "a")
    run("--data", src, "--out", tmp_path / "out.jsonl", "--question-col", "q", "--answer-col", "a",
        "--encoding", "cp1256")
    assert read_out(tmp_path / "out.jsonl")[0]["question"] == "عندي سعال منذ أسبوع"
    with pytest.raises(SystemExit):
        run("--data", src, "--out", tmp_path / "o.jsonl", "--encoding", "klingon")


@pytest.mark.parametrize("value,ok", [(7, True), ("7", True), (3.5, False), ([1], False), (True, False),
                                      ({"a": 1}, False)])
def test_id_types(tmp_path, value, ok):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"id": value, "question": "سؤال عن الصداع اليومي", "answer": "جواب الطبيب هنا"}) + "\n",
                   encoding="utf-8")
    if ok:
        run("--data", src, "--out", tmp_path / "out.jsonl")
        assert read_out(tmp_path / "out.jsonl")[0]["id"] == "7"
    else:
        with pytest.raises(DataError, match="expected a string or an integer"):
            run("--data", src, "--out", tmp_path / "out.jsonl")


def test_probs_as_a_string_in_jsonl_is_an_error(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"question": "سؤال عن الصداع اليومي", "answer": "جواب الطبيب هنا",
                               "severity_probs": "[0.5, 0.3, 0.2]"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="severity_probs.*a string"):
        run("--data", src, "--out", tmp_path / "out.jsonl")


def test_gold_file_merged_by_id(tmp_path):
    """--gold: review.py results' gold.jsonl sets severity and severity_source "gold" by id, over
    the rules and over the input's own label; an id the input does not hold is refused."""
    src = tmp_path / "in.jsonl"
    rows = [{"id": "a", "question": "اشعر بالم في الصدر عند الجري", "answer": "راجع طبيب القلب لعمل تخطيط وفحص جهد"},
            {"id": "b", "question": "كيف اتخلص من القشره", "answer": "استخدم شامبو مضاد للقشره مرتين في الاسبوع",
             "severity": "moderate"},
            {"id": "c", "question": "عندي صداع خفيف بعد العمل", "answer": "خذ قسطا من الراحه واشرب الماء"}]
    src.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    gold = tmp_path / "gold.jsonl"
    gold.write_text('{"id": "a", "severity": "moderate", "severity_source": "gold", "agreement": 1.0}\n'
                    '{"id": "b", "severity": "mild"}\n', encoding="utf-8")
    stats = run("--data", src, "--gold", gold, "--out", tmp_path / "out.jsonl")
    out = read_out(tmp_path / "out.jsonl")
    assert [(r["id"], r["severity"], r["severity_source"]) for r in out] == [
        ("a", "moderate", "gold"), ("b", "mild", "gold"), ("c", "mild", "rules")]
    assert stats["severity_source"] == {"gold": 2, "rules": 1, "none": 0}

    gold.write_text('{"id": "a", "severity": "critical"}\n{"id": "zz", "severity": "mild"}\n', encoding="utf-8")
    before = (tmp_path / "out.jsonl").read_bytes()
    with pytest.raises(DataError, match=r"1 gold ids are not among the kept rows.*zz"):
        run("--data", src, "--gold", gold, "--out", tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_bytes() == before  # the earlier output is left as it was
    gold.write_text('{"id": "a", "severity": "severe"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="severity"):
        run("--data", src, "--gold", gold, "--out", tmp_path / "x.jsonl")
    with pytest.raises(UsageError, match="the input --gold"):
        run("--data", src, "--gold", gold, "--out", gold)
