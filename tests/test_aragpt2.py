"""models/aragpt2.py (AraGPT2-large/-mega, the Grover layout) against a float64 reference.

transformers has no Grover class (aub-mind's port no longer imports), so the reference is the
block's equations written out below in float64 from the checkpoint tensors themselves (Conv1D
layout: y = x @ W + b). Both config forms (model_type "aragpt2" and an older "gpt2" config with
Grover weights) go through models.load_pretrained.
"""
import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import load_pretrained, save_pretrained
from models.aragpt2 import AraGPT2Config, AraGPT2LMHeadModel
from models.generate import KVCache, generate

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

V, C, L, NH, P = 97, 32, 2, 4, 40
CFG = dict(vocab_size=V, n_embd=C, n_layer=L, n_head=NH, n_positions=P, activation_function="gelu_new",
           bos_token_id=0, eos_token_id=0)


def grover_weights(seed=0):
    """Random Grover tensors under the port's keys (Conv1D weights [in, out]); norms not trivial;
    scales chosen so that greedy rows do not just repeat one token."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s
    sd = {"transformer.wte.weight": r(V, C, s=0.1), "transformer.wpe.weight": r(P, C),
          "transformer.emb_norm.weight": 1 + r(C), "transformer.emb_norm.bias": r(C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd.update({p + "attn.c_attn.weight": r(C, 3 * C, s=0.5), p + "attn.c_attn.bias": r(3 * C),
                   p + "attn.c_proj.weight": r(C, C, s=0.5), p + "attn.c_proj.bias": r(C),
                   p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C),
                   p + "mlp.c_fc.weight": r(C, 4 * C, s=0.5), p + "mlp.c_fc.bias": r(4 * C),
                   p + "mlp.c_proj.weight": r(4 * C, C, s=0.5), p + "mlp.c_proj.bias": r(C),
                   p + "ln_2.weight": 1 + r(C), p + "ln_2.bias": r(C)})
    return sd


def reference_logits(sd, ids):
    """The Grover equations in float64: h = LN_emb(wte[x] + wpe[pos]); a = h + Attn(h);
    h = LN_2(a + MLP(LN_1(a))); logits = h @ wte^T. ids: [T] (one unpadded row)."""
    w = {k: v.double() for k, v in sd.items()}
    T, hs = len(ids), C // NH

    def ln(x, name):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    h = ln(w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][:T], "transformer.emb_norm")
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(L):
        p = f"transformer.h.{i}."
        qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(T, NH, hs).transpose(0, 1) for t in qkv.split(C, dim=-1))  # (nh, T, hs)
        att = (q @ k.transpose(-1, -2) / math.sqrt(hs)).masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)
        a = h + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        m = gelu_tanh(ln(a, p + "ln_1") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        h = ln(a + m @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"], p + "ln_2")
    return h @ w["transformer.wte.weight"].T  # (T, V)


def write_folder(folder, model_type, sd):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**CFG, "model_type": model_type}))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module", params=["aragpt2", "gpt2"])
def loaded(request, tmp_path_factory):
    sd = grover_weights()
    folder = write_folder(tmp_path_factory.mktemp(request.param), request.param, sd)
    model, _ = load_pretrained(folder, tokenizer=False)
    return sd, model, folder


# Our model is compared on a float64 copy (the same weights): against the float64 equations it then
# differs by float64 rounding, in sums of at most 4 C = 128 terms through 2 blocks with values <~ 10:
# <= 128 x 2 x 1.1e-16 x 10 = 3e-13, so atol 1e-11; and it returns its logits rounded to float32,
# by at most 2**-24 of their size: rtol 2**-24 (2**-23 between two of its own outputs).
F64 = dict(rtol=2 ** -24, atol=1e-11)
OURS_TWICE = dict(rtol=2 ** -23, atol=1e-11)


@torch.no_grad()
def test_logits_match_float64_reference(loaded):
    sd, model, _ = loaded
    assert isinstance(model, AraGPT2LMHeadModel)  # also from the "gpt2" config form
    model = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 25), generator=g)
    out = model(ids)
    for b in range(3):
        ref = reference_logits(sd, ids[b])
        torch.testing.assert_close(out[b].double(), ref, **F64)
    # left padding: each row's real positions equal the row alone
    mask = torch.ones(3, 25, dtype=torch.long)
    mask[1, :10] = 0
    mask[2, :20] = 0
    padded = model(ids, attention_mask=mask)
    for b, start in ((1, 10), (2, 20)):
        torch.testing.assert_close(padded[b, start:].double(), reference_logits(sd, ids[b, start:]), **F64)


@torch.no_grad()
def test_greedy_generation_and_kv_cache(loaded):
    sd, model, _ = loaded
    prompts = [[5, 9, 60, 31, 7], [10, 11, 3, 44, 25, 17, 8], [77, 13]]
    mine = generate(model, prompts, 10, eos_id=None, pad_id=0)
    assert mine == generate(model, prompts, 10, eos_id=None, pad_id=0, use_cache=False)
    for p, row in zip(prompts, mine):  # the float64 reference, greedy, one token at a time
        seq = list(p)
        for _ in range(10):
            seq.append(int(reference_logits(sd, torch.tensor(seq))[-1].argmax()))
        assert row == seq[len(p):]
    assert len({tuple(r) for r in mine}) == 3 and all(len(set(r)) > 1 for r in mine)
    # cache forward == full forward, token by token
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(2))
    model = copy.deepcopy(model).double()  # float64: see OURS_TWICE
    cache = KVCache(L, 12)
    steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(6, 12)]
    torch.testing.assert_close(torch.cat(steps, 1).double(), model(ids).double(), **OURS_TWICE)


def test_save_load_round_trip_is_byte_identical(loaded, tmp_path):
    sd, model, folder = loaded
    save_pretrained(model, None, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["model_type"] == "aragpt2" and cfg["n_embd"] == C
    saved = load_file(tmp_path / "a" / "model.safetensors")
    assert set(saved) == set(sd) and all(torch.equal(saved[k], sd[k]) for k in sd)  # Conv1D layout kept
    again, _ = load_pretrained(tmp_path / "a", tokenizer=False)
    save_pretrained(again, None, tmp_path / "b")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_bad_grover_checkpoints_and_config(tmp_path):
    sd = grover_weights()
    cfg = AraGPT2Config.from_dict(CFG)
    with pytest.raises(ValueError, match=r"missing.*transformer\.h\.1\.ln_1\.bias"):
        AraGPT2LMHeadModel(cfg).load_hf_state_dict({k: v for k, v in sd.items() if k != "transformer.h.1.ln_1.bias"})
    with pytest.raises(ValueError, match=r"unexpected.*transformer\.ln_f\.weight"):
        AraGPT2LMHeadModel(cfg).load_hf_state_dict(dict(sd, **{"transformer.ln_f.weight": torch.ones(C)}))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight.*\(32, 100\).*\(32, 128\)"):
        AraGPT2LMHeadModel(cfg).load_hf_state_dict(dict(sd, **{"transformer.h.0.mlp.c_fc.weight": torch.zeros(32, 100)}))
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        AraGPT2Config.from_dict(dict(CFG, scale_attn_by_inverse_layer_idx=True))
    # a gpt2 config whose weights have both emb_norm and ln_f is neither layout: refused by the GPT-2 loader
    both = dict(sd, **{"transformer.ln_f.weight": torch.ones(C), "transformer.ln_f.bias": torch.zeros(C)})
    with pytest.raises(ValueError, match="Grover"):
        load_pretrained(write_folder(tmp_path / "both", "gpt2", both), tokenizer=False)
