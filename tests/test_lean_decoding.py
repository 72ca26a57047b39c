"""Lean decoding (issue 14): the paths models/generate.py takes without padding, without
penalties and with grouped-query attention on the KV cache (Qwen2 / Llama, Qwen3, Gemma-3 with
sliding layers: models/qwen2.py's gqa_attention), against transformers' generate and against
recomputing the whole context; a decode step never repeats the cache; masks built on the inputs'
device."""
import copy

import pytest
import torch

from models.generate import KVCache, generate
from models.gpt2 import attention_mask_4d
from models.qwen2 import gqa_attention
from test_lm_models import hf_greedy, load_ours, meaningful_eos, hf_model, padded_mask

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

# Cached against full forwards on a float64 copy of our model: the two compute the same float64 math
# in another order (sums of at most 96 terms through <= 3 blocks, values <~ 10: ~3e-13, atol 1e-11),
# and each output is our float32 rounding of it (2**-24 of its size each): rtol 2**-23.
OURS_TWICE = dict(rtol=2 ** -23, atol=1e-11)

# qwen2_tied_gqa, llama, qwen3: 2 query heads per KV head; gemma3: the same, and window 4 < every sequence here
KINDS = ["gpt2", "qwen2_tied_gqa", "llama", "qwen3", "gemma3"]


def n_layers(model):
    return model.config.n_layer if hasattr(model.config, "n_layer") else model.config.num_hidden_layers


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf = hf_model(request.param)
    hf.save_pretrained(folder)
    return request.param, hf, load_ours(folder)


@torch.no_grad()
def test_unpadded_greedy_matches_transformers_and_recompute(pair):
    """Equal-length prompts (no mask, no positions: arange) with an EOS that stops rows at different steps."""
    _, hf, ours = pair
    prompts = [[5, 9, 200, 31, 7], [100, 101, 3, 44, 250], [77, 13, 8, 8, 60]]
    eos = meaningful_eos(ours, 12)
    mine = generate(ours, prompts, 12, eos_id=eos, pad_id=1)
    assert mine == hf_greedy(hf, prompts, 12, eos, pad=1)
    assert mine == generate(ours, prompts, 12, eos_id=eos, pad_id=1, use_cache=False)
    # batch 1, no EOS at all: every step runs
    one = generate(ours, prompts[:1], 12, eos_id=None, pad_id=1)
    assert len(one[0]) == 12 and one == hf_greedy(hf, prompts[:1], 12, eos=-1, pad=1)


@torch.no_grad()
def test_chunked_prefill_with_cache_matches_full_forward(pair):
    """Several new tokens on top of a cache, no padding (the path whose mask used to be built on the
    CPU whatever the device): logits equal to one full forward."""
    _, _, ours = pair
    ours = copy.deepcopy(ours).double()  # float64: see OURS_TWICE
    ids = torch.randint(1, 256, (2, 11), generator=torch.Generator().manual_seed(3))
    full = ours(ids)
    cache = KVCache(n_layers(ours), 11)
    parts = [ours(ids[:, s:e], cache=cache) for s, e in ((0, 4), (4, 7), (7, 8), (8, 11))]
    torch.testing.assert_close(torch.cat(parts, dim=1).double(), full.double(), **OURS_TWICE)


def test_masks_are_built_on_the_inputs_device():
    mask, causal = attention_mask_4d(None, 4, 3, torch.device("meta"))
    assert mask.device.type == "meta" and mask.shape == (1, 1, 3, 7) and not causal
    ones = torch.ones(2, 7, dtype=torch.long, device="meta")
    assert attention_mask_4d(ones, 6, 1)[0].device.type == "meta"  # a decode step: built, not asked about
    # the decode-step mask without the host check equals the general rule (padding hidden, self kept)
    m = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got, _ = attention_mask_4d(m, 4, 1)
    assert got.tolist() == [[[[False, False, True, True, True]]], [[[True] * 5]]]


SDPA = torch.nn.functional.scaled_dot_product_attention


def sdpa_strided_like_cuda(q, k, v, **kw):
    """SDPA whose output has CUDA's memory-efficient kernel layout: (B, H, T, K) values stored as
    (B, T, H, K), as that kernel allocates them; the CPU kernels return a contiguous output."""
    y = SDPA(q, k, v, **kw)
    return y.transpose(1, 2).contiguous().transpose(1, 2)


@pytest.mark.parametrize("layout", ["contiguous", "cuda_mem_efficient"])
@pytest.mark.parametrize("mask_kind", ["none", "per_row", "shared"])
@pytest.mark.parametrize("nh, nkv", [(4, 2), (4, 1), (6, 3), (3, 3)])
def test_gqa_decode_step_equals_repeated_cache(nh, nkv, mask_kind, layout, monkeypatch):
    """gqa_attention's decode step (query heads folded into rows of their KV head) against SDPA over
    the cache repeated to nh heads, with the masks a decode step gets: none, (B, 1, 1, S), (1, 1, 1, S);
    also with SDPA's output laid out as CUDA's memory-efficient kernel returns it (not contiguous),
    which a .view of the folded heads cannot take."""
    if layout == "cuda_mem_efficient":
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa_strided_like_cuda)
    g = torch.Generator().manual_seed(nh * 10 + nkv)
    B, S, hs = 3, 9, 8
    q = torch.randn(B, nh, 1, hs, generator=g, dtype=torch.float64)  # float64: see the tolerance below
    k = torch.randn(B, nkv, S, hs, generator=g, dtype=torch.float64)
    v = torch.randn(B, nkv, S, hs, generator=g, dtype=torch.float64)
    mask = {"none": None, "per_row": torch.rand(B, 1, 1, S, generator=g) > 0.4,
            "shared": torch.rand(1, 1, 1, S, generator=g) > 0.4}[mask_kind]
    if mask is not None:
        mask[..., -1] = True  # every query sees itself, as the models' masks guarantee
    for scale in (None, 0.3):
        k_rep, v_rep = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=mask, scale=scale)
        # Both sides compute softmax(scale q k^T) v in float64 (u = 2**-53), in another grouping. Per side:
        # a score (hs products, scaled) is off by <= (hs + 1) u smax, a probability by <= 2 of that
        # relatively plus (S + 3) u (exp, the row sum of S terms, the division), and the output, a sum of
        # S terms p_j v_j, by that times max|v| plus S u max|v|; twice that for the difference.
        # (~1e-13 here; measured 3e-16; a query head reading the wrong KV head is off by O(1).)
        smax = (scale or hs ** -0.5) * (q.abs() @ k_rep.abs().transpose(-1, -2)).max().item()
        atol = 2 * (4 * (hs + 1) * smax + 2 * S + 3) * 2.0 ** -53 * v.abs().max().item()
        torch.testing.assert_close(gqa_attention(q, k, v, mask, False, scale=scale), ref, rtol=0, atol=atol)


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True])
def test_decode_step_logits_equal_recompute(pair, padded):
    """Every decode step's logits (fp32) equal a full forward over the whole context, without padding
    (no mask) and left-padded (a (B, 1, 1, S) mask; in Gemma-3's sliding layers the windowed one),
    for 14 steps: well past Gemma-3's window of 4."""
    _, _, ours = pair
    ours = copy.deepcopy(ours).double()  # float64: see OURS_TWICE
    B, L, steps = 3, 6, 14
    ids = torch.randint(2, 256, (B, L + steps), generator=torch.Generator().manual_seed(5))
    mask = padded_mask([6, 3, 1], L + steps, left=True) if padded else None
    if padded:
        mask[:, L:] = 1  # the generated columns are real tokens
        ids = ids.masked_fill(mask == 0, 1)
    sub = lambda n: None if mask is None else mask[:, :n]  # noqa: E731
    cache = KVCache(n_layers(ours), L + steps)
    ours(ids[:, :L], attention_mask=sub(L), cache=cache)  # prefill
    for n in range(L + 1, L + steps + 1):  # context of n columns, the newest one fed alone
        step = ours(ids[:, n - 1:n], attention_mask=sub(n), cache=cache)[:, -1]  # (B, V)
        full = ours(ids[:, :n], attention_mask=sub(n))[:, -1]  # (B, V)
        torch.testing.assert_close(step.double(), full.double(), **OURS_TWICE, msg=f"context of {n} columns")


@torch.no_grad()
@pytest.mark.parametrize("padded", [False, True])
def test_decode_step_does_not_repeat_the_cache(pair, padded, monkeypatch):
    """No repeat_interleave in a decode step (the lean GQA path cannot silently fall back to the
    repeated cache); the counter does see the prefill's calls in the GQA models."""
    kind, _, ours = pair
    calls = []
    method, function = torch.Tensor.repeat_interleave, torch.repeat_interleave
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **kw: calls.append(1) or method(*a, **kw))
    monkeypatch.setattr(torch, "repeat_interleave", lambda *a, **kw: calls.append(1) or function(*a, **kw))
    ids = torch.randint(2, 256, (2, 10), generator=torch.Generator().manual_seed(6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10]) if padded else None
    sub = lambda n: None if mask is None else mask[:, :n]  # noqa: E731
    cache = KVCache(n_layers(ours), 10)
    ours(ids[:, :7], attention_mask=sub(7), cache=cache)  # prefill: 7 > Gemma-3's window of 4
    assert len(calls) == (0 if kind == "gpt2" else 2 * n_layers(ours))  # k and v per layer: the counter works
    calls.clear()
    for n in (8, 9, 10):
        ours(ids[:, n - 1:n], attention_mask=sub(n), cache=cache)
    assert calls == []
