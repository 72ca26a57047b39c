"""AraGPT2-large / AraGPT2-mega (the "Grover" block) in plain PyTorch.

Matches aub-mind's PyTorch port of the Grover layout (PyPI package `arabert`,
aragpt2/grover/modeling_gpt2.py, its `_USE_GROVER` branches; it no longer imports with current
transformers, so the tests hold this file against a float64 re-implementation of the equations):

    h = LN_emb(wte[x] + wpe[pos])                      # emb_norm: LayerNorm after the embeddings
    a = h + Attn(h)                                    # no LayerNorm before attention
    h = LN_2(a + MLP(LN_1(a)))                         # ln_1 before the MLP, ln_2 after the block
    logits = h @ wte.T                                 # no final LayerNorm, tied head

Everything else is GPT-2 (models/gpt2.py): the attention (fused c_attn, scale 1/sqrt(hs)), the
MLP, learned positions, dropout, the Conv1D checkpoint layout (c_attn/c_proj/c_fc weights stored
[in, out], transposed on load and save) and strict loading. Checkpoint keys:
`transformer.emb_norm.*`, `transformer.h.N.{attn.c_attn, attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj,
ln_2}.*`, `transformer.wte/wpe.weight`; no `ln_f`.

Recognised (models/hf_io.py) from `model_type: "aragpt2"` (the current hub configs) and from a
`model_type: "gpt2"` config whose weights carry `emb_norm` and no `ln_f` (older copies, which
plain GPT-2 would mis-load). Saved with model_type "aragpt2". AraGPT2-large: n_embd 1280, 36
layers, 20 heads; AraGPT2-mega: n_embd 1536, 48 layers, 24 heads; both vocab 64000, 1024 positions.
"""
from dataclasses import dataclass

import torch.nn as nn

from models.gpt2 import (GPT2MLP, GPT2Attention, GPT2Config, GPT2LMHeadModel, attention_mask_4d,
                         copy_hf_tensors, default_position_ids)


def is_grover_state_dict(sd):
    """True for Grover weights (an embedding LayerNorm and no final one), whatever the config says."""
    return any(k.endswith("emb_norm.weight") for k in sd) and not any(k.endswith("ln_f.weight") for k in sd)


@dataclass
class AraGPT2Config(GPT2Config):
    """GPT-2's config.json fields; a Grover block has no per-layer attention scaling."""

    def __post_init__(self):
        super().__post_init__()
        if self.scale_attn_by_inverse_layer_idx:
            raise ValueError("config scale_attn_by_inverse_layer_idx=true is not part of the Grover block "
                             "(AraGPT2-large/-mega)")

    def to_dict(self):
        """config.json dict, saved as model_type "aragpt2"."""
        return {**super().to_dict(), "model_type": "aragpt2", "architectures": ["AraGPT2LMHeadModel"]}


class GroverBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, x, attn_mask, is_causal, cache):
        x = x + self.attn(x, attn_mask, is_causal, cache)  # no LayerNorm before attention
        return self.ln_2(x + self.mlp(self.ln_1(x)))  # the norm comes after the residual sum


class AraGPT2LMHeadModel(nn.Module):
    """Grover-layout GPT-2 with a tied language-model head; attribute names mirror the checkpoint keys."""

    # the checkpoint layout (which keys, which Conv1D transposes) and the init are GPT-2's
    _init_weights = GPT2LMHeadModel._init_weights
    _hf_params = GPT2LMHeadModel._hf_params
    hf_state_dict = GPT2LMHeadModel.hf_state_dict

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.n_positions, config.n_embd),
            emb_norm=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([GroverBlock(config, i) for i in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, return_hidden=False):
        """input_ids [B, T]; attention_mask [B, past + T] (1 real, 0 padding) -> fp32 logits [B, T, V],
        or the last block's output [B, T, C] when return_hidden (there is no final norm)."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens exceeds AraGPT2's n_positions={self.config.n_positions}")
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, T, B, input_ids.device)
        attn_mask, is_causal = attention_mask_4d(attention_mask, past, T)
        tr = self.transformer
        x = tr.emb_norm(tr.drop(tr.wte(input_ids) + tr.wpe(position_ids)))  # (B, T, C); dropout first, as the port
        for block in tr.h:
            x = block(x, attn_mask, is_causal, cache)
        if cache is not None:
            cache.advance(T)
        if return_hidden:
            return x
        return self.lm_head(x).float()  # (B, T, V)

    def load_hf_state_dict(self, sd):
        """Load Grover tensors (with or without the `transformer.` prefix), strictly."""
        clean = {}
        for k, t in sd.items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # the port's causal-mask buffers, not weights
            if k == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding matrix is the head
            clean[k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k] = t
        copy_hf_tensors(self._hf_params(), clean, "AraGPT2 (Grover)")
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
