"""Checks on a model folder, made before anything big is read or allocated.

A bad model folder (a truncated or garbage model.safetensors, a malformed config.json, `n_head: 0`,
`n_layer: "4"`, a corrupt tokenizer.json, a shard index pointing outside the folder, a BERT folder
given as the language model, a config whose tensors are absurd) raises ModelFolderError, one line
naming the file and the key or field. ModelFolderError is a common.DataError, so every script
prints it without a traceback, like bad JSONL.

The config checks are generic: a config dataclass's field types say what each config.json value
must be (int, float, bool, str, optionally null), and every int field is a size that must be >= 1
except token ids (`*_id`) and the few counts listed in MAY_BE_ZERO. A new architecture's config
dataclass gets them for free.

Absurd sizes (`n_layer: 10**6`, `vocab_size: 10**12`, a hidden size of 10**9) are refused against
the safetensors header (read as JSON from the file's first bytes, no tensor data): first the
config's layer count against the highest layer index among the checkpoint keys (so a million
blocks are never built, even on the meta device), then the model, built on the meta device,
runs its own strict loader on meta tensors shaped like the checkpoint's, which names any missing,
unexpected or mis-shaped key with both shapes; only then is memory allocated. (A size so large
that even the meta build overflows, a hidden size of 10**9 in a fused qkv matrix, is named by its
config field instead.)
"""
import json
import math
import re
import typing
from dataclasses import fields
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from core.common import DataError

LAYER_FIELDS = ("n_layer", "num_hidden_layers")  # config.json's layer count, in every family here
MAY_BE_ZERO = ("max_window_layers", "sliding_window")  # int fields that are not sizes (0 is legal)
ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
                  "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


class ModelFolderError(DataError):
    """A file of a model folder that cannot be used: the message names the file (and the key or
    field). A DataError (hence a ValueError), so the scripts print it as one line."""

    def __init__(self, path, message, field=None, line=None):
        super().__init__(path, line, field, message)


def read_json(path, required=False):
    """The JSON object in `path`; {} when the file is absent (an error when `required`).
    Malformed JSON, non-UTF-8 bytes or a value that is not an object raise ModelFolderError."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise ModelFolderError(path, "file not found")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelFolderError(path, "not UTF-8 text (corrupt file?)") from None
    except json.JSONDecodeError as e:
        raise ModelFolderError(path, f"malformed JSON ({e.msg}, column {e.colno})", line=e.lineno) from None
    if not isinstance(obj, dict):
        raise ModelFolderError(path, f"expected a JSON object {{...}}, got a {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------- config.json

def _type_name(types):
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return " or ".join(names[t] for t in (int, float, bool, str, type(None)) if t in types)


def check_config_fields(config_cls, cfg, path):
    """Check config.json values against the config dataclass's field types: an int field gets an
    int (not 4.0, "4" or true), a float field a finite number, a bool field true/false, a str
    field a string, and size fields (ints other than token ids and MAY_BE_ZERO) are >= 1. Fields
    typed as dicts or lists are left to the class. Raises ModelFolderError naming the field."""
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        if f.name not in cfg:
            continue
        v, types = cfg[f.name], set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if types - {int, float, bool, str, type(None)}:
            continue  # dicts, lists, unions with them: the class itself reads and checks those
        size = int in types and not f.name.endswith("_id") and f.name not in MAY_BE_ZERO
        if v is None:
            if type(None) in types or f.default is None or not size:
                continue  # null means "the default" for optional fields
            raise ModelFolderError(path, f"must be a positive integer, got null", f.name)
        ok = (bool in types if isinstance(v, bool)
              else (int in types or float in types) if isinstance(v, int)
              else float in types if isinstance(v, float)
              else str in types if isinstance(v, str) else False)
        if not ok:
            raise ModelFolderError(path, f"must be {_type_name(types)}, got {json.dumps(v, ensure_ascii=False)}",
                                   f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ModelFolderError(path, f"must be a finite number, got {v}", f.name)
        if size and isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ModelFolderError(path, f"must be a positive integer, got {v}", f.name)


def check_kind(cfg, path, expect):
    """expect "lm" (a causal language model) or "bert" (an encoder); None accepts both."""
    mt = cfg.get("model_type")
    if expect == "lm" and mt == "bert":
        raise ModelFolderError(path, "'bert' is an encoder (a severity classifier or a BERTScore model), not a "
                               "language model: give a GPT-2 / Qwen2 / Llama folder here", "model_type")
    if expect == "bert" and mt != "bert":
        raise ModelFolderError(path, f"{mt!r} is a language model, not a BERT encoder: give a BERT folder "
                               "here (model_type 'bert')", "model_type")


# ----------------------------------------------------------------------------- weights

def read_safetensors_header(path):
    """{key: shape} from a .safetensors file's JSON header, without reading tensor data. Checks
    that every tensor's bytes lie inside the file, so a truncated or garbage file is refused
    here, by name, rather than deep inside the safetensors reader."""
    path = Path(path)
    size = path.stat().st_size
    bad = "truncated or not a safetensors file"
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        if n is None or n > min(size - 8, MAX_HEADER):
            raise ModelFolderError(path, f"{bad} ({size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFolderError(path, f"{bad} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFolderError(path, f"{bad} (its header is not a JSON object)")
    data = size - 8 - n
    shapes = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shape, (start, end), width = info["shape"], info["data_offsets"], ST_DTYPE_BYTES.get(info["dtype"])
            if not all(isinstance(x, int) and x >= 0 for x in [*shape, start, end]):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise ModelFolderError(path, f"corrupt header entry for tensor {key!r}: {str(info)[:120]}") from None
        if end > data:
            raise ModelFolderError(path, f"truncated: tensor {key!r} ends at byte {end} of the data, "
                                   f"but the file holds {data}")
        if width is not None and end - start != math.prod(shape) * width:  # (a newer dtype: left to safetensors)
            raise ModelFolderError(path, f"corrupt header entry for tensor {key!r}: shape {shape} "
                                   f"does not fit its {end - start} bytes")
        shapes[key] = tuple(shape)
    return shapes


def shard_files(index_path):
    """The shard files a model.safetensors.index.json names, each checked to be a plain relative
    path inside the model folder (no absolute path, no '..'): {shard path: [keys]}."""
    index_path = Path(index_path)
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFolderError(index_path, "must map tensor names to shard files", "weight_map")
    shards = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise ModelFolderError(index_path, f"{key!r} maps to {name!r}, not a file name", "weight_map")
        posix, win = PurePosixPath(name), PureWindowsPath(name)
        if posix.is_absolute() or win.anchor or ".." in posix.parts or ".." in win.parts:
            raise ModelFolderError(index_path, f"shard {name!r} (for {key!r}) is outside the model folder",
                                   "weight_map")
        shards.setdefault(index_path.parent / name, []).append(key)
    return shards


def layer_bound(keys):
    """1 + the highest integer path component among checkpoint keys (`h.11.`, `layers.23.`): no
    config may ask for more layers than that."""
    nums = [int(p) for k in keys for p in k.split(".") if re.fullmatch(r"\d+", p)]
    return max(nums, default=-1) + 1


def check_layers(cfg, cfg_path, shapes, weights_path):
    """Refuse a layer count the checkpoint cannot hold, before building any module."""
    bound = layer_bound(shapes)
    for name in LAYER_FIELDS:
        n = cfg.get(name)
        if isinstance(n, int) and n > bound:
            raise ModelFolderError(cfg_path, f"{n} layers, but {weights_path} holds tensors for at most {bound}",
                                   name)


def build_on_meta(build, cfg, cfg_path, shapes, weights_path):
    """build(cfg) on the meta device (shapes only, nothing allocated). A size so large that even
    a meta tensor's byte count overflows is refused naming the config field that exceeds every
    tensor dimension of the checkpoint."""
    try:
        with torch.device("meta"):
            return build(cfg)
    except (RuntimeError, OverflowError) as e:
        biggest = max((max(s, default=0) for s in shapes.values()), default=0)
        big = [k for k, v in cfg.items() if type(v) is int and v > biggest]
        field = max(big, key=cfg.get) if big else None
        what = f"{cfg[field]} is larger than" if field else "sizes that do not fit"
        raise ModelFolderError(cfg_path, f"{what} any tensor dimension in {weights_path} (at most {biggest}): the "
                               f"model cannot be built ({str(e).splitlines()[0]})", field) from None


def check_shapes(model, shapes, weights_path):
    """Run `model`'s own strict loader (built on the meta device) on meta tensors shaped like the
    checkpoint's: a missing, unexpected or mis-shaped key is named with both shapes, and nothing
    is allocated (a tied lm_head stays optional, as in the real load)."""
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        model.load_hf_state_dict(fake)
    except ValueError as e:
        raise ModelFolderError(weights_path, str(e)) from None
