"""Output folders and files: a run only ever replaces or deletes what this project wrote.

The rules (docs/files.md): an output folder is written into or replaced only if it is empty or
holds MARKER naming the same kind of output and nothing but the names that kind writes; an
output file only if its sidecar <file>.meta.json names one of the project's scripts; an --out is
never one of the run's inputs; a full disk is one line. Scripts state their kind and names:
check_out_dir(out, kind, names) before the work, staged_dir(out, kind, names) to write it.
"""
import errno
import fnmatch
import json
import os
import re
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from core.common import UsageError, naming_full_disk, write_json

MARKER = ".written-by-severity-ft"  # every folder the project writes holds this small JSON file
# every kind of output folder and the script that writes it; the marker records both
KINDS = {"classifier": "train_classifier.py", "eval-run": "evaluate.py", "compare": "evaluate.py",
         "selection": "evaluate.py", "training-run": "train_lm.py", "checkpoint": "train_lm.py", "demo": "demo.py",
         "model": "models/hf_io.py", "tokenizer": "tools/make_demo_tokenizer.py",
         "review-label": "review.py", "review-compare": "review.py", "review-results": "review.py",
         "eval-parts": "evaluate.py"}
# what a sidecar's "written_by" may name: the scripts that write output files
FILE_SCRIPTS = {"prepare_data.py", "score_severity.py", "review.py"}
# what the machinery writes beside an output name n (staged folder, swap folder, atomic_open's
# temporary file, the lock and its takeover files, score_severity's shards, evaluate's generation
# parts): n's companions
_COMPANIONS = ("{}", ".{}.tmp", ".{}.old", ".{}.*.tmp", ".{}.lock", ".{}.lock-*", ".{}.rank*-of-*", ".{}.parts")



class OutputError(UsageError):
    """An --out the run must not write to (a user's folder or file, an input of the run, a folder
    another run is writing); raised before any expensive work."""



def read_marker(folder):
    """The marker of `folder` as a dict ({"script", "kind"}; {} for one written before kinds were
    recorded), or None if the folder has none."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _known(name, expected):
    """True if `name` is MARKER, one of `expected` (names or glob patterns) or a companion of one."""
    return name == MARKER or any(fnmatch.fnmatchcase(name, c.format(p)) for p in expected for c in _COMPANIONS)


def dir_refusal(folder, kind, expected):
    """Why `folder` may not be written as an output of `kind` whose names are `expected`; None if
    it may: it is missing, empty, or holds the marker of `kind` (or an old marker without a kind)
    and nothing but `expected` names (so an old marker counts as the kind whose files it holds)."""
    assert kind in KINDS, kind
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is a file, not a folder" if folder.exists() or folder.is_symlink() else None
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return None
    marker = read_marker(folder)
    if marker is None:
        return f"{folder} holds files this project did not write (it has no {MARKER})"
    theirs = marker.get("kind")
    if theirs is not None and theirs != kind:
        return f"{folder} is a folder of kind {theirs} (written by {marker.get('script', '?')}), not of kind {kind}"
    unknown = [n for n in names if not _known(n, expected)]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        return f"{folder} holds what this project's {kind} folders never hold ({shown})"
    return None


def check_out_dir(folder, kind, expected=()):
    """Refuse (OutputError, one line) an --out folder this project must not write as a `kind`
    output (see dir_refusal), or one whose place cannot be written. Call it before the work."""
    why = dir_refusal(folder, kind, expected)
    if why:
        raise OutputError(f"--out {why}: it is left as it is; choose another --out (or move it away yourself)")
    _check_writable(Path(folder).parent)


def check_not_input(out, inputs, flag="--out"):
    """Refuse an --out that is, contains or lies inside one of the run's inputs. `inputs` maps a
    flag to a path, a list of paths or None; paths are compared resolved (symlinks followed, a
    hard link to the same file counts). Call it before any work."""
    o = Path(out).resolve()
    for name, paths in inputs.items():
        for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths or ():
            if p is None:
                continue
            i = Path(p).resolve()
            if o == i or (o.exists() and i.exists() and os.path.samefile(o, i)):
                rel = "is"
            elif i in o.parents:
                rel = "lies inside"
            elif o in i.parents:
                rel = "contains"
            else:
                continue
            raise OutputError(f"{flag} {out} {rel} the input {name} {p}: an output never replaces an input; "
                              f"choose another {flag}")


def sidecar_path(path):
    """<path>.meta.json: what a script records beside an output file it wrote (written_by: the
    script; score_severity.py: the classifier it used and its warnings, which train_lm.py reads)."""
    return Path(f"{path}.meta.json")


def _sidecar_ours(side):
    try:
        info = json.loads(Path(side).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("written_by") in FILE_SCRIPTS


def check_out_file(path, in_place=False):
    """Refuse (OutputError, one line) an --out file this project must not write: a folder, an
    existing file this project did not write (its sidecar <path>.meta.json does not name one of
    the project's scripts), a sidecar name taken by a file of the user's, or an unwritable place.
    in_place: --out is the input file itself, rewritten with every row kept (score_severity.py)."""
    path, side = Path(path), sidecar_path(path)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder, not a file: give a file name")
    if side.exists() and not _sidecar_ours(side):
        raise OutputError(f"--out {path}: {side} exists and this project did not write it: it is left as it is; "
                          f"choose another --out (or move it away yourself)")
    if (path.exists() or path.is_symlink()) and not in_place and not _sidecar_ours(side):
        raise OutputError(f"--out {path} exists and this project did not write it (no {side.name} naming one of its "
                          f"scripts): it is left as it is; choose another --out (or move it away yourself)")
    _check_writable(path.parent)


def write_sidecar(path, script, meta=None):
    """Record beside an output file that `script` wrote it (<path>.meta.json, written atomically)."""
    assert script in FILE_SCRIPTS, script
    write_json(sidecar_path(path), {"written_by": script, **(meta or {})})


def _check_writable(folder):
    folder = Path(folder)
    while not folder.exists():  # the nearest existing ancestor is where mkdir would start
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {folder}: not a writable folder")


def replace_dir(tmp_dir, final_dir, kind, expected=()):
    """Move a finished folder into place: the old one (if any) is swapped out only after the new
    one is complete, so `final_dir` is always either the old or the new complete folder, or,
    after a kill between the two renames below, missing with the old one in .NAME.old
    (recover_dir puts it back). Only `kind` folders of `expected` names are ever moved or deleted."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = _old_dir(final_dir)
    for folder in (old, final_dir):
        why = dir_refusal(folder, kind, expected)
        if why:
            raise OutputError(f"{why}: it will not be replaced")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def _old_dir(final_dir):
    return final_dir.with_name(f".{final_dir.name}.old")


@contextmanager
def staged_dir(final_dir, kind, expected=()):
    """Build a `kind` folder in a temporary sibling (the path this yields, MARKER already in it)
    and move it into place with replace_dir only if the block succeeds, so `final_dir` never holds
    a half-written folder. `expected`: every name the kind writes (glob patterns allowed); a
    `final_dir` that is not such a folder is refused first (check_out_dir), and a block that wrote
    another name is a bug, raised before the swap. The temporary name is fixed, so a killed run's
    leftover is replaced, not piled up. A full disk is an OSError(ENOSPC) naming the folder."""
    final_dir = Path(final_dir)
    check_out_dir(final_dir, kind, expected)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp")
    if tmp.exists():
        if dir_refusal(tmp, kind, expected) or (any(tmp.iterdir()) and read_marker(tmp) is None):
            raise OutputError(f"{tmp} is in the way and was not written by this project: move it away")
        shutil.rmtree(tmp)
    try:
        with naming_full_disk(final_dir, staged=tmp):
            tmp.mkdir(parents=True)
            _write_marker(tmp, kind)
            yield tmp
            stray = [p.name for p in tmp.iterdir() if not _known(p.name, expected)]
            if stray:
                raise RuntimeError(f"bug: a {kind} folder wrote {stray}, which its list of names lacks")
            replace_dir(tmp, final_dir, kind, expected)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def mark_dir(folder, kind):
    """Create `folder` (if needed) as a `kind` folder this project writes into: it gets MARKER
    (an old marker without a kind is rewritten with it). Call check_out_dir first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = read_marker(folder)
    if marker is None or marker.get("kind") is None:
        _write_marker(folder, kind)


def _write_marker(folder, kind):
    assert kind in KINDS, kind
    (Path(folder) / MARKER).write_text(json.dumps({"script": KINDS[kind], "kind": kind, "written_by":
                                                   "severity-aware fine-tuning (arXiv 2604.06346)"}) + "\n",
                                       encoding="utf-8")


def classifier_warnings(data):
    """The severity classifier's warnings (train_classifier.py's metrics.json "warnings"), as
    score_severity.py recorded them beside the scored file (<data>.meta.json); [] if none."""
    try:
        return list(json.loads(sidecar_path(data).read_text(encoding="utf-8")).get("warnings") or [])
    except (OSError, ValueError, AttributeError):
        return []


def recover_dir(final_dir, kind, expected=()):
    """Undo a replace_dir interrupted between its two renames (final -> .final.old, new -> final):
    the complete previous `kind` folder is in .final.old; put it back. Returns True if it did."""
    final_dir = Path(final_dir)
    old = _old_dir(final_dir)
    if not final_dir.exists() and old.is_dir() and read_marker(old) is not None \
            and not dir_refusal(old, kind, expected):
        os.replace(old, final_dir)
        return True
    return False


def remove_stale_temps(path):
    """Delete what killed runs of this same output left beside it: atomic_open's `.NAME.*.tmp`
    files, staged_dir's `.NAME.tmp` folder (if marked) and score_severity's `.NAME.rankR-of-W`
    shards. Call it holding the output's lock (output_lock), so no live run owns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    n = 0
    for p in path.parent.iterdir():
        if p.name.startswith(f"..{path.name}.rank") and p.name.endswith(".tmp"):  # a shard's own temp file
            rest = "tmp"
        elif p.name.startswith(f".{path.name}."):
            rest = p.name[len(path.name) + 2:]
        else:
            continue
        if p.is_file() and (rest.endswith("tmp") or re.fullmatch(r"rank\d+-of-\d+", rest)):
            p.unlink()
            n += 1
        elif p.is_dir() and rest == "tmp" and read_marker(p) is not None:
            shutil.rmtree(p)
            n += 1
    return n


# ---- the lock: one run per output, also across machines sharing a file system


@contextmanager
def output_lock(path):
    """Hold `.NAME.lock` beside the output `path` while a run writes it, so two runs cannot share
    an --out. The lock names the pid, host and a random token. Taking it is atomic, without flock
    (which NFS may not honour): a fresh file with our name is hard-linked to the lock name (fails
    if it exists). A lock left by a dead process on this host is taken over by whoever first
    creates `.NAME.lock-<its token>.next` exclusively; that one alone renames a fresh file over the
    lock, after reading that it still names the dead run. Stale temporary files of earlier runs of
    the same output are removed once the lock is held. Raises OutputError if a live run holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "token": secrets.token_hex(8)}
    fresh = path.with_name(f".{path.name}.lock-{me['token']}")
    fresh.write_text(json.dumps(me), encoding="utf-8")
    try:
        for _ in range(200):  # a taker that lost a race reads the lock again
            if _take_lock(lock, fresh, me, path):
                break
            time.sleep(0.005)
        else:
            raise OutputError(f"could not take the lock {lock}: a run taking over a dead run's lock there seems to "
                              f"have died too; if no run is writing {path}, delete {lock} and {lock.name}-*.next")
    finally:
        fresh.unlink(missing_ok=True)
    try:
        remove_stale_temps(path)
        yield
    finally:
        if _read_lock(lock) == me:
            lock.unlink(missing_ok=True)


def _read_lock(lock):
    try:
        holder = json.loads(Path(lock).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _take_lock(lock, fresh, me, path):
    """One try: True if we hold `lock` now, False to try again, OutputError if a live run holds it."""
    try:
        os.link(fresh, lock)  # atomic exclusive create, with our name already inside
        return True
    except FileExistsError:
        pass
    except OSError as e:  # a file system without hard links: exclusive create, then write
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return True
    holder = _read_lock(lock)
    if holder is None:
        if not lock.exists():
            return False  # released meanwhile: try again
        raise OutputError(f"--out {path} is locked by {lock}, which names no run: delete that file if no run is "
                          f"writing {path}")
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int) or _alive(holder["pid"]):
        raise OutputError(f"--out {path} is being written by another run (pid {holder.get('pid')} on "
                          f"{holder.get('host')}, lock {lock}); wait for it, or delete the lock file if that run "
                          f"is gone")
    nxt = lock.with_name(f"{lock.name}-{holder.get('token', 'none')}.next")  # the dead run's successor
    try:
        fd = os.open(nxt, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False  # another run is taking over: read the lock again
    os.close(fd)
    try:
        if _read_lock(lock) != holder:  # taken over and released since we read it
            return False
        os.replace(fresh, lock)  # only the successor's creator replaces the dead run's lock
        return True
    finally:
        nxt.unlink(missing_ok=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
