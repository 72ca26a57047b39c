"""The few helpers every script needs: JSONL io with clear errors, atomic writes, Arabic
normalization, distributed setup, rank-0 printing, the random generators a resumed run restores,
one line instead of a traceback when a run is stopped (Ctrl-C, a full disk).

Nothing here imports anything beyond the runtime dependencies, and importing it has no side
effects, so tests can import every script.
"""
import argparse
import datetime
import errno
import functools
import hashlib
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext, redirect_stderr
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]  # core/ lies in the repository root
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


def read_lines(path, encoding="utf-8"):
    """Yield (line_number, text) of a text file, decoded line by line so that text which is not
    `encoding` raises DataError naming its line; a UTF-8 BOM on the first line is dropped."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 and encoding == "utf-8" else encoding)
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, None, f"not {'UTF-8' if encoding == 'utf-8' else encoding} text "
                                                    f"({e.reason} at byte {e.start + 1}); if the file is in another "
                                                    f"encoding, convert it to UTF-8 (prepare_data.py --encoding "
                                                    f"reads it as it is)") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a \\uD800-\\uDFFF escape: maybe half a pair


def parse_json_line(path, lineno, line):
    """One JSON value from one line; malformed JSON, nesting too deep for the parser and lone
    surrogate escapes ("\\ud800": half a UTF-16 pair, no character, which no UTF-8 output can hold)
    raise DataError naming the line."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" at")  # json's "Invalid control character at" names no place itself
        hint = ("; a CSV or TSV file? prepare_data.py --data FILE --out rows.jsonl turns it into the "
                "project's JSONL rows") if lineno == 1 and not line.lstrip().startswith(("{", "[")) else ""
        raise DataError(path, lineno, None, f"malformed JSON ({msg} at column {e.colno}){hint}") from None
    except RecursionError:
        raise DataError(path, lineno, None, "JSON nested too deeply (thousands of levels): not a data row") from None
    if _SURROGATE_ESCAPE.search(line):  # rare: check only lines that hold such an escape
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # a proper pair became one character
        except UnicodeEncodeError as e:
            raise DataError(path, lineno, None, f"a lone surrogate {e.object[e.start]!r} in the text (half of a "
                                                f"UTF-16 pair, not a character): fix the row's escapes") from None
    return value


def read_jsonl(path, required=(), encoding="utf-8"):
    """Yield (line_number, row) from a JSONL file; blank lines are skipped.

    Text that is not UTF-8, malformed JSON (also nested too deeply or with a lone surrogate), a
    non-object line or a missing/empty required string field raise DataError naming the file,
    line and field; a UTF-8 BOM on the first line is fine. Streams: never holds the file in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    for lineno, line in read_lines(path, encoding):
        if not line.strip():
            continue
        row = parse_json_line(path, lineno, line)
        if not isinstance(row, dict):
            raise DataError(path, lineno, None, f"expected a JSON object, got {type(row).__name__}")
        for field in required:
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                problem = "missing" if field not in row else "empty or not a string"
                raise DataError(path, lineno, field, f"{problem}")
        yield lineno, row


def dumps(row):
    """One JSONL line, Arabic kept readable; NaN and infinities become null (valid JSON)."""
    try:
        return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
    except ValueError:  # a non-finite float somewhere: JSON has no NaN, other tools refuse it
        return json.dumps(finite_or_null(row), ensure_ascii=False, allow_nan=False) + "\n"


def finite_or_null(obj):
    """A copy of a JSON-able structure with every NaN / inf float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


_UMASK = os.umask(0)  # read the process umask once (os.umask can only be read by setting it)
os.umask(_UMASK)


def usual_permissions(path):
    """Give a file the permissions a plain open() would (0666 minus the umask): mkstemp and
    safetensors create theirs 0600, which other users of a shared machine cannot read."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextmanager
def atomic_open(path, mode="w"):
    """Open a temporary file next to `path`; rename it into place only if the block succeeds,
    so an interrupted or failed run never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    usual_permissions(tmp)  # mkstemp makes 0600 files
    try:
        with naming_full_disk(path), os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
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
    """Write a JSON file atomically; NaN and infinities are written as null (valid JSON)."""
    with atomic_open(path) as f:
        json.dump(finite_or_null(obj), f, ensure_ascii=False, indent=2, allow_nan=False)
        f.write("\n")


# -----------------------------------------------------------------------------
# Errors the user fixes, and --help


class UsageError(ValueError):
    """A setting the user must change (a flag that does not fit the data, the model or an earlier
    run): reported as one line, without a traceback."""


# the errors a script reports as one line, without a traceback: they are the user's to fix
USER_ERRORS = (DataError, UsageError)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help with the docstring as written and each flag's default, '(default: X)', where it has one
    (a None or False default says nothing: the flag's help tells what happens without it)."""

    def _get_help_string(self, action):  # the hook ArgumentDefaultsHelpFormatter itself overrides
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


# ---- a full disk


@contextmanager
def naming_full_disk(path, staged=None):
    """A full disk inside the block, however the writer reports it (an OSError ENOSPC naming no
    file, safetensors' SafetensorError "os error 28"), becomes OSError(ENOSPC) naming `path`;
    with `staged` (a temporary folder built for `path`), a file in it is named as in `path`."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC and (not e.filename or staged is not None):
            name = str(e.filename or path)
            if staged is not None and name.startswith(str(staged) + os.sep):
                name = str(path) + name[len(str(staged)):]
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name) from None
        raise
    except Exception as e:
        if "os error 28" in str(e) or "No space left on device" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise


@contextmanager
def full_disk_is_one_line():
    """A full disk (OSError ENOSPC) ends as one `error: disk full (PATH)...` line and exit 1, not a
    traceback: the outputs are written staged, so the previous output is intact and no partial file
    is left (run_main uses it for every script)."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise SystemExit(f"error: disk full ({e.filename or 'the output'}): the previous output is left as it was "
                         f"and no partial file is left; free some space first") from None


@contextmanager
def one_line_errors():
    """For a tool's `__main__` (one process): bad input (USER_ERRORS) and a full disk end as one
    `error: ...` line and exit 1, never a traceback (scripts use run_main, which does the same)."""
    try:
        with full_disk_is_one_line():
            yield
    except USER_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


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
    BERT's absolute positions expect (train_classifier.py and core/metrics.py's BERTScore use it)."""
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
# Flag values: argparse types, so a bad number stops at parsing (one `error:` line, exit 2),
# before any data or model is loaded. Each returns the parsed value or raises ArgumentTypeError.


def _number(text, kind):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind, test, wanted):
    def parse(text):
        value = _number(text, kind)
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {wanted}")
        return value
    parse.__name__ = wanted  # what argparse would name in its messages
    return parse


positive_float = _bounded(float, lambda x: x > 0, "a finite number > 0")
non_negative_float = _bounded(float, lambda x: x >= 0, "a finite number >= 0")
fraction = _bounded(float, lambda x: 0 <= x < 1, "a number in [0, 1)")
proportion = _bounded(float, lambda x: 0 < x <= 1, "a number in (0, 1]")
positive_int = _bounded(int, lambda x: x >= 1, "an integer >= 1")
non_negative_int = _bounded(int, lambda x: x >= 0, "an integer >= 0")
seed_int = _bounded(int, lambda x: 0 <= x < 2**63, "an integer in [0, 2**63)")  # what numpy and torch seed from


def device_arg(text):
    """argparse type of --device: auto, cpu, cuda, cuda:N or mps, and only if this machine has it
    (a CPU-only torch has no cuda; cuda:N needs N + 1 GPUs)."""
    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise argparse.ArgumentTypeError(f"{text!r} is not available: {why} (torch {torch.__version__}); "
                                         f"use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine; use --device cpu or auto")
    return text


OUT_NAME_MARGIN = 32  # what the project adds to an output's name beside it (".NAME.lock", temp files, shards)


def out_path(text):
    """argparse type of --out: a path whose names fit the file system, with room for the temporary
    and lock files written beside it (OUT_NAME_MARGIN bytes more than its last name)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    known = path.absolute()
    while not os.path.exists(known) and known != known.parent:  # the file system that will hold it
        known = known.parent
    try:
        name_max, path_max = os.pathconf(known, "PC_NAME_MAX"), os.pathconf(known, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    for i, part in enumerate(path.parts):
        limit = name_max - (OUT_NAME_MARGIN if i == len(path.parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            raise argparse.ArgumentTypeError(f"the name {part[:40]!r}... is {len(os.fsencode(part))} bytes: "
                                             f"this file system takes at most {limit} here")
    if len(os.fsencode(str(path.absolute()))) + OUT_NAME_MARGIN > path_max:
        raise argparse.ArgumentTypeError(f"the path is longer than this file system takes ({path_max} bytes)")
    return text


def warn_high_lr(lr, flag="--lr"):
    """A learning rate above 1 is almost always a typo (1e-5 meant): say so, and run as told."""
    if lr > 1 and os.environ.get("RANK", "0") == "0":  # (parsing comes before torchrun's process group)
        print(f"WARNING: {flag} {lr:g} is above 1: fine-tuning rates are ~1e-5 to 1e-3")


def seed_all(seed):
    """Seed Python's, NumPy's and torch's global generators: a run's saved generator states (and so
    its trainer_state.pt) are then the same between two identical runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# A run whose numbers stop being numbers


def check_finite_step(step, loss, grad_norm, hint, detail=""):
    """Stop a run whose loss or gradient norm is NaN or infinite: one line with the step and the
    likely flag (`hint`), instead of training on (and saving) garbage. Raises UsageError."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    raise UsageError(f"step {step}: the {what} is not finite (loss {loss}, grad norm {grad_norm}): {hint}{detail}")


def check_finite_weights(model, step, hint):
    """Refuse to save a model with a NaN or infinite weight (one host sync over all parameters)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise UsageError(f"step {step}: {len(bad)} weight tensor(s) are not finite ({bad[0]}, ...): {hint}; "
                         f"nothing was saved")


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


def adamw(param_groups, **kwargs):
    """torch.optim.AdamW with the fused kernel (one pass over each parameter and its two moments)
    where this torch has it for the parameters' device and dtype (CUDA; CPU from torch 2.4), the
    default implementation elsewhere. (The Hugging Face Trainer's default is the fused one too,
    from torch 2.8.) On a CPU it is ~0.5 s instead of ~3.5 s per step for a 0.5B model.
    param_groups: parameters or dicts of them, as torch.optim takes them."""
    groups = [dict(g) if isinstance(g, dict) else g for g in param_groups]  # (torch writes into dicts)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(params) and fused_adamw_works(params[0].device, params[0].dtype)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


@functools.cache
def fused_adamw_works(device, dtype):
    """Whether this torch's fused AdamW steps a parameter of this device and dtype. Asked by trying:
    depending on the version the check sits in the constructor or in the first step()."""
    p = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.zeros_like(p)
    try:
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False


COLLECTIVE_TIMEOUT_VAR = "SEVERITY_FT_COLLECTIVE_TIMEOUT"  # seconds; docs/reliability.md
COLLECTIVE_TIMEOUT_S = 600  # longer than rank 0's lone phases (a checkpoint save), short enough to end a hang


def collective_timeout():
    """How long a collective waits for a lost peer before it fails (a timedelta): the environment
    variable SEVERITY_FT_COLLECTIVE_TIMEOUT in seconds, else 10 minutes. It must outlast what rank 0
    does alone while the others wait at a barrier: writing a checkpoint of a large model."""
    text = os.environ.get(COLLECTIVE_TIMEOUT_VAR)
    if text is None:
        return datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{COLLECTIVE_TIMEOUT_VAR}={text!r}: expected a finite number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


def setup_dist(device="auto"):
    """Start torch.distributed when launched by torchrun (nccl on GPUs, gloo on CPU), with a finite
    collective timeout (collective_timeout()), so a lost peer becomes an error, not a hang.

    Returns (rank, world_size, device). Without torchrun: (0, 1, picked device).
    """
    if "RANK" not in os.environ:
        return 0, 1, pick_device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    timeout = collective_timeout()
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return rank, world, dev


def cleanup_dist():
    """Destroy the process group at the end of a run. Called from a `finally` while an error is on
    its way out, it does nothing: destroy_process_group can wait forever for peers stuck in a
    collective with this rank, and run_main then ends the process at once."""
    if sys.exc_info()[1] is not None:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


RANK_ERROR_GRACE_S = 3.0  # torchrun notices a failed worker within 0.1 s and stops the others


def run_main(main):
    """A script's entry point (`if __name__ == "__main__": run_main(main)`).

    One process: a user error (USER_ERRORS) or a full disk (full_disk_is_one_line) ends with one
    `error: ...` line and exit 1; anything else as Python does. Under torchrun every rank that fails
    exits at once with a non-zero code after its message is flushed (os._exit: no
    destroy_process_group, no interpreter shutdown that joins the process group's threads), so
    torchrun sees the failure, stops the other ranks and ends or restarts the job. Every rank hits
    the same user error (they all read the same flags and files): rank 0 prints it; another rank
    holds its stderr (argparse's message, warnings) until it ends, and on an error waits
    RANK_ERROR_GRACE_S first: torchrun stops it in the meantime if rank 0 failed too, so the job
    says the error once, and a failure of that rank alone is still reported. Any other error waits
    the same on every rank (it may be the consequence of another rank's failure); a failed
    collective (a lost peer, the collective timeout) is then said in one line, anything else with
    its traceback.
    """
    distributed = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank0 = os.environ.get("RANK", "0") == "0"
    held = io.StringIO() if distributed and not rank0 else None  # another rank's stderr: said when it ends
    try:
        with redirect_stderr(held) if held is not None else nullcontext(), full_disk_is_one_line():
            main()
    except USER_ERRORS as e:
        if not distributed:
            raise SystemExit(f"error: {e}") from None
        _end_rank(f"error: {e}", 1, held)
    except SystemExit as e:  # argparse (code 2, its message already held), a script's own one-line stop
        if not distributed:
            raise
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        _end_rank(None if e.code is None or isinstance(e.code, int) else str(e.code), code, held)
    except BaseException as e:  # noqa: BLE001 -- a bug, or a peer lost in a collective
        if not distributed:
            raise
        # on every rank wait first: it may be the consequence of another rank's failure, which torchrun ends
        if _collective_failure(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            _end_rank(f"error: rank {os.environ['RANK']}: a collective failed: a peer failed, or did not answer "
                      f"within {collective_timeout().total_seconds():g} s ({COLLECTIVE_TIMEOUT_VAR}); see its "
                      f"message. ({first})", 1, held, wait=True)
        _end_rank("".join(traceback.format_exception(e)).rstrip(), 1, held, wait=True)
    if held is not None:
        sys.stderr.write(held.getvalue())
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()


def _collective_failure(e):
    """A DistError, or a RuntimeError from a collective: raised inside torch.distributed, or naming
    gloo or NCCL (a lost peer or a timeout; gloo raises plain RuntimeErrors, DDP's all-reduce fails
    inside the backward)."""
    frames = traceback.extract_tb(e.__traceback__)
    inside = any(f"torch{os.sep}distributed{os.sep}" in f.filename for f in frames[-3:])
    named = re.search(r"gloo|nccl|Connection closed by peer|Connection reset by peer", str(e), re.IGNORECASE)
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and bool(inside or named))


def _end_rank(message, code, held, wait=None):
    """End this rank now: wait RANK_ERROR_GRACE_S (ranks other than 0, see run_main), then its held
    stderr and the message, flush, os._exit(code)."""
    sys.stdout.flush()
    if (held is not None or wait) and code:
        time.sleep(RANK_ERROR_GRACE_S)  # torchrun stops this rank here if rank 0 failed as well
    if held is not None:
        sys.stderr.write(held.getvalue())
    if message:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_rank0():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def print0(*args, **kwargs):
    """print on rank 0 only."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


# -----------------------------------------------------------------------------
# Resuming a run: the random generators of this process


def rng_state(device):
    """This process's random generators, as tensors and plain Python types (torch.load weights_only).
    On CUDA only this rank's device: the others are not ours, and a resume may see fewer GPUs."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state, device):
    """Restore what rng_state returned (on CUDA, into this rank's device)."""
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state((state["numpy"][0], np.array(state["numpy"][1], dtype=np.uint32), *state["numpy"][2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# -----------------------------------------------------------------------------
# Stopping a run: Ctrl-C and a full disk


@contextmanager
def stop_cleanly(out, progress=None, checkpoint=None):
    """End a run stopped by Ctrl-C or a full disk with one line instead of a traceback: what
    stopped it, the step it was at (progress["step"], which the loop keeps up to date) and, with
    `checkpoint` (a folder whose meta.json holds "step"), whether a rerun of the same command
    resumes and from which step. A full disk names the file it hit, else `out`. Other errors
    pass through unchanged."""
    try:
        yield
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted{_stopped_at(progress, checkpoint)}") from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise SystemExit(f"error: disk full ({e.filename or out}){_stopped_at(progress, checkpoint)}; free some "
                         f"space first") from None


def _stopped_at(progress, checkpoint):
    """' at step N; the last checkpoint is step M in ...': where a stopped run was, and what to do."""
    where = f" at step {progress['step']}" if progress and progress["step"] is not None else ""
    if checkpoint is None:
        return where
    try:
        saved = json.loads((Path(checkpoint) / "meta.json").read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError):
        saved = None
    if saved is None:
        return f"{where}; no checkpoint was written yet: run the same command to start again"
    return f"{where}; the last checkpoint is step {saved} in {checkpoint}: run the same command to resume"
