"""The data-safety cases: a user's file or folder put where a careless run would destroy it.

Each case builds a small world in a fresh folder (a user's pretrained BERT, a training run, eval
runs, a raw CSV, notes.txt inside a project folder, ...), runs one script on it the way a user
might by mistake, and checks what the rules of docs/files.md promise: every file that was there
before is there after, byte for byte (a checksum of the whole folder), the script exits non-zero
with exactly one `error:` line and no traceback.

    python tools/safety_cases.py          # every case as a real process; prints the table

tests/test_outputs.py runs the same cases in-process (faster), one test each.
"""
import contextlib
import hashlib
import importlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.common import run_main
from core.outputs import KINDS, MARKER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS = [{"id": f"r{i}", "question": q, "answer": a, "split": s, "severity": c}
        for i, (q, a, s, c) in enumerate([
            ("عندي ألم شديد في الصدر منذ ساعة", "اذهب الى الطوارئ فورا ولا تتأخر", "train", "critical"),
            ("عندي حرارة وسعال منذ ثلاثة أيام", "اشرب السوائل وراجع الطبيب اذا استمرت", "train", "moderate"),
            ("عندي حبوب في الوجه", "استعمل غسول لطيف ولا تعصر الحبوب", "val", "mild"),
            ("صداع خفيف بعد العمل", "ارتح واشرب الماء ونم جيدا", "test", "mild")])]


# ---------------------------------------------------------------------------- the worlds


def files(folder, names, kind=None):
    """A folder holding `names` (small files, a name ending in / is a folder) and, with `kind`,
    the project's marker of that kind."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).mkdir() if name.endswith("/") else (folder / name).write_text(f"{name} of the user\n",
                                                                                      encoding="utf-8")
    if kind is not None:
        (folder / MARKER).write_text(json.dumps({"script": KINDS[kind], "kind": kind}), encoding="utf-8")
    return folder


def rows_file(path, generated=False):
    rows = [{**r, "generated": r["answer"]} if generated else r for r in ROWS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# Real, loadable models (tiny, random), built once per process and copied into each case: a
# script that loaded its input before checking its --out would get past the load and write.
_ASSETS = {}


def _asset(name):
    """A cached folder: "lm" (a tiny GPT-2 with its tokenizer), "bert" (a tiny BERT with the six
    usual files and no marker: a user's download) or "classifier" (a tiny severity classifier)."""
    if not _ASSETS:
        import torch
        from core.classifier import save_classifier, scratch_tokenizer
        from core.common import SEVERITIES
        from models import build_model, save_pretrained
        from models.bert import BertConfig, BertForSequenceClassification
        from tools.make_demo_tokenizer import train_tokenizer
        import atexit
        import shutil
        cache = Path(tempfile.mkdtemp(prefix="safety-assets-"))
        atexit.register(shutil.rmtree, cache, True)
        torch.manual_seed(0)
        texts = [r["question"] + "\n" + r["answer"] for r in ROWS] * 5
        tok = train_tokenizer(texts, vocab_size=120)
        lm = build_model(dict(model_type="gpt2", vocab_size=tok.vocab_size, n_positions=64, n_embd=16, n_layer=1,
                              n_head=2, bos_token_id=0, eos_token_id=0, pad_token_id=0))
        save_pretrained(lm, tok, cache / "lm")
        wp = scratch_tokenizer(texts, 120, 32)
        cfg = dict(vocab_size=wp.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=32, id2label=dict(enumerate(SEVERITIES)))
        save_pretrained(BertForSequenceClassification(BertConfig.from_dict(cfg)), wp, cache / "bert")
        (cache / "bert" / MARKER).unlink()  # a user's pretrained BERT carries no marker
        vocab = wp.tok.get_vocab()
        (cache / "bert" / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)),
                                                  encoding="utf-8")
        save_classifier(BertForSequenceClassification(BertConfig.from_dict(cfg)), wp, cache / "classifier", {},
                        dict(severity_temperature=1.0, severity_preprocess="none", severity_max_len=32,
                             severity_labels=list(SEVERITIES)))
        _ASSETS.update({n: cache / n for n in ("lm", "bert", "classifier")})
    return _ASSETS[name]


def copy_of(name, dest, extra=()):
    import shutil
    shutil.copytree(_asset(name), dest, symlinks=True)
    return files(dest, extra)


def training_run(root, extra_in_last=()):
    run = files(root / "run", [], "training-run")
    rows_file(run / "metrics.jsonl")
    for name, extra in (("last", extra_in_last), ("best", ())):
        folder = copy_of("lm", run / name, extra)
        (folder / MARKER).write_text(json.dumps({"script": "train_lm.py", "kind": "checkpoint"}), encoding="utf-8")
        (folder / "meta.json").write_text(json.dumps({"step": 1}), encoding="utf-8")
    return run


def eval_run(root, name, extra=()):
    """An evaluation run folder, as evaluate.py writes it (scored generations, metrics, report)."""
    import evaluate
    run = root / name
    evaluate.main(["--generations", str(rows_file(root / f"{name}.jsonl", generated=True)), "--out", str(run),
                   "--bootstrap", "0"])
    (root / f"{name}.jsonl").unlink()
    return files(run, extra)


def raw_csv(root):
    path = root / "raw.csv"
    path.write_text("q_body,a_body\n" + "".join(f"{r['question']},{r['answer']}\n" for r in ROWS), encoding="utf-8")
    return path


def classifier(root, extra=()):
    return copy_of("classifier", root / "classifier", extra)


def user_bert(root):
    return copy_of("bert", root / "bert")


# ---------------------------------------------------------------------------- the cases: name -> build(root)
# build returns (script, argv); every path lies under root, which is checksummed before and after


GEN_FLAGS = ["--max-new-tokens", "8", "--bootstrap", "0", "--device", "cpu"]


def _eval_out_run(r):
    run = training_run(r)
    return "evaluate.py", ["--model", run / "best", "--data", rows_file(r / "rows.jsonl"), "--out", run, *GEN_FLAGS]


def _eval_out_best(r):
    run = training_run(r)
    return "evaluate.py", ["--model", run / "best", "--data", rows_file(r / "rows.jsonl"), "--out", run / "best",
                           *GEN_FLAGS]


def _compare_out_a(r):
    a, b = eval_run(r, "A"), eval_run(r, "B")
    return "evaluate.py", ["--compare", a, b, "--out", a]


def _select_out_a(r):
    a, b = eval_run(r, "A"), eval_run(r, "B")
    return "evaluate.py", ["--select", "mbr", a, b, "--bertscore-model", user_bert(r), "--out", a]


def _eval_out_other_kind(r):  # a training run given as an eval --out, though no input of the run
    return "evaluate.py", ["--generations", rows_file(r / "g.jsonl", True), "--out", training_run(r)]


def _eval_out_users_report(r):
    user = files(r / "results", ["report.md", "metrics.json"])  # a user's own report, no marker
    return "evaluate.py", ["--generations", rows_file(r / "g.jsonl", True), "--out", user]


def _eval_notes_in_eval_run(r):
    return "evaluate.py", ["--generations", rows_file(r / "g.jsonl", True), "--out", eval_run(r, "eval", ["notes.txt"])]


def _compare_over_old_eval_run(r):  # an old marker (no kind): counts as the eval run its files make it
    a, b = eval_run(r, "A"), eval_run(r, "B")
    old = eval_run(r, "old")
    (old / MARKER).write_text(json.dumps({"written_by": "severity-aware fine-tuning"}), encoding="utf-8")
    return "evaluate.py", ["--compare", a, b, "--out", old]


def _eval_out_inside_bertscore_model(r):
    return "evaluate.py", ["--generations", rows_file(r / "g.jsonl", True), "--bertscore-model",
                           user_bert(r), "--out", r / "bert" / "eval"]


def _clf_out_user_bert(r):
    return "train_classifier.py", ["--data", rows_file(r / "rows.jsonl"), "--out", user_bert(r)]


def _clf_model_is_out(r):
    bert = user_bert(r)
    return "train_classifier.py", ["--data", rows_file(r / "rows.jsonl"), "--model", bert, "--out", bert]


def _clf_notes_in_classifier(r):
    return "train_classifier.py", ["--data", rows_file(r / "rows.jsonl"), "--out", classifier(r, ["notes.txt"])]


def _clf_out_is_data(r):
    data = rows_file(r / "rows.jsonl")
    return "train_classifier.py", ["--data", data, "--out", data]


LM_FLAGS = ["--weights", "uniform", "--max-steps", "1", "--grad-accum", "1", "--resume", "never",
            "--device", "cpu"]  # one quick step


def _lm_out_users_metrics(r):
    return "train_lm.py", ["--data", rows_file(r / "rows.jsonl"), "--out", files(r / "mine", ["metrics.jsonl"]),
                           *LM_FLAGS]


def _lm_notes_in_last(r):
    return "train_lm.py", ["--data", rows_file(r / "rows.jsonl"), "--out", training_run(r, ["notes.txt"]), *LM_FLAGS]


def _lm_out_inside_model(r):
    lm = copy_of("lm", r / "gpt2")
    (lm / MARKER).unlink()  # a user's model
    return "train_lm.py", ["--data", rows_file(r / "rows.jsonl"), "--model", lm, "--out", lm / "finetuned", *LM_FLAGS]


def _prep_over_raw_csv(r):
    raw = raw_csv(r)
    return "prepare_data.py", ["--data", raw, "--out", raw]


def _prep_over_link_to_input(r):
    raw = raw_csv(r)
    (r / "link.jsonl").symlink_to(raw)
    return "prepare_data.py", ["--data", raw, "--out", r / "link.jsonl"]


def _prep_over_model_config(r):
    return "prepare_data.py", ["--data", raw_csv(r), "--out", user_bert(r) / "config.json"]


def _prep_over_users_jsonl(r):
    return "prepare_data.py", ["--data", raw_csv(r), "--out", rows_file(r / "mine.jsonl")]


def _prep_over_users_sidecar_name(r):
    (r / "out.jsonl.meta.json").write_text('{"my": "notes"}', encoding="utf-8")
    return "prepare_data.py", ["--data", raw_csv(r), "--out", r / "out.jsonl"]


def _score_over_classifier_weights(r):
    clf = classifier(r)
    return "score_severity.py", ["--data", rows_file(r / "rows.jsonl"), "--model", clf, "--out",
                                 clf / "model.safetensors"]


def _score_over_users_csv(r):
    return "score_severity.py", ["--data", rows_file(r / "rows.jsonl"), "--model", classifier(r), "--out", raw_csv(r)]


def _tokenizer_over_user_bert(r):
    return "tools/make_demo_tokenizer.py", ["--data", raw_csv(r), "--out", user_bert(r)]


def _demo_over_users_project(r):
    return "demo.py", ["--out", files(r / "project", ["labeled.jsonl", "notes.md"])]


CASES = {
    "evaluate --model RUN/best --out RUN": _eval_out_run,
    "evaluate --model RUN/best --out RUN/best": _eval_out_best,
    "evaluate --compare A B --out A": _compare_out_a,
    "evaluate --select mbr A B --out A": _select_out_a,
    "evaluate --out TRAINING_RUN (another kind)": _eval_out_other_kind,
    "evaluate --out a user's report.md/metrics.json": _eval_out_users_report,
    "evaluate --out EVAL holding notes.txt": _eval_notes_in_eval_run,
    "evaluate --compare --out OLD_EVAL (old marker)": _compare_over_old_eval_run,
    "evaluate --out inside --bertscore-model": _eval_out_inside_bertscore_model,
    "train_classifier --out USER_BERT": _clf_out_user_bert,
    "train_classifier --model X --out X": _clf_model_is_out,
    "train_classifier --out CLASSIFIER holding notes.txt": _clf_notes_in_classifier,
    "train_classifier --data X --out X": _clf_out_is_data,
    "train_lm --out a user's metrics.jsonl": _lm_out_users_metrics,
    "train_lm --out RUN with last/notes.txt": _lm_notes_in_last,
    "train_lm --model M --out M/finetuned": _lm_out_inside_model,
    "prepare_data --data raw.csv --out raw.csv": _prep_over_raw_csv,
    "prepare_data --out LINK to --data": _prep_over_link_to_input,
    "prepare_data --out MODEL/config.json": _prep_over_model_config,
    "prepare_data --out a user's JSONL": _prep_over_users_jsonl,
    "prepare_data --out X, a user's X.meta.json": _prep_over_users_sidecar_name,
    "score_severity --out CLASSIFIER/model.safetensors": _score_over_classifier_weights,
    "score_severity --out a user's CSV": _score_over_users_csv,
    "make_demo_tokenizer --out USER_BERT": _tokenizer_over_user_bert,
    "demo --out a user's project folder": _demo_over_users_project,
}


# ---------------------------------------------------------------------------- running one


def checksum(root):
    """{relative path: sha256 of the bytes (a link: its target; a folder: 'dir')} of everything under root."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_in_process(script, argv):
    """(exit code, message) of the script's main(argv) as its __main__ block runs it."""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    try:
        run_main(lambda: module.main([str(a) for a in argv]))
    except SystemExit as e:
        return (e.code if isinstance(e.code, int) else 1), ("" if isinstance(e.code, int) or e.code is None
                                                             else str(e.code))
    return 0, ""


def run_as_process(script, argv):
    """(exit code, stderr) of `python script argv` run as a user runs it."""
    proc = subprocess.run([sys.executable, script, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "HOME": str(Path.home())})
    return proc.returncode, proc.stderr


def judge(root, before, code, stderr):
    """{lost: files changed or gone, clean: exit != 0 with one `error:` line, traceback: bool}."""
    after = checksum(root)
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    traceback = "Traceback" in stderr
    return {"lost": lost, "clean": code != 0 and len(errors) == 1 and not traceback, "traceback": traceback,
            "code": code, "error": errors[0] if errors else stderr.strip()[-200:]}


def run_case(name, root, runner=run_in_process):
    with contextlib.redirect_stdout(io.StringIO()):  # (evaluate.py's report while an eval run is built)
        script, argv = CASES[name](Path(root))
    before = checksum(root)
    code, stderr = runner(script, argv)
    return judge(root, before, code, stderr)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    results = {}
    for name in [n for n in CASES if args.k in n]:
        with tempfile.TemporaryDirectory() as root:
            results[name] = run_case(name, root, run_as_process)
        r = results[name]
        print(f"{'ok  ' if r['clean'] and not r['lost'] else 'FAIL'} {name:52s} exit {r['code']}  "
              f"{'LOST ' + ', '.join(r['lost']) if r['lost'] else ''}{'TRACEBACK' if r['traceback'] else ''}"
              f"  {r['error'][:110]}", flush=True)
    n = len(results)
    print(f"\n| data-safety cases | refused cleanly (one error: line, exit != 0) | tracebacks | losses |")
    print("|---|---|---|---|")
    print(f"| {n} | {sum(r['clean'] for r in results.values())} | {sum(r['traceback'] for r in results.values())} "
          f"| {sum(bool(r['lost']) for r in results.values())} |")
    return 0 if all(r["clean"] and not r["lost"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
