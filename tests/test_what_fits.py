"""tools/what_fits.py: its parameter counts against real models, its byte counts against the
optimizer state a real AdamW step allocates."""
import sys
from pathlib import Path

import pytest
import torch

from models import build_model
from models.lora import add_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import what_fits  # noqa: E402

S = dict(d=64, L=3, I=160, kv=32, V=500, tied=True)


def tiny_qwen2(s):
    return build_model(dict(model_type="qwen2", vocab_size=s["V"], hidden_size=s["d"], intermediate_size=s["I"],
                            num_hidden_layers=s["L"], num_attention_heads=s["d"] // 16,
                            num_key_value_heads=s["kv"] // 16, tie_word_embeddings=s["tied"]))


@pytest.mark.parametrize("tied", [True, False])
def test_param_counts_match_built_models(tied):
    s = {**S, "tied": tied}
    model = tiny_qwen2(s)
    n, block, emb, lora = what_fits.param_counts(s, lora_rank=4)
    assert n == sum(p.numel() for p in model.parameters())
    assert block == sum(p.numel() for p in model.model.layers[0].parameters())
    add_lora(model, 4, 8)
    assert lora == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_state_bytes_match_adamw():
    """Full fine-tuning state on a CPU = weights + gradients + AdamW moments = 16 bytes per parameter;
    LoRA = the frozen weights + 16 per adapter parameter (activations set to 0 with tokens=0)."""
    s = S
    for mode in ("full", "lora"):
        model = tiny_qwen2(s)
        if mode == "lora":
            add_lora(model, 16, 32)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model(torch.randint(0, s["V"], (1, 8))).sum().backward()
        opt.step()
        tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
        tensors += [v for st in opt.state.values() for k, v in st.items() if k != "step"]
        measured = sum(t.numel() * t.element_size() for t in tensors)
        assert what_fits.train_memory(s, mode, tokens=0, gpu=False) == measured
