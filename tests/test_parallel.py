"""Activation checkpointing and FSDP2 (models/parallel.py, train_lm.py --activation-checkpointing / --fsdp)
against the plain model: the same gradients, and the same final weights as one process under DDP's
rules (same global batch), also after a kill and an automatic restart under torchrun."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_lm
from core.common import UsageError
from models import load_pretrained
from models.parallel import checkpoint_blocks
from test_train_lm import args_for, make_rows, metrics, setup, tensors, tiny_model_dir, tiny_qwen2_dir, tok  # noqa: F401
from test_train_lm import torchrun
from float64_run import PARALLEL_ATOL, float64_models

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_checkpointing_gives_the_same_gradients(arch, tok, tmp_path):
    """One forward + backward with and without recomputation, dropout on (its RNG is replayed)."""
    if arch == "gpt2":
        folder = tiny_model_dir(tmp_path / arch, tok, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    else:
        folder = tiny_qwen2_dir(tmp_path / arch, tok)
    ids = torch.randint(0, 300, (3, 21))
    grads = []
    for ckpt in (False, True):
        model, _ = load_pretrained(folder, dtype=torch.float64)  # float64: see the tolerance below
        model.train()
        if ckpt:
            checkpoint_blocks(model)
        torch.manual_seed(5)
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    # recomputation runs the same float64 ops again, so the two can differ only by float64 rounding
    # (u = 1.1e-16) in sums of at most 3 x 20 tokens x 64 features of terms below ~1: <= 4e3 u = 5e-13.
    # A dropout mask not replayed or a block left out moves gradients by 1e-3 and more.
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=0, atol=1e-12, msg=n)
    assert any(g.abs().max() > 0 for g in grads[0].values())


def test_train_lm_activation_checkpointing_same_weights(setup, tmp_path, monkeypatch):
    """3 steps with and without --activation-checkpointing, in float64 (tests/float64_run.py)."""
    float64_models(monkeypatch)
    common = ("--max-steps", "3", "--eval-every", "3", "--save-every", "3", "--no-fused-loss")
    train_lm.main(args_for(setup, tmp_path / "plain", *common))
    train_lm.main(args_for(setup, tmp_path / "ckpt", *common, "--activation-checkpointing"))
    a, b = tensors(tmp_path / "plain" / "last"), tensors(tmp_path / "ckpt" / "last")
    assert all(v.dtype == torch.float64 for v in a.values())
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=PARALLEL_ATOL, msg=k)


def test_fsdp_needs_torchrun(setup, tmp_path):
    with pytest.raises(UsageError, match="torchrun"):
        train_lm.main(args_for(setup, tmp_path / "run", "--fsdp"))


def test_force_ddp_needs_torchrun_and_no_fsdp(setup, tmp_path):
    with pytest.raises(UsageError, match="torchrun"):
        train_lm.main(args_for(setup, tmp_path / "run", "--force-ddp"))
    with pytest.raises(SystemExit):  # an argparse error: one way to parallelize
        train_lm.get_args(args_for(setup, tmp_path / "run", "--force-ddp", "--fsdp"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_fsdp_two_ranks_match_one(setup, tmp_path, monkeypatch):
    """torchrun 2 ranks --fsdp x grad-accum 2 == 1 process x grad-accum 4, with activation
    checkpointing too; the folder opens in transformers; a run killed at step 4 under
    --max-restarts 1 resumes (re-sharding the gathered optimizer state) to the same weights.
    In float64 with the reference loss (tests/float64_run.py): the runs differ only by the
    order of float64 sums, so they agree within PARALLEL_ATOL, derived there."""
    transformers = pytest.importorskip("transformers")
    float64_models(monkeypatch)
    common = ("--max-steps", "6", "--save-every", "3", "--eval-every", "3", "--no-fused-loss")
    train_lm.main(args_for(setup, tmp_path / "one", *common, "--grad-accum", "4"))
    torchrun(setup, tmp_path / "fsdp", 2, *common, "--grad-accum", "2", "--fsdp", "--activation-checkpointing",
             float64=True)
    r = torchrun(setup, tmp_path / "crash", 2, *common, "--grad-accum", "2", "--fsdp", "--crash-at-step", "4",
                 restarts=1, float64=True)
    assert (tmp_path / "crash" / ".crashed").exists() and "resumed from" in r.stdout + r.stderr
    one = tensors(tmp_path / "one" / "last")
    assert all(v.dtype == torch.float64 for v in one.values())  # the comparison below is a float64 one
    for run in ("fsdp", "crash"):
        other = tensors(tmp_path / run / "last")
        assert other.keys() == one.keys()
        for k in one:
            torch.testing.assert_close(other[k], one[k], rtol=0, atol=PARALLEL_ATOL, msg=f"{run}: {k}")
    l1 = [m["loss"] for m in metrics(tmp_path / "one") if "loss" in m]
    l2 = [m["loss"] for m in metrics(tmp_path / "crash") if "loss" in m]
    # each step's loss, from weights within PARALLEL_ATOL (the one weight allowed to drift that far, GPT-2's
    # key bias, changes no loss: softmax ignores it), the other weights a few float64 roundings apart: far
    # below 1e-8 relative, while a lost micro-batch or a wrong restart moves a loss by 1e-3 and more
    assert l1 == pytest.approx(l2, rel=PARALLEL_ATOL, abs=0) and len(l1) == 6
    ours, tok_ = load_pretrained(tmp_path / "fsdp" / "last", dtype=torch.float64)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "last", dtype=torch.float64).eval()
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        # two implementations of the same float64 math (they differ by ~1e-15), but ours returns the
        # logits as float32 (models/gpt2.py): rounding to nearest, so |difference| <= 2**-24 |logit|
        theirs_logits, ours_logits = theirs(ids).logits, ours(ids).double()
        torch.testing.assert_close(theirs_logits, ours_logits, rtol=2 ** -24 + 1e-12, atol=1e-12)
    assert (tmp_path / "fsdp" / "best" / "model.safetensors").is_file()
