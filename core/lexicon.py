"""Auditable Arabic lexicons, and the small matcher behind the severity rules and the
urgent-advice check.

Two lexicons ship in data/ as plain TSV files that a clinician can read and edit:

  data/severity_lexicon.tsv  red flags (level "critical") and reasons to see a doctor soon
                             ("moderate"); prepare_data.py labels a complaint with the highest
                             level found, "mild" when nothing matches (severity_of).
  data/urgent_lexicon.tsv    phrases by which an answer sends the patient to urgent care
                             (level "urgent"); evaluate.py counts how often answers do so
                             (mentions_urgent_care).

File format: UTF-8, one entry per line, four tab-separated columns `id level pattern note`
(a header line `id<TAB>level<TAB>pattern<TAB>note` first); blank lines and lines starting with
`#` are ignored. `note` is an English gloss of what the entry catches, so the lexicon can be
audited by someone who does not read Arabic.

Pattern syntax (deliberately small):
  word          one word of the text, compared after normalization (common.normalize_arabic:
                no diacritics or tatweel, ا for أ/إ/آ, ي for ى, ه for ة). Patterns are written in
                that normalized form; load_lexicon rejects a pattern that is not.
  a|b|c         alternatives for one word.
  stem*         any word that starts with stem (stem of 3 letters or more), e.g. تشنج* for
                تشنجات. Used for inflections; list short words explicitly instead.
  ...           skips 0 to 3 words (...1 and ...2 skip at most 1 or 2). A skip never passes
                over a negator, so "البراز لا يوجد به دم" is not "البراز ... دم".
  A || B        either phrase A or phrase B.
  A && B        co-occurrence: A and B must both be found (each not negated) anywhere in the
                same text, in any order. `&&` binds loosest: `A || B && C` = (A or B) and C.
Every word also matches with the prefix clitics و/ف (and), ب/ل/ك (prepositions) and ال (the
article), in that order, e.g. صدر matches الصدر، بالصدر، وبالصدر، للصدر. So write nouns
without ال; a pattern word that itself starts with ال (الم "pain", التهاب) is matched as written.
A word also matches with the accusative ending ا (الم -> الما, نزيف -> نزيفا, دم -> دما).
A decimal number matches by its integer part (39.5 matches 39).
Hamza is folded away in text and patterns alike (fold: ؤ -> و, ئ -> ي, ء dropped), because
patients write it, drop it or misplace it: قيء = قي, تقيؤ = تقيو, مسئول = مسوول (normalize_arabic
already writes أ/إ/آ as ا, ة as ه and ى as ي).

Text is split into words; punctuation (. , ، ؛ ؟ ! ...) ends a sentence. A match never spans
two sentences.

Negation: a match is ignored when one of the NEGATION_WINDOW (3) words before it, in the same
sentence and not past a contrast word such as لكن/بل/اذا/بس/الا, is a negator (filler words
such as والحمد لله / اي / ابدا / اطلاقا / حاليا are passed over without counting, so
"لا يوجد عندي والحمد لله اي الم في الصدر" is negated, up to MAX_NEGATION_REACH words back): لا لم لن ليس ليست بدون
دون بلا غير عدم مش مو ماكو مافي ماعندي ... (with و/ف attached too), or ما followed by
عندي/فيه/في/اعاني/... (bare ما is usually "what": "ما سبب الم في الصدر" stays positive).
A negator followed by a word in PSEUDO_NEGATION does not negate: لا يزال / ما زال (still),
لم يتوقف / لم يتحسن (not stopping, not improving), لا استطيع (cannot), لا اعرف (do not know),
لا بد (must), لا تنتظر (do not wait), غير طبيعي (abnormal) ... For answers (urgent advice) the
window is URGENT_NEGATION_WINDOW (5) words, because the negated advice is phrased
"لا داعي للذهاب الى الطوارئ" (4 words between the negator and the place). Only preceding
negators count ("الم في الصدر لا" is not parsed). Negators glued to the next word are split off
(لااستطيع -> لا استطيع, مايقدر -> ما يقدر, ماعندي -> ما عندي), and the dialectal circumfix
ما...ش (ماعنديش، ماحسيتش) negates like مش.

Run `python -m core.lexicon "نص الشكوى"` to see the normalized text, the severity label, the matched
entries and whether the text advises urgent care. `python -m core.lexicon --stats FILE` counts, for
every entry, the complaints it matches (FILE: JSONL with a "question" field, --field another,
or plain text with one complaint per line), with the label distribution: a lexicon change can be
checked on real data before it relabels anything.
"""
import argparse
import functools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from core.common import DATA_DIR, SEVERITIES, DataError, normalize_arabic, parse_json_line, read_lines, run_main

SEVERITY_LEXICON = DATA_DIR / "severity_lexicon.tsv"
URGENT_LEXICON = DATA_DIR / "urgent_lexicon.tsv"
LEVELS = ("moderate", "critical", "urgent")  # levels an entry may have; "mild" = no match
COLUMNS = ("id", "level", "pattern", "note")
NEGATION_WINDOW = 3         # words before a match searched for a negator (complaints)
URGENT_NEGATION_WINDOW = 5  # the same for answers ("لا داعي للذهاب الى الطوارئ")
GAP = 3                     # what a bare "..." skips at most

# prefix clitics: conjunction + preposition + article, ل + ال written لل
CLITICS = tuple(sorted({c + ("لل" if p == "ل" and a else p + a)
                        for c in ("", "و", "ف") for p in ("", "ب", "ل", "ك") for a in ("", "ال")},
                       key=len))
NEGATORS = frozenset("""
لا لم لن ليس ليست لست لسنا ليسوا بدون دون بلا غير عدم مش مو مب ماكو مافي مافيه مافيش مفيش
ماعندي ماعنده ماعندها معنديش ماني خالي خاليه
""".split())
MA_NEGATES = frozenset("""
عندي عنده عندها عندنا عندو فيه فيها في فيني فيني اعاني يعاني تعاني اشكو يشكو تشكو اشتكي يشتكي
تشتكي حصل حصلت صار صارت كان كانت يوجد توجد حدث حدثت اشعر يشعر تشعر احس يحس تحس لاحظت جاني جاه
""".split())
PSEUDO_NEGATION = frozenset("""
يزال تزال ازال نزال زال زالت يزل تزل ازل يتوقف تتوقف يتحسن تتحسن اتحسن يختفي تختفي يخف تخف
يزول تزول ينقطع تنقطع يهدا تهدا اعرف اعلم ادري يعرف تعرف يعلم تعلم يدري تدري نعرف نعلم
استطيع استطع يستطيع تستطيع يستطع تستطع نستطيع اقدر يقدر تقدر نقدر يمكن يمكنني يمكنه يمكنها
بد سيما باس مانع شك غني تتردد تترددي تترددوا تنتظر تنتظري تنتظروا تتاخر تتاخري تتاخروا تتهاون تهمل تهملي تهملوا
طبيعي طبيعيه منتظم منتظمه معروف معروفه مبرر مبرره واضح واضحه مستقر مستقره مرغوب مرغوبه
""".split())
BREAKERS = frozenset("لكن لكنه لكنها لكني لكنني لكننا بل اما ثم اذا بس الا سوي".split())
# words a negation reaches over without counting them ("لا يوجد عندي والحمد لله اي الم")
FILLERS = frozenset("الحمد والحمد لله الله اي ايه اية ابدا اطلاقا حاليا الان والله حقيقه تقريبا يعني".split())
MAX_NEGATION_REACH = 10  # words back, fillers included, a negation is looked for at most
GLUED_NEGATORS = ("لا", "ما")  # split off a following word that is in PSEUDO_NEGATION or MA_NEGATES

_TOKEN = re.compile(r"\d+(?:[.,\u066b]\d+)?|[^\W\d_]+|[^\w\s]")
_WORD_SYNTAX = re.compile(r"[^\W_]+\*?")
_GAP_SYNTAX = re.compile(r"\.\.\.([123]?)")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: cheap cache keys
class Entry:
    """One lexicon line. `conditions` is the compiled pattern: a tuple of conditions that must
    all hold (`&&`), each a tuple of alternative phrases (`||`), each a tuple of slots: an int
    (a gap) or (exact words, stems)."""
    id: str
    level: str
    pattern: str
    note: str
    source: str = field(default="", compare=False)
    conditions: tuple = field(default=(), compare=False, repr=False)


# -----------------------------------------------------------------------------
# loading


def compile_pattern(pattern, path="<pattern>", line=None):
    """Parse the pattern syntax above into Entry.conditions; DataError on a malformed pattern."""
    def bad(msg):
        return DataError(path, line, "pattern", f"{msg}: {pattern!r}")

    if normalize_arabic(pattern) != pattern:
        raise bad(f"not in normalized form (expected {normalize_arabic(pattern)!r})")
    pattern = fold(pattern)
    conditions = []
    for cond in pattern.split("&&"):
        phrases = []
        for phrase in cond.split("||"):
            slots = []
            for word in phrase.split():
                m = _GAP_SYNTAX.fullmatch(word)
                if m:
                    if not slots or isinstance(slots[-1], int):
                        raise bad("a '...' gap must follow a word")
                    slots.append(int(m.group(1) or GAP))
                    continue
                exact, stems = set(), []
                for alt in word.split("|"):
                    if not _WORD_SYNTAX.fullmatch(alt):
                        raise bad(f"bad word {alt!r}")
                    if alt.endswith("*"):
                        if len(alt) < 4:
                            raise bad(f"stem {alt!r} shorter than 3 letters")
                        stems.append(alt[:-1])
                    else:
                        exact.add(alt)
                slots.append((frozenset(exact), tuple(stems)))
            if not slots:
                raise bad("empty phrase")
            if isinstance(slots[-1], int):
                raise bad("a '...' gap must be followed by a word")
            phrases.append(tuple(slots))
        conditions.append(tuple(phrases))
    return tuple(conditions)


def load_lexicon(path):
    """Read a lexicon TSV into a list of Entry; DataError naming the line and field on any
    malformed line (wrong column count, unknown level, duplicate id, bad pattern)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "lexicon file not found")
    entries, seen, header = [], {}, False
    with open(path, encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = [c.strip() for c in line.split("\t")]
            if not header:
                if tuple(cols) != COLUMNS:
                    raise DataError(path, lineno, None, f"expected the header {'<TAB>'.join(COLUMNS)}")
                header = True
                continue
            if len(cols) != len(COLUMNS):
                raise DataError(path, lineno, None, f"expected {len(COLUMNS)} tab-separated columns "
                                                    f"{COLUMNS}, got {len(cols)}")
            eid, level, pattern, note = cols
            if not re.fullmatch(r"[a-z0-9_]+", eid):
                raise DataError(path, lineno, "id", f"ids are lower-case ascii words, got {eid!r}")
            if eid in seen:
                raise DataError(path, lineno, "id", f"duplicate id {eid!r} (first on line {seen[eid]})")
            if level not in LEVELS:
                raise DataError(path, lineno, "level", f"{level!r} is not one of {LEVELS}")
            if not note:
                raise DataError(path, lineno, "note", "empty: say in English what the entry catches")
            seen[eid] = lineno
            entries.append(Entry(eid, level, pattern, note, f"{path.name}:{lineno}",
                                 compile_pattern(pattern, path, lineno)))
    if not entries:
        raise DataError(path, None, None, "no entries")
    return entries


@functools.lru_cache(maxsize=None)
def severity_lexicon():
    return tuple(load_lexicon(SEVERITY_LEXICON))


@functools.lru_cache(maxsize=None)
def urgent_lexicon():
    return tuple(load_lexicon(URGENT_LEXICON))


# -----------------------------------------------------------------------------
# matching


_HAMZA = str.maketrans({"ؤ": "و", "ئ": "ي", "ء": None})


def fold(text):
    """Hamza folded away (ؤ -> و, ئ -> ي, ء dropped), except in ماء (water) with its clitics,
    which would become the negator ما or the word الم (pain)."""
    return " ".join(w if any(w == c + "ماء" for c in CLITICS) else w.translate(_HAMZA) for w in text.split(" "))


def _unglue(tok):
    """A negator glued to its verb or pronoun split off: لااستطيع -> [لا, استطيع]."""
    for neg in GLUED_NEGATORS:
        rest = tok[len(neg):]
        if tok.startswith(neg) and len(rest) >= 3 and (rest in PSEUDO_NEGATION or rest in MA_NEGATES
                                                        or rest in ("يوجد", "توجد")):
            return [neg, rest]
    return [tok]


def sentences(text):
    """Normalize text and split it into sentences of words (punctuation ends a sentence;
    decimal numbers keep their integer part; hamza folded; glued negators split off)."""
    out, cur = [], []
    for tok in _TOKEN.findall(fold(normalize_arabic(text))):
        if tok[0].isdigit():
            cur.append(re.match(r"\d+", tok).group())
        elif tok[0].isalpha():
            cur.extend(_unglue(tok))
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


@functools.lru_cache(maxsize=1 << 18)
def _forms(tok):
    """The word with each possible prefix clitic removed (the bare word first)."""
    return (tok,) + tuple(tok[len(c):] for c in CLITICS[1:] if tok.startswith(c) and len(tok) - len(c) >= 2)


def _bare(tok):
    """A negator or contrast word with a leading و/ف removed (ولا -> لا, ولكن -> لكن); the
    dialectal circumfix ما...ش (ماعنديش، ماحسيتش، مابقدرش) as the negator مش."""
    if tok[:1] in ("و", "ف") and (tok[1:] in NEGATORS or tok[1:] in BREAKERS or tok[1:] == "ما"):
        return tok[1:]
    if len(tok) >= 5 and tok.startswith("ما") and tok.endswith("ش"):
        return "مش"
    return tok


def _slot_ok(slot, forms):
    exact, stems = slot
    return any(f in exact or (f[-1] == "ا" and f[:-1] in exact) or any(f.startswith(s) for s in stems)
               for f in forms)


def _match_from(slots, k, words, forms, i):
    """Do slots[k:] match the words starting at position i?"""
    if k == len(slots):
        return True
    slot = slots[k]
    if isinstance(slot, int):  # a gap: skip 0..slot words, never over a negator
        for j in range(i, min(i + slot, len(words)) + 1):
            if j > i and _bare(words[j - 1]) in NEGATORS:
                break
            if _match_from(slots, k + 1, words, forms, j):
                return True
        return False
    return i < len(words) and _slot_ok(slot, forms[i]) and _match_from(slots, k + 1, words, forms, i + 1)


def _negated(words, i, window):
    """Is the word at position i negated by one of the `window` words before it? Filler words
    (FILLERS) are passed over without counting, up to MAX_NEGATION_REACH words back."""
    counted = 0
    for j in range(i - 1, max(i - 1 - MAX_NEGATION_REACH, -1), -1):
        w = _bare(words[j])
        if w in FILLERS:
            continue
        counted += 1
        if counted > window:
            return False
        if w in BREAKERS:
            return False
        nxt = words[j + 1]
        if w in NEGATORS and nxt not in PSEUDO_NEGATION:
            return True
        if w == "ما" and nxt in MA_NEGATES:
            return True
    return False


@functools.lru_cache(maxsize=16)
def _index(entries):
    """First-word index over all phrases of all entries: exact word -> phrase refs, and the
    first 3 letters of a stem -> (stem, phrase ref). A ref is (entry, condition, phrase)."""
    exact, stems, phrases = {}, {}, {}
    for e, entry in enumerate(entries):
        for c, cond in enumerate(entry.conditions):
            for p, slots in enumerate(cond):
                ref = (e, c, p)
                phrases[ref] = slots
                words, prefixes = slots[0]
                for w in words:
                    exact.setdefault(w, []).append(ref)
                for s in prefixes:
                    stems.setdefault(s[:3], []).append((s, ref))
    return exact, stems, phrases


def find_matches(text, entries, window=NEGATION_WINDOW):
    """The entries (in lexicon order) whose pattern occurs in `text` not negated.

    `text` is normalized here (common.normalize_arabic), so raw input with diacritics or
    أ/ة/ى spellings matches the normalized patterns."""
    entries = tuple(entries)
    exact, stems, phrases = _index(entries)
    found = set()
    for words in sentences(text):
        forms = [_forms(w) for w in words]
        for i, fs in enumerate(forms):
            cands = set()
            for f in fs:
                cands.update(exact.get(f, ()))
                if f[-1] == "ا":  # accusative ending
                    cands.update(exact.get(f[:-1], ()))
                cands.update(ref for s, ref in stems.get(f[:3], ()) if f.startswith(s))
            for ref in cands - found:
                if _match_from(phrases[ref], 1, words, forms, i + 1) and not _negated(words, i, window):
                    found.add(ref)
    return [entries[e] for e in sorted({e for e, _, _ in found})
            if all(any((e, c, p) in found for p in range(len(cond))) for c, cond in enumerate(entries[e].conditions))]


def severity_of(text, entries=None):
    """(label, matched entries): the highest level found in `text` ("critical" > "moderate"),
    "mild" when no severity entry matches. Uses data/severity_lexicon.tsv by default."""
    matched = find_matches(text, severity_lexicon() if entries is None else entries)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    label = max((e.level for e in matched if e.level in rank), key=rank.get, default="mild")
    return label, matched


def mentions_urgent_care(text, entries=None):
    """Does `text` (an answer) tell the patient to seek urgent care? Negated advice
    ("لا داعي للذهاب الى الطوارئ") does not count; conditional advice ("اذا ظهر ضيق تنفس توجه
    فورا الى الطوارئ") does. Uses data/urgent_lexicon.tsv by default."""
    entries = urgent_lexicon() if entries is None else entries
    return bool(find_matches(text, entries, window=URGENT_NEGATION_WINDOW))


def rule_stats(texts, entries=None):
    """(hits per entry id, label counts) over complaints: how many texts each entry matches."""
    entries = severity_lexicon() if entries is None else tuple(entries)
    hits, labels = Counter(), Counter()
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    for text in texts:
        matched = find_matches(text, entries)
        hits.update(e.id for e in matched)
        labels[max((e.level for e in matched if e.level in rank), key=rank.get, default="mild")] += 1
    return hits, labels


def read_texts(path, field="question"):
    """Complaints from a JSONL file (the `field` of each row) or a plain text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    texts = []
    for lineno, line in read_lines(path):  # text that is not UTF-8: an error naming the line
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            row = parse_json_line(path, lineno, line)
            if not isinstance(row.get(field), str):
                raise DataError(path, lineno, field, "missing or not a string (choose another with --field)")
            texts.append(row[field])
        else:
            texts.append(line)
    return texts


def print_stats(path, field="question"):
    """The --stats table: every entry with its hits (share of complaints), level and gloss."""
    texts = read_texts(path, field)
    hits, labels = rule_stats(texts)
    n = max(1, len(texts))
    print(f"{len(texts)} complaints from {path}; labels: " +
          ", ".join(f"{s} {labels[s]} ({100 * labels[s] / n:.1f}%)" for s in SEVERITIES))
    print(f"{'hits':>6} {'%':>6}  {'level':9s} {'id':30s} gloss")
    for e in sorted(severity_lexicon(), key=lambda e: (-hits[e.id], e.id)):
        print(f"{hits[e.id]:6d} {100 * hits[e.id] / n:6.2f}  {e.level:9s} {e.id:30s} {e.note}")
    return hits, labels


def main(argv=None):
    p = argparse.ArgumentParser(description="Show what the severity rules and the urgent-advice lexicon find in a "
                                            "text, or count each rule's hits over a file (--stats).")
    p.add_argument("texts", nargs="*", help="complaints to label (none: read one from standard input)")
    p.add_argument("--stats", metavar="FILE", help="per-rule hit counts over a JSONL file (one complaint per row) "
                                                   "or a text file (one per line)")
    p.add_argument("--field", default="question", help="with --stats: the JSONL field holding the complaint")
    args = p.parse_args(argv)
    if args.stats:
        print_stats(args.stats, args.field)
        return
    for arg in args.texts or [sys.stdin.read()]:
        label, matched = severity_of(arg)
        print("normalized:", " / ".join(" ".join(s) for s in sentences(arg)))
        print("severity:  ", label)
        for e in matched:
            print(f"  {e.level:9s} {e.id:28s} {e.note}")
        urgent = find_matches(arg, urgent_lexicon(), window=URGENT_NEGATION_WINDOW)
        print("urgent advice:", ", ".join(e.id for e in urgent) or "none")


if __name__ == "__main__":
    run_main(main)  # bad input: one `error:` line, no traceback; under torchrun a failing rank ends the job
