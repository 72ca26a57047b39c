"""The code paths a GPU run takes, exercised on the CPU: train_lm.py under bf16 autocast
(--dtype bf16), under torch.compile (inductor), and with fused AdamW, each held against the plain
fp32 eager run of the same steps; and gpu_check's e2e path, torchrun --force-ddp --compile on one
rank. (The fused loss under CPU bf16 autocast against float64 is
tests/test_loss.py::test_cpu_autocast_bf16.)

The runs use 8 training rows and --batch-size 8, so every step sees one micro-batch of one shape:
the compiled run compiles once (recompiles on new lengths are issue 14's, not this file's)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import train_lm
from core.common import DEMO_DATA, read_jsonl
from conftest import write_rows
from test_train_lm import torchrun_args
from models import Tokenizer, build_model, save_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_paths")
    tok = Tokenizer.from_folder(train_lm.DEMO_TOKENIZER)
    torch.manual_seed(0)
    cfg = dict(model_type="gpt2", vocab_size=tok.vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id)
    save_pretrained(build_model(cfg), tok, d / "tiny")
    rows = [row for _, row in read_jsonl(DEMO_DATA)]
    train = [r for r in rows if r["split"] == "train"][:8]
    val = [r for r in rows if r["split"] == "val"][:4]
    return {"root": d, "model": d / "tiny", "data": write_rows(d / "data.jsonl", train + val)}


def train_args(setup, name, *extra):
    """train_lm.py's flags for 5 optimizer steps over the 8 rows (extra flags come last, so they win)."""
    return ["--data", str(setup["data"]), "--model", str(setup["model"]), "--out", str(setup["root"] / name),
            "--device", "cpu", "--batch-size", "8", "--grad-accum", "1", "--max-steps", "5", "--eval-every", "5",
            "--save-every", "5", "--lr", "3e-3", "--warmup-steps", "1", "--seed", "0", *extra]


def results(setup, name):
    """(step losses, final weights) of the run in setup['root'] / name."""
    out = setup["root"] / name
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [m["loss"] for m in lines if "loss" in m], load_file(out / "last" / "model.safetensors")


def run(setup, name, *extra):
    """5 optimizer steps of train_lm.py in this process; returns (step losses, final weights)."""
    train_lm.main(train_args(setup, name, *extra))
    return results(setup, name)


@pytest.fixture(scope="module")
def fp32(setup):
    return run(setup, "fp32", "--dtype", "fp32")


def rel(a, b):
    return abs(a - b) / abs(b)


def assert_updates_close(setup, got, ref, tol):
    """Per tensor, ||got - ref|| <= tol * ||ref - initial||: the two runs moved the weights alike.
    (Relative to the update, not elementwise: Adam divides by sqrt(v) + eps, so an element whose
    gradient is rounding noise, such as the key bias, whose exact gradient is 0, moves by a
    noise-sized amount that two kernels need not agree on.)"""
    init = load_file(setup["model"] / "model.safetensors")
    for k in ref:
        diff, update = (got[k] - ref[k]).norm().item(), (ref[k] - init[k]).norm().item()
        assert diff <= tol * update, f"{k}: differs by {diff:.3g}, {diff / update:.3g} of its update {update:.3g}"


def test_bf16_autocast_training_close_to_fp32(setup, fp32):
    losses, _ = run(setup, "bf16", "--dtype", "bf16")
    ref, _ = fp32
    assert len(losses) == len(ref) == 5
    assert losses[0] != ref[0]  # the matmuls did run in bf16 ...
    # ... and stay within bf16 rounding (2**-8 relative per operand) of fp32, step after step
    assert all(rel(a, b) < 1e-2 for a, b in zip(losses, ref)), (losses, ref)


def test_fused_adamw_matches_default(setup, fp32, monkeypatch):
    """train_lm.py takes fused AdamW wherever torch has it (common.adamw: CUDA, and CPU from torch
    2.4): its 5 steps must give the weights of the plain (for-loop) AdamW, forced here."""
    try:
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], fused=True)
    except (RuntimeError, ValueError, TypeError) as e:
        pytest.skip(f"this torch build has no fused AdamW on CPU: {e}")
    made = []

    class PlainAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            kwargs.pop("fused", None)
            super().__init__(*args, **kwargs, foreach=False)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", PlainAdamW)
    losses, weights = run(setup, "plain_adamw", "--dtype", "fp32")
    assert made and not made[0].defaults["fused"] and made[0].defaults["foreach"] is False
    ref_losses, ref_weights = fp32  # the default run: fused
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert_updates_close(setup, weights, ref_weights, tol=1e-3)  # measured: 6e-5


def test_train_lm_takes_fused_adamw(monkeypatch, setup):
    """The default run's optimizer is the fused one when this torch has it on CPU."""
    from core import common
    made = []
    real = common.adamw
    monkeypatch.setattr(train_lm, "adamw", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    run(setup, "which_adamw", "--dtype", "fp32", "--max-steps", "1")
    has_fused = common.fused_adamw_works(torch.device("cpu"), torch.float32)
    assert made and all(bool(g["fused"]) is has_fused for g in made[0].param_groups)


def test_adamw_falls_back_where_the_fused_kernel_fails(monkeypatch):
    """Where fused AdamW does not run (an old torch, another device), common.adamw builds the
    plain one: the groups must not carry fused=True into it (torch writes defaults into them)."""
    from core import common
    monkeypatch.setattr(common, "fused_adamw_works", lambda device, dtype: False)
    w, b = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.zeros(3))
    groups = [{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}]
    opt = common.adamw(groups, lr=1e-3)
    assert not any(g["fused"] for g in opt.param_groups) and "fused" not in groups[0]
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    opt.step()  # the plain kernel: no error
    assert common.adamw([torch.nn.Parameter(torch.zeros(2))], lr=1e-3).param_groups[0]["fused"] is None


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compile_matches_eager(setup, fp32, dtype):
    """--compile (inductor on the CPU) gives the eager run's losses (and weights, in fp32), in fp32 and
    under bf16 autocast (where fused kernels round differently: bf16 tolerance)."""
    ref_losses, ref_weights = fp32 if dtype == "fp32" else run(setup, "bf16_eager", "--dtype", "bf16")
    losses, weights = run(setup, f"compiled_{dtype}", "--dtype", dtype, "--compile")
    tol = 1e-5 if dtype == "fp32" else 1e-2
    assert all(rel(a, b) < tol for a, b in zip(losses, ref_losses)), (losses, ref_losses)
    if dtype == "fp32":  # (in bf16, rounding alone moves 5 steps' update by 10-50% between equally valid runs)
        assert_updates_close(setup, weights, ref_weights, tol=1e-3)  # measured: 1.4e-4


@pytest.mark.slow
def test_compiled_ddp_on_one_rank_matches_eager(setup, fp32):
    """The path bench/gpu_check.py's e2e part takes on a GPU, on the CPU: torchrun with one rank,
    --force-ddp --compile (inductor compiles the DDP module, the sequence dimension marked dynamic)
    and 2 micro-batches per step (no_sync on the first) give the plain eager run's losses and updates
    (the same 8 rows per step, split in two)."""
    torchrun_args(train_args(setup, "ddp_compiled", "--batch-size", "4", "--grad-accum", "2", "--dtype", "fp32",
                             "--force-ddp", "--compile"), nproc=1)
    assert json.loads((setup["root"] / "ddp_compiled" / "last" / "meta.json").read_text())["parallel"] == "ddp"
    losses, weights = results(setup, "ddp_compiled")
    ref_losses, ref_weights = fp32
    assert len(losses) == len(ref_losses) == 5
    assert all(rel(a, b) < 1e-5 for a, b in zip(losses, ref_losses)), (losses, ref_losses)
    assert_updates_close(setup, weights, ref_weights, tol=1e-3)
