"""What train_classifier.py and score_severity.py share, so a text is scored exactly as it was
trained on: the text preprocessing (--preprocess; AraBERT v2's own, rewritten here), the encoding
as [CLS] ids [SEP] cut to a maximum length, and batched prediction of the logits.
"""
import contextlib
import html
import re
from pathlib import Path

import torch
from tqdm import tqdm

from common import UsageError, bf16_supported, pad_batch

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
