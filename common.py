"""The few helpers every script needs: JSONL io with clear errors, atomic writes, Arabic
normalization, distributed setup, rank-0 printing.

Nothing here imports anything beyond the runtime dependencies, and importing it has no side
effects, so tests can import every script.
"""
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent
DATA_DIR = REPO / "data"
DEMO_DATA = DATA_DIR / "demo.jsonl"  # the shipped synthetic sample, with severity_probs filled
SEVERITIES = ("mild", "moderate", "critical")  # index c of severity_probs / alpha
SPLITS = ("train", "val", "test")  # the values of a row's "split" field


class DataError(ValueError):
    """Bad input, reported with the file, line and field it came from."""

    def __init__(self, path, line, field, message):
        where = f"{path}"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


# -----------------------------------------------------------------------------
# JSONL


def read_jsonl(path, required=()):
    """Yield (line_number, row) from a JSONL file; blank lines are skipped.

    Text that is not UTF-8, malformed JSON, a non-object line or a missing/empty required string
    field raise DataError naming the file, line and field; a UTF-8 BOM on the first line is fine.
    Streams: never holds the file in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    with open(path, "rb") as f:  # decoded line by line, so a decoding error can name its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, None, f"not UTF-8 text ({e.reason} at byte {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(path, lineno, None, f"expected a JSON object, got {type(row).__name__}")
            for field in required:
                value = row.get(field)
                if not isinstance(value, str) or not value.strip():
                    problem = "missing" if field not in row else "empty or not a string"
                    raise DataError(path, lineno, field, f"{problem}")
            yield lineno, row


def dumps(row):
    """One JSONL line, Arabic kept readable."""
    return json.dumps(row, ensure_ascii=False) + "\n"


_UMASK = os.umask(0)  # read the process umask once (os.umask can only be read by setting it)
os.umask(_UMASK)


@contextmanager
def atomic_open(path, mode="w"):
    """Open a temporary file next to `path`; rename it into place only if the block succeeds,
    so an interrupted or failed run never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_jsonl(path, rows):
    """Write rows atomically (temporary file, then rename). Returns the number written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(dumps(row))
            n += 1
    return n


def write_json(path, obj):
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def replace_dir(tmp_dir, final_dir):
    """Move a finished folder into place: the old one (if any) is swapped out only after the new
    one is complete, so `final_dir` is always either the old or the new complete folder, or,
    after a kill between the two renames below, missing with the old one in final_dir.old
    (recover_dir puts it back)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged_dir(final_dir):
    """Build a folder in a temporary sibling (the path this yields) and move it into place with
    replace_dir only if the block succeeds, so `final_dir` never holds a half-written folder.
    The temporary name is fixed, so a killed run's leftover is replaced, not piled up."""
    final_dir = Path(final_dir)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, final_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_dir(final_dir):
    """Undo a replace_dir interrupted between its two renames (final -> final.old, new -> final):
    the complete previous folder is in final.old; put it back. Returns True if it did."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if not final_dir.exists() and old.is_dir():
        os.replace(old, final_dir)
        return True
    return False


def check_probs(probs, path, line, field="severity_probs", tol=1e-3):
    """Validate a severity probability vector: 3 finite non-negative numbers summing to 1."""
    if not isinstance(probs, (list, tuple)) or len(probs) != len(SEVERITIES):
        n = len(probs) if isinstance(probs, (list, tuple)) else type(probs).__name__
        raise DataError(path, line, field, f"expected a list of {len(SEVERITIES)} probabilities "
                                           f"{SEVERITIES}, got {n}")
    for p in probs:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 0:
            raise DataError(path, line, field, f"not a finite non-negative number: {p!r}")
    if abs(sum(probs) - 1.0) > tol:
        raise DataError(path, line, field, f"probabilities sum to {sum(probs):.6f}, not 1")
    return [float(p) for p in probs]


def pad_batch(seqs, pad_id, device):
    """Right-pad id lists -> input_ids [B, T] and attention_mask [B, T] (1 = real token), as
    BERT's absolute positions expect (train_classifier.py and metrics.py's BERTScore use it)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


def severity_class(row, path, line):
    """The class a row is reported under: its severity label (gold or rules) if it has one, else
    the argmax of its severity_probs, else None. Validates what it reads."""
    label = row.get("severity")
    if label is not None:
        if label not in SEVERITIES:
            raise DataError(path, line, "severity", f"expected one of {SEVERITIES}, got {label!r}")
        return label
    if row.get("severity_probs") is not None:
        probs = check_probs(row["severity_probs"], path, line)
        return SEVERITIES[max(range(len(probs)), key=probs.__getitem__)]
    return None


def stable_hash(text, seed=0):
    """A deterministic 64-bit integer from text (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha1(f"{seed}:{text}".encode("utf-8")).digest()[:8], "big")


# -----------------------------------------------------------------------------
# Arabic text normalization (MAQA's own text is normalized this way; generated answers must be
# scored in the same form as the references).

_DIACRITICS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed]")  # harakat, shadda, sukun, Quranic marks
_TATWEEL = "\u0640"
_ALEF = re.compile("[\u0622\u0623\u0625\u0671]")  # آ أ إ ٱ -> ا
_EASTERN_DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "0123456789" * 2)
_HAS_EASTERN_DIGIT = re.compile("[٠-٩۰-۹]")


def ascii_digits(text):
    """Eastern Arabic and Persian digits -> ASCII (str.translate is slow: skipped when there are none)."""
    return text.translate(_EASTERN_DIGITS) if _HAS_EASTERN_DIGIT.search(text) else text


def normalize_arabic(text, diacritics=True, tatweel=True, alef=True, ya=True, ta_marbuta=True,
                     digits=True):
    """Normalize Arabic text: strip diacritics and tatweel, unify alef variants, ى -> ي,
    ة -> ه, Eastern Arabic digits -> ASCII, collapse whitespace. Each step can be turned off."""
    if diacritics:
        text = _DIACRITICS.sub("", text)
    if tatweel:
        text = text.replace(_TATWEEL, "")
    if alef:
        text = _ALEF.sub("\u0627", text)
    if ya:
        text = text.replace("\u0649", "\u064a")
    if ta_marbuta:
        text = text.replace("\u0629", "\u0647")
    if digits:
        text = ascii_digits(text)
    return " ".join(text.split())


# -----------------------------------------------------------------------------
# Devices and distributed runs


def pick_device(name="auto"):
    """'auto' -> cuda if available, else mps, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device):
    """True on CUDA GPUs with bf16 (Ampere and newer): where the scripts autocast to bf16 by
    default; everywhere else they compute in fp32."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def setup_dist(device="auto"):
    """Start torch.distributed when launched by torchrun (nccl on GPUs, gloo on CPU).

    Returns (rank, world_size, device). Without torchrun: (0, 1, picked device).
    """
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return rank, world, dev


def cleanup_dist():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_rank0():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args, **kwargs):
    """print on rank 0 only."""
    if is_rank0():
        print(*args, **kwargs, flush=True)
