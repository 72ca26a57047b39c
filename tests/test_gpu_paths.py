"""The code paths a GPU run takes, exercised on the CPU: train_lm.py under bf16 autocast
(--dtype bf16), under torch.compile (inductor), and with fused AdamW, each held against the plain
eager run of the same steps (in float64 where the comparison allows it: tests/float64_run.py); and
gpu_check's e2e path, torchrun --force-ddp --compile on one rank. (The fused loss under CPU bf16
autocast against float64 is tests/test_loss.py::test_cpu_autocast_bf16.)

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
from float64_run import PARALLEL_ATOL, float64_models
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
def f64(setup):
    """The eager run in float64 with the reference loss (tests/float64_run.py): what another way of
    computing the same steps (fused AdamW, inductor, DDP) is compared with, within PARALLEL_ATOL."""
    with pytest.MonkeyPatch.context() as mp:
        float64_models(mp)
        return run(setup, "f64", "--dtype", "fp32", "--no-fused-loss")


def rel(a, b):
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def bf16_ref(setup, f64):
    """The reference's own bf16 error: the same 5 steps under bf16 autocast with the plain loss
    (--no-fused-loss: the logits materialized, F.cross_entropy in fp32), as the largest relative
    distance of its step losses from the float64 run's (measured 2.4e-5)."""
    losses, _ = run(setup, "bf16_ref", "--dtype", "bf16", "--no-fused-loss")
    return max(rel(a, b) for a, b in zip(losses, f64[0]))


# A bf16 run (unit roundoff 2**-8) has no useful a-priori bound on its losses: every matmul rounds its
# operands and output, and over 5 AdamW steps the roundings of the gradients move the weights too. So
# a bf16 run's losses are held to the float64 run within BF16_FACTOR times the reference's own bf16
# error (fixture bf16_ref): the runs share the forward's roundings (the same model code under the same
# autocast) and differ in how the loss and its gradient are rounded, so their errors are of one size
# (measured: the fused eager run 1.2x, the compiled one 1.4x the reference's); 4 leaves ~3x room. A real
# error is far above it: a loss or log-sum-exp rounded to bf16 is off by ~2**-8 x 8 = 3e-2 in the loss
# (1e-2 was the former, round allowance, which that bug would have passed), a wrong mask or weight by O(1e-1).
BF16_FACTOR = 4


def assert_same_run(got, ref):
    """Two float64 runs of the same 5 steps computed differently: losses and final weights agree within
    PARALLEL_ATOL (derived in tests/float64_run.py for 6 steps at this learning rate; 5 are fewer)."""
    (losses, weights), (ref_losses, ref_weights) = got, ref
    assert len(losses) == len(ref_losses) == 5 and losses == pytest.approx(ref_losses, rel=PARALLEL_ATOL)
    assert all(v.dtype == torch.float64 for v in weights.values()) and weights.keys() == ref_weights.keys()
    for k in ref_weights:
        torch.testing.assert_close(weights[k], ref_weights[k], rtol=0, atol=PARALLEL_ATOL, msg=k)


def test_bf16_autocast_training_close_to_float64(setup, f64, bf16_ref):
    losses, _ = run(setup, "bf16", "--dtype", "bf16")
    ref, _ = f64
    assert len(losses) == len(ref) == 5
    fp32_first = run(setup, "fp32", "--dtype", "fp32", "--max-steps", "1")[0][0]
    assert losses[0] != fp32_first  # the matmuls did run in bf16 ...
    # ... and stay within the reference's bf16 error of float64, step after step (BF16_FACTOR)
    assert all(rel(a, b) <= BF16_FACTOR * bf16_ref for a, b in zip(losses, ref)), (losses, ref, bf16_ref)


def test_fused_adamw_matches_default(setup, f64, monkeypatch):
    """train_lm.py takes fused AdamW wherever torch has it (common.adamw: CUDA, and CPU from torch
    2.4): its 5 steps must give the weights of the plain (for-loop) AdamW, forced here. In float64:
    the two kernels order the same arithmetic differently (float64_run.py)."""
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

    from core import common
    monkeypatch.setattr(torch.optim, "AdamW", PlainAdamW)
    float64_models(monkeypatch)
    plain = run(setup, "plain_adamw", "--dtype", "fp32", "--no-fused-loss")
    assert made and not made[0].defaults["fused"] and made[0].defaults["foreach"] is False
    assert common.fused_adamw_works(torch.device("cpu"), torch.float64)  # so the f64 run's AdamW is the fused one
    assert_same_run(plain, f64)


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
def test_compile_matches_eager(setup, f64, dtype, monkeypatch, request):
    """--compile (inductor on the CPU) gives the eager run's losses and weights: without autocast
    compared in float64 (the compiled graph reorders and fuses the same arithmetic: float64_run.py),
    and under bf16 autocast, where fused kernels round differently, within bf16 rounding."""
    if dtype == "fp32":
        float64_models(monkeypatch)
        assert_same_run(run(setup, "compiled_f64", "--dtype", "fp32", "--no-fused-loss", "--compile"), f64)
        return
    bf16_ref = request.getfixturevalue("bf16_ref")
    ref_losses, _ = run(setup, "bf16_eager", "--dtype", "bf16")
    losses, _ = run(setup, "compiled_bf16", "--dtype", "bf16", "--compile")
    # the fused kernels round intermediate results at other points: the compiled run is held to
    # float64 like any bf16 run (BF16_FACTOR), so it is within twice that of the eager one (measured:
    # 3.4e-5 from float64, 1.5e-5 from eager; in bf16, rounding alone moves 5 steps' update by 10-50%
    # between equally valid runs: no weight check)
    assert all(rel(a, b) <= BF16_FACTOR * bf16_ref for a, b in zip(losses, f64[0])), (losses, f64[0], bf16_ref)
    assert all(rel(a, b) <= 2 * BF16_FACTOR * bf16_ref for a, b in zip(losses, ref_losses)), (losses, ref_losses)


@pytest.mark.slow
def test_compiled_ddp_on_one_rank_matches_eager(setup, f64):
    """The path bench/gpu_check.py's e2e part takes on a GPU, on the CPU: torchrun with one rank,
    --force-ddp --compile (inductor compiles the DDP module, the sequence dimension marked dynamic)
    and 2 micro-batches per step (no_sync on the first) give the plain eager run's losses and weights
    (the same 8 rows per step, split in two), compared in float64 (tests/float64_run.py)."""
    torchrun_args(train_args(setup, "ddp_compiled", "--batch-size", "4", "--grad-accum", "2", "--dtype", "fp32",
                             "--force-ddp", "--compile", "--no-fused-loss"), nproc=1, float64=True)
    assert json.loads((setup["root"] / "ddp_compiled" / "last" / "meta.json").read_text())["parallel"] == "ddp"
    assert_same_run(results(setup, "ddp_compiled"), f64)
