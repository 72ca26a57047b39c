"""Lean decoding (issue 14): the paths models/generate.py takes without padding, without
penalties and with grouped-query attention on the KV cache, against transformers' generate and
against recomputing the whole context; masks built on the inputs' device."""
import pytest
import torch

from models.generate import KVCache, generate
from models.gpt2 import attention_mask_4d
from test_lm_models import hf_greedy, load_ours, meaningful_eos, hf_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["gpt2", "qwen2_tied_gqa", "llama"])
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
    ids = torch.randint(1, 256, (2, 11), generator=torch.Generator().manual_seed(3))
    full = ours(ids)
    n_layers = ours.config.n_layer if hasattr(ours.config, "n_layer") else ours.config.num_hidden_layers
    cache = KVCache(n_layers, 11)
    parts = [ours(ids[:, s:e], cache=cache) for s, e in ((0, 4), (4, 7), (7, 8), (8, 11))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_masks_are_built_on_the_inputs_device():
    mask, causal = attention_mask_4d(None, 4, 3, torch.device("meta"))
    assert mask.device.type == "meta" and mask.shape == (1, 1, 3, 7) and not causal
    ones = torch.ones(2, 7, dtype=torch.long, device="meta")
    assert attention_mask_4d(ones, 6, 1)[0].device.type == "meta"  # a decode step: built, not asked about
    # the decode-step mask without the host check equals the general rule (padding hidden, self kept)
    m = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got, _ = attention_mask_4d(m, 4, 1)
    assert got.tolist() == [[[[False, False, True, True, True]]], [[[True] * 5]]]
