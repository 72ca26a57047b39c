"""Configs of the second-wave architectures (models/rope.py, models/qwen3.py, models/gemma3.py,
models/aragpt2.py): RoPE scaling against transformers' own frequency functions, and every
unsupported field refused by name. Forward/generation parity lives in tests/test_lm_models.py."""

import pytest
import torch

from models.qwen2 import Qwen2Config
from models.qwen3 import Qwen3Config
from models.rope import rope_inv_freq, rope_spec

transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("rope", [LLAMA3, dict(LLAMA3, original_max_position_embeddings=64, factor=8.0),
                                  {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                                  {"rope_type": "default", "rope_theta": 1e4}])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_inv_freq_matches_transformers(rope, head_dim):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                   rope_parameters=dict(rope))
    if rope["rope_type"] == "default":
        ref = 1.0 / (rope["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        ref = ref.float()
    else:
        ref, factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
        assert factor == 1.0  # neither scaling rescales cos/sin
    mine = rope_inv_freq(head_dim, rope["rope_theta"], rope_spec(rope, "rope_parameters"))
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=0)
    if rope["rope_type"] != "default":  # and the scaling did something
        assert not torch.allclose(mine, rope_inv_freq(head_dim, rope["rope_theta"]))


def test_rope_fields_refused_by_name():
    with pytest.raises(ValueError, match=r"rope_scaling: RoPE scaling type 'yarn' is not implemented"):
        Qwen2Config.from_dict({"rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match=r"rope_parameters: RoPE scaling 'llama3' needs 'low_freq_factor'"):
        Qwen2Config.from_dict({"rope_parameters": {k: v for k, v in LLAMA3.items() if k != "low_freq_factor"}})
    with pytest.raises(ValueError, match=r"rope_parameters.attention_factor = 2.0 is not implemented"):
        Qwen2Config.from_dict({"rope_parameters": dict(LLAMA3, attention_factor=2.0)})
    with pytest.raises(ValueError, match=r"rope_scaling.partial_rotary_factor = 0.5"):
        Qwen2Config.from_dict({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0,
                                                                       "partial_rotary_factor": 0.5}})
    # transformers 4.x form (Llama-3.2-1B's config.json): rope_theta beside rope_scaling
    cfg = Qwen2Config.from_dict({"model_type": "llama", "rope_theta": 5e5, "head_dim": 64, "hidden_size": 2048,
                                 "num_attention_heads": 32,
                                 "rope_scaling": {k: v for k, v in LLAMA3.items() if k != "rope_theta"}})
    assert cfg.rope["rope_type"] == "llama3" and cfg.rope_theta == 5e5


def test_qwen3_config():
    # Qwen3-0.6B's own config.json fields (transformers 4.51 layout)
    cfg = Qwen3Config.from_dict({"model_type": "qwen3", "hidden_size": 1024, "num_attention_heads": 16,
                                 "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1e6, "rope_scaling": None,
                                 "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
                                 "max_window_layers": 28, "tie_word_embeddings": True})
    assert cfg.head_dim == 128 and not cfg.qkv_bias and not cfg.o_bias and cfg.rope_theta == 1e6
    assert Qwen3Config.from_dict({"hidden_size": 64, "num_attention_heads": 4}).head_dim == 128  # HF's default
    assert Qwen3Config.from_dict({"attention_bias": True}).o_bias
    with pytest.raises(ValueError, match="use_sliding_window"):
        Qwen3Config.from_dict({"use_sliding_window": True, "sliding_window": 16})
    with pytest.raises(ValueError, match="rope_scaling: RoPE scaling type 'yarn'"):
        Qwen3Config.from_dict({"rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                "original_max_position_embeddings": 32768}})
    with pytest.raises(ValueError, match="Qwen3Config opens model_type qwen3, not 'qwen2'"):
        Qwen3Config.from_dict({"model_type": "qwen2"})
    with pytest.raises(ValueError, match="Qwen2Config opens model_type qwen2 or llama, not 'qwen3'"):
        Qwen2Config.from_dict({"model_type": "qwen3"})
