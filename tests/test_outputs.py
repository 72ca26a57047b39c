"""A user's files are sacred: every --out is checked before the work, replaced only when the
project wrote it, locked against a second run, written staged, and cleaned of killed runs'
leftovers. Each test puts a user's file where a careless script would destroy it and checks that
it is still there, byte for byte, after the run (or the refusal)."""
import errno
import json
import math
import os
import subprocess
import sys

import pytest

import evaluate
import prepare_data
import train_classifier
from core.common import DataError, dumps, stop_cleanly, write_json
from core.outputs import (MARKER, OutputError, check_not_input, check_out_dir, output_lock, read_marker, recover_dir,
                          remove_stale_temps, staged_dir, write_sidecar)
from conftest import write_rows
from tools.safety_cases import ROWS  # the four rows the case corpus writes


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- staged folders


def test_staged_dir_refuses_a_users_folder_and_keeps_it(tmp_path):
    user = tmp_path / "results"
    user.mkdir()
    (user / "thesis.tex").write_text("months of work", encoding="utf-8")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="did not write"):
        with staged_dir(user, "eval-run", {"thesis.tex"}):  # even a name the kind writes: no marker, not ours
            raise AssertionError("the block must not run")
    assert snapshot(tmp_path) == before  # nothing deleted, renamed or added


def test_staged_dir_refuses_a_regular_file(tmp_path):
    (tmp_path / "out").write_text("a user's file", encoding="utf-8")
    with pytest.raises(OutputError, match="is a file"):
        with staged_dir(tmp_path / "out", "eval-run"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no out.old, no temp folder
    assert (tmp_path / "out").read_text(encoding="utf-8") == "a user's file"


def test_staged_dir_replaces_only_its_own_kind(tmp_path):
    out = tmp_path / "run"
    with staged_dir(out, "eval-run", {"a.txt", "b.txt"}) as tmp:
        (tmp / "a.txt").write_text("1", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "a.txt"])
    assert {k: read_marker(out)[k] for k in ("script", "kind")} == {"script": "evaluate.py", "kind": "eval-run"}
    with staged_dir(out, "eval-run", {"a.txt", "b.txt"}) as tmp:  # its own kind: replaced whole, a.txt gone
        (tmp / "b.txt").write_text("2", encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "b.txt"])
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="kind eval-run .* not of kind compare"):  # another kind: refused
        with staged_dir(out, "compare", {"b.txt"}):
            pass
    assert snapshot(tmp_path) == before
    with pytest.raises(RuntimeError, match="bug"):  # a block writing a name its kind does not list
        with staged_dir(out, "eval-run", {"b.txt"}) as tmp:
            (tmp / "c.txt").write_text("3", encoding="utf-8")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    empty = tmp_path / "empty"  # an empty folder may be written into
    empty.mkdir()
    with staged_dir(empty, "classifier", {"x"}) as tmp:
        (tmp / "x").write_text("1", encoding="utf-8")
    assert read_marker(empty)["kind"] == "classifier"


def test_an_old_marker_counts_as_the_kind_its_files_make(tmp_path):
    old = tmp_path / "old"  # marked before kinds were recorded: the marker names no kind
    old.mkdir()
    (old / MARKER).write_text(json.dumps({"written_by": "severity-aware fine-tuning"}), encoding="utf-8")
    (old / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OutputError, match="compare folders never hold .metrics.json"):
        check_out_dir(old, "compare", {"compare.json"})
    with staged_dir(old, "eval-run", {"metrics.json", "report.md"}) as tmp:
        (tmp / "report.md").write_text("new", encoding="utf-8")
    assert read_marker(old)["kind"] == "eval-run" and sorted(p.name for p in old.iterdir()) == [MARKER, "report.md"]
    unmarked = tmp_path / "unmarked"  # the rule "only the script's own names, no marker" is gone
    unmarked.mkdir()
    (unmarked / "metrics.json").write_text("{}", encoding="utf-8")
    with pytest.raises(OutputError, match="did not write"):
        check_out_dir(unmarked, "eval-run", {"metrics.json"})


def test_unknown_entries_are_named_and_companions_are_not(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "training-run", "script": "train_lm.py"}), encoding="utf-8")
    for name in ["last", ".last.tmp", ".best.old", ".metrics.jsonl.k2j3.tmp", "metrics.jsonl", "notes.txt", "b"]:
        (out / name).write_text("x", encoding="utf-8")
    with pytest.raises(OutputError) as e:
        check_out_dir(out, "training-run", {"last", "best", "metrics.jsonl"})
    assert "(b, notes.txt)" in str(e.value) and "\n" not in str(e.value)


def test_staged_dir_never_deletes_a_foreign_temp_or_old_name(tmp_path):
    out = tmp_path / "run"
    (tmp_path / ".run.tmp").mkdir()
    (tmp_path / ".run.tmp" / "mine.txt").write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="in the way"):
        with staged_dir(out, "eval-run", {"mine.txt"}):
            pass
    assert (tmp_path / ".run.tmp" / "mine.txt").is_file()
    # a user's folder that happens to be called like our old one is never moved back or deleted
    (tmp_path / ".other.old").mkdir()
    (tmp_path / ".other.old" / "keep.txt").write_text("y", encoding="utf-8")
    assert recover_dir(tmp_path / "other", "checkpoint", {"keep.txt"}) is False
    assert (tmp_path / ".other.old" / "keep.txt").is_file()


# ---------------------------------------------------------------------------- an output is never an input


def test_an_out_that_is_holds_or_lies_in_an_input_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    (tmp_path / "link").symlink_to(model)
    os.link(data, tmp_path / "hard.jsonl")
    inputs = {"--model": model, "--data": data, "--compare": [None, tmp_path / "elsewhere"]}
    for out, rel in [(model, "is"), (tmp_path / "link", "is"), (tmp_path / "link" / "sub", "lies inside"),
                     (model / "config.json", "lies inside"), (tmp_path, "contains"), (tmp_path / "hard.jsonl", "is")]:
        with pytest.raises(OutputError, match=f"--out {out} {rel} the input --"):
            check_not_input(out, inputs)
    check_not_input(tmp_path / "other", inputs)  # a sibling is fine
    check_not_input(tmp_path / "model2", inputs)  # (a shared name prefix is not "inside")


def test_score_severity_may_rewrite_its_input_in_place(tmp_path, monkeypatch):
    import score_severity
    data = write_rows(tmp_path / "rows.jsonl", ROWS)  # a user's JSONL, no sidecar: rewritten with every row kept

    def past_the_checks(device):
        raise RuntimeError("every output check passed")
    monkeypatch.setattr(score_severity, "setup_dist", past_the_checks)
    with pytest.raises(RuntimeError, match="every output check passed"):
        score_severity.main(["--data", str(data), "--model", str(tmp_path / "clf"), "--out", str(data)])
    with pytest.raises(OutputError, match="lies inside the input --model"):
        score_severity.main(["--data", str(data), "--model", str(tmp_path), "--out", str(tmp_path / "s.jsonl")])


# ---------------------------------------------------------------------------- files: replaced only with our sidecar


def test_a_file_is_replaced_only_if_its_sidecar_says_we_wrote_it(tmp_path):
    write_rows(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(out)])
    side = json.loads((tmp_path / "out.jsonl.meta.json").read_text(encoding="utf-8"))
    assert side["written_by"] == "prepare_data.py" and side["stats"]["kept"] == len(ROWS)
    write_rows(tmp_path / "in.jsonl", ROWS[:3])
    prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(out)])  # ours: replaced
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    (tmp_path / "out.jsonl.meta.json").unlink()  # without the sidecar the file could be anyone's
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="exists and this project did not write it"):
        prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(out)])
    (tmp_path / "out.jsonl.meta.json").write_text('{"written_by": "me"}', encoding="utf-8")  # a sidecar of the user's
    with pytest.raises(OutputError, match="meta.json exists and this project did not write it"):
        prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(out)])
    (tmp_path / "out.jsonl.meta.json").unlink()
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- locks and leftovers


def test_lock_refuses_a_second_run_and_takes_over_a_dead_ones(tmp_path):
    out = tmp_path / "data.jsonl"
    with output_lock(out):
        lock = json.loads((tmp_path / ".data.jsonl.lock").read_text(encoding="utf-8"))
        assert lock["pid"] == os.getpid()
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            with output_lock(out):
                pass
        # a second script run on the same --out is refused clearly, and writes nothing
        write_rows(tmp_path / "in.jsonl", ROWS)
        with pytest.raises(OutputError, match="another run"):
            prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(out)])
        assert not out.exists()
    assert not (tmp_path / ".data.jsonl.lock").exists()  # released
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (tmp_path / ".data.jsonl.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}),
                                               encoding="utf-8")
    with output_lock(out):  # the holder is dead: its lock is taken over
        assert json.loads((tmp_path / ".data.jsonl.lock").read_text(encoding="utf-8"))["pid"] == os.getpid()


def test_two_processes_cannot_share_an_out(tmp_path):
    """A real second process, started while the first holds the lock."""
    write_rows(tmp_path / "in.jsonl", ROWS)
    out = tmp_path / "out.jsonl"
    code = ("import sys; sys.path.insert(0, {root!r}); import prepare_data; "
            "prepare_data.main(['--data', {src!r}, '--out', {out!r}])")
    root = str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with output_lock(out):
        proc = subprocess.run([sys.executable, "-c", code.format(root=root, src=str(tmp_path / "in.jsonl"),
                                                                 out=str(out))], capture_output=True, text=True)
    assert proc.returncode != 0 and "being written by another run" in proc.stderr
    assert not out.exists()


def test_leftovers_of_killed_runs_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "scored.jsonl"
    leftovers = [".scored.jsonl.k3j2h1.tmp", ".scored.jsonl.rank1-of-2", "..scored.jsonl.rank0-of-2.x8.tmp"]
    keep = ["scored.jsonl.notes", ".scored.jsonl.mine", "other.tmp", ".other.jsonl.a1.tmp"]
    for name in leftovers + keep:
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / ".scored.jsonl.tmp").mkdir()  # a folder holding a file without our marker: not ours, kept
    (tmp_path / ".scored.jsonl.tmp" / "f").write_text("x", encoding="utf-8")
    assert remove_stale_temps(out) == len(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep + [".scored.jsonl.tmp"])


def test_prepare_data_cleans_its_own_leftovers(tmp_path):
    write_rows(tmp_path / "in.jsonl", ROWS)
    (tmp_path / ".out.jsonl.abc123.tmp").write_text("half a file", encoding="utf-8")
    prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "out.jsonl.meta.json"]


# ---------------------------------------------------------------------------- no rows, wrong kinds of --out


@pytest.mark.parametrize("content,name", [("", "empty.jsonl"), ("\n\n", "blank.jsonl"), ("q_body,a_body\n", "h.csv"),
                                          ("q,a,,,\n", "trailing.csv")])
def test_no_rows_is_an_error_and_keeps_the_old_output(tmp_path, content, name):
    (tmp_path / name).write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("a good earlier output\n", encoding="utf-8")
    write_sidecar(out, "prepare_data.py")  # an earlier output of this project (else it is refused)
    flags = ["--question-col", "q", "--answer-col", "a"] if name == "trailing.csv" else []
    with pytest.raises(DataError, match="no data rows"):
        prepare_data.main(["--data", str(tmp_path / name), "--out", str(out), *flags])
    assert out.read_text(encoding="utf-8") == "a good earlier output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.jsonl", "out.jsonl.meta.json"])


def test_out_of_the_wrong_kind_is_refused_before_work(tmp_path, monkeypatch):
    write_rows(tmp_path / "in.jsonl", ROWS)
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "folder")])
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="not a writable folder"):  # its parent is a file
        prepare_data.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "afile" / "o.jsonl")])
    # train_classifier: refused before the data is even read
    monkeypatch.setattr(train_classifier, "train", lambda args: pytest.fail("trained into a file"))
    with pytest.raises(OutputError, match="is a file"):
        train_classifier.main(["--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "afile")])
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder", "in.jsonl"]  # no afile.old


def test_classifier_never_replaces_a_users_folder(tmp_path, monkeypatch):
    user = tmp_path / "classifier"
    user.mkdir()
    (user / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / ".classifier.old").mkdir()  # the name of our swap folder, holding a user's file
    (tmp_path / ".classifier.old" / "x").write_text("mine too", encoding="utf-8")
    before = snapshot(tmp_path)
    monkeypatch.setattr(train_classifier, "train", lambda args: pytest.fail("trained before refusing"))
    with pytest.raises(OutputError, match="did not write"):
        train_classifier.main(["--out", str(user)])
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- evaluate: one folder, swapped whole


def test_evaluate_swaps_the_run_folder_whole(tmp_path, monkeypatch):
    rows = [{**r, "generated": r["answer"] if i % 2 else "جواب اخر تماما"} for i, r in enumerate(ROWS)]
    gens = write_rows(tmp_path / "gens.jsonl", rows)
    out = tmp_path / "eval"
    args = ["--generations", str(gens), "--out", str(out), "--bootstrap", "20"]
    evaluate.main(args + ["--plot"])
    assert (out / "metrics_by_severity.png").is_file() and (out / MARKER).is_file()
    first = snapshot(out)
    # a run that fails while writing leaves the previous folder exactly as it was
    real = evaluate.write_json

    def fail_on_metrics(path, obj):
        real(path, obj)
        raise OSError("killed between two files")
    monkeypatch.setattr(evaluate, "write_json", fail_on_metrics)
    with pytest.raises(OSError, match="killed"):
        evaluate.main(args)
    assert snapshot(out) == first
    monkeypatch.undo()
    evaluate.main(args)  # without --plot: the first run's PNGs do not survive beside new numbers
    assert not (out / "metrics_by_severity.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval", "gens.jsonl"]


def test_evaluate_loads_the_bertscore_model_before_generating(tmp_path, monkeypatch):
    write_rows(tmp_path / "rows.jsonl", ROWS)
    (tmp_path / "bert").mkdir()  # not a model folder
    monkeypatch.setattr(evaluate, "run_generation", lambda args: pytest.fail("generated before checking BERTScore"))
    with pytest.raises(Exception, match="bert"):
        evaluate.main(["--model", str(tmp_path), "--data", str(tmp_path / "rows.jsonl"),
                       "--bertscore-model", str(tmp_path / "bert"), "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()


def test_evaluate_plot_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        evaluate.get_args(["--generations", "x.jsonl", "--plot"])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- JSON other tools can open


def test_no_nan_in_written_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}
    line = dumps({"x": float("nan"), "q": "سؤال"})
    assert json.loads(line) == {"x": None, "q": "سؤال"} and "سؤال" in line
    assert not math.isnan(json.loads(dumps({"y": 1.5}))["y"])


def test_a_stopped_run_says_where_in_one_line(tmp_path):
    """common.stop_cleanly: Ctrl-C and a full disk become one line naming the step and the
    checkpoint a rerun resumes from; every other error passes through unchanged."""
    progress, last = {"step": None}, tmp_path / "last"
    with pytest.raises(SystemExit) as e, stop_cleanly(tmp_path, progress, checkpoint=last):
        progress["step"] = 7
        raise KeyboardInterrupt
    assert str(e.value) == "interrupted at step 7; no checkpoint was written yet: run the same command to start again"
    last.mkdir()
    (last / "meta.json").write_text(json.dumps({"step": 5}), encoding="utf-8")
    with pytest.raises(SystemExit) as e, stop_cleanly(tmp_path, progress, checkpoint=last):
        raise OSError(errno.ENOSPC, "No space left on device")  # names no file: the output is named
    assert str(e.value) == (f"error: disk full ({tmp_path}) at step 7; the last checkpoint is step 5 in {last}: run "
                            f"the same command to resume; free some space first")
    with pytest.raises(SystemExit) as e, stop_cleanly(tmp_path):  # no step, no checkpoint
        raise OSError(errno.ENOSPC, "No space left on device", "x.bin")
    assert str(e.value) == "error: disk full (x.bin); free some space first"
    with pytest.raises(PermissionError), stop_cleanly(tmp_path, progress, checkpoint=last):
        raise PermissionError(errno.EACCES, "Permission denied")


def test_saved_weights_are_readable_like_other_outputs(tmp_path):
    import torch
    from core.common import _UMASK
    from models import build_model, save_pretrained
    model = build_model(dict(model_type="gpt2", vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    save_pretrained(model, None, tmp_path / "m")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~_UMASK
    assert torch.equal(load_weights(tmp_path / "m")["transformer.wte.weight"], model.transformer.wte.weight)


def load_weights(folder):
    from safetensors.torch import load_file
    return load_file(folder / "model.safetensors")


def test_dtype_names_are_the_same_in_every_script():
    import train_lm
    assert evaluate.get_args(["--generations", "g", "--dtype", "bf16"]).dtype == "bf16"
    assert evaluate.get_args(["--generations", "g", "--dtype", "float32"]).dtype == "fp32"  # the old name still works
    assert train_lm.get_args(["--dtype", "bf16"]).dtype == "bf16"


def test_demo_never_empties_a_users_folder(tmp_path):
    import demo
    user = tmp_path / "project"
    user.mkdir()
    (user / "labeled.jsonl").write_text("a user's labels", encoding="utf-8")  # a name the demo also writes
    (user / "notes.md").write_text("mine", encoding="utf-8")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit, match="did not write"):
        demo.main(["--out", str(user)])
    assert snapshot(tmp_path) == before


def test_lexicon_help_is_help(capsys):
    from core import lexicon
    with pytest.raises(SystemExit) as e:
        lexicon.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
    lexicon.main(["عندي ألم شديد في الصدر"])
    assert "severity:   critical" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the data-safety cases (issue 20)

from tools.safety_cases import CASES, run_case  # noqa: E402


@pytest.mark.parametrize("name", list(CASES))
def test_a_users_data_survives(name, tmp_path):
    """tools/safety_cases.py's case, run in-process as the script's __main__ runs it: every file
    under the case's folder is there after, byte for byte, and the run ends with one error line."""
    result = run_case(name, tmp_path)
    assert result["lost"] == []
    assert result["code"] == 1 and result["error"].startswith("error: ") and "\n" not in result["error"]
    assert not result["traceback"]


# ---------------------------------------------------------------------------- the lock under a crowd


def _taker(path, rounds, barrier, held, results, me, outputs):
    """One of the stress test's processes: each round, try to take the lock at the same moment as
    the others; while holding it, count the holders (must be 1); wait for everyone; release.
    Asking whether the dead holder is alive takes a random 0-2 ms here (a slow, shared file system
    widens every window between reading the lock and acting on it)."""
    import random
    import time
    alive = outputs._alive
    outputs._alive = lambda pid: time.sleep(random.random() * 0.002) or alive(pid)
    for r in range(rounds):
        barrier.wait()
        try:
            with output_lock(path):
                with held.get_lock():
                    held.value += 1
                    results[r * 64 + me] = held.value  # holders at this moment, this one included
                barrier.wait()  # everyone has tried while this one holds the lock
                with held.get_lock():
                    held.value -= 1
        except OutputError:
            results[r * 64 + me] = -1
            barrier.wait()
        barrier.wait()  # the round is over: the parent sets up the next one


def test_the_lock_has_one_holder_among_eight_takers(tmp_path):
    """8 processes take one lock at once, 50 rounds; every other round the lock is a dead run's (a
    takeover race), else there is none. Exactly one holder each round; the lock is released."""
    import multiprocessing as mp
    import socket
    ctx = mp.get_context("fork")
    takers, rounds = 8, 50
    out = tmp_path / "out.jsonl"
    lock = tmp_path / ".out.jsonl.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "token": "dead"})
    barrier, held = ctx.Barrier(takers + 1), ctx.Value("i", 0)
    results = ctx.Array("i", [0] * (rounds * 64))
    from core import outputs
    procs = [ctx.Process(target=_taker, args=(out, rounds, barrier, held, results, i, outputs)) for i in range(takers)]
    for p in procs:
        p.start()
    try:
        for r in range(rounds):
            if r % 2 == 0:
                lock.write_text(stale, encoding="utf-8")  # a killed run's lock, to be taken over
            barrier.wait()  # go
            barrier.wait()  # everyone tried
            barrier.wait()  # released
            got = [results[r * 64 + i] for i in range(takers)]
            assert sum(g > 0 for g in got) == 1 and max(got) == 1 and got.count(-1) == takers - 1, (r, got)
            assert not lock.exists()
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no takeover or temporary file left


def test_a_lock_that_names_no_run_is_one_clear_line(tmp_path):
    (tmp_path / ".o.jsonl.lock").write_text("", encoding="utf-8")
    with pytest.raises(OutputError) as e:
        with output_lock(tmp_path / "o.jsonl"):
            pass
    assert "names no run" in str(e.value) and "None" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.jsonl.lock"]


# ---------------------------------------------------------------------------- a full disk: one line, nothing lost

from test_score_severity import classifier  # noqa: E402,F401  (a tiny classifier folder, module-scoped)
from tools.safety_cases import run_in_process  # noqa: E402

NO_SPACE = OSError(errno.ENOSPC, "No space left on device")  # as a write() on a full disk raises it: no file named


def full_disk(*a, **k):
    raise NO_SPACE


def safetensors_full_disk(*a, **k):  # what safetensors' save_file raises on a full disk (measured on a tmpfs)
    from safetensors import SafetensorError
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def assert_one_disk_full_line(tmp_path, before, code, message, path):
    assert code == 1 and message.startswith(f"error: disk full ({path})") and "\n" not in message
    assert snapshot(tmp_path) == before  # the earlier output is intact, byte for byte
    assert sorted(p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or ".old" in p.name) == []


def test_full_disk_prepared_and_scored_jsonl(tmp_path, monkeypatch, classifier):
    rows = write_rows(tmp_path / "in.jsonl", ROWS)
    prepared, scored = tmp_path / "prepared.jsonl", tmp_path / "scored.jsonl"
    prepare_data.main(["--data", str(rows), "--out", str(prepared)])
    import score_severity
    score_severity.main(["--data", str(prepared), "--model", str(classifier), "--out", str(scored), "--device", "cpu"])
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", full_disk)  # atomic_open's last step before the rename
    assert_one_disk_full_line(tmp_path, before, *run_in_process("prepare_data.py", [
        "--data", rows, "--out", prepared]), prepared)
    assert_one_disk_full_line(tmp_path, before, *run_in_process("score_severity.py", [
        "--data", prepared, "--model", classifier, "--out", scored, "--device", "cpu"]), scored)


def test_full_disk_eval_folder(tmp_path, monkeypatch):
    gens = write_rows(tmp_path / "gens.jsonl", [{**r, "generated": r["answer"]} for r in ROWS])
    out = tmp_path / "eval"
    evaluate.main(["--generations", str(gens), "--out", str(out), "--bootstrap", "10"])
    before = snapshot(tmp_path)
    monkeypatch.setattr(os, "fsync", full_disk)
    code, message = run_in_process("evaluate.py", ["--generations", gens, "--out", out, "--bootstrap", "10"])
    assert_one_disk_full_line(tmp_path, before, code, message, out / "generations.jsonl")


def test_full_disk_classifier_safetensors(tmp_path, monkeypatch, classifier):
    import shutil
    from models import hf_io
    clf = tmp_path / "clf"
    shutil.copytree(classifier, clf)
    rows = write_rows(tmp_path / "rows.jsonl", ROWS * 3)
    before = snapshot(tmp_path)
    monkeypatch.setattr(hf_io, "save_file", safetensors_full_disk)
    code, message = run_in_process("train_classifier.py", ["--data", rows, "--out", clf, "--epochs", "1",
                                                           "--device", "cpu"])
    assert_one_disk_full_line(tmp_path, before, code, message, clf / "model.safetensors")


@pytest.mark.parametrize("where", ["torch.save", "safetensors"])
def test_full_disk_checkpoint(tmp_path, monkeypatch, where):
    """train_lm's checkpoint writer (core/checkpoint.py) on a full disk, as train_lm.main runs it
    (inside stop_cleanly): one line naming the file, the previous checkpoint intact."""
    import torch
    from core import checkpoint
    from models import build_model, hf_io
    model = build_model(dict(model_type="gpt2", vocab_size=16, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    last = tmp_path / "run" / "last"
    meta = {"args": {"model": None}, "step": 1}
    checkpoint.save_checkpoint(last, model, None, meta, {"step": 1})
    before = snapshot(tmp_path)
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", full_disk)  # torch.save into a Python file raises the write's OSError
    else:
        monkeypatch.setattr(hf_io, "save_file", safetensors_full_disk)
    with pytest.raises(SystemExit) as e, stop_cleanly(tmp_path / "run", {"step": 2}, checkpoint=last):
        checkpoint.save_checkpoint(last, model, None, {**meta, "step": 2}, {"step": 2})
    name = "trainer_state.pt" if where == "torch.save" else "model.safetensors"
    assert_one_disk_full_line(tmp_path, before, 1, str(e.value), last / name)
    assert "the last checkpoint is step 1" in str(e.value)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only: skipped elsewhere; the injected tests above run everywhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk(tiny_disk, tmp_path):
    """The same on a real full file system: a prepared JSONL and a model folder that do not fit."""
    from models import build_model, save_pretrained
    small = tiny_disk / "small.jsonl"
    write_rows(tmp_path / "few.jsonl", ROWS)
    prepare_data.main(["--data", str(tmp_path / "few.jsonl"), "--out", str(small)])  # fits
    big = [{**r, "id": f"{r['id']}-{i}", "answer": r["answer"] + f" {i}" * 40} for i in range(400) for r in ROWS]
    write_rows(tmp_path / "big.jsonl", big)  # ~1 MB of rows: does not fit
    before = snapshot(tiny_disk)
    code, message = run_in_process("prepare_data.py", ["--data", tmp_path / "big.jsonl", "--out", small])
    assert_one_disk_full_line(tiny_disk, before, code, message, small)
    model = build_model(dict(model_type="gpt2", vocab_size=512, n_positions=64, n_embd=128, n_layer=2, n_head=2))
    with pytest.raises(OSError) as e:  # ~2 MB of weights: safetensors' own error, named and typed as ENOSPC
        save_pretrained(model, None, tiny_disk / "model")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tiny_disk / "model" / "model.safetensors")
    assert snapshot(tiny_disk) == before and sorted(p.name for p in tiny_disk.iterdir()) == sorted(
        [p.name for p in tiny_disk.iterdir() if p.name.startswith("small.jsonl")])
