"""models/hf_io.py: Hugging Face folders in and out, checked against transformers.

Round trips for GPT-2, Qwen2 (tied and untied) and a BERT classifier: transformers save ->
our load -> our save gives the same tensors under the same keys, and transformers opens what we
save with the same logits and token ids. Also: tokenizers from vocab.json + merges.txt and from
vocab.txt, sharded checkpoints, the .bin converter, and every documented loading error.
"""
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.outputs import MARKER, OutputError
from models import Tokenizer, load_pretrained, save_pretrained
from models.bert import BertForSequenceClassification
from models.checks import ModelFolderError
from models.gpt2 import GPT2LMHeadModel
from models.qwen2 import Qwen2ForCausalLM

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|endoftext|>"
TEXTS = ["أعاني من ألم في الصدر منذ يومين", "hello world, this is a test", "طفلي عنده حرارة",
         f"سؤال{EOS}جواب", "ضيق التنفس shortness of breath!"]
V = 320  # embedding rows; the tokenizers below have fewer tokens, as Qwen2.5's does


def byte_level_bpe():
    """A tiny GPT-2-style byte-level BPE (about 300 tokens) learned from a few sentences."""
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 3 + ["the patient has a fever and a cough"] * 3, trainer)
    return tok


def hf_lm(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0, initializer_range=0.2)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=(kind == "qwen2_tied"), initializer_range=0.2,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


def hf_bert_classifier():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=64, initializer_range=0.2,
                                  id2label={0: "mild", 1: "moderate", 2: "critical"},
                                  label2id={"mild": 0, "moderate": 1, "critical": 2})
    return transformers.BertForSequenceClassification(cfg).eval()


def write_vocab_txt(folder):
    """A small WordPiece vocabulary (BERT's special tokens first)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "patient", "has", "fever", "pain", "##s",
             "##ing", "ألم", "في", "الصدر", "حرارة", "##ه", ",", ".", "!"]
    chars = sorted(set("".join(TEXTS).lower()) - {" "})
    vocab = words + [c for c in chars if c not in words] + ["##" + c for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


def hf_folder(kind, folder, **save_kw):
    """A transformers-written model folder (model + tokenizer); returns the transformers model."""
    if kind == "bert":
        model = hf_bert_classifier()
        hf_tok = transformers.BertTokenizer(str(write_vocab_txt(folder)))
    else:
        model = hf_lm(kind)
        hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(), bos_token=EOS,
                                                      eos_token=EOS, unk_token=EOS)
    model.save_pretrained(folder, **save_kw)
    hf_tok.save_pretrained(folder)
    return model


def padded(ids_list, pad=0):
    T = max(map(len, ids_list))
    ids = torch.tensor([x + [pad] * (T - len(x)) for x in ids_list])
    mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids_list])
    return ids, mask


def logits_of(model, ids, mask, ours):
    with torch.no_grad():
        if ours:
            return model(ids, attention_mask=mask)
        return model(input_ids=ids, attention_mask=mask).logits


def real(x, mask):
    """Logits at real (non-padding) positions, for causal LMs; classifier logits unchanged."""
    return x[mask.bool()] if x.dim() == 3 else x


@torch.no_grad()
def assert_same_logits(ours, hf, ids, mask):
    """Our model and a transformers model with the same weights give the same logits, compared on
    float64 copies (the float32 weights upcast exactly): the two implementations then compute the same
    float64 math in another order. The models here (d 32, MLP 48-128, 2 layers) form each logit from
    sums of at most 32 + 128 terms per block: <= 160 x 2 x u x max|logit| apart (u = 2**-53; the
    model of tests/test_lm_models.py, with 25x room), and ours rounds its logits to float32
    (`.float()` in every model file): rtol 2**-24. (Measured <= 3e-15 before that rounding; a weight
    under the wrong key or not transposed moves logits by O(0.1-1); the float32 allowance was 1e-4.)"""
    hf64 = copy.deepcopy(hf).double()
    ref = real(logits_of(hf64, ids, mask, False), mask)
    got = real(logits_of(copy.deepcopy(ours).double(), ids, mask, True), mask)
    assert ref.dtype == torch.float64 and ref.abs().max() > 0.1  # not a degenerate comparison
    atol = 25 * (32 + 128) * 2 * 2.0 ** -53 * ref.abs().max().item()
    torch.testing.assert_close(got.double(), ref, rtol=2 ** -24, atol=atol)


@pytest.mark.parametrize("kind", ["gpt2", "qwen2_tied", "qwen2_untied", "bert"])
def test_round_trip(kind, tmp_path):
    hf = hf_folder(kind, tmp_path / "hf")
    model, tok = load_pretrained(tmp_path / "hf")
    assert type(model) is {"gpt2": GPT2LMHeadModel, "bert": BertForSequenceClassification}.get(kind, Qwen2ForCausalLM)
    assert not model.training
    if kind == "gpt2":
        assert model.lm_head.weight is model.transformer.wte.weight  # re-tied
    if kind.startswith("qwen2"):
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == (kind == "qwen2_tied")

    # our tokenizer = transformers' tokenizer on the transformers-written folder
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    special = kind == "bert"
    ids = tok.encode_batch(TEXTS, add_special_tokens=special)
    assert ids == [hf_tok(t, add_special_tokens=special)["input_ids"] for t in TEXTS]
    assert ids == [tok.encode(t, add_special_tokens=special) for t in TEXTS]
    if kind == "bert":
        assert ids[0][0] == tok.cls_id == 2 and ids[0][-1] == tok.sep_id == 3 and tok.pad_id == 0
        assert tok.encode("€") == hf_tok("€", add_special_tokens=False)["input_ids"] == [tok.unk_id] == [1]
    else:
        assert tok.eos_id == tok.bos_id == 0 and tok.pad_id is None and ids[3][1:].count(0) == 1
        assert tok.decode(ids[0]) == TEXTS[0]

    # transformers save -> our load -> our save: the same tensors under the same keys
    save_pretrained(model, tok, tmp_path / "ours")
    theirs, mine = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "ours" / "model.safetensors")
    assert set(mine) == set(theirs)
    for k in theirs:
        assert torch.equal(mine[k], theirs[k]), k
    assert not list(tmp_path.glob(".ours*"))  # no temporary folder left behind

    # our save -> transformers: same logits, same token ids
    auto = transformers.AutoModelForSequenceClassification if kind == "bert" else transformers.AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path / "ours").eval()
    x, mask = padded(ids)
    ours_logits = real(logits_of(model, x, mask, True), mask)
    assert_same_logits(model, reloaded, x, mask)
    assert_same_logits(model, hf, x, mask)
    assert ours_logits.abs().max() > 0.1  # not a degenerate comparison
    reloaded_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert [reloaded_tok(t, add_special_tokens=special)["input_ids"] for t in TEXTS] == ids
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and cfg["architectures"] == [type(model).__name__]
    tcfg = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"

    # and our own reader reads back what it wrote, identically
    again, tok2 = load_pretrained(tmp_path / "ours")
    torch.testing.assert_close(real(logits_of(again, x, mask, True), mask), ours_logits, atol=0, rtol=0)
    assert tok2.encode_batch(TEXTS, add_special_tokens=special) == ids
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id, tok2.unk_id, tok2.cls_id, tok2.sep_id) == \
           (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id)


def test_bf16_load_and_save(tmp_path):
    hf_folder("qwen2_tied", tmp_path / "hf")
    model, _ = load_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    save_pretrained(model, None, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    assert not (tmp_path / "bf16" / "tokenizer.json").exists()
    with pytest.raises(ModelFolderError, match="no tokenizer"):
        load_pretrained(tmp_path / "bf16")
    model2, tok = load_pretrained(tmp_path / "bf16", tokenizer=False)
    assert tok is None and model2.model.embed_tokens.weight.dtype == torch.float32


def test_gpt2_tokenizer_from_vocab_json_and_merges(tmp_path):
    """A folder with only vocab.json + merges.txt reads as GPT-2's byte-level BPE, like transformers."""
    byte_level_bpe().model.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    tok = Tokenizer.from_folder(tmp_path)
    ref = transformers.GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    texts = TEXTS + ["  two  spaces\nnew line", "unseen words: xylophone ŽŠ 😀"]
    assert [tok.encode(t) for t in texts] == [ref(t)["input_ids"] for t in texts]
    assert tok.eos_id == tok.bos_id == tok.unk_id == 0 and tok.vocab_size == 300
    assert tok.decode(tok.encode(texts[-1])) == texts[-1]
    assert tok.encode(f"a{EOS}b").count(0) == 1  # the special token stays whole
    # it saves as tokenizer.json that transformers reads with the same ids
    tok.save(tmp_path / "saved")
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert [auto(t)["input_ids"] for t in texts] == [tok.encode(t) for t in texts]


def test_bert_tokenizer_from_vocab_txt(tmp_path):
    """vocab.txt only (no tokenizer_config.json): lower-cased WordPiece with [CLS] x [SEP]."""
    write_vocab_txt(tmp_path)
    tok = Tokenizer.from_folder(tmp_path)
    ref = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    texts = TEXTS + ["The PATIENT has Fevers, pains!"]
    assert tok.encode_batch(texts, add_special_tokens=True) == [ref(t)["input_ids"] for t in texts]
    assert tok.encode("The patient") == ref("The patient", add_special_tokens=False)["input_ids"] == [5, 6]


def test_sharded_checkpoint(tmp_path):
    hf = hf_folder("gpt2", tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (tmp_path / "model.safetensors").exists()
    model, tok = load_pretrained(tmp_path)
    x, mask = padded(tok.encode_batch(TEXTS))
    assert_same_logits(model, hf, x, mask)
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(ModelFolderError, match=f"shard {shard} is missing"):
        load_pretrained(tmp_path)


def test_bin_only_folder_names_the_converter_which_works(tmp_path):
    hf = hf_lm("gpt2")
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # tied lm_head shares wte's storage
    with pytest.raises(ModelFolderError, match=r"python tools/convert_bin_to_safetensors\.py " + str(tmp_path)):
        load_pretrained(tmp_path, tokenizer=False)
    out = subprocess.run([sys.executable, "tools/convert_bin_to_safetensors.py", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sd = load_file(tmp_path / "model.safetensors")
    assert set(sd) == set(hf.state_dict()) and all(torch.equal(sd[k], v) for k, v in hf.state_dict().items())
    model, _ = load_pretrained(tmp_path, tokenizer=False)
    x, mask = padded([[5, 6, 7, 8], [9, 10]])
    assert_same_logits(model, hf, x, mask)


def test_converter_sharded_bin(tmp_path):
    """pytorch_model-0000X-of-0000Y.bin + index -> safetensors shards + index, loadable."""
    from tools.convert_bin_to_safetensors import main as convert
    hf = hf_lm("qwen2_untied")
    hf.config.save_pretrained(tmp_path)
    sd = hf.state_dict()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, ks in shards.items():
        torch.save({k: sd[k] for k in ks}, tmp_path / name)
    weight_map = {k: name for name, ks in shards.items() for k in ks}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ModelFolderError, match="convert_bin_to_safetensors"):
        load_pretrained(tmp_path, tokenizer=False)
    convert([str(tmp_path)])
    assert json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"] == {
        k: name.replace("pytorch_model", "model").replace(".bin", ".safetensors") for k, name in weight_map.items()}
    model, _ = load_pretrained(tmp_path, tokenizer=False)
    x, mask = padded([[5, 6, 7, 8], [9, 10]])
    assert_same_logits(model, hf, x, mask)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    hf_folder("gpt2", folder)
    return folder


def copy_folder(src, dst, skip=()):
    dst.mkdir()
    for p in src.iterdir():
        if p.name not in skip:
            shutil.copy(p, dst / p.name)
    return dst


def test_missing_folder_and_config(gpt2_folder, tmp_path):
    with pytest.raises(ModelFolderError, match="nope: model folder not found"):
        load_pretrained(tmp_path / "nope")
    folder = copy_folder(gpt2_folder, tmp_path / "m", skip=("config.json",))
    with pytest.raises(ModelFolderError, match="no config.json"):
        load_pretrained(folder)


def test_unknown_model_type(gpt2_folder, tmp_path):
    folder = copy_folder(gpt2_folder, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    with pytest.raises(ValueError, match="unsupported model_type 't5'.*bert, gpt2, llama, qwen2"):
        load_pretrained(folder)


def test_no_weights(gpt2_folder, tmp_path):
    folder = copy_folder(gpt2_folder, tmp_path / "m", skip=("model.safetensors",))
    with pytest.raises(ModelFolderError, match="no model.safetensors"):
        load_pretrained(folder)


def edit_weights(gpt2_folder, tmp_path, edit):
    folder = copy_folder(gpt2_folder, tmp_path / "m")
    sd = load_file(folder / "model.safetensors")
    edit(sd)
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_shape_mismatch_names_key_and_shapes(gpt2_folder, tmp_path):
    def edit(sd):
        sd["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 100)
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*\(32, 100\).*\(32, 128\)"):
        load_pretrained(edit_weights(gpt2_folder, tmp_path, edit))


def test_unexpected_key(gpt2_folder, tmp_path):
    def edit(sd):
        sd["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected key.*transformer\.h\.0\.attn\.rotary\.weight"):
        load_pretrained(edit_weights(gpt2_folder, tmp_path, edit))


def test_missing_key(gpt2_folder, tmp_path):
    def edit(sd):
        del sd["transformer.ln_f.bias"]
    with pytest.raises(ValueError, match=r"missing key.*transformer\.ln_f\.bias"):
        load_pretrained(edit_weights(gpt2_folder, tmp_path, edit))


def test_tokenizer_larger_than_embeddings(gpt2_folder, tmp_path):
    folder = copy_folder(gpt2_folder, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "vocab_size": 256}))
    with pytest.raises(ValueError, match="tokenizer has 300 tokens.*only 256 rows"):
        load_pretrained(folder)
    model, tok = load_pretrained(gpt2_folder)  # 300 tokens for 320 rows is fine
    assert tok.vocab_size == 300 and model.config.vocab_size == V


def test_save_replaces_folder_atomically(gpt2_folder, tmp_path):
    model, tok = load_pretrained(gpt2_folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    with pytest.raises(OutputError, match="did not write"):  # a folder of the user's is never replaced
        save_pretrained(model, tok, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()
    save_pretrained(model, tok, out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.json", "generation_config.json",
                                                     "model.safetensors", "special_tokens_map.json",
                                                     "tokenizer.json", "tokenizer_config.json"]
    # generation_config.json: transformers wrote one into gpt2_folder, and it travels with the model
    assert (json.loads((out / "generation_config.json").read_text())
            == json.loads((gpt2_folder / "generation_config.json").read_text()))
    save_pretrained(model, tok, out)  # a folder the project wrote is replaced

    class Broken:  # fails half-way: the previous folder must survive untouched
        config = model.config

        def parameters(self):
            return model.parameters()

        def hf_state_dict(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        save_pretrained(Broken(), tok, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    load_pretrained(out)


def test_special_tokens_from_added_token_dicts_and_config_fallback(tmp_path):
    """tokenizer_config.json may give AddedToken dicts; ids it lacks come from config.json."""
    byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": EOS, "special": True, "lstrip": False}, "bos_token": None,
         "model_max_length": 1e30}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "bos_token_id": 0, "pad_token_id": 5}))
    tok = Tokenizer.from_folder(tmp_path)
    assert (tok.eos_id, tok.bos_id, tok.pad_id, tok.unk_id, tok.cls_id) == (0, 0, 5, None, None)
    assert tok.model_max_length is None
    assert tok.encode(f"x{EOS}y").count(0) == 1
