"""LoRA (Hu et al. 2021) in pure PyTorch: low-rank adapters on a frozen model, saved in PEFT's layout.

A target nn.Linear y = x W^T + b becomes

    y = x W^T + b + (dropout(x) A^T B^T) * alpha / r        A [r, in] Kaiming-uniform, B [out, r] zeros

so training starts from exactly the base model, and only A and B (r * (in + out) numbers per
layer) get gradients and optimizer state. merge folds B A * alpha / r into W, giving a plain model
again. Adapters are written as PEFT does (`peft.PeftModel.save_pretrained`): adapter_config.json and
adapter_model.safetensors with keys `base_model.model.<module>.lora_A.weight` ([r, in]) and
`...lora_B.weight` ([out, r]); `PeftModel.from_pretrained(base, folder)` opens them. Our GPT-2 keeps
its c_attn / c_proj / c_fc weights as nn.Linear [out, in] while Hugging Face's GPT-2 stores Conv1D
[in, out]: the A and B matrices are the same either way, and `fan_in_fan_out: true` tells PEFT to
transpose B A before adding it to a Conv1D weight.

    add_lora(model, rank=16, alpha=32, dropout=0.05, targets="auto")   # in place; returns the model
    with merged(model): save_pretrained(model, tok, "out/merged")       # the merged model, model unchanged
    save_adapter(model, "out/adapter", base="models/qwen2.5-0.5b"); load_adapter(model, "out/adapter")
"""
import json
import math
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update. `weight` and `bias` stay the base
    layer's own Parameters, so everything that reads them (saving, weight tying) is unchanged."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as PEFT does
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        y = nn.functional.linear(x, self.weight, self.bias)
        return y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def delta(self):
        """B A * alpha / r, the [out, in] update merge adds to the weight."""
        return (self.lora_B @ self.lora_A) * self.scale

    def merged_linear(self, device=None):
        """A plain nn.Linear holding W + B A * alpha / r (new tensors; this module is unchanged)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = nn.Parameter((self.weight + self.delta()).detach().to(device or self.weight.device),
                                  requires_grad=False)
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().to(device or self.bias.device), requires_grad=False)
        return lin


def valid_targets(model):
    """Names (the last part of the module path) of the nn.Linear layers LoRA may wrap: all but lm_head."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (nn.Linear, LoRALinear)) and name != "lm_head"})


def resolve_targets(model, targets):
    """'auto' or a comma-separated list -> the list of names; unknown names are refused, listing the valid ones."""
    if targets == "auto":  # as PEFT's "all-linear": GPT-2 c_attn, c_proj, c_fc; Qwen2 / Llama q, k, v, o,
        return valid_targets(model)  # gate, up, down_proj (not the lm_head, tied to the embeddings in most)
    names = [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets)
    bad = [t for t in names if t not in valid_targets(model)]
    if bad or not names:
        raise ValueError(f"--lora-targets: {', '.join(bad) or 'nothing given'} is not a linear layer of this "
                         f"{model.config.to_dict()['model_type']} model; valid: {', '.join(valid_targets(model))}")
    return names


def add_lora(model, rank, alpha, dropout=0.0, targets="auto"):
    """Freeze every parameter of `model` and wrap each target nn.Linear in a LoRALinear (in place).
    Returns the model; model.lora_config records the settings for save_adapter."""
    names = resolve_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for path, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in names and f"{path}.{child_name}".lstrip(".") != "lm_head":
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
    model.lora_config = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": names}
    return model


def lora_layers(model):
    """{module path: LoRALinear} in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _swap(model, path, new):
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@contextmanager
def merged(model, device="cpu"):
    """Inside the block, every LoRALinear of `model` is replaced by a plain nn.Linear with merged
    weights on `device` (for saving: the model reads as an ordinary Hugging Face model); on exit the
    LoRA layers are put back untouched, so training resumes bit for bit. No-op without adapters."""
    layers = lora_layers(model)
    with torch.no_grad():
        for path, m in layers.items():
            _swap(model, path, m.merged_linear(device))
    try:
        yield model
    finally:
        for path, m in layers.items():
            _swap(model, path, m)


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight for good (W += B A * alpha / r); returns the plain model."""
    for path, m in lora_layers(model).items():
        _swap(model, path, m.merged_linear())
    model.__dict__.pop("lora_config", None)
    return model


def save_adapter(model, folder, base_model_name_or_path=None):
    """Write the adapters in PEFT's layout (the folder must exist or its parent must)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for path, m in lora_layers(model).items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = m.lora_A.detach().cpu().contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = m.lora_B.detach().cpu().contiguous()
    save_file(tensors, folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", **model.lora_config, "bias": "none",
           "fan_in_fan_out": model.config.to_dict()["model_type"] == "gpt2",  # HF GPT-2 stores Conv1D [in, out]
           "base_model_name_or_path": str(base_model_name_or_path) if base_model_name_or_path else None,
           "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
           "use_dora": False}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


@torch.no_grad()
def load_adapter(model, folder):
    """Copy a PEFT-layout adapter into a model that add_lora prepared with the same targets and rank;
    every adapter key must match a LoRA layer, with the same shape."""
    folder = Path(folder)
    sd = load_file(folder / ADAPTER_WEIGHTS)
    layers = lora_layers(model)
    want = {f"base_model.model.{p}.lora_{ab}.weight": getattr(m, f"lora_{ab}") for p, m in layers.items()
            for ab in "AB"}
    missing, unexpected = sorted(want.keys() - sd.keys()), sorted(sd.keys() - want.keys())
    if missing or unexpected:
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: does not fit this model's LoRA layers (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}): same --lora-targets?")
    for k, p in want.items():
        if sd[k].shape != p.shape:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS}: {k} has shape {tuple(sd[k].shape)}, the model "
                             f"{tuple(p.shape)}: same --lora-rank?")
        p.copy_(sd[k])
    return model
