"""Qwen2 / Qwen2.5 (and plain Llama) decoder in plain PyTorch.

Matches Hugging Face `Qwen2ForCausalLM` (transformers/models/qwen2/modeling_qwen2.py) and
`LlamaForCausalLM` (transformers/models/llama/modeling_llama.py) number for number: pre-RMSNorm
blocks (the norm computed in fp32, cast back), rotate-half RoPE with `rope_theta`, grouped-query
attention, SwiGLU MLP, tied or untied lm_head per `tie_word_embeddings`.

Qwen2 puts a bias on q/k/v but not on o_proj; a Llama checkpoint (model_type "llama") differs only
by config flags: `attention_bias` (on q/k/v/o together) and `mlp_bias`. Qwen2.5-0.5B: hidden 896,
24 layers, 14 heads, 2 KV heads, intermediate 4864, vocab 151936, theta 1e6, eps 1e-6, tied.

Checkpoint keys are the module names (`model.layers.0.self_attn.q_proj.weight`, ...), no
transposes; a bare Qwen2Model checkpoint without the `model.` prefix also loads, and the
`rotary_emb.inv_freq` buffers of old checkpoints are ignored. RoPE scaling "linear" and "llama3"
(Llama-3.1/3.2) come from models/rope.py. Not implemented (refused with an error): the other RoPE
scalings (yarn, dynamic, ...) and sliding-window attention. Qwen3 is models/qwen3.py.
"""
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.gpt2 import attention_mask_4d, copy_hf_tensors, default_position_ids
from models.rope import merged_rope_spec, rope_inv_freq


@dataclass
class Qwen2Config:
    """Qwen2 / Llama hyper-parameters under their config.json names (defaults = HF's Qwen2Config)."""
    MODEL_TYPES: ClassVar[tuple] = ("qwen2", "llama")  # the model_type values this class opens
    model_type: str = "qwen2"  # "qwen2" or "llama"
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> num_attention_heads (no GQA)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # transformers 4.x name
    rope_parameters: dict | None = None  # transformers 5.x name: {"rope_theta": ..., "rope_type": ...}
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = None
    attention_dropout: float = 0.0
    attention_bias: bool | None = None  # llama only: bias on q/k/v/o (qwen2: q/k/v always, o never)
    mlp_bias: bool | None = None  # llama only
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in self.MODEL_TYPES:
            raise ValueError(f"{type(self).__name__} opens model_type {' or '.join(self.MODEL_TYPES)}, "
                             f"not {self.model_type!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        self.rope = merged_rope_spec(self.rope_scaling, self.rope_parameters)  # refuses other types by name
        if self.rope_parameters and "rope_theta" in self.rope_parameters:
            self.rope_theta = float(self.rope_parameters["rope_theta"])
        if self.use_sliding_window:
            raise ValueError("sliding-window attention (use_sliding_window=true) is not implemented")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not implemented (SwiGLU uses silu)")

    @property
    def qkv_bias(self):
        return True if self.model_type == "qwen2" else bool(self.attention_bias)

    @property
    def o_bias(self):
        return False if self.model_type == "qwen2" else bool(self.attention_bias)

    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict; keys this class does not know are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self):
        """config.json dict that transformers opens as Qwen2ForCausalLM / LlamaForCausalLM."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        arch = "Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"
        return {**d, "architectures": [arch]}


def rope_cos_sin(position_ids, head_dim, theta, dtype, rope=None):
    """cos, sin [B, T, hs] for rotate-half RoPE, computed in fp32 then cast (as HF does); `rope`:
    a models/rope.py scaling spec (None: plain)."""
    inv_freq = rope_inv_freq(head_dim, theta, rope, position_ids.device)  # (hs/2,)
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (B, nh, T, hs) rotated by position: the two halves of hs are the (real, imaginary) pairs."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # rotate_half
    return x * cos[:, None] + rotated * sin[:, None]


def gqa_attention(q, k, v, attn_mask, is_causal, dropout_p=0.0, scale=None):
    """Grouped-query attention: each of the nkv key/value heads serves g = nh // nkv query heads
    (query head h reads KV head h // g). Shared by Qwen2 / Llama, Qwen3 and Gemma-3.

    q (B, nh, T, hs); k, v (B, nkv, S, hs); attn_mask None or a boolean mask of shape (B or 1, 1, T, S)
    (one mask for every head); scale None: hs ** -0.5. Returns (B, nh, T, hs).
    A decode step (T == 1, not causal) never repeats the cache: the g query heads of a KV head become
    g query rows of one SDPA call over that head's keys, and the (B, 1, 1, S) mask broadcasts over
    them. Every other call takes the reference path, k and v repeated to nh heads.
    """
    B, nh, T, hs = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    if T == 1 and not is_causal:  # one query per row: the same numbers as the reference below
        y = F.scaled_dot_product_attention(q.reshape(B, nkv, g, hs), k, v, attn_mask=attn_mask,  # (B, nkv, g, hs)
                                           dropout_p=dropout_p, scale=scale)
        # reshape, not view: CUDA's memory-efficient kernel returns y stored as (B, g, nkv, hs)
        return y.reshape(B, nh, 1, hs)  # (B, nh, 1, hs): row i of KV head j is query head j * g + i
    if g > 1:
        k = k.repeat_interleave(g, dim=1)  # (B, nh, S, hs)
        v = v.repeat_interleave(g, dim=1)  # (B, nh, S, hs)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale)  # (B, nh, T, hs)


class Qwen2RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()  # statistics in fp32 even under bf16
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Qwen2Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        C, nh, nkv, hs = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.nh, self.nkv, self.hs, self.layer_idx = nh, nkv, hs, layer_idx
        self.q_proj = nn.Linear(C, nh * hs, bias=config.qkv_bias)
        self.k_proj = nn.Linear(C, nkv * hs, bias=config.qkv_bias)
        self.v_proj = nn.Linear(C, nkv * hs, bias=config.qkv_bias)
        self.o_proj = nn.Linear(nh * hs, C, bias=config.o_bias)
        self.attention_dropout = config.attention_dropout

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs) with S = past + T
        y = gqa_attention(q, k, v, attn_mask, is_causal, self.attention_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, self.nh * self.hs)  # (B, T, nh * hs)
        return self.o_proj(y)


class Qwen2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = bool(config.mlp_bias)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Qwen2DecoderLayer(nn.Module):
    attn_cls = Qwen2Attention  # (Qwen3's block swaps in its attention: models/qwen3.py)

    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self.attn_cls(config, layer_idx)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Qwen2MLP(config)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, is_causal, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2ForCausalLM(nn.Module):
    """Qwen2 / Llama with a language-model head; attribute names mirror the HF checkpoint keys."""
    layer_cls = Qwen2DecoderLayer  # Qwen3 swaps in its block (models/qwen3.py)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList([self.layer_cls(config, i) for i in range(config.num_hidden_layers)]),
            norm=Qwen2RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, return_hidden=False):
        """input_ids [B, T]; attention_mask [B, past + T] (1 real, 0 padding) -> fp32 logits [B, T, V],
        or the final hidden states [B, T, C] (after the final norm) when return_hidden."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, T, B, input_ids.device)
        attn_mask, is_causal = attention_mask_4d(attention_mask, past, T, input_ids.device)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype, self.config.rope)
        for layer in self.model.layers:
            x = layer(x, cos, sin, attn_mask, is_causal, cache)
        x = self.model.norm(x)
        if cache is not None:
            cache.advance(T)
        if return_hidden:
            return x
        return self.lm_head(x).float()  # (B, T, V)

    # ------------------------------------------------------------------------- checkpoints

    def _hf_params(self):
        """{HF key: (parameter, transposed)}; nn.Linear already stores [out, in] like HF."""
        return {name: (p, False) for name, p in self.named_parameters()}  # a tied lm_head is listed once

    def load_hf_state_dict(self, sd):
        """Load HF Qwen2/Llama tensors (with or without the `model.` prefix), strictly."""
        clean = {}
        for k, t in sd.items():
            if k.endswith("rotary_emb.inv_freq"):
                continue  # recomputed from rope_theta
            if k == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding matrix is the head
            clean[k if k.startswith(("model.", "lm_head.")) else "model." + k] = t
        copy_hf_tensors(self._hf_params(), clean, self.config.model_type)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hf_state_dict(self):
        """{HF key: tensor} in Qwen2ForCausalLM layout (tied lm_head omitted)."""
        return {k: p.detach() for k, (p, _) in self._hf_params().items()}
