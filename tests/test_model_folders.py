"""Bad model folders: each gets a one-line ModelFolderError naming the file and the key or field,
before anything big is read or allocated, and the scripts print it without a traceback.

Covers: garbage / truncated model.safetensors, malformed config.json or one that is a list,
wrong types and non-positive values for every size field of GPT-2, Qwen2 and BERT, corrupt
tokenizer files, a BERT folder given as the language model (and the reverse), shard indexes
pointing outside the folder, BERT is_decoder, and configs with absurd sizes refused against the
safetensors header (checked by making reading and allocating fail if they were reached).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.common import DataError
from models import hf_io, load_pretrained, save_pretrained
from models.bert import BertConfig, BertModel
from models.checks import ModelFolderError
from models.gpt2 import GPT2Config, GPT2LMHeadModel
from models.qwen2 import Qwen2Config, Qwen2ForCausalLM

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

ROOT = Path(__file__).resolve().parents[1]

# the size fields of each config.json (a spec written here, independent of models/checks.py)
SIZES = {
    "gpt2": ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"],
    "qwen2": ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings"],
    "bert": ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size"],
}


def tiny(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    if kind in ("qwen2", "qwen2_untied"):
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                            tie_word_embeddings=kind == "qwen2"))
    return BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=32))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{kind: a model folder written by save_pretrained (no tokenizer)}."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("gpt2", "qwen2", "qwen2_untied", "bert"):
        save_pretrained(tiny(kind), None, root / kind)
        out[kind] = root / kind
    return out


def copy(src, dst, **config_changes):
    shutil.copytree(src, dst)
    if config_changes:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config_changes}))
    return dst


def refused(folder, pattern, **kw):
    """load_pretrained raises ModelFolderError (a DataError, one line) matching pattern."""
    with pytest.raises(ModelFolderError, match=pattern) as e:
        load_pretrained(folder, tokenizer=kw.pop("tokenizer", False), **kw)
    assert isinstance(e.value, DataError) and "\n" not in str(e.value)
    return str(e.value)


def test_the_fixtures_load(folders):
    for kind, folder in folders.items():
        model, _ = load_pretrained(folder, tokenizer=False, expect="bert" if kind == "bert" else "lm")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny(kind).state_dict().values()))


# ----------------------------------------------------------------------------- config.json

@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "bert"])
@pytest.mark.parametrize("value", [0, -3, "4", 4.0, True])
def test_every_size_field_is_checked(folders, kind, value, tmp_path):
    cfg = json.loads((folders[kind] / "config.json").read_text())
    for field in SIZES[kind]:
        d = tmp_path / field
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, field: value}))  # no weights: refused before them
        want = "a positive integer" if isinstance(value, int) and not isinstance(value, bool) else "an integer"
        msg = refused(d, rf"config\.json, field '{field}': must be {want}")
        assert str(d / "config.json") in msg


@pytest.mark.parametrize("field, value, want", [
    ("layer_norm_epsilon", "1e-5", "a number"), ("layer_norm_epsilon", float("nan"), "a finite number"),
    ("scale_attn_weights", "yes", "true or false"), ("activation_function", 3, "a string"),
    ("n_layer", None, "a positive integer, got null")])
def test_wrong_types_name_the_field(folders, field, value, want, tmp_path):
    copy(folders["gpt2"], tmp_path / "m", **{field: value})
    refused(tmp_path / "m", rf"config\.json, field '{field}': must be {want}")


def test_malformed_config_and_a_list(folders, tmp_path):
    copy(folders["gpt2"], tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text('{"model_type": "gpt2",\n "n_layer": 2,,}')
    refused(tmp_path / "a", r"a/config\.json, line 2: malformed JSON")
    copy(folders["gpt2"], tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text('[{"model_type": "gpt2"}]')
    refused(tmp_path / "b", r"b/config\.json: expected a JSON object \{\.\.\.\}, got a list")
    (tmp_path / "b" / "config.json").write_bytes(b"\xff\xfe garbage")
    refused(tmp_path / "b", r"b/config\.json: not UTF-8")


def test_class_checks_name_the_file(folders, tmp_path):
    copy(folders["gpt2"], tmp_path / "m", n_head=3)  # 16 is not divisible by 3
    refused(tmp_path / "m", r"m/config\.json: n_embd 16 is not divisible by n_head 3")
    copy(folders["gpt2"], tmp_path / "t", model_type="t5")
    refused(tmp_path / "t", r"t/config\.json, field 'model_type': unsupported model_type 't5'")


@pytest.mark.parametrize("field", ["is_decoder", "add_cross_attention"])
def test_bert_decoder_configs_are_refused(folders, field, tmp_path):
    copy(folders["bert"], tmp_path / "m", **{field: True})
    refused(tmp_path / "m", rf"m/config\.json: BERT {field}=true .* not implemented")
    copy(folders["bert"], tmp_path / "ok", **{field: False})  # as transformers writes by default
    load_pretrained(tmp_path / "ok", tokenizer=False)


def test_bert_folder_as_language_model_and_the_reverse(folders):
    refused(folders["bert"], r"config\.json, field 'model_type': 'bert' is an encoder .* not a language model",
            expect="lm")
    for kind in ("gpt2", "qwen2"):
        refused(folders[kind], rf"config\.json, field 'model_type': '{kind}' is a language model, not a BERT",
                expect="bert")


# ----------------------------------------------------------------------------- weights

def test_garbage_and_truncated_safetensors(folders, tmp_path):
    d = copy(folders["gpt2"], tmp_path / "m")
    st = d / "model.safetensors"
    good = st.read_bytes()
    st.write_bytes(os.urandom(3000))
    refused(d, r"m/model\.safetensors: truncated or not a safetensors file \(3000 bytes\)")
    st.write_bytes(b"")
    refused(d, r"m/model\.safetensors: truncated or not a safetensors file \(0 bytes\)")
    st.write_bytes((20).to_bytes(8, "little") + b"this is not json!!!!" + b"\0" * 64)
    refused(d, r"m/model\.safetensors: truncated or not a safetensors file \(its header is not JSON\)")
    st.write_bytes(good[:-100])  # a download cut short
    refused(d, r"m/model\.safetensors: truncated: tensor '.*' ends at byte \d+ of the data, but the file holds \d+")
    st.write_bytes(good)
    load_pretrained(d, tokenizer=False)


def shard(folder, outside_name):
    """Split the folder's model.safetensors in two shards and point one entry at outside_name."""
    sd = load_file(folder / "model.safetensors")
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:3]}, folder / "model-1.safetensors")
    save_file({k: sd[k] for k in keys[3:]}, folder / "model-2.safetensors")
    (folder / "model.safetensors").unlink()
    weight_map = {k: "model-1.safetensors" if i < 3 else "model-2.safetensors" for i, k in enumerate(keys)}
    weight_map[keys[0]] = outside_name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return keys[0]


@pytest.mark.parametrize("name", ["../outside.safetensors", "ABS", "sub/../../outside.safetensors",
                                  "C:\\outside.safetensors"])
def test_shard_index_pointing_outside_the_folder(folders, name, tmp_path):
    d = copy(folders["gpt2"], tmp_path / "m")
    save_file(load_file(d / "model.safetensors"), tmp_path / "outside.safetensors")  # exists, valid: still refused
    name = str(tmp_path / "outside.safetensors") if name == "ABS" else name
    key = shard(d, name)
    shown = re.escape(repr(name))  # the message quotes the name with repr (a backslash doubled)
    refused(d, rf"model\.safetensors\.index\.json, field 'weight_map': shard {shown} \(for '{key}'\) "
               r"is outside the model folder")


def test_shard_index_malformed_or_without_weight_map(folders, tmp_path):
    d = copy(folders["gpt2"], tmp_path / "m")
    shard(d, "model-1.safetensors")
    load_pretrained(d, tokenizer=False)  # a sound sharded folder loads
    (d / "model.safetensors.index.json").write_text('{"weight_map": ')
    refused(d, r"m/model\.safetensors\.index\.json, line 1: malformed JSON")
    (d / "model.safetensors.index.json").write_text('{"metadata": {}}')
    refused(d, r"m/model\.safetensors\.index\.json, field 'weight_map': must map tensor names to shard files")


@pytest.mark.parametrize("kind, changes, pattern", [
    ("gpt2", {"n_layer": 10**6}, r"config\.json, field 'n_layer': 1000000 layers, but .*model\.safetensors "
                                 r"holds tensors for at most 2"),
    ("gpt2", {"vocab_size": 10**12}, r"model\.safetensors: GPT-2: shape mismatch for transformer\.wte\.weight: "
                                     r"checkpoint has \(64, 16\), model expects \(1000000000000, 16\)"),
    ("gpt2", {"n_embd": 10**8}, r"model\.safetensors: GPT-2: shape mismatch for transformer\.wte\.weight: "
                                r"checkpoint has \(64, 16\), model expects \(64, 100000000\)"),
    ("gpt2", {"n_embd": 10**9}, r"config\.json, field 'n_embd': 1000000000 is larger than any tensor dimension in "
                                r".*model\.safetensors \(at most 64\): the model cannot be built"),
    ("qwen2", {"num_hidden_layers": 10**6}, r"field 'num_hidden_layers': 1000000 layers, but .* at most 2"),
    ("qwen2", {"intermediate_size": 10**12}, r"model\.safetensors: qwen2: shape mismatch for "
                                             r"model\.layers\.0\.mlp\.gate_proj\.weight: checkpoint has \(32, 16\), "
                                             r"model expects \(1000000000000, 16\)"),
    ("bert", {"num_hidden_layers": 10**6}, r"field 'num_hidden_layers': 1000000 layers, but .* at most 2"),
    ("bert", {"hidden_size": 10**9}, r"model\.safetensors: shape mismatch for '[\w.]+': checkpoint \([\d, ]+\), "
                                     r"model \([\d, ]*1000000000[\d, ]*\)"),
])
def test_absurd_sizes_refused_before_anything_is_read_or_allocated(folders, kind, changes, pattern, tmp_path,
                                                                    monkeypatch):
    d = copy(folders[kind], tmp_path / "m", **changes)

    def reached(*a, **k):
        raise AssertionError("tensor data read or memory allocated before the config was checked")
    monkeypatch.setattr(hf_io, "_read_weights", reached)
    monkeypatch.setattr(hf_io, "_materialize", reached)
    refused(d, pattern)


def test_strict_loading_still_works_and_a_tied_head_stays_optional(folders, tmp_path):
    # untied Qwen2 without lm_head.weight: missing; tied GPT-2 with a (redundant) lm_head.weight: fine
    d = copy(folders["qwen2_untied"], tmp_path / "u")
    sd = load_file(d / "model.safetensors")
    save_file({k: v for k, v in sd.items() if k != "lm_head.weight"}, d / "model.safetensors")
    refused(d, r"u/model\.safetensors: qwen2: missing key\(s\) in checkpoint: lm_head\.weight")
    d = copy(folders["gpt2"], tmp_path / "t")
    sd = load_file(d / "model.safetensors")
    assert "lm_head.weight" not in sd
    save_file({**sd, "lm_head.weight": sd["transformer.wte.weight"].clone()}, d / "model.safetensors")
    model, _ = load_pretrained(d, tokenizer=False)
    assert model.lm_head.weight is model.transformer.wte.weight
    save_file({**sd, "transformer.extra.weight": torch.zeros(2)}, d / "model.safetensors")
    refused(d, r"t/model\.safetensors: GPT-2: unexpected key\(s\) in checkpoint: transformer\.extra\.weight")


# ----------------------------------------------------------------------------- tokenizer files

def test_corrupt_tokenizer_files_name_the_file(folders, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    d = copy(folders["gpt2"], tmp_path / "m")
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.save(str(d / "tokenizer.json"))
    load_pretrained(d)  # a sound tokenizer loads
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text[: len(text) // 2])
    refused(d, r"m/tokenizer\.json: not a valid tokenizer file \(", tokenizer=True)
    (d / "tokenizer.json").write_text(json.dumps({"model": {"type": "NoSuchModel"}}))
    refused(d, r"m/tokenizer\.json: not a valid tokenizer file \(", tokenizer=True)
    (d / "tokenizer.json").write_text(text)
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"')
    refused(d, r"m/tokenizer_config\.json, line 1: malformed JSON", tokenizer=True)
    (d / "tokenizer_config.json").unlink()
    (d / "special_tokens_map.json").write_text("[]")
    refused(d, r"m/special_tokens_map\.json: expected a JSON object", tokenizer=True)
    (d / "special_tokens_map.json").unlink()
    (d / "tokenizer.json").unlink()
    (d / "vocab.json").write_text("not json")
    (d / "merges.txt").write_text("#version: 0.2\n")
    refused(d, r"m/vocab\.json: with merges\.txt: not a valid BPE vocabulary", tokenizer=True)


# ----------------------------------------------------------------------------- the scripts

@pytest.mark.slow
@pytest.mark.parametrize("script, kind, problem", [
    ("train_lm.py", "bert", {}), ("evaluate.py", "gpt2", {"n_head": 0}), ("score_severity.py", "gpt2", {}),
    ("train_classifier.py", "qwen2", {})])
def test_scripts_print_one_line_without_traceback(folders, script, kind, problem, tmp_path):
    d = copy(folders[kind], tmp_path / "model", **problem)
    args = ["--model", str(d), "--out", str(tmp_path / "out")]
    if script == "evaluate.py":
        args += ["--data", str(ROOT / "data" / "demo.jsonl")]
    proc = subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(d / "config.json") in last, proc.stderr
    assert ("field 'n_head'" if problem else "field 'model_type'") in last
    assert not (tmp_path / "out").exists()
