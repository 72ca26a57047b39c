"""Configs of the second-wave architectures (models/rope.py, models/qwen3.py, models/gemma3.py,
models/aragpt2.py): RoPE scaling against transformers' own frequency functions, and every
unsupported field refused by name. Forward/generation parity lives in tests/test_lm_models.py."""

import json

import pytest
import torch

from models.qwen2 import Qwen2Config
from models.qwen3 import Qwen3Config
from models.rope import rope_inv_freq, rope_spec

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

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
    # float32 both: head_dim is a power of 2, so the exponents i / head_dim are exact; each side then
    # rounds a pow, a division and, scaled, a few more operations (<= 4 u each side): <= 8 u = 4.8e-7
    # (measured: 2 u for the default, 0 for the scaled ones; a wrong band or factor is off by >= 10%)
    torch.testing.assert_close(mine, ref, rtol=8 * 2 ** -24, atol=0)
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


GEMMA3_1B = {  # google/gemma-3-1b-pt's config.json (transformers 4.50 layout), sizes shrunk
    "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "vocab_size": 300, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 7, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16, "rope_theta": 1000000,
    "rope_local_base_freq": 10000, "rope_scaling": None, "sliding_window": 512, "sliding_window_pattern": 6,
    "final_logit_softcapping": None, "attn_logit_softcapping": None, "cache_implementation": "hybrid",
    "rms_norm_eps": 1e-6, "max_position_embeddings": 32768}


def test_gemma3_config_forms():
    from models.gemma3 import Gemma3TextConfig
    cfg = Gemma3TextConfig.from_dict(GEMMA3_1B)
    assert cfg.layer_types == ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"]
    assert cfg.rope == {"full_attention": (1e6, {"rope_type": "default"}),
                        "sliding_attention": (1e4, {"rope_type": "default"})}
    # the same config as transformers 5.x writes it reads the same
    hf = transformers.Gemma3TextConfig(**{k: v for k, v in GEMMA3_1B.items() if k not in ("architectures", "model_type")})
    again = Gemma3TextConfig.from_dict(hf.to_dict())
    kinds = lambda c: {t: (theta, spec["rope_type"]) for t, (theta, spec) in c.rope.items()}
    assert again.layer_types == cfg.layer_types and kinds(again) == kinds(cfg)
    # 4B+: linear RoPE scaling on the full-attention layers only
    big = Gemma3TextConfig.from_dict(dict(GEMMA3_1B, rope_scaling={"rope_type": "linear", "factor": 8.0}))
    assert big.rope["full_attention"][1]["factor"] == 8.0 and big.rope["sliding_attention"][1]["rope_type"] == "default"


@pytest.mark.parametrize("change, match", [
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ({"hidden_activation": "swiglu"}, "hidden_activation 'swiglu'"),
    ({"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
    ({"sliding_window": None}, "sliding_window None"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling: RoPE scaling type 'yarn'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 2.0}}},
     r"rope_parameters\.full_attention: RoPE scaling type 'dynamic'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "rope_parameters: Gemma-3 expects"),
    ({"model_type": "gemma2"}, "Gemma-2 is not implemented"),
])
def test_gemma3_refuses_by_name(change, match):
    from models.gemma3 import Gemma3TextConfig
    with pytest.raises(ValueError, match=match):
        Gemma3TextConfig.from_dict({**GEMMA3_1B, **change})


@pytest.mark.parametrize("model_type, match", [("gemma2", "soft-capping"), ("gemma3", "vision-language"),
                                               ("gemma", "Gemma-1")])
def test_other_gemmas_refused_before_reading_weights(tmp_path, model_type, match):
    from models import load_pretrained
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))  # no weights at all
    with pytest.raises(ValueError, match=f"config.json.*model_type '{model_type}'.*{match}"):
        load_pretrained(tmp_path, tokenizer=False)


@pytest.mark.slow  # builds six 0.6B-1.7B models twice on the meta device: seconds each, plus transformers' imports
def test_bench_shapes_are_the_real_models():
    """bench/train.py's real-size shapes (docs/models.md's table of parameter counts) build in our code and
    in transformers with the same parameter count (meta device: no memory). AraGPT2's Grover layout,
    which transformers lacks, has GPT-2's count (emb_norm replaces ln_f)."""
    import importlib.util
    from pathlib import Path
    from models import build_model
    spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).resolve().parents[1] / "bench/train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    count = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # tied: once
    for name in ("aragpt2-mega", "qwen2.5-1.5b", "qwen3-0.6b", "qwen3-1.7b", "llama-3.2-1b", "gemma-3-1b"):
        cfg = bench.SHAPES[name]
        with torch.device("meta"):
            ours = build_model(cfg)
            ref = bench.hf_model(cfg if cfg["model_type"] != "aragpt2" else dict(cfg, model_type="gpt2"))
        assert count(ours) == count(ref), name
