"""Multi-node torchrun on one machine: two launchers (--nnodes 2 --nproc_per_node 1, c10d rendezvous on
localhost, gloo) for train_lm.py, score_severity.py and evaluate.py. Their outputs equal a 2-process
single-node run's (train_lm's weights bit for bit), only global rank 0 writes, and a train_lm run whose
one launcher is killed resumes exactly when both are started again (docs/evaluation-at-scale.md)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, write_rows
from test_score_severity import classifier, make_input  # noqa: F401  (a fixture)
from test_train_lm import args_for, setup, tensors, tok  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow  # each torchrun start costs seconds; the four runs ~2-3 min on 2 cores

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def single_node(script, args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


# train_lm.py, but the worker whose LOSE_AT is set kills its own process group (its launcher and itself:
# a lost node) at that call of AdamW.step
LOSE_A_NODE = r'''
import os, runpy, signal, sys, torch
sys.path.insert(0, os.environ["REPO"])
at, calls, step = int(os.environ.get("LOSE_AT") or 0), [0], torch.optim.AdamW.step
def lose(self, *a, **k):
    calls[0] += 1
    if calls[0] == at:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return step(self, *a, **k)
torch.optim.AdamW.step = lose
sys.argv = [os.path.join(os.environ["REPO"], "train_lm.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def launchers(script, args, run_id, env_of=lambda i: {}):
    """Two torchrun launchers of one 2-node job, each in its own process group (so a test can kill
    one launcher with its worker, as a lost node); env_of(i): extra environment of launcher i."""
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}", "--rdzv-id", run_id,
           str(script), *args]
    return [subprocess.Popen(cmd, cwd=ROOT, env={**ENV, "REPO": str(ROOT), **env_of(i)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True) for i in range(2)]


def wait_all(procs, ok=True):
    outs = [p.communicate(timeout=300) for p in procs]
    if ok:
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
    return outs


def test_train_lm_two_launchers_equal_single_node_and_resume_after_a_lost_node(setup, tmp_path):  # noqa: F811
    common = ("--max-steps", "40", "--save-every", "4", "--eval-every", "20", "--grad-accum", "2")
    single_node(ROOT / "train_lm.py", args_for(setup, tmp_path / "single", *common))
    wait_all(launchers(ROOT / "train_lm.py", args_for(setup, tmp_path / "multi", *common), "multi"))
    one = tensors(tmp_path / "single" / "last")
    multi = tensors(tmp_path / "multi" / "last")
    for k in one:
        assert torch.equal(multi[k], one[k]), k  # bit for bit
    assert not (tmp_path / ".multi.lock").exists()  # the one lock (global rank 0) was released

    # a lost node: the second launcher and its worker die (SIGKILL to its process group) at the 6th
    # AdamW.step call (common.fused_adamw_works' probe is the 1st: training step 5), after the step-4
    # checkpoint (rank 0 wrote it before it could join step 5's all-reduce)
    out = tmp_path / "lost"
    script = tmp_path / "lose_a_node.py"
    script.write_text(LOSE_A_NODE)
    procs = launchers(script, args_for(setup, out, *common), "lost", env_of=lambda i: {"LOSE_AT": "6" if i else ""})
    wait_all(procs, ok=False)
    assert procs[0].returncode != 0 and procs[1].returncode != 0
    step = json.loads((out / "last" / "meta.json").read_text())["step"]
    assert 4 <= step < 40
    outs = wait_all(launchers(ROOT / "train_lm.py", args_for(setup, out, *common), "lost2"))
    assert any("resumed from" in o + e for o, e in outs)
    resumed = tensors(out / "last")
    for k in one:
        assert torch.equal(resumed[k], one[k]), k


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory, setup):  # noqa: F811
    d = tmp_path_factory.mktemp("mn")
    rows = [{**json.loads(x), "split": "test"} for x in setup["data"].read_text().splitlines()][:14]
    return write_rows(d / "rows.jsonl", rows)


def test_evaluate_two_launchers_equal_single_node(setup, eval_inputs, tmp_path):  # noqa: F811
    args = lambda out: ["--model", str(setup["model"]), "--data", str(eval_inputs), "--out", str(out),  # noqa: E731
                        "--max-new-tokens", "6", "--batch-size", "3", "--bootstrap", "0", "--baseline-pairs", "0",
                        "--device", "cpu"]
    single_node(ROOT / "evaluate.py", args(tmp_path / "single"))
    wait_all(launchers(ROOT / "evaluate.py", args(tmp_path / "multi"), "eval"))
    assert (tmp_path / "multi" / "generations.jsonl").read_bytes() == \
        (tmp_path / "single" / "generations.jsonl").read_bytes()
    assert json.loads((tmp_path / "multi" / "metrics.json").read_text())["config"]["world_size"] == 2


def test_score_severity_two_launchers_equal_single_node(classifier, tmp_path):  # noqa: F811
    data, _ = make_input(tmp_path / "in.jsonl")
    def args(out):
        return ["--data", str(data), "--model", str(classifier), "--out", str(out), "--chunk-size", "5",
                "--batch-size", "2", "--device", "cpu"]
    single_node(ROOT / "score_severity.py", args(tmp_path / "single.jsonl"))
    wait_all(launchers(ROOT / "score_severity.py", args(tmp_path / "multi.jsonl"), "score"))
    assert (tmp_path / "multi.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "multi.jsonl", "multi.jsonl.meta.json",
                                                          "single.jsonl", "single.jsonl.meta.json"]  # one writer
