"""Qwen3 decoder in plain PyTorch: Qwen2 + an RMSNorm on q and k per head - the q/k/v bias.

Matches Hugging Face `Qwen3ForCausalLM` (transformers/models/qwen3/modeling_qwen3.py) number for
number. Everything but the attention is models/qwen2.py's (RMSNorm in fp32, SwiGLU, rotate-half
RoPE, grouped-query attention, tied or untied head, the checkpoint layout and strict loading).
The differences from Qwen2:
  - q_norm, k_norm: RMSNorm over each head's hs features (weights [hs], shared by all heads),
    applied to q and k after the projection and before RoPE;
  - `head_dim` is explicit (128 in Qwen3-0.6B although hidden 1024 / 16 heads = 64), and
    defaults to 128 as in HF's Qwen3Config;
  - `attention_bias` (false in every released Qwen3) puts a bias on q/k/v/o together, like Llama.
Qwen3-0.6B: hidden 1024, 28 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3072,
vocab 151936, theta 1e6, tied. Sliding-window layers (use_sliding_window) are refused.
"""
from dataclasses import dataclass
from typing import ClassVar

from models.qwen2 import (Qwen2Attention, Qwen2Config, Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2RMSNorm,
                          apply_rope, gqa_attention)


@dataclass
class Qwen3Config(Qwen2Config):
    """Qwen3 hyper-parameters under their config.json names (defaults = HF's Qwen3Config)."""
    MODEL_TYPES: ClassVar[tuple] = ("qwen3",)
    model_type: str = "qwen3"
    head_dim: int | None = 128
    attention_bias: bool | None = False
    layer_types: list | None = None  # kept for transformers; sliding only with use_sliding_window (refused)

    @property
    def qkv_bias(self):
        return bool(self.attention_bias)

    @property
    def o_bias(self):
        return bool(self.attention_bias)

    def to_dict(self):
        """config.json dict that transformers opens as Qwen3ForCausalLM."""
        return {**super().to_dict(), "architectures": ["Qwen3ForCausalLM"]}


class Qwen3Attention(Qwen2Attention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.q_norm = Qwen2RMSNorm(config.head_dim, config.rms_norm_eps)  # over hs, per head
        self.k_norm = Qwen2RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        B, T, C = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hs)).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nkv, self.hs)).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # after the norm, as Qwen3 does
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs) with S = past + T
        y = gqa_attention(q, k, v, attn_mask, is_causal, self.attention_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.nh * self.hs)  # (B, T, nh * hs)
        return self.o_proj(y)


class Qwen3DecoderLayer(Qwen2DecoderLayer):
    """Qwen2's block with Qwen3's attention."""
    attn_cls = Qwen3Attention


class Qwen3ForCausalLM(Qwen2ForCausalLM):
    """Qwen3 with a language-model head: Qwen2's model with Qwen3's blocks (same checkpoint keys
    plus `self_attn.q_norm.weight` / `self_attn.k_norm.weight`)."""
    layer_cls = Qwen3DecoderLayer
