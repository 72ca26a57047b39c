"""Train the small byte-level BPE tokenizer that the from-scratch demo model uses.

    python tools/make_demo_tokenizer.py                      # data/demo_raw.csv -> data/demo_tokenizer/

train_lm.py without --model trains a small GPT-2 from scratch so the demo runs offline on a CPU;
that model needs a tokenizer, and this script makes it: a GPT-2-style byte-level BPE (every byte
is a token, so no text is ever out of vocabulary) with about 4000 tokens, learned from the demo's
questions and answers (columns q_body and a_body of data/demo_raw.csv). Each text is learned both
as written and normalized (common.normalize_arabic), because prepare_data.py may feed either.

The one special token is "<|endoftext|>" with id 0, used as eos = bos = pad, as in AraGPT2.

Writes --out (default data/demo_tokenizer/): tokenizer.json, tokenizer_config.json and
special_tokens_map.json (models.Tokenizer.save), which models.Tokenizer.from_folder and
transformers' AutoTokenizer both open. Deterministic: the same input gives the same files.
"""
import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from core.common import DATA_DIR, normalize_arabic, one_line_errors
from core.outputs import check_not_input, check_out_dir, staged_dir
from models import Tokenizer

EOS = "<|endoftext|>"


def train_tokenizer(texts, vocab_size=4000):
    """A byte-level BPE (models.Tokenizer) learned from `texts`, with EOS = BOS = PAD = id 0."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split + byte alphabet
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],  # first special -> id 0
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(EOS) == 0
    return Tokenizer(tok, {"bos": EOS, "eos": EOS, "pad": EOS, "unk": EOS})


def read_demo_texts(path):
    """Questions and answers of a MAQA-layout CSV (q_body, a_body), as written and normalized."""
    texts = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f):
            for col in ("q_body", "a_body"):
                text = (row.get(col) or "").strip()
                if text:
                    texts += [text, normalize_arabic(text)]
    if not texts:
        raise ValueError(f"{path}: no q_body/a_body text found")
    return texts


TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}  # kind "tokenizer"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA_DIR / "demo_raw.csv"), help="CSV with q_body and a_body columns")
    parser.add_argument("--out", default=str(DATA_DIR / "demo_tokenizer"), help="output tokenizer folder")
    parser.add_argument("--vocab-size", type=int, default=4000, help="BPE vocabulary size (special token included)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    check_not_input(out, {"--data": args.data})
    check_out_dir(out, "tokenizer", TOKENIZER_FILES)  # before the work: only a tokenizer folder of ours is replaced
    tok = train_tokenizer(read_demo_texts(args.data), args.vocab_size)
    with staged_dir(out, "tokenizer", TOKENIZER_FILES) as tmp:  # out is the old or the new complete folder
        tok.save(tmp)
    print(f"wrote {out} ({tok.vocab_size} tokens, eos = bos = pad = {tok.eos_id})")


if __name__ == "__main__":
    with one_line_errors():
        main()
