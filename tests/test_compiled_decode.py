"""The static-cache decode step (models/generate.py's Decoder, evaluate.py --compile) against the
eager KV-cache path and transformers' generate, per architecture family (GPT-2, Qwen2/Llama,
Qwen3, Gemma-3 with a sliding window the answers outgrow). float64 weights, so ties of random
weights cannot flip an argmax: the paths differ only in summation order (masked cache slots add
exact zeros), ~1e-16 relative, far below any top-2 logit gap of these models."""
import pytest
import torch

from models import build_model
from models.generate import Decoder, generate

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {
    "gpt2": dict(model_type="gpt2", n_positions=64, n_embd=32, n_layer=2, n_head=2),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=16,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    "gemma3": dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=2, head_dim=16,
                   num_attention_heads=4, num_key_value_heads=1, query_pre_attn_scalar=16, sliding_window=6,
                   layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64),
}
V, NEW = 97, 12


def tiny(family):
    torch.manual_seed(0)
    cfg = {**FAMILIES[family], "vocab_size": V, "initializer_range": 0.3, "eos_token_id": 5, "bos_token_id": 5}
    return build_model(cfg).double().eval()


def prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(6, V, (n,), generator=g).tolist() for n in (5, 9, 3)]  # left padding in the batch


@pytest.mark.parametrize("family", FAMILIES)
def test_static_cache_decode_equals_the_kv_cache(family):
    """The rolled static cache (eager) gives the eager KVCache's tokens, with EOS and without,
    and the same cache reused for a second batch of another size."""
    model, ps = tiny(family), prompts()
    dec = Decoder(model, max(map(len, ps)) + NEW - 1 + 3, compile=False)  # 3 spare slots: masked, as in a run
    for eos in (None, 5):
        assert generate(model, ps, NEW, eos, 0, decoder=dec) == generate(model, ps, NEW, eos, 0)
    assert generate(model, ps[:2], NEW, None, 0, decoder=dec) == generate(model, ps[:2], NEW, None, 0)


@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_finished_rows_leave_at_fixed_batch_sizes(family, monkeypatch):
    """Rows that hit EOS early are dropped when the rest fit a smaller size (5 -> 4, 2 or 1);
    the tokens stay the eager path's, also with the repetition penalty and the n-gram ban (their
    per-row state follows the rows)."""
    model = tiny(family)
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(6, V, (n,), generator=g).tolist() for n in (5, 9, 3, 7, 4)]
    free = generate(model, ps, NEW, None, 0)
    eos = [row[k] for row, k in zip(free, (1, 3, 2, 6, 9))]  # EOS ids that end rows at different steps
    dec = Decoder(model, 9 + NEW - 1, compile=False)
    sizes = []
    shrink = dec.shrink
    monkeypatch.setattr(dec, "shrink", lambda done, cache: sizes.append(len(done)) or shrink(done, cache))
    for kw in ({}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2}):
        expected = generate(model, ps, NEW, eos, 0, **kw)
        assert generate(model, ps, NEW, eos, 0, decoder=dec, **kw) == expected
        assert len({len(r) for r in expected}) > 1  # rows really ended at different steps
    assert min(sizes) < 5 and set(sizes) <= set(Decoder.sizes(5))  # it shrank, to fixed sizes only
    with pytest.raises(ValueError, match="holds"):
        generate(model, ps, NEW + 4, None, 0, decoder=dec)


@pytest.mark.slow  # inductor's cold compile: ~30-60 s per family on a loaded 2-core CPU
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_decode_equals_eager_and_transformers(family):
    transformers_twin = pytest.importorskip("bench.generate").transformers_twin
    pytest.importorskip("transformers")
    torch._dynamo.reset()  # one compiled frame per test: earlier families' graphs do not count to its limit
    model, ps = tiny(family), prompts()
    compiled = generate(model, ps, NEW, None, 0, decoder=Decoder(model, max(map(len, ps)) + NEW - 1))
    eager = generate(model, ps, NEW, None, 0)
    assert compiled == eager
    hf = transformers_twin(model, torch.device("cpu")).double()
    L = max(map(len, ps))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in ps])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in ps])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                          num_beams=1, pad_token_id=0, eos_token_id=None)
    assert out[:, L:].tolist() == compiled
