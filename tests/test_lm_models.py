"""models/gpt2.py, models/qwen2.py and models/generate.py against Hugging Face transformers.

Tiny random HF models are saved to a temporary folder, read back with our own loader (json +
safetensors + load_hf_state_dict), and compared: logits (unpadded, right- and left-padded), greedy
generation token for token, the logits processors, checkpoint round trips and loading errors. The
KV-cache path is held against full recomputation, for greedy and for seeded sampling.
"""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.generate import KVCache, generate, n_layers_of, process_logits
from models.gpt2 import GPT2Config, GPT2LMHeadModel
from models.qwen2 import Qwen2Config, Qwen2ForCausalLM
from models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest.py)

V = 256
KINDS = ["gpt2", "qwen2_tied_gqa", "qwen2_untied", "llama", "llama3_rope", "qwen3", "gemma3"]


def hf_model(kind):
    """A tiny random transformers model of the given kind."""
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    common = dict(vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=0.2)  # big enough that greedy rows do not just repeat a token
    if kind == "qwen2_tied_gqa":
        cfg = transformers.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "qwen2_untied":
        cfg = transformers.Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=False)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "llama3_rope":  # Llama-3.2's RoPE scaling; a short original context puts the head's
        # 8 frequencies in all three bands (kept, smoothed, divided by factor)
        rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        cfg = transformers.LlamaConfig(**common, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                                       rope_parameters=rope)
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "qwen3":  # head_dim 16 != 48 / 4; q/k norm weights made non-trivial
        cfg = transformers.Qwen3Config(**common, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})
        hf = transformers.Qwen3ForCausalLM(cfg).eval()
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
        return hf
    if kind == "gemma3":  # window 4 < the test sequences; full layers with linear RoPE scaling (as 4B+)
        cfg = transformers.Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=64,
            rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
        hf = transformers.Gemma3ForCausalLM(cfg).eval()
        with torch.no_grad():  # the (1 + w) norms start at w = 0: make every one of them count
            for name, p in hf.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(-0.5, 0.5)
        return hf
    cfg = transformers.LlamaConfig(**common, num_key_value_heads=2, head_dim=16, attention_bias=False,
                                   tie_word_embeddings=False)  # head_dim 16 != 48 / 4
    return transformers.LlamaForCausalLM(cfg).eval()


def load_ours(folder):
    """Our model from a HF folder, without models/hf_io.py."""
    cfg = json.loads((folder / "config.json").read_text())
    if cfg["model_type"] == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_dict(cfg))
    elif cfg["model_type"] == "gemma3_text":
        model = Gemma3ForCausalLM(Gemma3TextConfig.from_dict(cfg))
    elif cfg["model_type"] == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config.from_dict(cfg))
    else:
        model = Qwen2ForCausalLM(Qwen2Config.from_dict(cfg))
    model.load_hf_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = hf_model(request.param)
    hf.save_pretrained(folder)
    return request.param, hf, load_ours(folder), folder


def batch(B=3, T=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (B, T), generator=g)


# Logits are compared in float64 (float64 copies of both models, same weights): the two implementations
# then differ only by float64 rounding, in sums of at most 48 + 96 terms through <= 3 blocks with
# logits <~ 8: <= 144 x 3 x 1.1e-16 x 8 = 4e-13, so atol 1e-11 (25x); and ours returns its logits
# rounded to float32 (`.float()` in every model file), by at most 2**-24 of their size: rtol 2**-24.
# Two of our own outputs, each rounded to float32 from float64 values that agree within 1e-11, differ
# by at most 2**-24 of each: rtol 2**-23.
THEIRS = dict(rtol=2 ** -24, atol=1e-11)
OURS_TWICE = dict(rtol=2 ** -23, atol=1e-11)


def float64_copies(hf, ours):
    """float64 copies of a transformers model and ours."""
    hf64, ours64 = copy.deepcopy(hf).double(), copy.deepcopy(ours).double()
    emb = getattr(getattr(hf64, "model", None), "embed_tokens", None)
    if hasattr(emb, "scalar_embed_scale"):  # Gemma-3 keeps sqrt(hidden) in a float32 buffer that
        emb.embed_scale = torch.tensor(emb.scalar_embed_scale, dtype=torch.float64)  # .double() cannot refine
    return hf64, ours64


def padded_mask(lengths, T, left):
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    return mask


# ----------------------------------------------------------------------------- forward parity

@torch.no_grad()
def test_logits_match_transformers(pair):
    kind, hf, ours, _ = pair
    hf, ours = float64_copies(hf, ours)
    ids = batch()
    ref = hf(ids).logits
    out = ours(ids)
    assert out.dtype == torch.float32 and out.shape == (3, 10, V) and ref.dtype == torch.float64
    torch.testing.assert_close(out.double(), ref, **THEIRS)
    # return_hidden gives the final-norm output that the lm_head turns into these logits
    hidden = ours(ids, return_hidden=True)
    torch.testing.assert_close(out.double(), hidden @ ours.lm_head.weight.T, **THEIRS)


@torch.no_grad()
def test_padded_logits_match_transformers(pair):
    kind, hf, ours, _ = pair
    hf, ours = float64_copies(hf, ours)
    ids = batch()
    for left in (False, True):
        mask = padded_mask([10, 7, 3], 10, left)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # what HF's generate passes for padded batches
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
        out = ours(ids, attention_mask=mask)  # our default positions are the same cumsum
        assert not out.isnan().any(), "fully masked padding rows must not produce NaN"
        real = mask.bool()
        torch.testing.assert_close(out[real].double(), ref[real], **THEIRS)
        # a padded row's real positions equal the same prompt run alone, unpadded
        alone = ours(ids[2:3, 7:] if left else ids[2:3, :3])
        torch.testing.assert_close(out[2][real[2]].double(), alone[0].double(), **OURS_TWICE)


@torch.no_grad()
def test_kv_cache_forward_matches_full_forward(pair):
    _, hf, ours, _ = pair
    _, ours = float64_copies(hf, ours)
    ids = batch(T=9)
    mask = padded_mask([9, 6, 4], 9, left=True)
    full = ours(ids, attention_mask=mask)
    cache = KVCache(n_layers_of(ours), max_len=9)
    parts = [ours(ids[:, :5], attention_mask=mask[:, :5], cache=cache)]  # prefill
    for t in range(5, 9):  # one-token decode steps
        parts.append(ours(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache))
    stepped = torch.cat(parts, dim=1)
    real = mask.bool()
    torch.testing.assert_close(stepped[real].double(), full[real].double(), **OURS_TWICE)
    assert cache.length == 9


# ----------------------------------------------------------------------------- checkpoints

def test_hf_state_dict_round_trip(pair):
    kind, _, ours, folder = pair
    saved = load_file(folder / "model.safetensors")
    mine = ours.hf_state_dict()
    tied = ours.config.tie_word_embeddings
    assert set(mine) == set(saved) - ({"lm_head.weight"} if tied else set())
    for k in mine:
        assert torch.equal(mine[k], saved[k]), k
    if tied:  # the head is the embedding Parameter itself, also after loading
        emb = ours.transformer.wte if kind == "gpt2" else ours.model.embed_tokens
        assert ours.lm_head.weight is emb.weight


@torch.no_grad()
def test_transformers_opens_what_we_write(pair, tmp_path):
    """config.to_dict() + hf_state_dict() is a folder transformers loads to the same logits."""
    _, _, ours, _ = pair
    (tmp_path / "config.json").write_text(json.dumps(ours.config.to_dict()))
    save_file({k: v.contiguous() for k, v in ours.hf_state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    hf, ours = float64_copies(hf, ours)
    ids = batch()
    torch.testing.assert_close(ours(ids).double(), hf(ids).logits, **THEIRS)


@torch.no_grad()
def test_gpt2_key_prefix_variants_and_buffers(tmp_path):
    hf = hf_model("gpt2")
    hf.transformer.save_pretrained(tmp_path)  # bare GPT2Model: keys h.0..., wte.weight
    bare = load_file(tmp_path / "model.safetensors")
    assert "wte.weight" in bare and not any(k.startswith("transformer.") for k in bare)
    cfg = GPT2Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    model = GPT2LMHeadModel(cfg)
    bare["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # old checkpoints' mask buffers
    bare["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    model.load_hf_state_dict(bare)
    hf, model = float64_copies(hf, model.eval())
    ids = batch()
    torch.testing.assert_close(model(ids).double(), hf(ids).logits, **THEIRS)


def gpt2_sd(tmp_path):
    hf_model("gpt2").save_pretrained(tmp_path)
    cfg = GPT2Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    return cfg, load_file(tmp_path / "model.safetensors")


def test_gpt2_loading_errors(tmp_path):
    cfg, sd = gpt2_sd(tmp_path)
    bad = dict(sd, **{"transformer.h.0.attn.c_attn.weight": torch.zeros(48, 100)})
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn\.weight.*\(48, 100\).*\(48, 144\)"):
        GPT2LMHeadModel(cfg).load_hf_state_dict(bad)
    with pytest.raises(ValueError, match=r"unexpected.*transformer\.h\.0\.attn\.q_attn\.weight"):
        GPT2LMHeadModel(cfg).load_hf_state_dict(dict(sd, **{"transformer.h.0.attn.q_attn.weight": torch.zeros(1)}))
    missing = {k: v for k, v in sd.items() if k != "transformer.ln_f.bias"}
    with pytest.raises(ValueError, match=r"missing.*transformer\.ln_f\.bias"):
        GPT2LMHeadModel(cfg).load_hf_state_dict(missing)
    # Grover layout (AraGPT2-large/mega): emb_norm after the embeddings and no ln_f
    grover = {k: v for k, v in sd.items() if "ln_f" not in k}
    grover["transformer.emb_norm.weight"] = torch.ones(48)
    grover["transformer.emb_norm.bias"] = torch.zeros(48)
    with pytest.raises(ValueError, match="Grover"):
        GPT2LMHeadModel(cfg).load_hf_state_dict(grover)


def test_failed_load_leaves_model_untouched(tmp_path):
    cfg, sd = gpt2_sd(tmp_path)
    model = GPT2LMHeadModel(cfg)
    before = {k: v.clone() for k, v in model.hf_state_dict().items()}
    with pytest.raises(ValueError):
        model.load_hf_state_dict(dict(sd, **{"transformer.ln_f.weight": torch.ones(7)}))
    assert all(torch.equal(before[k], v) for k, v in model.hf_state_dict().items())


def test_qwen2_loading_errors_and_config(pair):
    kind, _, ours, folder = pair
    if kind == "gpt2":
        pytest.skip("GPT-2 has its own error test")
    sd = load_file(folder / "model.safetensors")
    Qwen2Config, Qwen2ForCausalLM = type(ours.config), type(ours)  # Qwen3 has the same layout and errors
    cfg = Qwen2Config.from_dict(json.loads((folder / "config.json").read_text()))
    bad = dict(sd, **{"model.layers.1.mlp.up_proj.weight": torch.zeros(95, 48)})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(95, 48\).*\(96, 48\)"):
        Qwen2ForCausalLM(cfg).load_hf_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing.*model\.norm\.weight"):
        Qwen2ForCausalLM(cfg).load_hf_state_dict({k: v for k, v in sd.items() if k != "model.norm.weight"})
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.0\.self_attn\.o_proj\.bias"):
        Qwen2ForCausalLM(cfg).load_hf_state_dict(dict(sd, **{"model.layers.0.self_attn.o_proj.bias": torch.zeros(48)}))
    # a bare Qwen2Model checkpoint (no "model." prefix) and old inv_freq buffers load too
    bare = {k.removeprefix("model."): v for k, v in sd.items()}
    bare["layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(6)
    again = Qwen2ForCausalLM(cfg)
    again.load_hf_state_dict(bare)
    assert all(torch.equal(again.hf_state_dict()[k], v) for k, v in ours.hf_state_dict().items())


def test_qwen2_config_variants():
    # transformers 4.x style (Qwen2.5-0.5B's own config.json fields)
    cfg = Qwen2Config.from_dict({"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14,
                                 "num_key_value_heads": 2, "rope_theta": 1000000.0, "rope_scaling": None,
                                 "tie_word_embeddings": True, "sliding_window": 32768, "use_sliding_window": False,
                                 "torch_dtype": "bfloat16"})
    assert cfg.rope_theta == 1e6 and cfg.head_dim == 64 and cfg.qkv_bias and not cfg.o_bias
    for rope in ({"type": "yarn", "factor": 4.0}, {"rope_type": "longrope", "factor": 8.0}):
        with pytest.raises(ValueError, match="rope_scaling: RoPE scaling type"):
            Qwen2Config.from_dict({"rope_scaling": rope})
    with pytest.raises(ValueError, match="rope_parameters: RoPE scaling type 'dynamic'"):
        Qwen2Config.from_dict({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}})
    assert Qwen2Config.from_dict({"rope_scaling": {"rope_type": "default"}}).rope_theta == 10000.0
    with pytest.raises(ValueError, match="sliding"):
        Qwen2Config.from_dict({"use_sliding_window": True, "sliding_window": 16})


# ----------------------------------------------------------------------------- generation

PROMPTS = [[5, 9, 200, 31, 7], [100, 101, 3, 44, 250, 17, 8, 9, 60], [77, 13]]


def hf_greedy(hf, prompts, max_new, eos, pad, **kw):
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    mask = padded_mask([len(p) for p in prompts], L, left=True)
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                      pad_token_id=pad, num_beams=1, **kw)
    rows = []
    for row in out[:, L:].tolist():
        rows.append(row[:row.index(eos)] if eos in row else row)
    return rows


def meaningful_eos(ours, max_new):
    """An id that some row generates for the first time well after its start: rows then stop at
    different steps, so EOS handling and finished-row padding are exercised."""
    free = generate(ours, PROMPTS, max_new, eos_id=None, pad_id=1)
    best = (None, -1)
    for row in free:
        first = {}
        for i, t in enumerate(row):
            first.setdefault(t, i)
        best = max(best, *first.items(), key=lambda kv: kv[1])
    assert best[1] >= 2, f"random model generates degenerate rows: {free}"
    return best[0]


@torch.no_grad()
def test_greedy_matches_transformers_generate(pair):
    kind, hf, ours, _ = pair
    eos = meaningful_eos(ours, 12)
    mine = generate(ours, PROMPTS, 12, eos_id=eos, pad_id=1)
    assert mine == hf_greedy(hf, PROMPTS, 12, eos, pad=1)
    assert any(len(r) < 12 for r in mine) and any(len(r) > 2 for r in mine)
    assert mine == generate(ours, PROMPTS, 12, eos_id=eos, pad_id=1, use_cache=False)


@torch.no_grad()
def test_greedy_penalties_match_transformers(pair):
    """Repetition penalty and no-repeat-ngram, as HF defines them (equal-length prompts: HF also
    counts padding as present tokens, we do not)."""
    kind, hf, ours, _ = pair
    if kind not in ("gpt2", "qwen2_tied_gqa"):
        pytest.skip("the processors do not depend on the architecture: two kinds keep the file fast")
    prompts = [[5, 9, 200, 31, 5, 9], [100, 101, 3, 44, 100, 101], [77, 13, 77, 13, 77, 13]]
    for kw in (dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2), dict(repetition_penalty=0.7)):
        mine = generate(ours, prompts, 10, eos_id=None, pad_id=1, **kw)
        ref = hf_greedy(hf, prompts, 10, eos=-1, pad=1, **kw)
        assert mine == ref, kw


@torch.no_grad()
def test_sampling_cache_matches_recompute(pair):
    _, _, ours, _ = pair
    kw = dict(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2)
    a = generate(ours, PROMPTS, 16, eos_id=None, pad_id=1, seed=123, **kw)
    b = generate(ours, PROMPTS, 16, eos_id=None, pad_id=1, seed=123, use_cache=False, **kw)
    assert a == b
    assert a != generate(ours, PROMPTS, 16, eos_id=None, pad_id=1, seed=124, **kw)  # the seed matters
    assert a != generate(ours, PROMPTS, 16, eos_id=None, pad_id=1)  # and sampling is not greedy
    for p, new in zip(PROMPTS, a):  # no generated token completes a bigram seen before in its row
        seq = p + new
        for i in range(len(p), len(seq)):
            assert (seq[i - 1], seq[i]) not in set(zip(seq[:i - 1], seq[1:i]))


def test_logits_processors_match_transformers():
    """process_logits against HF's processors/warpers on random logits (rows of different history)."""
    from transformers.generation import logits_process as lp
    g = torch.Generator().manual_seed(0)
    B, Vs = 4, 50
    input_ids = torch.randint(0, Vs, (B, 12), generator=g)
    logits = torch.randn(B, Vs, generator=g) * 3
    seen = torch.zeros(B, Vs, dtype=torch.bool).scatter(1, input_ids, True)
    rows = input_ids.tolist()
    ref = lp.RepetitionPenaltyLogitsProcessor(1.4)(input_ids, logits.clone())
    ref = lp.NoRepeatNGramLogitsProcessor(2)(input_ids, ref)
    ref = lp.TemperatureLogitsWarper(0.7)(input_ids, ref)
    ref = lp.TopKLogitsWarper(20)(input_ids, ref)
    ref = lp.TopPLogitsWarper(0.8)(input_ids, ref)
    mine = process_logits(logits, seen, rows, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.4,
                          no_repeat_ngram_size=2, vocab_limit=None)
    assert torch.equal(mine.isinf(), ref.isinf()) and mine.isinf().any()
    # each kept logit is x * 1.4 or x / 1.4, then / 0.7, on both sides: the same correctly rounded IEEE
    # operations in the same order, so bit-identical (tolerance 0; measured 0; the default was ~1e-5)
    torch.testing.assert_close(mine[~mine.isinf()], ref[~ref.isinf()], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_generate_refuses_more_than_the_context(kind):
    """prompt + max_new_tokens beyond the model's positions + 1 is an error for both families
    (GPT-2: n_positions; Qwen2: max_position_embeddings)."""
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=16))
    torch.manual_seed(0)
    model.apply(lambda m: torch.nn.init.normal_(m.weight, std=0.5) if isinstance(m, torch.nn.Embedding) else None)
    # 10 + 7 = n_positions + 1 fits: the 7th new token is never fed back, so 16 positions are read
    out = generate(model, [[5, 6, 7, 8, 9] * 2], 7, eos_id=None, pad_id=1)[0]
    assert len(out) == 7 and out == generate(model, [[5, 6, 7, 8, 9] * 2], 7, eos_id=None, pad_id=1, use_cache=False)[0]
    assert out[:6] == generate(model, [[5, 6, 7, 8, 9] * 2], 6, eos_id=None, pad_id=1)[0]
    with torch.no_grad():  # the 7th token is the argmax after the full 16-position context
        assert out[6] == model(torch.tensor([[5, 6, 7, 8, 9] * 2 + out[:6]]))[0, -1].argmax().item()
    with pytest.raises(ValueError, match="16 positions"):
        generate(model, [[5] * 10], 8, eos_id=None, pad_id=1)


@torch.no_grad()
def test_vocab_limit_respected(tmp_path):
    cfg = Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    limit = 200
    head = torch.nn.Linear(32, V)  # a head whose bias strongly favors the ids beyond the limit
    head.weight.copy_(model.lm_head.weight)
    head.bias.zero_()[limit:] = 8.0
    model.lm_head = head
    free = generate(model, PROMPTS, 10, eos_id=None, pad_id=1, temperature=1.0, seed=0)
    assert sum(t >= limit for r in free for t in r) > len(PROMPTS) * 10 // 2  # the test can fail
    for seed in range(5):
        rows = generate(model, PROMPTS, 10, eos_id=None, pad_id=1, temperature=1.0, seed=seed, vocab_limit=limit)
        assert all(0 <= t < limit for r in rows for t in r) and all(len(r) == 10 for r in rows)
    rows = generate(model, PROMPTS, 10, eos_id=None, pad_id=1, vocab_limit=limit)  # greedy
    assert all(t < limit for r in rows for t in r)
