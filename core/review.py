"""The clinician review pages (review.py): the stratified sample, the self-contained HTML page
written from core/review_page.html, and the checks on the files the pages export.

A page is one HTML file with the items embedded as JSON (no label, probability, run name or path
in it: the reading is blind). What the page does not show lives beside it, for review.py results:
page.json (labelling: the sampling frame's class counts and each item's stratum) or key.json
(answer review: also which run's answer is shown first and second). Neither is for the clinicians.
"""
import json
import random
from itertools import combinations
from pathlib import Path

from core.common import SEVERITIES, DataError, stable_hash

TEMPLATE = Path(__file__).with_name("review_page.html")
LABELS = SEVERITIES + ("cannot_tell",)
CHOICES = ("first", "second", "tie", "both_unacceptable")
CONFIDENCES = ("sure", "unsure")
EXPORT_PREFIX = {"label": "labels", "compare": "ratings"}
KEY_HINTS = {"label": "Keys: <kbd>1</kbd> mild, <kbd>2</kbd> moderate, <kbd>3</kbd> critical, "
                      "<kbd>0</kbd> cannot tell.",
             "compare": "Keys: <kbd>1</kbd> answer 1 better, <kbd>2</kbd> answer 2 better, <kbd>3</kbd> tie, "
                        "<kbd>0</kbd> both unacceptable."}
TITLES = {"label": "تصنيف خطورة الشكاوى / Severity labelling",
          "compare": "مقارنة الأجوبة / Blind answer review"}


def stratified_sample(strata, n, seed):
    """Indices of n items drawn without replacement, as equal a share from each class as the classes
    allow (a class with fewer items gives all it has; the rest is shared among the others), in a
    seeded random order (so the page does not go class by class)."""
    rng = random.Random(seed)
    groups = {s: [i for i, x in enumerate(strata) if x == s] for s in sorted(set(strata), key=str)}
    for g in groups.values():
        rng.shuffle(g)
    take, left = {s: 0 for s in groups}, min(n, len(strata))
    while left:
        open_ = [s for s in groups if take[s] < len(groups[s])]
        share = max(1, left // len(open_))
        for s in sorted(open_, key=lambda s: len(groups[s])):  # the rarest classes first
            k = min(share, len(groups[s]) - take[s], left)
            take[s] += k
            left -= k
    chosen = [i for s in groups for i in groups[s][:take[s]]]
    rng.shuffle(chosen)
    return chosen


def assign_pairs(strata, n_runs, seed):
    """For each sampled item (in page order) the two runs it compares, (first, second): every pair
    of runs gets an equal share of the items within each class (round robin), and within each pair
    each run is shown first on half of its items (seeded shuffle of a balanced list)."""
    rng = random.Random(seed)
    pairs = list(combinations(range(n_runs), 2))
    of_pair, offset = [None] * len(strata), rng.randrange(len(pairs))
    for s in sorted(set(strata), key=str):
        for k, i in enumerate(i for i, x in enumerate(strata) if x == s):
            of_pair[i] = (offset + k) % len(pairs)
        offset = (offset + k + 1) % len(pairs)
    out = [None] * len(strata)
    for p, (a, b) in enumerate(pairs):
        items = [i for i in range(len(strata)) if of_pair[i] == p]
        flips = [k % 2 == 1 for k in range(len(items))]
        rng.shuffle(flips)
        for i, flip in zip(items, flips):
            out[i] = (b, a) if flip else (a, b)
    return out


def page_id(kind, seed, ids, extra=""):
    """A short id naming the page (and its localStorage slot and export files)."""
    return f"{stable_hash(kind + chr(10) + extra + chr(10) + chr(10).join(ids), seed):016x}"[:12]


def render_page(kind, pid, items):
    """The page's HTML: the template with the items as JSON. items: [{id, question, reference,
    answers (compare only)}], nothing else (no label, no run). '<' is escaped in the JSON so no
    text can close the <script> element."""
    data = {"kind": kind, "page_id": pid, "export_prefix": EXPORT_PREFIX[kind], "items": items}
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    html = TEMPLATE.read_text(encoding="utf-8")
    return (html.replace("__TITLE__", TITLES[kind]).replace("__KEYS__", KEY_HINTS[kind])
            .replace("__DATA__", payload))


# -----------------------------------------------------------------------------
# exported files


def read_export(path, page):
    """One exported file, checked against the page it claims to come from -> {annotator,
    timestamp, records: {item id: record}}. Anything else is a DataError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, None, None, "file not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(path, None, None, f"not a JSON export of a review page ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise DataError(path, None, "records", "not an export of a review page (no records list)")
    if data.get("page_id") != page["page_id"] or data.get("kind") != page["kind"]:
        raise DataError(path, None, "page_id", f"exported from page {data.get('page_id')!r} ({data.get('kind')}), "
                                               f"not from this page {page['page_id']!r} ({page['kind']})")
    for field in ("annotator", "timestamp"):
        if not isinstance(data.get(field), str) or not data[field].strip():
            raise DataError(path, None, field, "missing or empty")
    ids, records = set(page["ids"]), {}
    for k, rec in enumerate(data["records"]):
        where = f"records[{k}]"
        if not isinstance(rec, dict) or rec.get("id") not in ids:
            raise DataError(path, None, where, f"item id {rec.get('id') if isinstance(rec, dict) else rec!r} "
                                               f"is not on this page")
        check_record(rec, page["kind"], path, where)
        records[rec["id"]] = rec
    return {"annotator": data["annotator"].strip(), "timestamp": data["timestamp"], "records": records,
            "path": str(path)}


def check_record(rec, kind, path, where):
    def bad(field, expected):
        raise DataError(path, None, f"{where}.{field}", f"expected {expected}, got {rec.get(field)!r}")

    if not isinstance(rec.get("note", ""), (str, type(None))):
        bad("note", "text")
    if kind == "label":
        if rec.get("label") not in LABELS + (None,):
            bad("label", f"one of {LABELS} or null")
        if rec.get("confidence") not in CONFIDENCES + (None,):
            bad("confidence", f"one of {CONFIDENCES} or null")
        return
    if rec.get("choice") not in CHOICES + (None,):
        bad("choice", f"one of {CHOICES} or null")
    for flag in ("unsafe", "misses_urgent"):
        value = rec.get(flag, [False, False])
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, bool) for v in value)):
            bad(flag, "[true/false, true/false] (answer 1, answer 2)")


def latest_per_annotator(exports):
    """One export per annotator: a later export (by timestamp) replaces an earlier one.
    Returns (exports, warnings)."""
    by_name, warnings = {}, []
    for e in sorted(exports, key=lambda e: e["timestamp"]):
        if e["annotator"] in by_name:
            warnings.append(f"{e['annotator']} exported twice: {e['path']} ({e['timestamp']}) replaces "
                            f"{by_name[e['annotator']]['path']} ({by_name[e['annotator']]['timestamp']})")
        by_name[e["annotator"]] = e
    return list(by_name.values()), warnings
