"""Read and write Hugging Face model folders, without transformers.

A model folder holds:
  config.json                      the architecture ("model_type": gpt2, qwen2, llama or bert)
  model.safetensors                the weights (or model.safetensors.index.json + shards)
  tokenizer.json                   the tokenizer (or vocab.json + merges.txt for GPT-2 byte-level
                                   BPE, or vocab.txt for BERT WordPiece)
  tokenizer_config.json            special tokens, model_max_length (optional)
  special_tokens_map.json          special tokens (optional)

    model, tok = load_pretrained("path/to/aragpt2-base")                # eval mode, fp32, CPU
    model, tok = load_pretrained(folder, dtype=torch.bfloat16, device="cuda")
    save_pretrained(model, tok, "out/lm")       # transformers' from_pretrained opens it

Only safetensors are read: a folder with only pytorch_model.bin is refused with the command of
the one-time converter (tools/convert_bin_to_safetensors.py); pickles are never loaded here.

Which class: config "model_type" gpt2 -> models.gpt2.GPT2LMHeadModel; qwen2 / llama ->
models.qwen2.Qwen2ForCausalLM; bert -> models.bert.BertForSequenceClassification when
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

from common import staged_dir
from models.aragpt2 import is_grover_state_dict

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


def _read_weights(folder):
    """{key: tensor} from model.safetensors or a sharded model.safetensors.index.json."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        sd = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{index}: shard {shard} is missing")
            sd.update(load_file(folder / shard))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise ValueError(f"{index}: key {missing[0]!r} is not in its shard")
        return sd
    if (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        raise FileNotFoundError(
            f"{folder} has only pytorch_model.bin (a pickle, which this project never loads "
            f"implicitly); convert it once to safetensors with:  {CONVERTER} {folder}")
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json "
                            f"(found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")


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


def load_pretrained(folder, dtype=torch.float32, device="cpu", tokenizer=True):
    """Load a Hugging Face model folder -> (model in eval mode, Tokenizer or None).

    Errors (FileNotFoundError / ValueError) name the folder and the problem: missing folder or
    config.json, unsupported model_type, only pytorch_model.bin, a tokenizer larger than the
    embedding matrix, and (from the model's load_hf_state_dict) unexpected, missing or
    mis-shaped tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a Hugging Face model folder?)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    _model_class(cfg, where=str(cfg_path))  # fail on an unknown model_type before reading weights

    tok = None
    if tokenizer:
        tok = Tokenizer.from_folder(folder)
        rows = cfg.get("vocab_size")
        if rows is not None and tok.vocab_size > rows:
            raise ValueError(f"{folder}: the tokenizer has {tok.vocab_size} tokens but the model's "
                             f"embedding matrix has only {rows} rows (config vocab_size): they do not "
                             "belong together")

    sd = _read_weights(folder)
    if cfg.get("model_type") == "gpt2" and is_grover_state_dict(sd):
        cfg = {**cfg, "model_type": "aragpt2"}  # an older AraGPT2-large/-mega copy: Grover weights, gpt2 config
    with torch.device("meta"):  # shapes only: no memory, no random init (13 s for 0.5B on a CPU)
        model = build_model(cfg)
    if next(model.buffers(), None) is None:
        _materialize(model, device, dtype)  # uninitialized: the strict load fills every parameter
    else:  # buffers are computed in __init__, which a meta build skips: build for real
        with torch.device(device):
            model = build_model(cfg).to(dtype)
    try:
        model.load_hf_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    return model.eval(), tok


def save_pretrained(model, tokenizer, folder):
    """Write `model` (and `tokenizer`, may be None) as a Hugging Face folder, atomically: built
    in a temporary sibling, then renamed into place (common.staged_dir), so `folder` is replaced
    as a whole (anything else in it is gone). Pass the raw module (not DDP- or torch.compile-wrapped)."""
    with staged_dir(folder) as tmp:
        write_pretrained(model, tokenizer, tmp)


def write_pretrained(model, tokenizer, folder):
    """The files of save_pretrained, written into an existing folder (callers that add files of
    their own, a checkpoint's meta.json say, stage the folder themselves): config.json (with
    "torch_dtype"), model.safetensors, and the tokenizer files."""
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
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(folder)


# -----------------------------------------------------------------------------
# Tokenizer


def _read_json(path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_str(value):
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _bpe_from_vocab_merges(folder):
    """GPT-2 byte-level BPE from vocab.json + merges.txt."""
    tok = HFTokenizer(BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _wordpiece_from_vocab(folder, tcfg, special):
    """BERT WordPiece from vocab.txt; lower-casing per tokenizer_config's do_lower_case."""
    unk = special.get("unk", "[UNK]")
    tok = HFTokenizer(WordPiece.from_file(str(folder / "vocab.txt"), unk_token=unk))
    lower = tcfg.get("do_lower_case", True)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=tcfg.get("tokenize_chinese_chars", True),
        strip_accents=tcfg.get("strip_accents"), lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = special.get("cls", "[CLS]"), special.get("sep", "[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


class Tokenizer:
    """A `tokenizers.Tokenizer` (`.tok`) plus the special token ids a model folder declares.

    encode(text, add_special_tokens=False) -> ids (True adds BERT's [CLS] ... [SEP]);
    decode(ids); vocab_size = the highest token id + 1 (added tokens included);
    bos_id, eos_id, pad_id, unk_id, cls_id, sep_id, mask_id: ints or None.
    """

    def __init__(self, tok, special_tokens=None, model_max_length=None):
        self.tok = tok
        self.special_tokens = dict(special_tokens or {})  # {"eos": "<|endoftext|>", ...}
        self.model_max_length = model_max_length
        for name in SPECIAL:
            s = self.special_tokens.get(name)
            setattr(self, f"{name}_id", tok.token_to_id(s) if s is not None else None)
        self.vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1

    @classmethod
    def from_folder(cls, folder):
        """From tokenizer.json, else vocab.json + merges.txt (GPT-2 byte-level BPE), else
        vocab.txt (BERT WordPiece). Special tokens from tokenizer_config.json, then
        special_tokens_map.json, then config.json's *_token_id."""
        folder = Path(folder)
        tcfg = _read_json(folder / "tokenizer_config.json")
        smap = _read_json(folder / "special_tokens_map.json")
        mcfg = _read_json(folder / "config.json")
        special = {}
        for name in SPECIAL:
            s = _token_str(tcfg.get(f"{name}_token")) or _token_str(smap.get(f"{name}_token"))
            if s is not None:
                special[name] = s

        if (folder / "tokenizer.json").is_file():
            tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
            tok.no_padding()  # never pad or truncate silently: callers decide
            tok.no_truncation()
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tok = _bpe_from_vocab_merges(folder)
            for name in ("bos", "eos", "unk"):  # GPT-2's defaults
                special.setdefault(name, "<|endoftext|>")
        elif (folder / "vocab.txt").is_file():
            for name, s in (("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"),
                            ("mask", "[MASK]")):  # BERT's defaults
                special.setdefault(name, s)
            tok = _wordpiece_from_vocab(folder, tcfg, special)
        else:
            raise FileNotFoundError(f"{folder}: no tokenizer (tokenizer.json, vocab.json + merges.txt, "
                                    "or vocab.txt)")

        # special tokens must stay whole (never split by the pre-tokenizer)
        vocab = tok.get_vocab(with_added_tokens=True)
        special = {n: s for n, s in special.items() if s in vocab}
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in sorted(set(special.values()))])
        for name in SPECIAL:  # fallback: config.json's ids
            i = mcfg.get(f"{name}_token_id")
            if name not in special and isinstance(i, int) and tok.id_to_token(i) is not None:
                special[name] = tok.id_to_token(i)
        max_len = tcfg.get("model_max_length")
        if not isinstance(max_len, int) or max_len > 10**9:  # transformers writes 1e30 for "unknown"
            max_len = None
        return cls(tok, special, max_len)

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
        for name, obj in (("tokenizer_config.json", tcfg), ("special_tokens_map.json", smap)):
            (folder / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
