"""RoPE inverse frequencies: plain, "linear" and "llama3" scaling, read from a config's RoPE fields.

Matches transformers/modeling_rope_utils.py (`_compute_default_rope_parameters`,
`_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`). Both scalings change only
the inverse frequencies (their attention factor is 1), so the rotation itself stays
models/qwen2.py's `apply_rope`:

  default  inv_freq_i = theta ** (-2i / hs)
  linear   inv_freq / factor                      (positions stretched by `factor`; Gemma-3 4B+)
  llama3   by wavelength 2 pi / inv_freq against the pre-training context L (Llama-3.1/3.2):
           shorter than L / high_freq_factor: kept; longer than L / low_freq_factor: / factor;
           in between: s * f + (1 - s) * f / factor with s = (L / wavelen - low) / (high - low)

A config carries these under `rope_scaling` (transformers 4.x: {"rope_type" or "type", ...}) or
`rope_parameters` (5.x: the same plus "rope_theta"). Every other type (yarn, dynamic, longrope,
...) and every key a type does not use is refused with the field's name: a scaling we ignored
would silently change every logit beyond the first few positions.
"""
import math

import torch

# the keys each type reads besides "rope_type" / "type" / "rope_theta"
ROPE_TYPES = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def rope_spec(rope, field):
    """Validate a rope_scaling / rope_parameters dict (None = plain RoPE) and return it with its
    type under "rope_type"; `field` names the config field in errors."""
    if rope is None:
        return {"rope_type": "default"}
    if not isinstance(rope, dict):
        raise ValueError(f"config {field}: expected an object or null, got {rope!r}")
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"config {field}: RoPE scaling type {kind!r} is not implemented "
                         f"(supported: {', '.join(ROPE_TYPES)})")
    for key in sorted(ROPE_TYPES[kind] - set(rope)):
        raise ValueError(f"config {field}: RoPE scaling {kind!r} needs {key!r}")
    for key in sorted(set(rope) - ROPE_TYPES[kind] - {"rope_type", "type", "rope_theta"}):
        if key == "partial_rotary_factor" and rope[key] == 1.0:
            continue  # the whole head rotates: what we do anyway
        raise ValueError(f"config {field}.{key} = {rope[key]!r} is not implemented for RoPE type {kind!r}")
    return {**rope, "rope_type": kind}


def merged_rope_spec(rope_scaling, rope_parameters):
    """The one scaling a Llama-style config means: rope_parameters (5.x) unless it is plain and
    rope_scaling (4.x) is not. Both validated by name."""
    a, b = rope_spec(rope_scaling, "rope_scaling"), rope_spec(rope_parameters, "rope_parameters")
    return b if b["rope_type"] != "default" or a["rope_type"] == "default" else a


def rope_inv_freq(head_dim, theta, spec=None, device=None):
    """fp32 inverse frequencies [hs/2] for rotate-half RoPE, scaled per `spec` (from rope_spec)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    kind = (spec or {}).get("rope_type", "default")
    if kind == "linear":
        return inv_freq / spec["factor"]
    if kind == "llama3":
        factor, lo, hi = spec["factor"], spec["low_freq_factor"], spec["high_freq_factor"]
        L = spec["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        s = (L / wavelen - lo) / (hi - lo)  # 0 at wavelen = L / lo, 1 at wavelen = L / hi
        smooth = (1 - s) * inv_freq / factor + s * inv_freq
        out = torch.where(wavelen > L / lo, inv_freq / factor, inv_freq)  # long waves: fully scaled
        between = (wavelen >= L / hi) & (wavelen <= L / lo)
        return torch.where(between, smooth, out)
    return inv_freq
