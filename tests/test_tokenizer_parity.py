"""Tokenizers load exactly what transformers' AutoTokenizer loads, where tokenizer_config.json
and tokenizer.json disagree:

- BERT: transformers' BertTokenizer rebuilds the normalizer from tokenizer_config's
  do_lower_case (default true) / strip_accents / tokenize_chinese_chars, ignoring tokenizer.json's;
- GPT-2: GPT2Tokenizer rebuilds the byte-level pre-tokenizer from add_prefix_space (default
  false), and honours add_bos_token for vocab.json + merges.txt;
- special tokens keep tokenizer.json's lstrip / rstrip / single_word flags (tokenizer_config's
  added_tokens_decoder wins where given), and saving leaves those flags unchanged;
- a tokenizer_class of PreTrainedTokenizerFast means "tokenizer.json as is".
Ids are compared with AutoTokenizer on cased, accented and diacritized Arabic + Latin text, and
what we save opens in transformers with the same ids.
"""
import json
import unicodedata
from itertools import product

import pytest
import torch

from models import Tokenizer, load_pretrained
from models.checks import ModelFolderError

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

EOS = "<|endoftext|>"
TEXTS = ["The Patient has a FEVER", "Café crème, naïve résumé", "أَلَمٌ شديدٌ في الصَّدْرِ", "ألم في الصدر",
         "إسهال وقيء منذ يومين", "Ärger ÜBER Öl", "ضيق التنفس Shortness of Breath!",
         "مستشفى ١٢٣ hospital 42"]


def ids_of(auto, texts, special=True):
    return [auto(t, add_special_tokens=special)["input_ids"] for t in texts]


# ----------------------------------------------------------------------------- BERT

def bert_vocab():
    """WordPiece vocabulary holding the words of TEXTS under every lower-case / accent setting,
    plus every character (alone and as ##continuation), so each setting gives different ids."""
    words, chars = set(), set()
    for lower, strip in product((False, True), (False, True)):
        norm = normalizers.BertNormalizer(lowercase=lower, strip_accents=strip)
        for t in TEXTS:
            s = norm.normalize_str(t)
            words.update(w for w in s.replace(",", " ").replace("!", " ").split())
            chars.update(s)
    chars -= {" "}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words) + sorted(chars) + \
        ["##" + c for c in sorted(chars)]
    return {w: i for i, w in enumerate(dict.fromkeys(vocab))}


def bert_tokenizer_json(folder, lowercase, strip_accents):
    tok = tokenizers.Tokenizer(models.WordPiece(bert_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))


BERT_CONFIGS = [{}, {"do_lower_case": False}, {"do_lower_case": True}, {"do_lower_case": False, "strip_accents": True},
                {"do_lower_case": True, "strip_accents": False}, {"strip_accents": False},
                {"do_lower_case": False, "tokenizer_class": "BertTokenizerFast"},
                {"do_lower_case": True, "tokenizer_class": "BertTokenizer"},
                {"do_lower_case": True, "tokenizer_class": "PreTrainedTokenizerFast"}]


@pytest.mark.parametrize("json_lower", [True, False])
def test_bert_tokenizer_json_follows_tokenizer_config_like_transformers(json_lower, tmp_path):
    seen = set()
    for i, tcfg in enumerate(BERT_CONFIGS):
        d = tmp_path / str(i)
        bert_tokenizer_json(d, json_lower, None)
        (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
        (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
        ours = Tokenizer.from_folder(d)
        ref = ids_of(transformers.AutoTokenizer.from_pretrained(d), TEXTS)
        assert ours.encode_batch(TEXTS, add_special_tokens=True) == ref, tcfg
        assert [ours.encode(t) for t in TEXTS] == [r[1:-1] for r in ref]
        seen.add(json.dumps(ref))
        ours.save(tmp_path / f"saved{i}")  # what we write opens in transformers with the same ids
        assert ids_of(transformers.AutoTokenizer.from_pretrained(tmp_path / f"saved{i}"), TEXTS) == ref
    assert len(seen) >= 4  # the settings really tokenize differently (cased, accents, Arabic marks)


def test_bert_vocab_txt_follows_tokenizer_config(tmp_path):
    vocab = bert_vocab()
    for i, tcfg in enumerate(BERT_CONFIGS[:6]):
        d = tmp_path / str(i)
        d.mkdir()
        (d / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
        ref = transformers.BertTokenizer(str(d / "vocab.txt"), **tcfg)
        assert Tokenizer.from_folder(d).encode_batch(TEXTS, add_special_tokens=True) == ids_of(ref, TEXTS), tcfg


def test_strip_accents_removes_arabic_marks_as_transformers_does(tmp_path):
    """Why it matters for Arabic: NFD + accent stripping removes harakat and the hamza of أ/إ."""
    d = tmp_path / "m"
    bert_tokenizer_json(d, False, None)
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "strip_accents": True}))
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    tok = Tokenizer.from_folder(d)
    stripped = "".join(c for c in unicodedata.normalize("NFD", "أَلَمٌ") if unicodedata.category(c) != "Mn")
    assert stripped == "الم" and tok.encode("أَلَمٌ") == tok.encode("الم") == [bert_vocab()["الم"]]


# ----------------------------------------------------------------------------- GPT-2

def byte_level_bpe():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 3, trainer)
    return tok


GPT2_TEXTS = TEXTS + [" leading space", f"سؤال{EOS}جواب", f"a {EOS} b", "  two  spaces\nnew line"]


@pytest.mark.parametrize("files", ["vocab_merges", "tokenizer_json"])
def test_gpt2_add_prefix_space_and_add_bos_token_like_transformers(files, tmp_path):
    classes = [None, "GPT2Tokenizer", "GPT2TokenizerFast"]
    classes += ["PreTrainedTokenizerFast"] if files == "tokenizer_json" else []  # it needs a tokenizer.json
    for i, (prefix, bos, cls) in enumerate(product([None, True, False], [None, True], classes)):
        tcfg = {k: v for k, v in (("add_prefix_space", prefix), ("add_bos_token", bos), ("tokenizer_class", cls))
                if v is not None}
        d = tmp_path / str(i)
        d.mkdir()
        if files == "vocab_merges":
            byte_level_bpe().model.save(str(d))
        else:
            byte_level_bpe().save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
        (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        auto = transformers.AutoTokenizer.from_pretrained(d)
        ours = Tokenizer.from_folder(d)
        for special in (True, False):
            assert ours.encode_batch(GPT2_TEXTS, add_special_tokens=special) == ids_of(auto, GPT2_TEXTS, special), \
                (tcfg, special)
        ours.save(tmp_path / f"saved{i}")
        assert ids_of(transformers.AutoTokenizer.from_pretrained(tmp_path / f"saved{i}"), GPT2_TEXTS) == \
            ids_of(auto, GPT2_TEXTS)
    # the settings matter: prefix space changes the first token, add_bos_token (vocab.json) adds one
    d0, dp = tmp_path / "0", tmp_path / str(2 * len(classes))  # (none, none, None) and (True, None, None)
    assert Tokenizer.from_folder(d0).encode("hello") != Tokenizer.from_folder(dp).encode("hello")


# ----------------------------------------------------------------------------- special-token flags

def flagged_folder(folder, tcfg):
    tok = byte_level_bpe()
    tok.add_special_tokens([AddedToken(EOS, special=True, lstrip=True, rstrip=True, normalized=False),
                            AddedToken("<pad>", special=True, lstrip=True, single_word=True, normalized=False)])
    tok.add_tokens([AddedToken("<sep>", special=False, rstrip=True, normalized=False)])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tcfg))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))


FLAG_TEXTS = ["hello world", f"a {EOS} b", f"a{EOS}b", f"x <pad>  y", "x<pad>y", "q <sep> r", f"{EOS} end  {EOS}"]


@pytest.mark.parametrize("tcfg", [
    {"eos_token": EOS, "pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast"},
    {"eos_token": EOS, "pad_token": "<pad>", "sep_token": "<sep>"},  # GPT2Tokenizer; <sep> becomes special
    {"eos_token": EOS, "added_tokens_decoder": {"0": {"content": EOS, "lstrip": False, "rstrip": False,
                                                      "single_word": False, "normalized": False, "special": True}},
     "tokenizer_class": "PreTrainedTokenizerFast"}])  # tokenizer_config's flags win, as in transformers
def test_special_tokens_keep_their_flags(tcfg, tmp_path):
    d = tmp_path / "m"
    flagged_folder(d, tcfg)
    auto = transformers.AutoTokenizer.from_pretrained(d)
    ours = Tokenizer.from_folder(d)
    assert ours.encode_batch(FLAG_TEXTS) == ids_of(auto, FLAG_TEXTS, False)
    ids = ours.encode(f"q <sep> r {EOS} <pad>")
    assert ours.decode(ids) == auto.decode(ids, skip_special_tokens=True)
    mine = {t.content: repr(t) for t in ours.tok.get_added_tokens_decoder().values()}
    assert mine == {t.content: repr(t) for t in auto.backend_tokenizer.get_added_tokens_decoder().values()}
    # saving keeps the flags: tokenizer.json's added_tokens are unchanged (but for a token made special)
    ours.save(tmp_path / "saved")
    before = {t["content"]: t for t in json.loads((d / "tokenizer.json").read_text())["added_tokens"]}
    after = {t["content"]: t for t in json.loads((tmp_path / "saved" / "tokenizer.json").read_text())["added_tokens"]}
    override = {e["content"]: e for e in (tcfg.get("added_tokens_decoder") or {}).values()}
    for content, t in before.items():
        want = {**t, **override.get(content, {}), "special": t["special"] or content in tcfg.values()}
        assert after[content] == want
    assert ids_of(transformers.AutoTokenizer.from_pretrained(tmp_path / "saved"), FLAG_TEXTS, False) == \
        ids_of(auto, FLAG_TEXTS, False)


def test_bert_is_decoder_changes_transformers_outputs_so_it_is_refused(tmp_path):
    """transformers runs an is_decoder BERT causally; ours is bidirectional, so such a folder is
    refused by name rather than silently computing something else."""
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=16)
    enc = transformers.BertModel(transformers.BertConfig(**cfg)).eval()
    dec = transformers.BertModel(transformers.BertConfig(**cfg, is_decoder=True)).eval()
    dec.load_state_dict(enc.state_dict())
    x = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        # they differ by more than 1e-3, far above the float32 rounding between two runs of the same
        # math at these sizes (16 x 32 terms per sum: <= 48 u = 3e-6 of outputs ~1): another computation
        assert not torch.allclose(enc(x).last_hidden_state, dec(x).last_hidden_state, atol=1e-3)
    dec.save_pretrained(tmp_path / "dec")
    with pytest.raises(ModelFolderError, match=r"dec/config\.json: BERT is_decoder=true"):
        load_pretrained(tmp_path / "dec", tokenizer=False)
