"""LoRA (models/lora.py and train_lm.py --lora-rank) against independent references: the unmerged
model's own logits, a rank computed by torch.linalg, transformers opening the merged folder, and
peft's PeftModel opening our adapter on the base folder."""
import json

import pytest
import torch
from safetensors.torch import load_file

import train_lm
from models import build_model, load_pretrained, save_pretrained
from models.lora import LoRALinear, add_lora, load_adapter, lora_layers, merge_lora, merged, save_adapter
from float64_run import float64_models
from test_train_lm import args_for, make_rows, metrics, setup, tensors, tiny_model_dir, tiny_qwen2_dir, tok  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
RANK = 3


def random_adapters(model, seed=1):
    """B starts at zero (the model is unchanged); give it values so the tests see a real update."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


@pytest.fixture(params=["gpt2", "qwen2"])
def base_dir(request, tok, tmp_path):
    make = tiny_model_dir if request.param == "gpt2" else tiny_qwen2_dir
    return make(tmp_path / request.param, tok)


def test_merged_equals_unmerged_and_differs_by_rank_r(base_dir):
    # float64 (see the comparison below)
    base, _ = load_pretrained(base_dir, dtype=torch.float64)
    model, tok_ = load_pretrained(base_dir, dtype=torch.float64)
    add_lora(model, RANK, alpha=6, dropout=0.1, targets="auto")
    ids = torch.randint(0, 300, (2, 17))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))  # B = 0: training starts from the base model
    random_adapters(model)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_train == sum(m.lora_A.numel() + m.lora_B.numel() for m in lora_layers(model).values())
    with torch.no_grad():
        unmerged = model(ids)
        with merged(model):
            assert not lora_layers(model)
            inside = model(ids)
        assert lora_layers(model)  # put back
        # W x + B (A x) against (W + B A) x in float64: rounding of sums of at most 64 terms through 2
        # blocks, values <~ 10 (~1e-13: atol 1e-11), then each output rounded to float32 by the model
        # (2**-24 of its size each: rtol 2**-23)
        torch.testing.assert_close(inside.double(), unmerged.double(), rtol=2 ** -23, atol=1e-11)
        assert not torch.allclose(unmerged, base(ids), atol=1e-3)
        plain = merge_lora(model)
        torch.testing.assert_close(plain(ids).double(), unmerged.double(), rtol=2 ** -23, atol=1e-11)
    b, m = base.state_dict(), plain.state_dict()
    assert b.keys() == m.keys()
    n_adapted = 0
    for k in b:
        diff = (m[k] - b[k]).double()
        if diff.abs().max() == 0:
            continue
        n_adapted += 1  # only adapted weights moved, each by a product of rank RANK
        # rtol: the float64 rounding of W + B A adds singular values <= sqrt(in * out) * 2**-53 * max|W|,
        # ~1e-14 of the largest (measured <= 3.3e-16), while the RANK real ones are >= 0.46 of it (measured)
        rank = torch.linalg.matrix_rank(diff, rtol=1e-4).item()
        assert k.endswith(".weight") and diff.dim() == 2 and rank == RANK, k
    assert n_adapted == (4 if base_dir.name == "gpt2" else 7) * 2  # every projection of the 2 layers


def test_adapter_opens_in_peft_with_the_merged_logits(base_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model, tok_ = load_pretrained(base_dir, dtype=torch.float64)  # float64 throughout: see the comparison
    add_lora(model, RANK, alpha=6, dropout=0.0, targets="auto")
    random_adapters(model)
    save_adapter(model, tmp_path / "adapter", base_dir)
    with merged(model):
        save_pretrained(model, tok_, tmp_path / "merged")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == RANK and cfg["fan_in_fan_out"] == (base_dir.name == "gpt2")
    ids = torch.randint(0, 300, (2, 13))
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64).eval()
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    merged_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64).eval()
    with torch.no_grad():
        ours = model.eval()(ids)
        # the same float64 math in two implementations (~1e-13 for these 2-block models: atol 1e-11),
        # and our logits rounded to float32 by the model (2**-24 of their size: rtol)
        torch.testing.assert_close(theirs(ids).logits, ours.double(), rtol=2 ** -24, atol=1e-11)
        torch.testing.assert_close(merged_hf(ids).logits, ours.double(), rtol=2 ** -24, atol=1e-11)
    # and back: the PEFT adapter loads into a fresh LoRA model
    again, _ = load_pretrained(base_dir, dtype=torch.float64)
    load_adapter(add_lora(again, RANK, alpha=6, targets="auto"), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(again.eval()(ids), ours)


def test_bad_targets_refused_listing_valid(tok, tmp_path):
    model = build_model(dict(model_type="gpt2", vocab_size=50, n_positions=16, n_embd=8, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"q_proj is not .* valid: c_attn, c_fc, c_proj"):
        add_lora(model, 2, 4, targets="c_attn,q_proj")
    add_lora(model, 2, 4, targets="c_fc")  # only the MLP input projection
    assert [type(m).__name__ for m in (model.transformer.h[0].mlp.c_fc, model.transformer.h[0].attn.c_attn)] == \
        ["LoRALinear", "Linear"] and isinstance(model.transformer.h[0].mlp.c_fc, LoRALinear)


def test_train_lm_lora_checkpoints_and_exact_resume(setup, tmp_path, monkeypatch):
    """--lora-rank: only adapters move; last/ is the merged model (transformers opens it) and
    last/adapter opens in peft on the base with the same logits; crash + resume is bit-exact.
    The runs load the model in float64 (tests/float64_run.py), so the logit comparisons below are
    float64 math in two implementations."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    float64_models(monkeypatch)
    common = ("--lora-rank", "4", "--lora-dropout", "0.1", "--max-steps", "6", "--save-every", "3",
              "--eval-every", "3", "--weights", "balanced")
    train_lm.main(args_for(setup, tmp_path / "straight", *common))
    with pytest.raises(SystemExit, match="crash"):
        train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", "5"))
    train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", "5"))
    last = tmp_path / "straight" / "last"
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):  # merged model and adapters
        a, b = load_file(last / name), load_file(tmp_path / "resumed" / "last" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert all(v.dtype == torch.float64 for v in a.values()), name  # the comparison below is a float64 one
    la = [m["loss"] for m in metrics(tmp_path / "straight") if "loss" in m]
    assert la == [m["loss"] for m in metrics(tmp_path / "resumed") if "loss" in m] and len(la) == 6
    assert (tmp_path / "straight" / "best" / "adapter" / "adapter_config.json").is_file()

    base_t, merged_t = tensors(setup["model"]), tensors(last)
    moved = [k for k in base_t if not torch.equal(base_t[k].double(), merged_t[k])]  # float32 -> float64 is exact
    assert moved and all(k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for k in moved)
    ids = torch.randint(0, 300, (2, 11))
    ours, _ = load_pretrained(last, dtype=torch.float64)
    base = transformers.AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float64).eval()
    theirs = peft.PeftModel.from_pretrained(base, last / "adapter").eval()
    hf_merged = transformers.AutoModelForCausalLM.from_pretrained(last, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = ours(ids).double()
        # as in test_adapter_opens_in_peft_with_the_merged_logits: the same float64 math in two
        # implementations (~1e-13 for this 2-block model: atol 1e-11), and our logits rounded to
        # float32 by the model (2**-24 of their size: rtol; measured 5.93e-8 relative, 2.5e-8 absolute).
        # A missing adapter moves them by its whole effect, 0.11 here; alpha instead of alpha / r by 0.48.
        torch.testing.assert_close(theirs(ids).logits, logits, rtol=2 ** -24, atol=1e-11)
        torch.testing.assert_close(hf_merged(ids).logits, logits, rtol=2 ** -24, atol=1e-11)


def test_train_lm_bad_lora_target(setup, tmp_path):
    with pytest.raises(ValueError, match="valid: c_attn, c_fc, c_proj"):
        train_lm.main(args_for(setup, tmp_path / "run", "--lora-rank", "2", "--lora-targets", "qkv"))
