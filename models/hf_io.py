"""Read and write Hugging Face model folders, without transformers.

A model folder holds:
  config.json                      the architecture ("model_type": see SUPPORTED below)
  model.safetensors                the weights (or model.safetensors.index.json + shards)
  tokenizer.json                   the tokenizer (or vocab.json + merges.txt for GPT-2 byte-level
                                   BPE, or vocab.txt for BERT WordPiece)
  tokenizer_config.json            special tokens, model_max_length, chat_template (optional)
  chat_template.jinja              the chat template (optional; wins over tokenizer_config's)
  generation_config.json           end ids etc. (optional; kept as model.generation_config)
  special_tokens_map.json          special tokens (optional)

    model, tok = load_pretrained("path/to/aragpt2-base")                # eval mode, fp32, CPU
    model, tok = load_pretrained(folder, dtype=torch.bfloat16, device="cuda")
    save_pretrained(model, tok, "out/lm")       # transformers' from_pretrained opens it

Only safetensors are read: a folder with only pytorch_model.bin is refused with the command of
the one-time converter (tools/convert_bin_to_safetensors.py); pickles are never loaded here.

Which class: config "model_type" gpt2 -> models.gpt2.GPT2LMHeadModel (a gpt2 config whose weights
carry emb_norm and no ln_f, and aragpt2 -> models.aragpt2, the Grover layout); qwen2 / llama ->
models.qwen2.Qwen2ForCausalLM; qwen3 -> models.qwen3; gemma3_text -> models.gemma3;
bert -> models.bert.BertForSequenceClassification when
"architectures" names it, else models.bert.BertModel (a pretrained encoder such as AraBERT or
MiniLM; put a fresh head on it with BertForSequenceClassification.from_encoder).

Memory and time: the model is built on the "meta" device (shapes only), allocated uninitialized
on the target device in the target dtype, and the checkpoint tensors are copied into it (the
loaders are strict, so every parameter is written; a BERT pooler missing from the checkpoint is
initialized randomly). Peak memory is the model plus the checkpoint once (about 3 GB for
Qwen2.5-0.5B in fp32 from its bf16 file), and no time goes into a random init that would be
overwritten.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE, WordPiece

from core.common import naming_full_disk, usual_permissions
from core.outputs import staged_dir
from models.aragpt2 import is_grover_state_dict
from models.checks import (ModelFolderError, build_on_meta, check_config_fields, check_kind, check_layers,
                           check_shapes, read_json, read_safetensors_header, shard_files)

SUPPORTED = ("aragpt2", "bert", "gpt2", "llama", "qwen2", "qwen3", "gemma3_text")
SPECIAL = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")  # tokenizer_config names are f"{s}_token"
CONVERTER = "python tools/convert_bin_to_safetensors.py"


# -----------------------------------------------------------------------------
# Models


def _model_class(config_dict, where="config"):
    mt = config_dict.get("model_type")
    if mt == "gpt2":
        from models.gpt2 import GPT2Config, GPT2LMHeadModel
        return GPT2Config, GPT2LMHeadModel
    if mt == "aragpt2":
        from models.aragpt2 import AraGPT2Config, AraGPT2LMHeadModel
        return AraGPT2Config, AraGPT2LMHeadModel
    if mt in ("qwen2", "llama"):
        from models.qwen2 import Qwen2Config, Qwen2ForCausalLM
        return Qwen2Config, Qwen2ForCausalLM
    if mt == "qwen3":
        from models.qwen3 import Qwen3Config, Qwen3ForCausalLM
        return Qwen3Config, Qwen3ForCausalLM
    if mt == "gemma3_text":
        from models.gemma3 import Gemma3ForCausalLM, Gemma3TextConfig
        return Gemma3TextConfig, Gemma3ForCausalLM
    if mt in ("gemma3", "gemma2", "gemma"):
        from models.gemma3 import REFUSED_TYPES
        raise ValueError(f"{where}: model_type {mt!r}: {REFUSED_TYPES[mt]}")
    if mt == "bert":
        from models.bert import BertConfig, BertForSequenceClassification, BertModel
        if "BertForSequenceClassification" in (config_dict.get("architectures") or []):
            return BertConfig, BertForSequenceClassification
        return BertConfig, BertModel
    raise ValueError(f"{where}: unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED)})")


def build_model(config_dict):
    """A freshly (randomly) initialized model from a config.json-style dict, dispatched on
    "model_type" (gpt2, qwen2, llama, bert; for bert on "architectures", see the module doc).
    Built on the current default device and dtype."""
    config_cls, model_cls = _model_class(config_dict)
    return model_cls(config_cls.from_dict(config_dict))


def _weight_headers(folder):
    """(safetensors files, the file to name in errors, {key: shape}) from model.safetensors or a
    sharded model.safetensors.index.json, read from the headers only (no tensor data)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single], single, read_safetensors_header(single)
    if index.is_file():
        shapes, shards = {}, shard_files(index)
        for shard, keys in sorted(shards.items()):
            if not shard.is_file():
                raise ModelFolderError(index, f"shard {shard.relative_to(folder)} is missing", "weight_map")
            shapes.update(read_safetensors_header(shard))
            missing = [k for k in keys if k not in shapes]
            if missing:
                raise ModelFolderError(index, f"key {missing[0]!r} is not in its shard {shard.name}", "weight_map")
        return sorted(shards), index, shapes
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        raise ModelFolderError(folder, "has only pytorch_model.bin (a pickle, which this project never loads "
                               f"implicitly); convert it once to safetensors with:  {CONVERTER} {folder}")
    raise ModelFolderError(folder, "no model.safetensors or model.safetensors.index.json "
                           f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")


def _read_weights(folder):
    """{key: tensor} from model.safetensors or a sharded model.safetensors.index.json."""
    sd = {}
    for path in _weight_headers(folder)[0]:
        try:
            sd.update(load_file(path))
        except Exception as e:  # the header was checked; this is damage inside the data
            raise ModelFolderError(path, f"cannot be read ({str(e).splitlines()[0]})") from None
    return sd


def _materialize(model, device, dtype):
    """Give a meta-built model real, uninitialized parameters on `device` (floating ones in
    `dtype`). Unlike Module.to_empty, a parameter shared by two modules (tied embeddings) stays
    one parameter."""
    new = {}  # id(old parameter) -> (old, new); holding `old` keeps its id from being reused
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in new:
                t = torch.empty_like(p, device=device, dtype=dtype if p.is_floating_point() else p.dtype)
                new[id(p)] = (p, torch.nn.Parameter(t, requires_grad=p.requires_grad))
            setattr(module, name, new[id(p)][1])


def load_pretrained(folder, dtype=torch.float32, device="cpu", tokenizer=True, expect=None):
    """Load a Hugging Face model folder -> (model in eval mode, Tokenizer or None).
    expect: "lm" (refuse a BERT folder), "bert" (refuse a language model) or None.

    Every problem with the folder raises models.checks.ModelFolderError (a common.DataError),
    one line naming the file and key or field: missing folder or config.json, malformed or
    mistyped config (n_head: 0, n_layer: "4"), unsupported model_type, only pytorch_model.bin, a
    truncated or garbage safetensors file, a shard outside the folder, a corrupt tokenizer, a
    tokenizer larger than the embedding matrix, and unexpected, missing or mis-shaped tensors.
    The config is compared with the safetensors headers before anything is allocated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(folder, "model folder not found")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        inside = [f"{folder / sub} ({what})" for sub, what in (("best", "the lowest validation loss"),
                                                            ("last", "the latest step"))
                  if (folder / sub / "config.json").is_file()]
        if inside:  # a train_lm.py run folder: its checkpoints are the model folders
            raise ModelFolderError(folder, f"no config.json: a training run's folder, whose checkpoints are the model "
                                           f"folders: give {' or '.join(inside)}")
        raise ModelFolderError(folder, "no config.json (not a Hugging Face model folder?)")
    cfg = read_json(cfg_path)
    try:  # fail on an unknown model_type before reading weights
        config_cls, _ = _model_class(cfg, where=str(cfg_path))
    except ValueError as e:
        raise ModelFolderError(cfg_path, str(e).removeprefix(f"{cfg_path}: "), "model_type") from None
    check_kind(cfg, cfg_path, expect)
    check_config_fields(config_cls, cfg, cfg_path)
    try:
        config_cls.from_dict(cfg)  # the class's own checks: divisibility, features not implemented
    except (ValueError, TypeError) as e:
        raise ModelFolderError(cfg_path, str(e)) from None

    tok = None
    if tokenizer:
        tok = Tokenizer.from_folder(folder)
        rows = cfg.get("vocab_size")
        if rows is not None and tok.vocab_size > rows:
            raise ModelFolderError(folder, f"the tokenizer has {tok.vocab_size} tokens but the model's "
                                   f"embedding matrix has only {rows} rows (config vocab_size): they do not "
                                   "belong together")

    _, where, shapes = _weight_headers(folder)
    if cfg.get("model_type") == "gpt2" and is_grover_state_dict(shapes):
        cfg = {**cfg, "model_type": "aragpt2"}  # an older AraGPT2-large/-mega copy: Grover weights, gpt2 config
    check_layers(cfg, cfg_path, shapes, where)  # n_layer: 10**6 is refused before a module is built
    # shapes only: no memory, no random init (13 s for 0.5B on a CPU)
    model = build_on_meta(build_model, cfg, cfg_path, shapes, where)
    check_shapes(model, shapes, where)  # absurd sizes are refused here, before any allocation
    sd = _read_weights(folder)
    if next(model.buffers(), None) is None:
        _materialize(model, device, dtype)  # uninitialized: the strict load fills every parameter
    else:  # buffers are computed in __init__, which a meta build skips: build for real
        with torch.device(device):
            model = build_model(cfg).to(dtype)
    try:
        model.load_hf_state_dict(sd)
    except ValueError as e:
        raise ModelFolderError(where, str(e)) from None
    # generation_config.json (end ids, sampling defaults) travels with the model, as in transformers
    model.generation_config = read_json(folder / "generation_config.json") or None
    return model.eval(), tok


# the names of a Hugging Face model folder (what this project writes, and what a folder it wrote
# may hold: a checkpoint or a classifier adds its own names to these)
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
               "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"}


def save_pretrained(model, tokenizer, folder):
    """Write `model` (and `tokenizer`, may be None) as a Hugging Face folder, atomically: built
    in a temporary sibling, then renamed into place (outputs.staged_dir), so `folder` is replaced
    as a whole; a folder that is not a model folder this project wrote (kind "model", only
    MODEL_FILES inside) is refused. Pass the raw module (not DDP- or torch.compile-wrapped)."""
    with staged_dir(folder, "model", MODEL_FILES) as tmp:
        write_pretrained(model, tokenizer, tmp)


def write_pretrained(model, tokenizer, folder):
    """The files of save_pretrained, written into an existing folder (callers that add files of
    their own, a checkpoint's meta.json say, stage the folder themselves): config.json (with
    "torch_dtype"), model.safetensors, generation_config.json when the model was loaded with one
    (load_pretrained sets model.generation_config), and the tokenizer files (with the chat template)."""
    folder = Path(folder)
    cfg = model.config.to_dict()
    cfg["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tensors, seen = {}, set()
    for k, t in model.hf_state_dict().items():
        t = t.detach().to("cpu").contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[k] = t
    with naming_full_disk(folder / "model.safetensors"):  # safetensors reports a full disk as its own error
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    usual_permissions(folder / "model.safetensors")  # safetensors writes 0600
    if getattr(model, "generation_config", None):
        (folder / "generation_config.json").write_text(json.dumps(model.generation_config, indent=2, ensure_ascii=False)
                                                       + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder)


# -----------------------------------------------------------------------------
# Tokenizer


def _read_json(path):
    return read_json(path)  # {} when absent; malformed -> ModelFolderError naming the file


def _token_str(value):
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _added_token(value, special=True):
    """A token from tokenizer_config.json as an AddedToken: a string, or an AddedToken dict whose
    lstrip / rstrip / single_word / normalized (and special) flags are kept, as transformers does."""
    if isinstance(value, str):
        return AddedToken(value, special=special, normalized=False)
    flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in value}
    return AddedToken(value["content"], **{"normalized": False, "special": special, **flags})


def _flags(t):
    return (t.content, t.single_word, t.lstrip, t.rstrip, t.normalized, t.special)


def _tokenizer_class(tcfg, mcfg):
    """The tokenizer class transformers' AutoTokenizer picks: tokenizer_config's tokenizer_class,
    else the one for config.json's model_type ("Fast" suffix dropped; None: use the file as is)."""
    name = tcfg.get("tokenizer_class")
    if isinstance(name, str):
        return name.removesuffix("Fast")
    return {"bert": "BertTokenizer", "gpt2": "GPT2Tokenizer"}.get(mcfg.get("model_type"))


def _gpt2_pipeline(tok, tcfg):
    """What transformers' GPT2Tokenizer sets on any vocabulary: byte-level pre-tokenizer and
    decoder, with tokenizer_config's add_prefix_space (default false)."""
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(tcfg.get("add_prefix_space", False)))
    tok.decoder = decoders.ByteLevel()


def _bpe_from_vocab_merges(folder, tcfg, special):
    """GPT-2 byte-level BPE from vocab.json + merges.txt, with tokenizer_config's add_prefix_space
    and add_bos_token (transformers honours add_bos_token here, not on a tokenizer.json)."""
    try:
        tok = HFTokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    except Exception as e:  # the tokenizers library raises plain Exceptions on bad files
        raise ModelFolderError(folder / "vocab.json", f"with merges.txt: not a valid BPE vocabulary "
                               f"({str(e).splitlines()[0]})") from None
    _gpt2_pipeline(tok, tcfg)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    bos = special.get("bos")
    if tcfg.get("add_bos_token") and bos is not None and tok.token_to_id(bos) is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def _bert_pipeline(tok, tcfg, special):
    """What transformers' BertTokenizer sets on any WordPiece vocabulary (a vocab.txt, or a
    tokenizer.json whose own normalizer it ignores): BertNormalizer from tokenizer_config's
    do_lower_case (default true), strip_accents (default: follow lower-casing) and
    tokenize_chinese_chars, BERT pre-tokenizer and decoder, [CLS] $A [SEP] template."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tcfg.get("tokenize_chinese_chars", True),
        strip_accents=tcfg.get("strip_accents"), lowercase=tcfg.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = special.get("cls", "[CLS]"), special.get("sep", "[SEP]")
    if tok.token_to_id(cls) is not None and tok.token_to_id(sep) is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])


def _wordpiece_from_vocab(folder, tcfg, special):
    """BERT WordPiece from vocab.txt; lower-casing per tokenizer_config's do_lower_case."""
    unk = special.get("unk", "[UNK]")
    try:
        tok = HFTokenizer(WordPiece.from_file(str(folder / "vocab.txt"), unk_token=unk))
    except Exception as e:  # the tokenizers library raises plain Exceptions on bad files
        raise ModelFolderError(folder / "vocab.txt",
                               f"not a valid WordPiece vocabulary ({str(e).splitlines()[0]})") from None
    _bert_pipeline(tok, tcfg, special)
    return tok


def _chat_template(folder, tcfg):
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's chat_template
    (a string, or a list of {"name", "template"} turned into {name: template}); None if neither."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ModelFolderError(path, f"cannot be read ({e})") from None
    template = tcfg.get("chat_template")
    if isinstance(template, list):
        try:
            return {t["name"]: t["template"] for t in template}
        except (TypeError, KeyError):
            raise ModelFolderError(folder / "tokenizer_config.json", "not a list of {name, template} objects",
                                   "chat_template") from None
    if template is not None and not isinstance(template, str):
        raise ModelFolderError(folder / "tokenizer_config.json", "expected a string or a list", "chat_template")
    return template


class Tokenizer:
    """A `tokenizers.Tokenizer` (`.tok`) plus the special token ids a model folder declares.

    encode(text, add_special_tokens=False) -> ids (True adds BERT's [CLS] ... [SEP]);
    decode(ids); vocab_size = the highest token id + 1 (added tokens included);
    bos_id, eos_id, pad_id, unk_id, cls_id, sep_id, mask_id: ints or None.
    chat_template: the folder's chat template (chat_template.jinja, which wins as in transformers,
    else tokenizer_config.json's chat_template: a string, or named templates as {name: source}), or None;
    save() writes it back, so a fine-tuned instruct model keeps its conversation format.
    """

    def __init__(self, tok, special_tokens=None, model_max_length=None, chat_template=None):
        self.tok = tok
        self.special_tokens = dict(special_tokens or {})  # {"eos": "<|endoftext|>", ...}
        self.model_max_length = model_max_length
        self.chat_template = chat_template  # Jinja source (core/chat.py), {name: source}, or None
        for name in SPECIAL:
            s = self.special_tokens.get(name)
            setattr(self, f"{name}_id", tok.token_to_id(s) if s is not None else None)
        self.vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def from_folder(cls, folder):
        """From tokenizer.json, else vocab.json + merges.txt (GPT-2 byte-level BPE), else
        vocab.txt (BERT WordPiece). Special tokens from tokenizer_config.json, then
        special_tokens_map.json, then config.json's *_token_id. As transformers' AutoTokenizer:
        BERT's and GPT-2's tokenizer classes take their normalizer / pre-tokenizer settings from
        tokenizer_config.json (see _bert_pipeline, _gpt2_pipeline), and added tokens keep
        tokenizer.json's flags. A corrupt file raises ModelFolderError naming it."""
        folder = Path(folder)
        tcfg = _read_json(folder / "tokenizer_config.json")
        smap = _read_json(folder / "special_tokens_map.json")
        mcfg = _read_json(folder / "config.json")
        special, raw = {}, {}  # raw: the config's value (a string or an AddedToken dict)
        for name in SPECIAL:
            for value in (tcfg.get(f"{name}_token"), smap.get(f"{name}_token")):
                if _token_str(value) is not None:
                    special[name], raw[name] = _token_str(value), value
                    break
        kind = _tokenizer_class(tcfg, mcfg)

        if (folder / "tokenizer.json").is_file():
            try:
                tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the tokenizers library raises plain Exceptions on bad files
                raise ModelFolderError(folder / "tokenizer.json", f"not a valid tokenizer file "
                                       f"({str(e).splitlines()[0]})") from None
            tok.no_padding()  # never pad or truncate silently: callers decide
            tok.no_truncation()
            if kind == "GPT2Tokenizer":  # transformers rebuilds these from tokenizer_config, as here
                _gpt2_pipeline(tok, tcfg)
            elif kind == "BertTokenizer":
                for name, s in (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"),
                                ("mask", "[MASK]")):  # BERT's defaults
                    special.setdefault(name, s)
                _bert_pipeline(tok, tcfg, special)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            for name in ("bos", "eos", "unk"):  # GPT-2's defaults
                special.setdefault(name, "<|endoftext|>")
            tok = _bpe_from_vocab_merges(folder, tcfg, special)
        elif (folder / "vocab.txt").is_file():
            for name, s in (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"),
                            ("mask", "[MASK]")):  # BERT's defaults
                special.setdefault(name, s)
            tok = _wordpiece_from_vocab(folder, tcfg, special)
        else:
            raise ModelFolderError(folder, "no tokenizer (tokenizer.json, vocab.json + merges.txt, or vocab.txt)")

        if tok.get_vocab_size(with_added_tokens=True) == 0:
            raise ModelFolderError(folder, "the tokenizer has no tokens (an empty vocabulary)")
        # special tokens must stay whole (never split by the pre-tokenizer); those tokenizer.json
        # already adds keep its lstrip/rstrip/single_word flags (re-adding them would reset them)
        vocab = tok.get_vocab(with_added_tokens=True)
        special = {n: s for n, s in special.items() if s in vocab}
        added = {t.content: t for t in tok.get_added_tokens_decoder().values()}
        new = {}
        decoder = tcfg.get("added_tokens_decoder")
        for entry in (decoder.values() if isinstance(decoder, dict) else ()):  # transformers lets these win
            if isinstance(entry, dict) and isinstance(entry.get("content"), str) and entry["content"] in vocab:
                t = _added_token(entry, special=False)
                if entry["content"] not in added or _flags(added[t.content]) != _flags(t):
                    new[t.content] = t
        for name, s in sorted(special.items()):
            if s in new or (s in added and added[s].special):
                continue
            if s in added:  # a named special token keeps its flags and becomes special (skipped in decode)
                a = added[s]
                new[s] = AddedToken(s, single_word=a.single_word, lstrip=a.lstrip, rstrip=a.rstrip,
                                    normalized=a.normalized, special=True)
            else:
                new[s] = _added_token(raw.get(name, s))
        tok.add_special_tokens([new[s] for s in sorted(new)])
        for name in SPECIAL:  # fallback: config.json's ids
            i = mcfg.get(f"{name}_token_id")
            if name not in special and isinstance(i, int) and tok.id_to_token(i) is not None:
                special[name] = tok.id_to_token(i)
        max_len = tcfg.get("model_max_length")
        if not isinstance(max_len, int) or max_len > 10**9:  # transformers writes 1e30 for "unknown"
            max_len = None
        return cls(tok, special, max_len, _chat_template(folder, tcfg))

    def encode(self, text, add_special_tokens=False):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts, add_special_tokens=False):
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens=True):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder):
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        smap = {f"{n}_token": s for n, s in self.special_tokens.items()}
        tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **smap}
        if self.model_max_length is not None:
            tcfg["model_max_length"] = self.model_max_length
        template = self.chat_template
        if isinstance(template, dict):  # transformers' list form of named templates
            template = [{"name": n, "template": t} for n, t in template.items()]
        if template is not None:  # in both places: older transformers read only the config
            tcfg["chat_template"] = template
        if isinstance(self.chat_template, str):
            (folder / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        for name, obj in (("tokenizer_config.json", tcfg), ("special_tokens_map.json", smap)):
            (folder / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
