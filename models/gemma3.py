"""Gemma-3 text decoder (Gemma-3-1B and the text tower's layout) in plain PyTorch.

Matches Hugging Face `Gemma3ForCausalLM` (transformers/models/gemma3/modeling_gemma3.py, config
model_type "gemma3_text") number for number. It is a Llama-style decoder (RoPE, GQA, gated MLP,
models/qwen2.py's checkpoint layout) with these differences:
  - RMSNorm scales by (1 + w) (weights stored as offsets from 1, initialised to 0) and multiplies
    in fp32 before casting back;
  - four norms per block: input_layernorm and post_attention_layernorm around the attention,
    pre_feedforward_layernorm and post_feedforward_layernorm around the MLP (the post-norms
    apply to the branch output, before the residual sum);
  - q_norm / k_norm: that RMSNorm over each head's hs features, before RoPE (as Qwen3);
  - attention scale query_pre_attn_scalar ** -0.5 instead of hs ** -0.5;
  - embeddings multiplied by sqrt(hidden_size) (rounded to the activation dtype, as HF does);
  - gated MLP with tanh-GELU (`hidden_activation` gelu_pytorch_tanh) instead of SiLU;
  - `layer_types`: "sliding_attention" layers see only the last `sliding_window` key slots
    (key j visible from query i iff i - window < j <= i, slots counted in the cache, padding
    included, as HF's mask does), "full_attention" layers see everything; by default 5 sliding
    then 1 full (`sliding_window_pattern` 6);
  - two RoPE settings: full layers rope_theta (1e6) with an optional scaling ("linear" 8 in
    Gemma-3 4B+), sliding layers rope_local_base_freq (1e4) unscaled. transformers 5.x writes
    both as rope_parameters {"full_attention": {...}, "sliding_attention": {...}}; both forms
    are read.
The KV cache (models/generate.py) keeps every slot; the sliding layers' mask is what limits them to
the window, so cached decoding equals recomputation however long the sequence grows.

Refused by name: attn_logit_softcapping and final_logit_softcapping (Gemma-2's soft-capping; the
fused loss has no soft-cap), use_bidirectional_attention, other RoPE scalings, the multimodal
"gemma3" and the "gemma2" / "gemma" model types. Gemma-3-1B: hidden 1152, 26 layers, 4 heads,
1 KV head, head_dim 256, intermediate 6912, vocab 262144, window 512, tied.
"""
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from models.gpt2 import ACTIVATIONS, attention_mask_4d, default_position_ids
from models.qwen2 import Qwen2ForCausalLM, apply_rope, gqa_attention, rope_cos_sin
from models.rope import rope_spec

LAYER_TYPES = ("sliding_attention", "full_attention")
REFUSED_TYPES = {
    "gemma3": "a Gemma-3 vision-language checkpoint: only the text model (model_type gemma3_text, "
              "Gemma3ForCausalLM, e.g. Gemma-3-1B) is supported",
    "gemma2": "Gemma-2 is not implemented (its attention and final-logit soft-capping would also need a "
              "soft-capped fused loss); Gemma-3 text models are supported",
    "gemma": "Gemma-1 is not implemented; Gemma-3 text models are supported",
}


@dataclass
class Gemma3TextConfig:
    """Gemma-3 text hyper-parameters under their config.json names (defaults = HF's Gemma3TextConfig)."""
    model_type: str = "gemma3_text"
    vocab_size: int = 262208
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 26
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0  # full-attention layers (4.x name)
    rope_local_base_freq: float = 10_000.0  # sliding layers (4.x name)
    rope_scaling: dict | None = None  # full-attention layers only (4.x name)
    rope_parameters: dict | None = None  # 5.x: {"full_attention": {...}, "sliding_attention": {...}}
    attention_bias: bool = False
    attention_dropout: float = 0.0
    query_pre_attn_scalar: float = 256
    sliding_window: int | None = 4096
    layer_types: list | None = None
    sliding_window_pattern: int = 6  # used only when layer_types is absent
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    use_bidirectional_attention: bool | None = False
    bos_token_id: int | None = 2
    eos_token_id: int | list | None = 1
    pad_token_id: int | None = 0

    def __post_init__(self):
        if self.model_type in REFUSED_TYPES:
            raise ValueError(f"config model_type {self.model_type!r}: {REFUSED_TYPES[self.model_type]}")
        if self.model_type != "gemma3_text":
            raise ValueError(f"Gemma3TextConfig opens model_type gemma3_text, not {self.model_type!r}")
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(self, name) is not None:
                raise ValueError(f"config {name}={getattr(self, name)} (soft-capping) is not implemented")
        if self.use_bidirectional_attention:
            raise ValueError("config use_bidirectional_attention=true is not implemented (causal LM only)")
        if self.hidden_activation not in ACTIVATIONS:
            raise ValueError(f"config hidden_activation {self.hidden_activation!r} is not implemented")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.layer_types is None:  # HF's default pattern: every sliding_window_pattern-th layer is full
            self.layer_types = ["sliding_attention" if (i + 1) % self.sliding_window_pattern else "full_attention"
                                for i in range(self.num_hidden_layers)]
        if len(self.layer_types) != self.num_hidden_layers or any(t not in LAYER_TYPES for t in self.layer_types):
            raise ValueError(f"config layer_types must list {self.num_hidden_layers} of {', '.join(LAYER_TYPES)}")
        if "sliding_attention" in self.layer_types and not (isinstance(self.sliding_window, int) and self.sliding_window > 0):
            raise ValueError(f"config sliding_window {self.sliding_window!r}: sliding layers need a positive window")
        self.rope = self._rope_per_layer_type()

    def _rope_per_layer_type(self):
        """{layer type: (theta, scaling spec)} from rope_parameters (5.x) or rope_theta /
        rope_local_base_freq / rope_scaling (4.x)."""
        p = self.rope_parameters
        if p is not None:
            if not isinstance(p, dict) or not set(p) <= set(LAYER_TYPES):
                raise ValueError("config rope_parameters: Gemma-3 expects {\"full_attention\": {...}, "
                                 "\"sliding_attention\": {...}}")
            full = rope_spec(p.get("full_attention"), "rope_parameters.full_attention")
            local = rope_spec(p.get("sliding_attention"), "rope_parameters.sliding_attention")
        else:
            full, local = rope_spec(self.rope_scaling, "rope_scaling"), {"rope_type": "default"}
        return {"full_attention": (float(full.get("rope_theta", self.rope_theta)), full),
                "sliding_attention": (float(local.get("rope_theta", self.rope_local_base_freq)), local)}

    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict; keys this class does not know are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self):
        """config.json dict that transformers opens as Gemma3ForCausalLM."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {**d, "architectures": ["Gemma3ForCausalLM"]}


def sliding_mask_4d(attention_mask, past, T, window, device):
    """(attn_mask, is_causal) for SDPA in a sliding-window layer: query slot i sees key slot j iff
    i - window < j <= i and j is a real token (every query also sees itself, so all-padding rows are
    never fully masked). While the whole sequence fits in the window this is the plain causal mask."""
    S = past + T
    if S <= window:
        return attention_mask_4d(attention_mask, past, T)
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    allowed = (k_pos <= q_pos) & (k_pos > q_pos - window)  # (T, S)
    if attention_mask is not None:
        allowed = (allowed[None] & attention_mask.bool()[:, None, :]) | (k_pos == q_pos)  # (B, T, S)
    else:
        allowed = allowed[None]  # (1, T, S)
    return allowed[:, None], False  # (B, 1, T, S)


class Gemma3RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as an offset from 1
        self.eps = eps

    def forward(self, x):
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)  # scale in fp32, then cast (unlike Llama)


class Gemma3Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        C, nh, nkv, hs = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.nh, self.nkv, self.hs, self.layer_idx = nh, nkv, hs, layer_idx
        self.q_proj = nn.Linear(C, nh * hs, bias=config.attention_bias)
        self.k_proj = nn.Linear(C, nkv * hs, bias=config.attention_bias)
        self.v_proj = nn.Linear(C, nkv * hs, bias=config.attention_bias)
        self.o_proj = nn.Linear(nh * hs, C, bias=config.attention_bias)
        self.q_norm = Gemma3RMSNorm(hs, config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(hs, config.rms_norm_eps)
        self.scale = config.query_pre_attn_scalar ** -0.5
        self.attention_dropout = config.attention_dropout

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        B, T, C = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.nh, self.hs)).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_norm(self.k_proj(x).view(B, T, self.nkv, self.hs)).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, S, hs): every slot; the mask applies the window
        # a decode step's mask is (B or 1, 1, 1, S) in sliding layers too (the window lives in the mask)
        y = gqa_attention(q, k, v, attn_mask, is_causal, self.attention_dropout if self.training else 0.0, self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, self.nh * self.hs)  # (B, T, nh * hs)
        return self.o_proj(y)


class Gemma3MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACTIVATIONS[config.hidden_activation]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))  # GeGLU


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        C, eps = config.hidden_size, config.rms_norm_eps
        self.layer_type = config.layer_types[layer_idx]
        self.input_layernorm = Gemma3RMSNorm(C, eps)
        self.self_attn = Gemma3Attention(config, layer_idx)
        self.post_attention_layernorm = Gemma3RMSNorm(C, eps)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(C, eps)
        self.mlp = Gemma3MLP(config)
        self.post_feedforward_layernorm = Gemma3RMSNorm(C, eps)

    def forward(self, x, cos, sin, attn_mask, is_causal, cache):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, attn_mask,
                                                             is_causal, cache))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3ForCausalLM(nn.Module):
    """Gemma-3 text model with a language-model head; attribute names mirror the HF checkpoint keys."""

    # the checkpoint layout (model.embed_tokens, model.layers.N..., model.norm, lm_head) is Qwen2's
    _hf_params = Qwen2ForCausalLM._hf_params
    load_hf_state_dict = Qwen2ForCausalLM.load_hf_state_dict
    hf_state_dict = Qwen2ForCausalLM.hf_state_dict

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.hidden_size),
            layers=nn.ModuleList([Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers)]),
            norm=Gemma3RMSNorm(config.hidden_size, config.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=config.initializer_range)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, return_hidden=False):
        """input_ids [B, T]; attention_mask [B, past + T] (1 real, 0 padding) -> fp32 logits [B, T, V],
        or the final hidden states [B, T, C] (after the final norm) when return_hidden."""
        cfg = self.config
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, T, B, input_ids.device)
        masks = {"full_attention": attention_mask_4d(attention_mask, past, T)}
        if "sliding_attention" in cfg.layer_types:
            masks["sliding_attention"] = sliding_mask_4d(attention_mask, past, T, cfg.sliding_window, input_ids.device)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        # sqrt(C) rounded to x's dtype, as HF; a tensor, not .item(), so a compiled decode step has no graph break
        x = x * torch.tensor(cfg.hidden_size ** 0.5, dtype=x.dtype, device=x.device)
        rope = {t: rope_cos_sin(position_ids, cfg.head_dim, theta, x.dtype, spec)
                for t, (theta, spec) in cfg.rope.items() if t in masks}
        for layer in self.model.layers:
            (cos, sin), (attn_mask, is_causal) = rope[layer.layer_type], masks[layer.layer_type]
            x = layer(x, cos, sin, attn_mask, is_causal, cache)
        x = self.model.norm(x)
        if cache is not None:
            cache.advance(T)
        if return_hidden:
            return x
        return self.lm_head(x).float()  # (B, T, V)
