"""GPT-2 (AraGPT2-base / AraGPT2-medium) in plain PyTorch.

Matches Hugging Face `GPT2LMHeadModel` (transformers/models/gpt2/modeling_gpt2.py) number for
number: pre-LayerNorm blocks, learned absolute positions, fused qkv projection, tied lm_head.
AraGPT2-base/-medium are plain GPT-2 (vocab 64000, gelu_new, 1024 positions, eos = bos = 0).

Checkpoint layout: HF stores the attention/MLP projections as `Conv1D` with weights [in, out];
we use nn.Linear ([out, in]), so `c_attn`, `c_proj` and `c_fc` weights are transposed on load and
back in `hf_state_dict()`. Keys may carry the `transformer.` prefix (GPT2LMHeadModel) or not (a
bare GPT2Model). The `attn.bias` / `attn.masked_bias` buffers of old checkpoints are ignored.

AraGPT2-large/-mega use the Grover layout (a LayerNorm `emb_norm` after the embeddings, ln_1
before the MLP, ln_2 after each block, no final ln_f): models/aragpt2.py; this class refuses
their weights rather than silently mis-loading them.

This file also holds two helpers shared with models/qwen2.py: `copy_hf_tensors` (strict loading)
and `attention_mask_4d` (causal + padding mask for SDPA).
"""
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # OpenAI's tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class GPT2Config:
    """GPT-2 hyper-parameters under their config.json names (defaults = HF's GPT2Config)."""
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None -> 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # eager-attention precision detail; SDPA needs nothing
    add_cross_attention: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"GPT-2 activation_function {self.activation_function!r} is not implemented "
                             f"(have: {', '.join(ACTIVATIONS)})")
        if self.add_cross_attention:
            raise ValueError("GPT-2 with add_cross_attention=True (encoder-decoder use) is not implemented")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict; keys this class does not know are ignored."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_dict(self):
        """config.json dict that transformers opens as GPT2LMHeadModel."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        return {**d, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}


# ----------------------------------------------------------------------------- shared helpers

def copy_hf_tensors(params, sd, model_name):
    """Strictly copy checkpoint tensors into parameters.

    params: {HF key: (parameter, transposed)}, the model's checkpoint layout; sd: {HF key: tensor}
    with ignorable buffers and prefix variants already removed. Everything is checked before
    anything is copied, so a bad checkpoint never leaves a half-loaded model. Tensors are cast to
    the parameter's dtype and device; parameters keep their identity (tied weights stay tied).
    """
    unexpected = [k for k in sd if k not in params]
    if unexpected:
        raise ValueError(f"{model_name}: unexpected key(s) in checkpoint: {', '.join(sorted(unexpected))}")
    missing = [k for k in params if k not in sd]
    if missing:
        raise ValueError(f"{model_name}: missing key(s) in checkpoint: {', '.join(missing)}")
    for key, (p, transposed) in params.items():
        want = tuple(p.shape[::-1]) if transposed else tuple(p.shape)
        if tuple(sd[key].shape) != want:
            raise ValueError(f"{model_name}: shape mismatch for {key}: checkpoint has "
                             f"{tuple(sd[key].shape)}, model expects {want}")
    with torch.no_grad():
        for key, (p, transposed) in params.items():
            p.copy_(sd[key].t() if transposed else sd[key])


def attention_mask_4d(attention_mask, past, T, device=None):
    """Mask arguments for F.scaled_dot_product_attention: returns (attn_mask, is_causal).

    attention_mask: [B, past + T] (1 = real token, 0 = padding) or None; the T queries sit at
    positions past .. past+T-1 of the key sequence. Without padding no mask is materialized
    (is_causal for a fresh sequence, nothing for a one-token decode step). A one-token decode step
    with a mask builds it without asking the host whether it has padding (no sync per token).
    device: where to build masks when attention_mask is None (the inputs' device).
    """
    device = attention_mask.device if attention_mask is not None else device
    decode_step = attention_mask is not None and T == 1 and past > 0
    if not decode_step and (attention_mask is None or bool(attention_mask.all())):
        if past == 0:
            return None, True
        if T == 1:
            return None, False  # one new query sees every cached key
        attention_mask = None
    S = past + T
    q_pos = torch.arange(past, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    # query i sees key j iff j <= i (causal) and j is a real token; every query also sees itself,
    # so the all-padding rows of a left-padded prompt are never fully masked (SDPA would give NaN)
    allowed = k_pos <= q_pos  # (T, S)
    if attention_mask is not None:
        allowed = (allowed[None] & attention_mask.bool()[:, None, :]) | (k_pos == q_pos)  # (B, T, S)
    else:
        allowed = allowed[None]  # (1, T, S)
    return allowed[:, None], False  # (B, 1, T, S)


def default_position_ids(attention_mask, past, T, B, device):
    """Positions: cumsum(mask) - 1 (clamped at 0) so left padding does not shift them, else arange."""
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
    return torch.arange(past, past + T, device=device)[None].expand(B, T)  # (B, T)


# ----------------------------------------------------------------------------- the model

class GPT2Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_embd, self.layer_idx = config.n_head, config.n_embd, layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        hs = config.n_embd // config.n_head
        self.scale = hs ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)

    def forward(self, x, attn_mask, is_causal, cache):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S, hs) with S = past + T
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=self.scale,
                                           dropout_p=self.attn_pdrop if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPT2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x, attn_mask, is_causal, cache):
        x = x + self.attn(self.ln_1(x), attn_mask, is_causal, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with a language-model head; attribute names mirror the HF checkpoint keys."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.n_positions, config.n_embd),
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([GPT2Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2 paper: residual projections scaled by 1/sqrt(2 * n_layer) at init (as HF does)
        for block in self.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=config.initializer_range / math.sqrt(2 * config.n_layer))
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, return_hidden=False):
        """input_ids [B, T]; attention_mask [B, past + T] (1 real, 0 padding) -> fp32 logits [B, T, V],
        or the final hidden states [B, T, C] (after ln_f) when return_hidden."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens exceeds GPT-2's n_positions={self.config.n_positions}")
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, past, T, B, input_ids.device)
        attn_mask, is_causal = attention_mask_4d(attention_mask, past, T, input_ids.device)
        tr = self.transformer
        x = tr.drop(tr.wte(input_ids) + tr.wpe(position_ids))  # (B, T, C)
        for block in tr.h:
            x = block(x, attn_mask, is_causal, cache)
        x = tr.ln_f(x)
        if cache is not None:
            cache.advance(T)
        if return_hidden:
            return x
        return self.lm_head(x).float()  # (B, T, V)

    # ------------------------------------------------------------------------- checkpoints

    def _hf_params(self):
        """{HF key: (parameter, transposed)}: the one place the checkpoint layout is written down."""
        out = {}
        for name, p in self.named_parameters():  # a tied lm_head is the wte Parameter: listed once
            transposed = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))  # Conv1D [in, out]
            out[name] = (p, transposed)
        return out

    def load_hf_state_dict(self, sd):
        """Load HF GPT-2 tensors (with or without the `transformer.` prefix), strictly."""
        if any(k.endswith("emb_norm.weight") for k in sd):
            raise ValueError("this checkpoint uses the Grover layout (AraGPT2-large/-mega): its LayerNorm "
                             "placement differs from GPT-2 (emb_norm after the embeddings, ln_1 before the MLP, "
                             "ln_2 after each block, no ln_f): load it with models/aragpt2.py "
                             "(models.load_pretrained does so by itself)")
        clean = {}
        for k, t in sd.items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # old causal-mask buffers, not weights
            if k == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # tied: the embedding matrix is the head
            clean[k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k] = t
        copy_hf_tensors(self._hf_params(), clean, "GPT-2")
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def hf_state_dict(self):
        """{HF key: tensor} in GPT2LMHeadModel layout (Conv1D weights [in, out]; tied lm_head omitted)."""
        return {k: (p.detach().t().contiguous() if tr else p.detach()) for k, (p, tr) in self._hf_params().items()}
