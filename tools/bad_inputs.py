"""Run every script on a corpus of bad inputs, each in its own process, and print what happened.

    python tools/bad_inputs.py            # about 60 cases, a few minutes on a CPU
    python tools/bad_inputs.py -k lr -v   # only the cases whose name holds "lr", with their error lines

A bad input must end with exactly one `error: ...` line, no traceback and a non-zero exit code
(2 for a flag argparse refuses, 1 for the rest). Each case is counted as one of:
  clean     that: exit code as expected, one error line, no "Traceback"
  traceback a Python traceback on stderr
  garbage   exit 0: the run went on with the bad value (silent garbage)
  other     a non-zero exit without exactly one error line, or another exit code than expected
The fixtures (a few rows, a tiny random classifier, broken files) are built in a temporary folder;
nothing outside it is written. docs/reliability.md lists the rules the cases check.
"""
import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ERROR_LINE = re.compile(r"(^|\s)error: ")


def make_fixtures(d):
    """The files the cases read, in folder d: {name: path as str}."""
    import torch

    from core.classifier import save_classifier, scratch_tokenizer
    from core.common import DEMO_DATA, SEVERITIES
    from models.bert import BertConfig, BertForSequenceClassification

    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()[:80]]
    f = {"data": d / "data.jsonl"}
    f["data"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    f["gens"] = d / "gens.jsonl"
    f["gens"].write_text("".join(json.dumps({**r, "generated": r["answer"]}, ensure_ascii=False) + "\n"
                                 for r in rows[:10]), encoding="utf-8")
    torch.manual_seed(0)
    tok = scratch_tokenizer([r["question"] for r in rows], 300, 32)
    config = BertConfig.from_dict(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                       max_position_embeddings=64, vocab_size=tok.vocab_size,
                                       id2label=dict(enumerate(SEVERITIES))))
    f["clf"] = d / "clf"
    save_classifier(BertForSequenceClassification(config), tok, f["clf"], {},
                    dict(severity_temperature=1.0, severity_max_len=32, severity_labels=list(SEVERITIES)))
    cfg = json.loads((f["clf"] / "config.json").read_text(encoding="utf-8"))
    for name, key, value in [("t_inf", "severity_temperature", math.inf), ("t_nan", "severity_temperature", math.nan),
                             ("t_str", "severity_temperature", "1.5"), ("t_null", "severity_temperature", None),
                             ("len_str", "severity_max_len", "32"), ("len_zero", "severity_max_len", 0)]:
        folder = d / f"clf_{name}"
        folder.mkdir()
        for p in f["clf"].iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        (folder / "config.json").write_text(json.dumps({**cfg, key: value}), encoding="utf-8")  # NaN, Infinity
        f[f"clf_{name}"] = folder
    first = json.dumps(rows[0], ensure_ascii=False)
    f["deep"] = d / "deep.jsonl"
    f["deep"].write_text(first + '\n{"question": "q", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n", encoding="utf-8")
    f["surrogate"] = d / "surrogate.jsonl"
    f["surrogate"].write_text(first + "\n" + first.replace('"question": "', '"question": "\\ud800', 1) + "\n",
                              encoding="utf-8")
    f["cp1256"] = d / "complaints.txt"
    f["cp1256"].write_bytes("صداع\n".encode("utf-8") + "ألم في الصدر\n".encode("cp1256"))
    f["out"] = d / "out"
    return {k: str(v) for k, v in f.items()}


def cases(f):
    """(name, expected exit code, command line after `python`)."""
    long_name = str(Path(f["out"]) / ("x" * 300))
    lm = ["train_lm.py", "--data", f["data"], "--out", f["out"] + "/lm", "--device", "cpu", "--max-steps", "3",
          "--batch-size", "4", "--grad-accum", "1", "--eval-every", "10", "--save-every", "10"]
    ev = ["evaluate.py", "--generations", f["gens"], "--out", f["out"] + "/eval", "--device", "cpu"]
    tc = ["train_classifier.py", "--data", f["data"], "--out", f["out"] + "/clf", "--device", "cpu", "--epochs", "1",
          "--max-len", "32", "--batch-size", "16"]
    ss = ["score_severity.py", "--data", f["data"], "--model", f["clf"], "--out", f["out"] + "/scored.jsonl",
          "--device", "cpu"]
    pd = ["prepare_data.py", "--data", f["data"], "--out", f["out"] + "/rows.jsonl"]
    no_cuda = "cuda"
    flag = [  # argparse refuses: exit 2
        ("lm --lr 0", lm + ["--lr", "0"]), ("lm --lr=-1e-4", lm + ["--lr=-1e-4"]),
        ("lm --lr nan", lm + ["--lr", "nan"]),
        ("lm --lr inf", lm + ["--lr", "inf"]), ("lm --min-lr -1", lm + ["--min-lr", "-1"]),
        ("lm --min-lr > --lr", lm + ["--lr", "1e-4", "--min-lr", "1e-3"]),
        ("lm --weight-decay -0.1", lm + ["--weight-decay", "-0.1"]),
        ("lm --weight-decay nan", lm + ["--weight-decay", "nan"]),
        ("lm --warmup-steps -1", lm + ["--warmup-steps", "-1"]), ("lm --lora-alpha 0", lm + ["--lora-alpha", "0"]),
        ("lm --lora-alpha inf", lm + ["--lora-alpha", "inf"]), ("lm --seed -1", lm + ["--seed", "-1"]),
        ("lm --grad-clip -1", lm + ["--grad-clip", "-1"]), ("lm --device gpu", lm + ["--device", "gpu"]),
        ("lm --weights 1e308,1e309,1", lm + ["--weights", "1e308,1e309,1"]),
        ("lm --out too long", lm + ["--out", long_name]),
        ("eval --max-new-tokens 0", ev + ["--max-new-tokens", "0"]),
        ("eval --temperature -1", ev + ["--temperature", "-1"]),
        ("eval --temperature nan", ev + ["--temperature", "nan"]), ("eval --top-p 0", ev + ["--top-p", "0"]),
        ("eval --top-p 1.5", ev + ["--top-p", "1.5"]),
        ("eval --repetition-penalty 0", ev + ["--repetition-penalty", "0"]),
        ("eval --repetition-penalty inf", ev + ["--repetition-penalty", "inf"]),
        ("eval --bootstrap -1", ev + ["--bootstrap", "-1"]),
        ("eval --seed -1", ev + ["--seed", "-1"]), ("eval --bertscore-layer -1", ev + ["--bertscore-layer", "-1"]),
        ("eval --batch-size 0", ev + ["--batch-size", "0"]), ("eval --out too long", ev + ["--out", long_name]),
        ("eval --select unknown method",
         ["evaluate.py", "--select", "best", f["out"], f["out"], "--bertscore-model", f["clf"]]),
        ("eval --select without --bertscore-model", ["evaluate.py", "--select", "mbr", f["out"], f["out"]]),
        ("clf --eval-batch-size 0", tc + ["--eval-batch-size", "0"]), ("clf --lr 0", tc + ["--lr", "0"]),
        ("clf --warmup 1", tc + ["--warmup", "1"]), ("clf --warmup -0.1", tc + ["--warmup", "-0.1"]),
        ("clf --weight-decay -1", tc + ["--weight-decay", "-1"]), ("clf --seed -1", tc + ["--seed", "-1"]),
        ("clf --out too long", tc + ["--out", long_name]), ("score --batch-size 0", ss + ["--batch-size", "0"]),
        ("score --chunk-size 0", ss + ["--chunk-size", "0"]), ("score --out too long", ss + ["--out", long_name]),
        ("prep --seed -1", pd + ["--seed", "-1"]), ("prep --val-frac 1", pd + ["--val-frac", "1"]),
        ("prep --min-answer-words -2", pd + ["--min-answer-words", "-2"]),
        ("prep --out too long", pd + ["--out", long_name]),
    ]
    import torch
    if not torch.cuda.is_available():
        flag += [("lm --device cuda (CPU-only torch)", lm + ["--device", no_cuda]),
                 ("eval --device cuda (CPU-only torch)", ev + ["--device", no_cuda]),
                 ("clf --device cuda (CPU-only torch)", tc + ["--device", no_cuda]),
                 ("score --device cuda (CPU-only torch)", ss + ["--device", no_cuda])]
    run = [  # found while running: exit 1
        ("lm --lr 1e30 (loss becomes NaN)", lm + ["--lr", "1e30", "--warmup-steps", "0"]),
        ("clf --lr 1e30 (loss becomes NaN)", tc + ["--lr", "1e30"]),
        ("lm --max-len 8", lm + ["--max-len", "8"]),
        ("eval --bertscore-layer beyond the model", ev + ["--bertscore-model", f["clf"], "--bertscore-layer", "5"]),
        ("lm data nested 100k deep", lm + ["--data", f["deep"]]),
        ("prep data nested 100k deep", pd + ["--data", f["deep"]]),
        ("prep lone surrogate", pd + ["--data", f["surrogate"]]),
        ("score lone surrogate", ss + ["--data", f["surrogate"], "--model", f["clf"]]),
        ("eval lone surrogate", ["evaluate.py", "--generations", f["surrogate"], "--out", f["out"] + "/e2"]),
        ("lexicon --stats non-UTF-8", ["-m", "core.lexicon", "--stats", f["cp1256"]]),
        ("lexicon --stats nested 100k deep", ["-m", "core.lexicon", "--stats", f["deep"]]),
    ] + [(f"score classifier {name}", ss + ["--model", f[f"clf_{name}"]])
         for name in ("t_inf", "t_nan", "t_str", "t_null", "len_str", "len_zero")]
    return [(n, 2, c) for n, c in flag] + [(n, 1, c) for n, c in run]


def classify(r, expected):
    err = r.stderr
    if "Traceback" in err:
        return "traceback"
    if r.returncode == 0:
        return "garbage"
    lines = [line for line in (r.stdout + err).splitlines() if ERROR_LINE.search(line)]
    return "clean" if len(lines) == 1 and r.returncode == expected else "other"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", default=None, help="only the cases whose name contains this")
    p.add_argument("-v", action="store_true", help="print each case's error line")
    args = p.parse_args(argv)
    counts = {"clean": 0, "traceback": 0, "garbage": 0, "other": 0}
    with tempfile.TemporaryDirectory() as tmp:
        f = make_fixtures(Path(tmp))
        todo = [c for c in cases(f) if args.k is None or args.k in c[0]]
        t0 = time.time()
        for i, (name, expected, cmd) in enumerate(todo):
            cmd = [a.replace(f["out"], f"{f['out']}/{i}") for a in cmd]  # its own outputs: cases never meet
            r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
            kind = classify(r, expected)
            counts[kind] += 1
            line = next((x for x in (r.stdout + r.stderr).splitlines() if ERROR_LINE.search(x)), "")
            if kind != "clean" or args.v:
                print(f"{kind:9s} exit {r.returncode} (want {expected})  {name}"
                      + (f"\n          {line[:160]}" if line else ""))
                if kind == "traceback":
                    print("          " + "\n          ".join(r.stderr.strip().splitlines()[-3:]))
    print(f"\n{'cases':>6} {'clean':>6} {'tracebacks':>11} {'garbage':>8} {'other':>6}   ({time.time() - t0:.0f} s)")
    print(f"{len(todo):6d} {counts['clean']:6d} {counts['traceback']:11d} {counts['garbage']:8d} {counts['other']:6d}")
    return 0 if counts["clean"] == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main())
