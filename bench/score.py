"""Severity-scoring throughput (rows/s) of score_severity.py for a BERT-base-sized classifier.

    python bench/score.py                      # CPU, random weights, 512 demo questions
    python bench/score.py --device cuda --rows 20000 --batch-size 256

A BertForSequenceClassification with BERT-base shapes (hidden 768, 12 layers, 12 heads,
intermediate 3072, AraBERT's vocabulary of 64000 rows) and random weights is saved with the demo
classifier's tokenizer, then score_severity.main streams --rows questions (the demo sample,
repeated) through it, exactly as a user's run would. Model loading is outside the timed part
(score_severity's clock starts after loading). Beside it, when transformers is installed, the
model alone: our BertForSequenceClassification and transformers' (the same saved folder, SDPA
attention) on the same tokenized, length-sorted, padded batches (classifier.predict_logits),
alternating, logits checked equal. Prints one line per batch size, writes JSON.
"""
import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import score_severity  # noqa: E402
from core.common import pick_device  # noqa: E402
from core.common import DEMO_DATA, SEVERITIES, read_jsonl, write_jsonl  # noqa: E402
from models.bert import BertConfig, BertForSequenceClassification  # noqa: E402
from core.classifier import encode_texts, load_classifier, predict_logits, save_classifier, scratch_tokenizer  # noqa: E402

BERT_BASE = dict(vocab_size=64000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
BERT_TINY = {**BERT_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64}  # --tiny: smoke runs (bench/gpu_check.py --smoke)


def model_only(folder, rows, tok, args, bs):
    """Rows/s of our classifier and transformers' on the same padded batches (no file io)."""
    import transformers
    device = pick_device(args.device)
    ours, _, _ = load_classifier(folder, device)
    theirs = transformers.BertForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa")
    theirs = theirs.to(device).eval()

    class Logits(torch.nn.Module):  # predict_logits wants a logits tensor; transformers returns an output object
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def forward(self, ids, attention_mask):
            return self.m(input_ids=ids, attention_mask=attention_mask).logits

    seqs, _ = encode_texts(tok, [r["question"] for r in rows], args.max_len)
    pad_id = tok.pad_id if tok.pad_id is not None else 0
    times, logits = {"ours": [], "transformers": []}, {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, model in (("ours", ours), ("transformers", Logits(theirs))):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            logits[name] = predict_logits(model, seqs, pad_id, bs, device)
            times[name].append(time.perf_counter() - t0)
    rate = {name: len(seqs) / min(t[1:]) for name, t in times.items()}
    return {"ours_rows_per_s": rate["ours"], "transformers_rows_per_s": rate["transformers"],
            "ours_vs_transformers": rate["ours"] / rate["transformers"],
            "max_logit_diff": (logits["ours"] - logits["transformers"]).abs().max().item(),
            "max_abs_logit": logits["transformers"].abs().max().item()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=512, help="rows scored per measurement")
    p.add_argument("--batch-size", default="32", help="comma-separated batch sizes")
    p.add_argument("--max-len", type=int, default=128, help="tokens per question, [CLS]/[SEP] included")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of the model-only comparison (fastest counts)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers comparison")
    p.add_argument("--tiny", action="store_true", help="a 2-layer, 32-wide BERT instead of BERT-base (smoke runs)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "score.json"), help="JSON results file")
    args = p.parse_args(argv)

    questions = [row["question"] for _, row in read_jsonl(DEMO_DATA, required=("question",))]
    rows = [{"id": str(i), "question": questions[i % len(questions)]} for i in range(args.rows)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = scratch_tokenizer(questions, 30000, args.max_len)
        torch.manual_seed(0)
        labels = {i: name for i, name in enumerate(SEVERITIES)}
        shape = BERT_TINY if args.tiny else BERT_BASE
        model = BertForSequenceClassification(BertConfig.from_dict({**shape, "id2label": labels}))
        save_classifier(model, tok, tmp / "clf", {}, {"severity_temperature": 1.0, "severity_max_len": args.max_len})
        n_params = sum(t.numel() for t in model.parameters())
        write_jsonl(tmp / "in.jsonl", rows)
        mean_tokens = sum(len(tok.encode(q, add_special_tokens=True)[:args.max_len]) for q in questions) / len(questions)
        for bs in [int(b) for b in args.batch_size.split(",")]:
            log = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(log):
                score_severity.main(["--data", str(tmp / "in.jsonl"), "--model", str(tmp / "clf"),
                                     "--out", str(tmp / "out.jsonl"), "--batch-size", str(bs), "--device", args.device])
            wall = time.perf_counter() - t0
            rate = float(re.search(r"\(([\d.]+) rows/s\)", log.getvalue()).group(1))
            res = {"batch_size": bs, "rows": args.rows, "rows_per_s": rate, "wall_s_with_load": wall}
            print(f"batch {bs:>4}: {rate:8.1f} rows/s scoring ({args.rows} rows, {wall:.1f}s with model loading)")
            if not args.no_transformers:
                res.update(model_only(tmp / "clf", rows, tok, args, bs))
                print(f"            model only: ours {res['ours_rows_per_s']:.1f} rows/s, transformers "
                      f"{res['transformers_rows_per_s']:.1f} rows/s ({res['ours_vs_transformers']:.2f}x), "
                      f"max |logit diff| {res['max_logit_diff']:.1e} (logits up to {res['max_abs_logit']:.2f})")
            results.append(res)
    info = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(), "params": n_params,
            "mean_tokens_per_row": mean_tokens, "args": vars(args), "results": results}
    print(f"BERT-base shapes, random weights, {n_params / 1e6:.0f}M parameters, {mean_tokens:.1f} tokens per row on "
          f"average, torch {torch.__version__}, {torch.get_num_threads()} threads")
    Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
