"""Import question/answer pairs (CSV, TSV or JSONL) into the project's JSONL rows, with a
deterministic train/val/test split and rule-based severity labels.

Run (CPU only; one streaming pass, no GPU or torchrun involved):
  python prepare_data.py --data ds5b.csv --out data/maqa.jsonl                # MAQA as distributed
  python prepare_data.py --data data/demo_raw.csv --out out/demo/prepared.jsonl
  python prepare_data.py --data altibbi.csv --question-col question --answer-col answer \\
      --category-col specialty --normalize
  python prepare_data.py --data rows.jsonl --out prepared.jsonl --label none   # keep gold labels only
  python prepare_data.py --data out/demo/prepared.jsonl --gold out/review/results/gold.jsonl \\
      --out out/demo/prepared-gold.jsonl     # merge clinicians' gold labels (review.py results)

Reads --data, format from the extension (.csv, .tsv/.tab, .jsonl/.ndjson) or --format:
  CSV/TSV: UTF-8 (a BOM is fine; other encodings with --encoding, e.g. cp1256), a header line,
    quoted fields may span lines and be large. Every value is kept as a string. Columns with an
    empty header name (the trailing `,,,` of spreadsheet exports) are dropped.
  JSONL: one JSON object per line (blank lines skipped), UTF-8 unless --encoding says otherwise.
  Columns used: --question-col (default q_body as in MAQA, else `question`, so this script's own
  output reads back without flags), --answer-col (a_body, else `answer`), --category-col
  (category; used when present), --id-col (optional), and if present `severity` (a gold label:
  mild/moderate/critical, any case; empty = unlabeled), `severity_probs` (3 probabilities; in a
  CSV as a JSON list "[0.7, 0.2, 0.1]") and `split` (train/val/test, kept as given).

Writes --out, one JSON object per line (UTF-8, Arabic unescaped), atomically (a temporary file
renamed into place: an error, an interrupted run or a full disk leaves no partial output), and
beside it --out.meta.json (written_by, the input, the counts). An existing --out is replaced only
if such a sidecar says this project wrote it; an --out that is the input is refused (docs/files.md):
  id               --id-col's value (a string; an integer is written as its string, any other
                   JSON type is an error); else the input's own `id` field if it has one; else a content
                   hash (16 hex digits) of the normalized question + answer, so a row keeps its
                   id when other rows are added, removed or reordered (a row number would not).
  question, answer the texts, cleaned: URLs removed (--keep-urls keeps them), Eastern Arabic
                   digits made ASCII, whitespace (also line breaks) collapsed to single spaces;
                   with --normalize also common.normalize_arabic (no diacritics/tatweel, ا for
                   أ/إ/آ, ي for ى, ه for ة). Off by default because MAQA's text is already
                   normalized; turn it on for raw sources (Altibbi-style exports).
  category         the --category-col value, kept as given (if the column exists).
  split            train / val / test from a hash of the id and --seed (common.stable_hash):
                   a row's split depends on its id only, so it never changes when rows are added.
                   A valid `split` already in the input is kept.
  severity, severity_source
                   "gold" when the input has a severity label (validated); otherwise with
                   --label rules the label of lexicon.severity_of(question) and "rules" (rows
                   whose input says severity_source "rules" are relabeled, so re-running on this
                   script's own output is safe); with --label none unlabeled rows get neither field.
                   With --gold FILE (JSONL with `id` and `severity`, e.g. review.py results'
                   gold.jsonl) a row whose id is in FILE gets that label and "gold", over any
                   label the input gives; an id in FILE that no kept row holds is an error (the
                   gold label would be lost silently otherwise).
  severity_probs   only when the input has them (validated with common.check_probs).
  ...              every other input column/field, unchanged. The mapped columns (question,
                   answer, category and id columns) are renamed, not duplicated.

Rows are dropped and counted when the answer (or the question) has fewer than
--min-answer-words (--min-question-words) words after cleaning, or when the same normalized
question + answer was already seen (only 8-byte hashes are kept in memory for that, so 430k
MAQA rows stream in constant memory). An input with no rows (or none kept) is an error and the
--out file is left as it was. Errors name the file, line and field (common.DataError):
a missing column (the available ones are listed), malformed CSV or JSON, an empty question, an
unknown severity or split, bad severity_probs, a duplicate --id-col value.

At the end a summary is printed (and returned by main() as a dict): rows read, kept, dropped by
reason, label sources, and label counts per split.
"""
import argparse
import codecs
import csv
import json
import re
import sys
from pathlib import Path

from tqdm import tqdm

from core.common import (DataError, HelpFormatter, SEVERITIES, SPLITS, ascii_digits, check_probs, fraction,
                         non_negative_int, normalize_arabic, out_path, read_jsonl, run_main, seed_int, stable_hash,
                         write_jsonl)
from core.outputs import check_not_input, check_out_file, output_lock, write_sidecar

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
ENCODING_HINT = "; if the file is in another encoding, pass --encoding (e.g. cp1256, Windows Arabic)"
ENCODING_NAMES = {"utf-8": "UTF-8"}
DEFAULT_COLUMNS = {"question_col": ("q_body", "question"), "answer_col": ("a_body", "answer")}  # MAQA, ours


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="input file: .csv, .tsv or .jsonl")
    p.add_argument("--out", required=True, type=out_path, help="output JSONL file (written atomically)")
    p.add_argument("--format", choices=["auto", "csv", "tsv", "jsonl"], default="auto",
                   help="input format (default: from the file extension)")
    p.add_argument("--question-col", default=None,
                   help="column with the patient's question (default: q_body as in MAQA, else 'question' as "
                        "in this project's own rows)")
    p.add_argument("--answer-col", default=None, help="column with the doctor's answer (default: a_body, else 'answer')")
    p.add_argument("--encoding", default="utf-8",
                   help="text encoding of --data (e.g. cp1256 for Windows Arabic exports; default utf-8, a BOM is fine)")
    p.add_argument("--category-col", default=None,
                   help="column with the specialty (default: 'category', used when present; "
                        "a column named here must exist)")
    p.add_argument("--id-col", default=None,
                   help="column with a unique row id (default: the input's 'id' field if any, "
                        "else a content hash of question + answer)")
    p.add_argument("--normalize", action="store_true",
                   help="apply common.normalize_arabic to question and answer (for raw sources)")
    p.add_argument("--keep-urls", action="store_true", help="keep URLs in the texts (default: strip)")
    p.add_argument("--min-answer-words", type=non_negative_int, default=3, help="drop rows with shorter answers")
    p.add_argument("--min-question-words", type=non_negative_int, default=2, help="drop rows with shorter questions")
    p.add_argument("--val-frac", type=fraction, default=0.1, help="fraction of rows in the val split")
    p.add_argument("--test-frac", type=fraction, default=0.1, help="fraction of rows in the test split")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the split hash")
    p.add_argument("--label", choices=["rules", "none"], default="rules",
                   help="label unlabeled rows with the lexicon rules, or leave them unlabeled")
    p.add_argument("--gold", default=None,
                   help="JSONL of gold labels (id, severity), e.g. review.py results' gold.jsonl: merged by id")
    args = p.parse_args(argv)
    try:
        args.encoding = codecs.lookup(args.encoding).name
    except LookupError:
        p.error(f"--encoding {args.encoding}: unknown encoding")
    if not (0 <= args.val_frac and 0 <= args.test_frac and args.val_frac + args.test_frac < 1):
        p.error("need 0 <= --val-frac, --test-frac and --val-frac + --test-frac < 1")
    return args


# -----------------------------------------------------------------------------
# readers: yield (line number, {column: value})


def read_table(path, delimiter, encoding="utf-8"):
    """CSV/TSV rows as dicts of strings; line = the line the record starts on. Columns with an
    empty name (the trailing `,,,` of spreadsheet exports) are dropped."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # answers can exceed the 128 KiB default
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(path, 1, None, "empty file (no header line)") from None
        except UnicodeDecodeError as e:
            raise DataError(path, 1, None, f"not {ENCODING_NAMES.get(encoding, encoding)} text ({e.reason})"
                                           f"{ENCODING_HINT}") from None
        except csv.Error as e:
            raise DataError(path, 1, None, f"unreadable header: {e}") from None
        dup = sorted({h for h in header if h and header.count(h) > 1})
        if dup:
            raise DataError(path, 1, dup[0], "column name appears twice in the header")
        yield 0, header  # the columns, before any row
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(path, start, None, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from None
            except UnicodeDecodeError as e:
                raise DataError(path, start, None, f"not {ENCODING_NAMES.get(encoding, encoding)} text ({e.reason})"
                                                   f"{ENCODING_HINT}") from None
            if values:
                if len(values) != len(header):
                    raise DataError(path, start, None, f"{len(values)} fields, but the header has {len(header)}")
                yield start, {h: v for h, v in zip(header, values) if h}
            start = reader.line_num + 1


def read_jsonl_rows(path, encoding="utf-8"):
    """JSONL rows as dicts (common.read_jsonl: malformed lines raise DataError)."""
    first = True
    for lineno, row in read_jsonl(path, encoding=encoding):
        if first:
            yield 0, None  # columns differ per row in JSONL
            first = False
        yield lineno, row


# -----------------------------------------------------------------------------
# cleaning and validation


def clean(text, args):
    if not args.keep_urls:
        text = URL.sub(" ", text)
    if args.normalize:
        return normalize_arabic(text)
    return " ".join(ascii_digits(text).split())


def text_field(row, col, path, line):
    value = row.get(col)
    if value is None:
        raise DataError(path, line, col, f"missing (fields: {', '.join(map(str, row))})")
    if not isinstance(value, str):
        raise DataError(path, line, col, f"expected text, got {type(value).__name__}")
    return value


def gold_severity(row, path, line):
    """The input's own severity label (None when absent or empty)."""
    value = row.get("severity")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or value.strip().lower() not in SEVERITIES:
        raise DataError(path, line, "severity", f"{value!r} is not one of {SEVERITIES}")
    return value.strip().lower()


def input_probs(row, path, line, from_table):
    value = row.get("severity_probs")
    if value is None or (from_table and isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and not from_table:
        raise DataError(path, line, "severity_probs", f"a string ({value[:40]!r}), not a JSON list of 3 numbers")
    if isinstance(value, str):  # CSV: a JSON list in a cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(path, line, "severity_probs", f"not a JSON list: {value!r}") from None
    return check_probs(value, path, line)


def split_of(row_id, args):
    u = stable_hash(row_id, args.seed) / 2**64  # uniform in [0, 1), fixed per id
    return "test" if u < args.test_frac else "val" if u < args.test_frac + args.val_frac else "train"


# -----------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    path = Path(args.data)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    check_not_input(args.out, {"--data": path, "--gold": args.gold})  # never over an input, or a user's file
    check_out_file(args.out)
    args.gold_labels = read_gold(args.gold) if args.gold else None
    with output_lock(args.out):  # two runs cannot write the same --out
        return prepare(args, path)


def read_gold(path):
    """{id: severity} from a gold JSONL (review.py results' gold.jsonl); ids must be unique."""
    gold = {}
    for line, row in read_jsonl(path, required=("severity",)):
        row_id = row.get("id")
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or not str(row_id).strip():
            raise DataError(path, line, "id", f"expected a non-empty string or integer, got {row_id!r}")
        if str(row_id).strip() in gold:
            raise DataError(path, line, "id", f"duplicate id {row_id!r}")
        gold[str(row_id).strip()] = gold_severity(row, path, line)
    if not gold:
        raise DataError(path, None, None, "no gold rows")
    return gold


def check_columns(args, columns, path, line):
    """Settle the column flags left unset (MAQA's q_body / a_body when the input has either, else this
    project's question / answer) and stop, listing the columns, when one the run needs is missing."""
    maqa = any(names[0] in columns for names in DEFAULT_COLUMNS.values())
    for flag, names in DEFAULT_COLUMNS.items():  # unset: MAQA's columns (q_body, a_body) if the input
        if getattr(args, flag) is None:          # has either, else this project's (question, answer)
            setattr(args, flag, names[0] if maqa else names[1])
    needed = [args.question_col, args.answer_col] + [c for c in (args.id_col, args.category_col) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(path, line, missing[0], f"column not found; available columns: {', '.join(map(str, columns))}")


def row_id_of(row, content, args, seen_ids, path, line):
    """A row's id: its --id-col (or "id") value, checked (a string or an integer, not empty, not seen
    before), else the hash of its content. Returns (id, the id column or None)."""
    id_col = args.id_col or ("id" if "id" in row else None)
    if not id_col:
        return f"{content:016x}", None
    row_id = row[id_col]
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int, type(None))):
        raise DataError(path, line, id_col, f"expected a string or an integer, got {type(row_id).__name__}")
    row_id = str(row_id).strip() if row_id is not None else ""
    if not row_id:
        raise DataError(path, line, id_col, "empty id")
    if stable_hash(row_id) in seen_ids:
        raise DataError(path, line, id_col, f"duplicate id {row_id!r}")
    seen_ids.add(stable_hash(row_id))
    return row_id, id_col


def prepared(rows, args, path, fmt, stats):
    """The output rows, one by one: cleaned question and answer, short and duplicate rows dropped
    (counted in stats), id, split, category, the severity (gold, else the rules' label with --label
    rules), severity_probs, and every other field kept unchanged."""
    if args.label == "rules":
        from core.lexicon import severity_of  # loads the lexicon only when labeling
    category_col = args.category_col or "category"
    seen_text, seen_ids = set(), set()
    for line, row in tqdm(rows, desc="prepare", unit=" rows", disable=None):
        if line == 0:  # the table header
            if row is not None:
                check_columns(args, row, path, 1)
            continue
        if fmt == "jsonl":
            check_columns(args, row, path, line)
        stats["rows_read"] += 1
        question = clean(text_field(row, args.question_col, path, line), args)
        answer = clean(text_field(row, args.answer_col, path, line), args)
        if not question:
            raise DataError(path, line, args.question_col, "empty question")
        if len(question.split()) < args.min_question_words:
            stats["dropped"]["short_question"] += 1
            continue
        if len(answer.split()) < args.min_answer_words:
            stats["dropped"]["short_answer"] += 1
            continue
        key = normalize_arabic(question) + "\n" + normalize_arabic(answer)
        content = stable_hash(key)
        if content in seen_text:
            stats["dropped"]["duplicate"] += 1
            continue
        seen_text.add(content)
        row_id, id_col = row_id_of(row, content, args, seen_ids, path, line)

        split = row.get("split")
        if split in (None, ""):
            split = split_of(row_id, args)
        elif split not in SPLITS:
            raise DataError(path, line, "split", f"{split!r} is not one of {SPLITS}")

        out = {"id": row_id, "question": question, "answer": answer}
        if category_col in row:
            out["category"] = row[category_col]
        out["split"] = split
        gold = gold_severity(row, path, line)
        if args.gold_labels is not None and row_id in args.gold_labels:
            out["severity"], out["severity_source"] = args.gold_labels[row_id], "gold"
            stats["gold_merged"].add(row_id)
        elif gold is not None and row.get("severity_source") != "rules":
            out["severity"], out["severity_source"] = gold, "gold"
        elif args.label == "rules":
            out["severity"], out["severity_source"] = severity_of(question)[0], "rules"
        probs = input_probs(row, path, line, fmt != "jsonl")
        if probs is not None:
            out["severity_probs"] = probs
        mapped = {args.question_col, args.answer_col, category_col, id_col}
        for k, v in row.items():  # severity fields were set above when given; an empty or null one is not copied
            if k not in mapped and k not in out and k not in ("severity", "severity_source", "severity_probs"):
                out[k] = v

        stats["kept"] += 1
        stats["severity_source"][out.get("severity_source", "none")] += 1
        stats["splits"][split][out.get("severity", "unlabeled")] += 1
        yield out


def nonempty(rows, stats, path, args):
    """The rows, passed through; no rows is an error, raised before the output is replaced."""
    n = 0
    for row in rows:
        n += 1
        yield row
    if n == 0:
        what = "no data rows" if stats["rows_read"] == 0 else f"all {stats['rows_read']} rows were dropped"
        raise DataError(path, None, None, f"{what}: nothing to write ({stats['dropped']})")
    gold = getattr(args, "gold_labels", None) or {}
    unheld = sorted(set(gold) - stats["gold_merged"])
    if unheld:  # raised before the output is replaced
        raise DataError(args.gold, None, "id", f"{len(unheld)} gold ids are not among the kept rows of {path} "
                                               f"(e.g. {unheld[:3]}): is it the file the page was made from?")


def prepare(args, path):
    """Read, clean, label and write the rows (main() holds the output's lock); print and return the
    counts (rows read and kept, dropped by reason, severity sources, labels per split)."""
    fmt = args.format if args.format != "auto" else FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, None, None, f"unknown extension {path.suffix!r}: pass --format csv|tsv|jsonl")
    rows = (read_jsonl_rows(path, args.encoding) if fmt == "jsonl" else
            read_table(path, "," if fmt == "csv" else "\t", args.encoding))
    stats = {"rows_read": 0, "kept": 0,
             "dropped": {"short_question": 0, "short_answer": 0, "duplicate": 0},
             "severity_source": {"gold": 0, "rules": 0, "none": 0}, "gold_merged": set(),
             "splits": {s: {label: 0 for label in SEVERITIES + ("unlabeled",)} for s in SPLITS}}
    write_jsonl(args.out, nonempty(prepared(rows, args, path, fmt, stats), stats, path, args))
    stats["gold_merged"] = len(stats["gold_merged"])
    write_sidecar(args.out, "prepare_data.py", {"data": str(path), "gold": args.gold, "stats": stats})

    print(f"{path}: {stats['rows_read']} rows read, {stats['kept']} kept -> {args.out}")
    print("dropped: " + ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()))
    print("severity source: " + ", ".join(f"{k} {v}" for k, v in stats["severity_source"].items())
          + (f" ({stats['gold_merged']} gold labels merged from {args.gold})" if args.gold else ""))
    for s in SPLITS:
        counts = stats["splits"][s]
        print(f"{s:5s} {sum(counts.values()):7d}  " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return stats


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
