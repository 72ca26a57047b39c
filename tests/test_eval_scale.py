"""evaluate.py at the paper's scale: the fixed stratified sample (core/sample.py) and generation that
survives kill -9 (core/parts.py): a killed-and-resumed greedy run writes the same generations.jsonl,
byte for byte, as an uninterrupted one."""
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

import evaluate
from core import parts as P
from core.common import UsageError
from core.sample import allocate, stratified_sample
from conftest import ROOT, write_rows
from test_evaluate import make_rows, tiny_lm  # noqa: F401  (tiny_lm: a module-scoped tiny GPT-2 folder)


# ----------------------------------------------------------------------------- the sample

def test_sample_is_deterministic_stratified_and_order_free():
    rng = np.random.default_rng(0)
    classes = list(rng.choice(["mild", "moderate", "critical"], p=[0.6, 0.35, 0.05], size=2000))
    keys = [f"id{i}" for i in range(2000)]
    picked, info = stratified_sample(keys, classes, 200, seed=3)
    assert picked == stratified_sample(keys, classes, 200, seed=3)[0]  # same rows every run
    assert picked != stratified_sample(keys, classes, 200, seed=4)[0]
    split = Counter(classes)
    got = Counter(classes[i] for i in picked)
    assert sum(got.values()) == 200
    for c in split:  # proportional: largest remainders give each class its quota rounded down or up (exact)
        assert abs(got[c] - 200 * split[c] / 2000) < 1
    # the file's order does not matter: the same ids are drawn from a shuffled file
    perm = rng.permutation(2000)
    picked2, _ = stratified_sample([keys[i] for i in perm], [classes[i] for i in perm], 200, seed=3)
    assert sorted(keys[perm[i]] for i in picked2) == sorted(keys[i] for i in picked)
    assert info["weights"] is None and info["ids"] == [keys[i] for i in picked]


def test_sample_minimum_per_class_and_weights():
    classes = ["mild"] * 900 + ["moderate"] * 80 + ["critical"] * 20
    keys = [str(i) for i in range(1000)]
    picked, info = stratified_sample(keys, classes, 100, seed=0, min_per_class=30)
    got = Counter(classes[i] for i in picked)
    # critical: all 20 (fewer than 30), mild and moderate 30 each; the other 20 go by rows left (870 : 50):
    # quotas 18.91 and 1.09, largest remainder -> 19 and 1
    assert got == {"critical": 20, "moderate": 31, "mild": 49}
    w = info["weights"]  # share in the split / share in the sample
    for c in got:  # three float64 roundings (two divisions and the quotient) on each side (measured: equal)
        assert w[c] == pytest.approx((classes.count(c) / 1000) / (got[c] / 100), rel=2 * 3 * 2**-53, abs=0)
    # the weights make the sample's class mix the split's: sum over the sample of w_c / N = 1, a float64 sum
    # of 100 terms (<= 100 roundings of the total) of weights each 3 roundings off (measured 6.7e-16)
    assert sum(w[classes[i]] for i in picked) / 100 == pytest.approx(1.0, rel=(100 + 3 + 1) * 2**-53, abs=0)
    assert allocate({"mild": 5, None: 3}, 100) == {"mild": 5, None: 3}  # N beyond the rows: all of them


def test_weighted_overall_equals_the_class_share_mixture():
    """With weights, the overall mean is sum_c share_c x mean_c (the split's mix), not the sample's."""
    stats = {"rougeL": np.array([10.0, 20.0, 30.0, 50.0])}
    classes = ["mild", "mild", "critical", "critical"]
    weights = [1.5, 1.5, 0.5, 0.5]  # split shares 0.75 / 0.25, sample shares 0.5 / 0.5
    out = evaluate.summarize(stats, classes, 0, 0, 0, weights)
    # float64 means of 4 (2) products: a few roundings of the result, 8 allowed (measured: equal)
    assert out["overall"]["rougeL"] == pytest.approx(0.75 * 15 + 0.25 * 40, rel=8 * 2**-53, abs=0)
    assert out["by_severity"]["critical"]["rougeL"] == pytest.approx(40, rel=8 * 2**-53, abs=0)  # per class: unweighted


def run_eval(lm, data, out, *extra):
    return evaluate.main(["--model", str(lm), "--data", str(data), "--out", str(out), "--max-new-tokens", "6",
                          "--batch-size", "4", "--bootstrap", "20", "--baseline-pairs", "0", *extra])


def test_sample_recorded_and_compare_refuses_other_samples(tmp_path, tiny_lm, capsys):
    data = write_rows(tmp_path / "rows.jsonl", make_rows(40))
    run_eval(tiny_lm, data, tmp_path / "a", "--sample", "12", "--sample-seed", "1")
    run_eval(tiny_lm, data, tmp_path / "b", "--sample", "12", "--sample-seed", "2")
    meta = json.loads((tmp_path / "a" / "metrics.json").read_text())
    ids = [json.loads(x)["id"] for x in (tmp_path / "a" / "generations.jsonl").read_text().splitlines()]
    assert meta["config"]["sample"]["ids"] == ids and len(ids) == 12 and meta["n"]["overall"] == 12
    assert not P.parts_dir(tmp_path / "a").exists()  # removed once the run folder is in place
    with pytest.raises(UsageError, match="--sample-seed 1 in .*, 2 in"):
        evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    with pytest.raises(UsageError, match="--sample or --limit"):
        run_eval(tiny_lm, data, tmp_path / "d", "--sample", "5", "--limit", "5")


# ----------------------------------------------------------------------------- resume after kill -9

# Runs evaluate.py with one function patched to SIGKILL the process at a chosen point:
#   batch:K:mid    while appending the K-th batch's line (half of it written)
#   batch:K:after  right after the K-th batch's line is on disk
#   swap:between   inside replace_dir, between its two renames (the old folder moved aside)
#   swap:after     after the run folder is swapped in, before the parts folder is deleted
KILLER = r'''
import os, signal, sys
sys.path.insert(0, os.environ["REPO"])
import core.outputs as C, core.parts as P
where = os.environ.get("KILL_AT", "")
rank = os.environ.get("RANK", "0")
if where and (where.startswith("swap") or os.environ.get("KILL_RANK", "0") == rank):
    what, *rest = where.split(":")
    if what == "batch":
        k, how, calls, orig = int(rest[0]), rest[1], [0], P.append
        def append(path, record):
            calls[0] += 1
            if calls[0] == k and how == "mid":
                import json
                line = json.dumps(record, ensure_ascii=False)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(line[:len(line) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            orig(path, record)
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        P.append = append
    elif where == "swap:between":
        def replace_dir(tmp, final, expected=()):
            if final.exists():
                os.replace(final, C._old_dir(final))
            os.kill(os.getpid(), signal.SIGKILL)
        C.replace_dir = replace_dir
    elif where == "swap:after":
        P.finish = lambda out: os.kill(os.getpid(), signal.SIGKILL)
import runpy
sys.argv = [os.path.join(os.environ["REPO"], "evaluate.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def launch(tmp_path, lm, data, out, kill=None, nproc=1, kill_rank=0, flags=()):
    """evaluate.py (under torchrun with nproc > 1), killed at `kill`; returns the CompletedProcess."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "REPO": str(ROOT), "KILL_AT": kill or "", "KILL_RANK": str(kill_rank),
           "OMP_NUM_THREADS": "1"}
    args = ["--model", str(lm), "--data", str(data), "--out", str(out), "--max-new-tokens", "8",
            "--batch-size", "3", "--bootstrap", "0", "--baseline-pairs", "0", "--device", "cpu", *flags]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(script), *args]
    else:
        cmd = [sys.executable, str(script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def kill_and_resume(tmp_path, lm, data, points, nproc=1):
    """points: KILL_AT values, or (KILL_AT, rank to kill) under torchrun."""
    ref = tmp_path / "ref"
    done = launch(tmp_path, lm, data, ref, nproc=nproc)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = (ref / "generations.jsonl").read_bytes()
    for point in points:
        point, kill_rank = point if isinstance(point, tuple) else (point, 0)
        out = tmp_path / f"{point.replace(':', '-')}-rank{kill_rank}"
        if point == "swap:between":  # there must be an old folder to move aside: a finished shorter run
            first = launch(tmp_path, lm, data, out, nproc=nproc, flags=("--limit", "4"))
            assert first.returncode == 0, first.stderr[-2000:]
        killed = launch(tmp_path, lm, data, out, kill=point, nproc=nproc, kill_rank=kill_rank)
        assert killed.returncode != 0, point
        parts = P.parts_dir(out)
        assert parts.is_dir(), point  # the finished batches survived the kill
        if point.endswith(":mid"):  # the kill left half a line behind
            assert not (parts / f"rank{kill_rank}-of-{nproc}.jsonl").read_bytes().endswith(b"\n")
        resumed = launch(tmp_path, lm, data, out, nproc=nproc)
        assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
        if point.startswith("batch"):
            assert "resuming: kept" in resumed.stdout + resumed.stderr, point
        assert (out / "generations.jsonl").read_bytes() == expected, point
        assert not parts.exists()


@pytest.mark.slow  # three subprocesses: ~15 s on an idle 2-core CPU, minutes under load
def test_kill_inside_a_batch_then_resume_is_byte_identical(tmp_path, tiny_lm):
    data = write_rows(tmp_path / "rows.jsonl", make_rows(24))  # 18 test rows: 6 batches of 3
    kill_and_resume(tmp_path, tiny_lm, data, ["batch:3:mid"])


@pytest.mark.slow
def test_kill_at_every_point_then_resume_is_byte_identical(tmp_path, tiny_lm):
    data = write_rows(tmp_path / "rows.jsonl", make_rows(24))
    kill_and_resume(tmp_path, tiny_lm, data, ["batch:1:after", "batch:5:mid", "swap:between", "swap:after"])


@pytest.mark.slow
def test_kill_one_of_two_ranks_then_resume_is_byte_identical(tmp_path, tiny_lm):
    data = write_rows(tmp_path / "rows.jsonl", make_rows(30))
    kill_and_resume(tmp_path, tiny_lm, data, [("batch:2:mid", 1), ("batch:1:after", 0), ("swap:between", 0)], nproc=2)


def test_a_changed_flag_on_resume_is_refused_by_name(tmp_path, tiny_lm, monkeypatch):
    """A run stopped after 2 batches (Ctrl-C, in process) keeps them; a rerun with another decoding
    flag is refused by name and keeps them too; the same command then continues from them."""
    data = write_rows(tmp_path / "rows.jsonl", make_rows(24))  # 18 test rows: 5 batches of 4
    out, append, calls = tmp_path / "out", P.append, []

    def stop_after_two(path, record):
        append(path, record)
        calls.append(record["batch"])
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "append", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_eval(tiny_lm, data, out)
    monkeypatch.setattr(P, "append", append)
    rank_file = P.parts_dir(out) / "rank0-of-1.jsonl"
    assert rank_file.read_text().count("\n") == 2
    with pytest.raises(UsageError, match=r"other settings: --temperature was 0\.0, now 0\.7; rerun with its"):
        run_eval(tiny_lm, data, out, "--temperature", "0.7")
    with pytest.raises(UsageError, match="--max-new-tokens was 6, now 7"):
        evaluate.main(["--model", str(tiny_lm), "--data", str(data), "--out", str(out), "--max-new-tokens", "7",
                       "--batch-size", "4", "--bootstrap", "20", "--baseline-pairs", "0"])
    assert rank_file.read_text().count("\n") == 2  # kept for the right rerun
    run_eval(tiny_lm, data, out)
    assert not P.parts_dir(out).exists() and len((out / "generations.jsonl").read_text().splitlines()) == 18


def test_compile_flag_generates_what_eager_does(tmp_path, tiny_lm, monkeypatch):
    """evaluate.py --compile takes the static-cache Decoder path (torch.compile replaced by the
    identity here: its cold compile is minutes on this CPU; tests/test_compiled_decode.py compiles)."""
    data = write_rows(tmp_path / "rows.jsonl", make_rows(24))
    run_eval(tiny_lm, data, tmp_path / "eager")
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    run_eval(tiny_lm, data, tmp_path / "compiled", "--compile")
    assert calls == [{"mode": None, "dynamic": False}]
    assert (tmp_path / "compiled" / "generations.jsonl").read_text() == \
        (tmp_path / "eager" / "generations.jsonl").read_text()


def test_parts_keep_whole_lines_and_refuse_a_foreign_folder(tmp_path):
    out = tmp_path / "eval"
    plan = {"model": "m", "temperature": 0.0, "world_size": 1}
    path, done = P.start(out, plan, 0, 1)
    assert done == {} and (P.parts_dir(out) / "plan.json").is_file()
    P.append(path, {"batch": 0, "rows": [0, 2], "generated": ["أ", "ب"], "tokens": 3})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"batch": 1, "rows": [1')  # a kill during the write
    path, done = P.start(out, plan, 0, 1)
    assert list(done) == [0] and path.read_text(encoding="utf-8").endswith("\n")  # the partial line is cut off
    with pytest.raises(UsageError, match="--temperature was 0.0, now 1.0"):
        P.start(out, {**plan, "temperature": 1.0}, 0, 1)
    with pytest.raises(UsageError, match="the number of processes"):
        P.start(out, {**plan, "world_size": 2}, 0, 1)
    P.finish(out)
    assert not P.parts_dir(out).exists()
    foreign = P.parts_dir(tmp_path / "other")
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="this project did not write"):
        P.start(tmp_path / "other", plan, 0, 1)
    P.finish(tmp_path / "other")
    assert (foreign / "notes.txt").read_text() == "mine"  # never deleted
