"""What train_classifier.py and score_severity.py share, so a text is scored exactly as it was
trained on: the text preprocessing (--preprocess; AraBERT v2's own, rewritten here), the encoding
as [CLS] ids [SEP] cut to a maximum length, batched prediction of the logits, and the classifier
folder itself: the from-scratch WordPiece tokenizer, the folder written (save_classifier) and read
back with its settings (load_classifier).
"""
import contextlib
import html
import json
import math
import re
from pathlib import Path

import torch
from tqdm import tqdm

from core.common import SEVERITIES, UsageError, bf16_supported, pad_batch, write_json
from core.outputs import staged_dir

# -----------------------------------------------------------------------------
# Text preprocessing

_AR = "\u0621-\u063a\u0641-\u064a"  # Arabic letters (hamza .. ghain, feh .. yeh), no tatweel
_TASHKEEL = re.compile("[\u064b-\u0652]")  # fathatan, dammatan, kasratan, fatha, damma, kasra, shadda, sukun
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"(?:https?://|www\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|edu|gov|info)\b\S*")
_MENTION = re.compile(r"@\w+")
_HTML_TAG = re.compile(r"</?[^>]+>")
_REPEAT = re.compile(r"(\D)\1{2,}", re.DOTALL)  # a non-digit repeated 3+ times
_SPACE_AROUND = re.compile(f"([^0-9{_AR}\u0660-\u0669a-zA-Z\\[\\]])")  # punctuation, symbols, emoji, ...
_DIGITS_WORD = re.compile(f"(\\d+)([{_AR}\u0660-\u066c]+)")
_WORD_DIGITS = re.compile(f"([{_AR}\u0660-\u066c]+)(\\d+)")
# what AraBERT v2's vocabulary knows: Arabic block, digits, Latin letters, common punctuation
_REJECTED = re.compile("[^0-9\u0621-\u063a\u0640-\u066c\u0671-\u0674a-zA-Z\\[\\]!\"#$%'()*+,.:;\\-<=\u00b7>?@\\\\^_`{|}~"
                       "\u2014\u066a\u2019\u060c\u061f\u0b4d\u201c\u061b\u201d\u06da\u00bb\u00ab\u2013\u2026\u2018\\s]")
_INDIC_DIGITS = str.maketrans("\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669", "0123456789")


def arabert_preprocess(text):
    """AraBERT v2 (bert-base/large-arabertv02, no Farasa segmentation) pretraining preprocessing.

    The steps of arabert's ArabertPreprocessor for v02 models with their defaults, rewritten here
    so the runtime needs no arabert/pyarabic: unescape HTML entities; strip tashkeel
    (U+064B..U+0652) and tatweel; replace e-mails, URLs and @mentions by [بريد] / [رابط] /
    [مستخدم] (simplified patterns); drop HTML tags; Arabic-Indic digits -> 0-9; a non-digit
    character repeated 3+ times -> 2 copies; spaces around every character that is not an Arabic
    letter, a digit, a Latin letter or a bracket (punctuation is its own token); spaces between
    digits and Arabic letters; "/" -> "-" (absent from the v2 vocabulary); characters outside the
    vocabulary's alphabet (emoji, other scripts) -> space; whitespace collapsed. Alef/ya/ta marbuta
    are NOT unified: AraBERT v2 was pretrained on unnormalized letters.
    """
    text = html.unescape(str(text))
    text = _TASHKEEL.sub("", text).replace("\u0640", "")
    text = _EMAIL.sub(" [بريد] ", text)
    text = _URL.sub(" [رابط] ", text)
    text = _MENTION.sub(" [مستخدم] ", text)
    text = _HTML_TAG.sub(" ", text.replace("<br />", " "))
    text = text.translate(_INDIC_DIGITS)
    text = _REPEAT.sub(r"\1\1", text)
    text = _SPACE_AROUND.sub(r" \1 ", text)
    text = _DIGITS_WORD.sub(r" \1 \2 ", text)
    text = _WORD_DIGITS.sub(r" \1 \2 ", text)
    text = text.replace("/", "-")
    text = _REJECTED.sub(" ", text)
    return " ".join(text.replace("\ufe0f", "").split())


PREPROCESSORS = {"none": lambda text: text, "arabert": arabert_preprocess}


def resolve_preprocess(flag, model_folder):
    """--preprocess auto|arabert|none -> 'arabert' or 'none' (auto: arabert if the folder name says so)."""
    if flag != "auto":
        return flag
    return "arabert" if model_folder and "arabert" in Path(model_folder).name.lower() else "none"


# -----------------------------------------------------------------------------
# Encoding and prediction


def encode_texts(tokenizer, texts, max_len):
    """[CLS] ids [SEP] for each text, cut to max_len tokens. Returns (id lists, number cut)."""
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise UsageError("the tokenizer has no [CLS]/[SEP] token: not a BERT tokenizer")
    encodings = tokenizer.tok.encode_batch(list(texts), add_special_tokens=False)
    seqs, cut = [], 0
    for enc in encodings:
        ids = enc.ids
        if len(ids) > max_len - 2:
            ids, cut = ids[:max_len - 2], cut + 1
        seqs.append([tokenizer.cls_id, *ids, tokenizer.sep_id])
    return seqs, cut


def autocast(device):
    """bf16 autocast on CUDA GPUs that support it; a no-op elsewhere (fp32)."""
    if bf16_supported(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_logits(model, seqs, pad_id, batch_size, device, progress=False):
    """fp32 logits [N, num_labels] on the CPU, in the order of `seqs`.

    Rows are sorted by length so each batch holds similar lengths (little padding), then the
    original order is restored.
    """
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.config.num_labels)
    for start in tqdm(range(0, len(seqs), batch_size), disable=not progress, desc="predict", leave=False):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, device)
        with autocast(device):
            logits = model(ids, attention_mask=mask)
        out[idx] = logits.float().cpu()
    return out


# -----------------------------------------------------------------------------
# The classifier folder: a tokenizer built from scratch, and the folder written and read back

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# every name a classifier folder (kind "classifier") holds: a folder with anything else is refused
CLASSIFIER_FILES = {"config.json", "model.safetensors", "metrics.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "vocab.txt"}


def train_wordpiece(texts, vocab_size, min_count=1):
    """A BERT WordPiece tokenizer built from `texts` (used with the from-scratch BERT).

    Normalizer: BERT's (control characters dropped, whitespace unified) WITHOUT lowercasing and
    WITHOUT its NFD accent stripping -- that would decompose أ إ آ ؤ ئ into a bare letter plus a
    combining hamza/madda and delete the mark, merging different letters -- then Arabic tashkeel
    (U+064B..U+0652) and tatweel are removed explicitly. Pre-tokenizer: BERT's (whitespace and
    punctuation). Post-processor: [CLS] x [SEP].

    Vocabulary: the special tokens, every character seen (as a word start and as a "##"
    continuation), then the most frequent whole words seen at least min_count times, up to vocab_size; a
    word outside it is spelled in characters. Built by counting, ties broken alphabetically, so
    the same texts always give the same ids (tokenizers' WordPieceTrainer breaks ties between
    equally frequent merges differently from run to run, and with it the classifier).
    """
    from collections import Counter

    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import WordPiece

    normalizer = normalizers.Sequence([
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False),
        normalizers.Replace(Regex("[\u064b-\u0652\u0640]"), ""),
    ])
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    frequent = sorted((w for w, n in words.items() if n >= min_count and len(w) > 1), key=lambda w: (-words[w], w))
    vocab += frequent[:max(0, vocab_size - len(vocab))]

    tok = HFTokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece(prefix="##")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def scratch_tokenizer(texts, vocab_size, max_len):
    """train_wordpiece's tokenizer as the scripts use it (models.Tokenizer, special tokens named)."""
    from models import Tokenizer
    special = {name.strip("[]").lower(): name for name in SPECIAL_TOKENS}  # {"pad": "[PAD]", ...}
    return Tokenizer(train_wordpiece(texts, vocab_size), special, max_len)


def save_classifier(model, tokenizer, out, metrics, extra_config):
    """Write the classifier folder atomically: the Hugging Face files, the extra config.json
    fields and metrics.json, built in a temporary sibling and swapped into place."""
    from models.hf_io import write_pretrained

    with staged_dir(out, "classifier", CLASSIFIER_FILES) as tmp:
        write_pretrained(model, tokenizer, tmp)
        config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        config.update(extra_config)
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)


def load_classifier(folder, device):
    """(model, tokenizer, settings) from a train_classifier.py folder; settings holds the
    temperature, preprocessing, max length and text field stored in its config.json."""
    from models import load_pretrained

    folder = Path(folder)
    model, tokenizer = load_pretrained(folder, device=device, expect="bert")
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)] if hasattr(model, "classifier") else None
    if labels != list(SEVERITIES):
        raise UsageError(f"{folder}: not a severity classifier (need a BertForSequenceClassification "
                         f"with labels {list(SEVERITIES)}, got {labels})")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    settings = dict(temperature=cfg.get("severity_temperature", 1.0),
                    preprocess=cfg.get("severity_preprocess", "none"),
                    max_len=cfg.get("severity_max_len", model.config.max_position_embeddings),
                    text_field=cfg.get("severity_text_field", "question"))
    if settings["preprocess"] not in PREPROCESSORS:
        raise UsageError(f"{folder}: unknown severity_preprocess {settings['preprocess']!r}")
    t, n = settings["temperature"], settings["max_len"]  # JSON may hold strings, null, NaN, Infinity
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise UsageError(f"{folder / 'config.json'}: severity_temperature must be a finite number > 0, got {t!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise UsageError(f"{folder / 'config.json'}: severity_max_len must be an integer >= 3, got {n!r}")
    if not isinstance(settings["text_field"], str):
        raise UsageError(f"{folder / 'config.json'}: severity_text_field must be a string, got "
                         f"{settings['text_field']!r}")
    settings["temperature"] = float(t)
    try:  # what train_classifier.py found wrong with this classifier, repeated wherever it is used
        settings["warnings"] = list(json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["warnings"])
    except (OSError, ValueError, KeyError, TypeError):
        settings["warnings"] = []
    return model, tokenizer, settings
