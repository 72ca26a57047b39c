"""models/bert.py against transformers' BertModel / BertForSequenceClassification: tiny random
models saved to a temporary folder, and the real all-MiniLM-L6-v2 weights (every hidden layer and
the tokenizer ids)."""
import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import build_model, load_pretrained
from models.bert import BertConfig, BertForSequenceClassification, BertModel

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2, initializer_range=0.2)  # large weights: sensitive checks

# Hidden states and logits are compared in float64 (float64 copies of both models, the same float32
# weights, exact in float64): the two implementations then differ only by float64 rounding (u = 2**-53)
# in sums of other orders. A sum of n terms is off by at most n u of their size; each block chains about 8
# such sums (q/k/v, scores, softmax, attention, dense, 2 LayerNorms, FFN) of at most 37 terms (TINY's
# intermediate size), through 2 blocks, with values <~ 4: <= 8 x 37 x 2 x u x 4 = 2.6e-13 (measured
# 2026-12-06: 2e-15). A real error (a wrong mask or token type, a missed bias, the other GELU) moves them
# by 1e-3 to 1, 10 orders above. Our classifier returns its logits rounded to float32 (`.float()` in
# models/bert.py), by at most 2**-24 of their size: rtol 2**-24 (measured: 2.9e-8 on logits <~ 0.64).
F64 = dict(rtol=2 ** -24, atol=8 * 37 * 2 * 2 ** -53 * 4)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory):
    """A tiny random HF BertForSequenceClassification (3 labels) saved with save_pretrained."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**TINY, num_labels=3, id2label={0: "mild", 1: "moderate", 2: "critical"},
                                  label2id={"mild": 0, "moderate": 1, "critical": 2})
    model = transformers.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf_bert_cls")
    model.save_pretrained(folder)
    model.config._attn_implementation = "eager"  # the reference: plain softmax attention
    return model, folder


def float64_copy(hf):
    """A float64 copy of a transformers model (the shared fixture stays float32)."""
    return copy.deepcopy(hf).double()


def padded_batch():
    """Right-padded rows of different lengths, with two segments in one row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, TINY["vocab_size"], (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros_like(ids)
    tt[0, 5:] = 1
    tt[1, 4:6] = 1
    return ids, mask, tt


def test_classifier_logits_and_hidden_states_match_transformers(hf_classifier):
    hf, folder = hf_classifier
    ours, tok = load_pretrained(folder, tokenizer=False)
    assert tok is None and isinstance(ours, BertForSequenceClassification) and not ours.training
    assert ours.config.id2label == {0: "mild", 1: "moderate", 2: "critical"}
    assert ours.config.num_labels == 3
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        assert ours(ids, mask, tt).dtype == torch.float32
    ours, hf = load_pretrained(folder, dtype=torch.float64, tokenizer=False)[0], float64_copy(hf)  # see F64
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
        logits = ours(ids, mask, tt)
        hidden = ours.bert(ids, mask, tt, output_hidden_states=True)
        last = ours.bert(ids, mask, tt)
    assert logits.shape == (3, 3) and logits.dtype == torch.float32  # float32 logits, also from float64
    torch.testing.assert_close(logits.double(), ref.logits, **F64)
    assert len(hidden) == len(ref.hidden_states) == TINY["num_hidden_layers"] + 1
    for h, r in zip(hidden, ref.hidden_states):  # padding positions included
        assert r.abs().max() < 4  # the magnitude F64 assumes
        torch.testing.assert_close(h, r, rtol=0, atol=F64["atol"])
    torch.testing.assert_close(last, hidden[-1], rtol=0, atol=0)  # the same computation
    # the token types and the padding mask both matter (the test can see a wrong mask): > 1e-2 is
    # 10 orders above F64's atol
    with torch.no_grad():
        assert (ours(ids, mask, torch.zeros_like(tt)) - logits).abs().max() > 1e-2
        assert (ours(ids, torch.ones_like(mask), tt) - logits).abs().max() > 1e-2


def test_old_names_prefixes_and_ignored_keys_load(hf_classifier):
    hf, folder = hf_classifier
    hf = float64_copy(hf)  # compared in float64: see F64
    sd = load_file(folder / "model.safetensors")
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        ref_hidden = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        ref_logits = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits

    def old_names(k):
        return k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")

    extra = {"bert.embeddings.position_ids": torch.arange(64)[None], "cls.predictions.bias": torch.zeros(99),
             "cls.predictions.transform.dense.weight": torch.zeros(32, 32),
             "cls.seq_relationship.weight": torch.zeros(2, 32)}
    enc = {k: v for k, v in sd.items() if k.startswith("bert.")}
    variants = {
        "prefixed": {**enc, **extra},
        "no prefix": {k[len("bert."):]: v for k, v in enc.items()},
        "gamma/beta": {old_names(k): v for k, v in {**enc, **extra}.items()},
    }
    for name, variant in variants.items():
        model = BertModel(BertConfig(**TINY)).double().eval()
        model.load_hf_state_dict(variant)  # float32 tensors copied into float64 parameters: exact
        with torch.no_grad():
            torch.testing.assert_close(model(ids, mask, tt), ref_hidden, rtol=0, atol=F64["atol"], msg=name)
    cls_model = BertForSequenceClassification(BertConfig(**TINY, id2label=["a", "b", "c"])).double().eval()
    cls_model.load_hf_state_dict({**{old_names(k): v for k, v in sd.items()}, **extra})
    with torch.no_grad():
        torch.testing.assert_close(cls_model(ids, mask, tt).double(), ref_logits, **F64)
    # our save writes the HF names back (no gamma/beta, no ignored buffers)
    assert set(cls_model.hf_state_dict()) == set(sd)


def test_strict_loading_errors(hf_classifier):
    _, folder = hf_classifier
    sd = load_file(folder / "model.safetensors")
    model = BertForSequenceClassification(BertConfig(**TINY, id2label=["a", "b", "c"]))
    with pytest.raises(ValueError, match="unexpected key.*bert.encoder.layer.0.attention.self.rotary"):
        model.load_hf_state_dict({**sd, "bert.encoder.layer.0.attention.self.rotary": torch.zeros(1)})
    bad = dict(sd)
    bad["classifier.weight"] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match=r"classifier.weight.*\(4, 32\).*\(3, 32\)"):
        model.load_hf_state_dict(bad)
    for key in ("classifier.bias", "bert.pooler.dense.weight", "bert.encoder.layer.1.output.dense.bias"):
        with pytest.raises(ValueError, match="missing key.*" + key.replace(".", r"\.")):
            model.load_hf_state_dict({k: v for k, v in sd.items() if k != key})
    with pytest.raises(ValueError, match="both"):  # the same tensor under two spellings
        model.load_hf_state_dict({**sd, "embeddings.word_embeddings.weight": sd["bert.embeddings.word_embeddings.weight"]})
    # an encoder checkpoint cannot silently carry a classifier
    with pytest.raises(ValueError, match=r"unexpected key.*classifier\.(weight|bias)"):
        BertModel(BertConfig(**TINY)).load_hf_state_dict(sd)


def test_encoder_without_pooler_loads(hf_classifier, tmp_path):
    """A BertModel saved with add_pooling_layer=False: the encoder loads, the pooler is random
    (freshly initialized, also when load_pretrained allocated the model uninitialized)."""
    hf, folder = hf_classifier
    sd = {k: v for k, v in load_file(folder / "model.safetensors").items() if k.startswith("bert.") and "pooler" not in k}
    (tmp_path / "config.json").write_text(json.dumps(BertConfig(**TINY).to_dict()))
    save_file(sd, tmp_path / "model.safetensors")
    model, _ = load_pretrained(tmp_path, dtype=torch.float64, tokenizer=False)  # compared in float64: see F64
    w, b = model.pooler.dense.weight, model.pooler.dense.bias
    # initialized normal(0, 0.2): the sample sd of n = 1024 draws has standard error 0.2 / sqrt(2 n); 4 of them
    assert torch.isfinite(w).all() and abs(w.std() - 0.2) < 4 * 0.2 / (2 * w.numel()) ** 0.5
    assert torch.equal(b, torch.zeros_like(b))
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        ref = float64_copy(hf).bert(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        torch.testing.assert_close(model(ids, mask, tt), ref, rtol=0, atol=F64["atol"])


def test_plain_encoder_folder_and_fresh_head(hf_classifier, tmp_path):
    """A BertModel folder (architectures BertModel, no classifier) loads as BertModel; from_encoder
    puts a fresh classifier on it, which saves and reloads as BertForSequenceClassification."""
    hf, _ = hf_classifier
    hf.bert.save_pretrained(tmp_path / "enc")
    enc, _ = load_pretrained(tmp_path / "enc", tokenizer=False)
    assert type(enc) is BertModel
    model = BertForSequenceClassification.from_encoder(enc, ["mild", "moderate", "critical"])
    assert model.bert is enc and model.training
    assert model.config.architectures == ["BertForSequenceClassification"]
    assert model.config.label2id == {"mild": 0, "moderate": 1, "critical": 2}
    assert not any(p.is_meta for p in model.parameters())
    w = model.classifier.weight  # normal(0, 0.2), as above: within 4 standard errors of the sample sd
    assert w.shape == (3, 32) and abs(w.std() - 0.2) < 4 * 0.2 / (2 * w.numel()) ** 0.5
    from models import save_pretrained
    save_pretrained(model.eval(), None, tmp_path / "cls")
    cfg = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "mild", "1": "moderate", "2": "critical"} and cfg["model_type"] == "bert"
    again, _ = load_pretrained(tmp_path / "cls", tokenizer=False)
    assert type(again) is BertForSequenceClassification
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask, tt), model(ids, mask, tt), atol=0, rtol=0)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").eval().double()
    model.double()  # both in float64 (the saved float32 weights, exact in float64): see F64
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, tt).double(),
                                   ref(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits, **F64)


def test_config_dict_round_trip_and_defaults():
    cfg = BertConfig.from_dict({**TINY, "model_type": "bert", "unknown_field": 1, "num_labels": 4})
    assert cfg.num_labels == 4 and cfg.id2label[3] == "LABEL_3"
    assert BertConfig.from_dict({**TINY}).num_labels == 2  # HF's default
    d = BertConfig(**TINY, id2label={"0": "x", "1": "y", "2": "z"}).to_dict()
    assert d["id2label"] == {"0": "x", "1": "y", "2": "z"} and d["label2id"] == {"x": 0, "y": 1, "z": 2}
    model = build_model({**d, "architectures": ["BertForSequenceClassification"]})
    assert isinstance(model, BertForSequenceClassification) and model.config.num_labels == 3
    assert isinstance(build_model({**d, "architectures": ["BertForMaskedLM"]}), BertModel)
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig(**TINY, position_embedding_type="relative_key")


def test_gelu_new_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**TINY, hidden_act="gelu_new")).eval()
    hf.save_pretrained(tmp_path)
    ours, _ = load_pretrained(tmp_path, dtype=torch.float64, tokenizer=False)  # compared in float64: see F64
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask, tt), hf.double()(input_ids=ids, attention_mask=mask,
                                   token_type_ids=tt).last_hidden_state, rtol=0, atol=F64["atol"])


SENTENCES = [
    "أعاني من ألم شديد في الصدر وضيق في التنفس منذ ساعة",
    "Patient reports mild headache and fatigue.",
    "طفلي عنده حرارة ٣٩ درجة",
    "Is it safe to take ibuprofen with paracetamol?",
]


def test_minilm_real_weights_match_transformers(minilm_dir):
    ours, tok = load_pretrained(minilm_dir)
    assert type(ours) is BertModel
    ref_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    ids = tok.encode_batch(SENTENCES, add_special_tokens=True)
    assert ids == ref_tok(SENTENCES)["input_ids"]
    assert [tok.encode(s) for s in SENTENCES] == [ref_tok(s, add_special_tokens=False)["input_ids"] for s in SENTENCES]
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id) == (101, 102, 0, 100) and tok.bos_id is None
    assert tok.vocab_size == 30522
    assert tok.decode(ids[1]) == ref_tok.decode(ids[1], skip_special_tokens=True)

    T = max(map(len, ids))
    input_ids = torch.tensor([x + [0] * (T - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in ids])
    # in float64, as F64 for TINY: sums of at most 1536 terms (the intermediate size), about 8 in a row
    # per block, 6 blocks, values <~ 11: <= 8 x 1536 x 6 x u x 11 = 9e-11 (measured 2026-12-06: 6.7e-15;
    # in float32 the two differed by 7.9e-6)
    atol = 8 * 1536 * 6 * 2 ** -53 * 11
    ours = ours.double()
    ref = transformers.AutoModel.from_pretrained(minilm_dir, attn_implementation="eager").eval().double()
    with torch.no_grad():
        expected = ref(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hidden = ours(input_ids, mask, output_hidden_states=True)
    assert len(hidden) == len(expected) == 7
    for layer, (h, r) in enumerate(zip(hidden, expected)):
        assert r.abs().max() < 11, layer  # the magnitude the bound assumes
        torch.testing.assert_close(h, r, rtol=0, atol=atol, msg=f"layer {layer}")


def test_wordpiece_from_vocab_txt_matches_transformers(minilm_dir, tmp_path):
    """A folder with only vocab.txt (+ tokenizer_config.json) gives the same ids as the
    tokenizer.json version and as transformers' BertTokenizer, lower-casing per do_lower_case."""
    from models import Tokenizer
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    tok = Tokenizer.from_folder(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    texts = SENTENCES + ["HELLO World [SEP] unaffable", "Café naïve"]
    assert tok.encode_batch(texts, add_special_tokens=True) == ref(texts)["input_ids"]
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.mask_id) == (101, 102, 0, 100, 103)
    # do_lower_case False keeps the case (the uncased vocab then maps "HELLO" to [UNK])
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "do_lower_case": False}))
    cased = Tokenizer.from_folder(tmp_path)
    ref_cased = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    assert cased.encode("HELLO world") == ref_cased("HELLO world", add_special_tokens=False)["input_ids"]
    assert cased.encode("HELLO world") != tok.encode("HELLO world")
