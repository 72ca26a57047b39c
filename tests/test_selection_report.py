"""Response selection (core/selection.py, evaluate.py --select), the BERTScore rescaling baseline,
degeneracy flags and the paper's table (core/reporting.py), on the real MiniLM BERT and the shipped
demo answers. References: bert-score itself (raw and rescaled with our baseline written as its
baseline file), hand counts, and synthetic sets whose right answer is known by construction."""
import json
import random

import numpy as np
import pytest
import torch

import evaluate
from core import metrics as M
from core import reporting as R
from core.common import DEMO_DATA
from conftest import write_rows
from core.selection import mbr_select, oracle_select
from test_metrics import U32, _bert_score_reference, bert_score_float64, float32_matching_tol, rebatched_tol

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

LAYER = 6
T_MAX = 512  # BERTScore inputs are cut to MiniLM's 512 tokens: the T of float32_matching_tol (test_metrics.py)


def bertscore_in_float64(monkeypatch):
    """evaluate.py's BERTScore model loads in float64 (core/metrics.py's load_pretrained), so that its
    scores are compared with bert-score run in float64 (test_metrics.py) or with themselves in other
    batches within the float32 rounding of the matching alone."""
    load = M.load_pretrained
    monkeypatch.setattr(M, "load_pretrained", lambda *a, **k: load(*a, **{**k, "dtype": torch.float64}))


def demo_rows(n, split="test"):
    rows = [json.loads(x) for x in DEMO_DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r["split"] == split][:n]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return M.load_bertscore_model(minilm_dir, layer=LAYER)[:3]


# ----------------------------------------------------------------------------- rescaling


def test_mismatched_pairs_never_pair_a_text_with_itself():
    refs = ["a", "b", "a", "c", "d", "b", "e"]
    i, j = M.mismatched_pairs(refs, n_pairs=100, seed=3)
    assert len(i) > 0 and all(refs[a] != refs[b] for a, b in zip(i, j))
    assert len(M.mismatched_pairs(refs, n_pairs=2, seed=3)[0]) == 2
    assert len(M.mismatched_pairs(["x", "x"])[0]) == 0


def test_rescaled_unrelated_answers_land_near_zero(minilm):
    model, tok, max_len = minilm
    rows = demo_rows(60, "train")
    refs = [r["answer"] for r in rows]
    base = M.bertscore_baseline(refs, model, tok, LAYER, max_length=max_len, seed=0)
    assert 0.3 < base[2] < 0.95  # unrelated Arabic answers share a lot under an English-centric BERT
    # shuffled references: every answer scored against the answer to another question
    perm = np.random.default_rng(7).permutation(len(refs))
    F = M.bertscore([refs[k] for k in perm], refs, model, tok, LAYER, max_length=max_len)[2]
    # zero within 4 standard errors of the difference of two means of n unrelated pairs (these and the
    # baseline's, with the same sd): 4 sd(F) sqrt(2 / n) / (1 - b) = 0.13 (measured 2026-12-06: -0.0035)
    se = F.std(ddof=1) * np.sqrt(2 / len(F)) / (1 - base[2])
    assert abs(M.rescale_with_baseline(F, base[2]).mean()) < 4 * se < F.mean()
    # a constant answer, typical of the domain (from the val split, not among the references): it
    # sits near the centre of the answers, so a little above the random-pair baseline (0.18 here),
    # far below its raw score and below a near-copy of the reference
    constant = demo_rows(1, "val")[0]["answer"]
    F = M.bertscore([constant] * len(refs), refs, model, tok, LAYER, max_length=max_len)[2]
    near_copy = M.bertscore([" ".join(r.split()[:-1]) for r in refs], refs, model, tok, LAYER, max_length=max_len)[2]
    assert abs(M.rescale_with_baseline(F, base[2]).mean()) < 0.25 and F.mean() > 0.5
    assert M.rescale_with_baseline(near_copy, base[2]).mean() > 0.6
    # a short generic constant scores below the unrelated baseline; the reference itself scores 1
    F = M.bertscore(["راجع الطبيب"] * len(refs), refs, model, tok, LAYER, max_length=max_len)[2]
    assert M.rescale_with_baseline(F, base[2]).mean() < 0.05
    F = M.bertscore(refs, refs, model, tok, LAYER, max_length=max_len)[2]
    # F = 1 up to the float32 rounding of the matching, which the rescaling divides by 1 - b
    assert M.rescale_with_baseline(F, base[2]) == pytest.approx(1.0, abs=float32_matching_tol(T_MAX) / (1 - base[2]))


def test_evaluate_rescaled_beside_raw_equals_bert_score(tmp_path, monkeypatch, minilm_dir):
    """evaluate.py with a shuffled-reference 'model': raw per-row BERTScore still equals
    bert-score's, and the rescaled F1 equals bert-score's rescale_with_baseline given our
    baseline as its baseline file; overall rescaled F1 near 0."""
    pytest.importorskip("pandas")  # bert-score reads baseline files with pandas
    bertscore_in_float64(monkeypatch)
    rows = demo_rows(40)
    answers = [r["answer"] for r in rows]
    for k, r in enumerate(rows):
        r["generated"] = answers[(k + 5) % len(rows)]
    path = write_rows(tmp_path / "g.jsonl", rows)
    res = evaluate.main(["--generations", str(path), "--out", str(tmp_path / "run"), "--bootstrap", "50",
                         "--bertscore-model", str(minilm_dir), "--bertscore-layer", str(LAYER)])
    base = res["config"]["bertscore"]["baseline"]
    out_rows = [json.loads(x) for x in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    # overall rescaled F1 zero within 4 standard errors (as in the test above; percent, ~16 here)
    se = np.std([r["scores"]["bertscore_f1"] for r in out_rows], ddof=1) * np.sqrt(2 / len(rows)) / (1 - base["f1"])
    assert base["pairs"] == len(rows) and abs(res["overall"]["bertscore_f1_rescaled"]) < 4 * se  # percent
    assert "no-rescale" in res["config"]["bertscore"]["config_string"]  # the raw number's setting is unchanged
    gen, refs = [r["generated"] for r in rows], [r["answer"] for r in rows]
    _, _, F = _bert_score_reference(monkeypatch, minilm_dir, gen, refs, LAYER, False)  # float64
    tol = float32_matching_tol(T_MAX)  # both from float64 models: ours matches in float32 (test_metrics.py)
    assert [r["scores"]["bertscore_f1"] for r in out_rows] == pytest.approx(100 * F, abs=100 * tol)
    csv = tmp_path / "baseline.csv"  # bert-score's baseline file format: one row per layer
    csv.write_text("LAYER,P,R,F\n" + "".join(f"{k},{base['p']},{base['r']},{base['f1']}\n" for k in range(LAYER + 1)))
    import bert_score
    bert_score_float64(monkeypatch)  # (already, through _bert_score_reference)
    _, _, Fr = bert_score.score(gen, refs, model_type=str(minilm_dir), num_layers=LAYER, lang="ar", batch_size=8,
                                rescale_with_baseline=True, baseline_path=str(csv))
    # (F - b) / (1 - b): F within tol, and bert-score rounds b to float32 (2**-24 b), which moves the result by
    # |F - 1| / (1 - b)^2 <= 1 / (1 - b)^2 times as much
    b = base["f1"]
    tol_rescaled = (tol + U32 * b / (1 - b)) / (1 - b)
    assert [r["scores"]["bertscore_f1_rescaled"] for r in out_rows] == pytest.approx(100 * Fr.numpy(),
                                                                                     abs=100 * tol_rescaled)
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "BERTScore F1 rescaled" in report and "## Degeneracy flags" in report


# ----------------------------------------------------------------------------- degeneracy


def test_degeneracy_hand_counts():
    texts = ["", "ألم ألم ألم ألم", "ألم في الصدر.", "a b a b"]
    d = M.degeneracy(texts)
    assert d["empty"] == 25.0
    # 100 * count / total, one rounding, as the code computes it: exact
    assert d["distinct1"] == 100 * 5 / 11  # ألم في الصدر a b of 4 + 3 + 4 tokens
    assert d["distinct2"] == 100 * 5 / 8  # (ألم ألم) x3, (ألم في), (في الصدر), (a b) x2, (b a)
    assert d["repeated"] == 50.0  # ألم x4 (4/4) and a b a b (2/4); 3-token answers are too short to judge
    assert M.degeneracy([])["empty"] is None
    by = R.degeneracy_by_group([{"generated": t} for t in texts], ["mild", "mild", None, "critical"])
    assert by["mild"]["empty"] == 50.0 and by["critical"]["repeated"] == 100.0 and by["moderate"]["empty"] is None


def test_degeneracy_counts_a_letter_repeated_inside_a_word():
    """An answer that is one run of a letter (a degenerate model's favourite) is one token, so token
    counts miss it (distinct-1 100%): the letter count flags it, and a class with no bigram has no
    distinct-2 (None, shown "-"), not 0%."""
    garbage = ["هههههههههههههههه", "اااااااا", "هاهاهاهاهاها"]  # one letter, one letter, a 2-letter loop
    d = M.degeneracy(garbage)
    assert d["repeated"] == 100.0 and d["distinct1"] == 100.0 and d["distinct2"] is None
    # real-looking answers, short and long, are not flagged: the commonest letter is far below half
    fine = ["راجع الطبيب", "اذهب الى الطوارئ فورا", "هل", "لا لا لا",  # the last two: too short to judge
            "الم الصدر مع ضيق التنفس يحتاج الى تقييم عاجل في المستشفى"]
    assert M.degeneracy(fine)["repeated"] == 0.0
    assert M.degeneracy(["ههههههه"])["repeated"] == 0.0  # 7 letters: too short to judge
    rows = [{"generated": t, "question": "q", "answer": "a"} for t in garbage]
    md = R.quality_markdown(R.degeneracy_by_group(rows, ["mild"] * 3), [], [])
    row = next(line for line in md.splitlines() if line.startswith("| distinct-2"))
    assert row.split("|")[2].strip() == "-" and row.split("|")[3].strip() == "-"  # overall, mild


# ----------------------------------------------------------------------------- selection


def test_mbr_and_oracle_on_toy_scores():
    """A token-overlap similarity: the consensus (MBR) and the closest-to-reference (oracle)
    candidates are known by hand."""
    def jaccard(hyps, refs):
        return np.array([len(set(h.split()) & set(r.split())) / len(set(h.split()) | set(r.split()))
                         for h, r in zip(hyps, refs)])

    cands = [["a b c", "a b d", "x y z"], ["p q", "p q", "r s"]]
    chosen, util = mbr_select(cands, jaccard)
    assert chosen == [0, 0]  # ties between equal candidates go to the first run
    assert list(util[0]) == [(0.5 + 0) / 2, (0.5 + 0) / 2, 0]  # 2/4 and halves: exact in binary
    chosen, sc = oracle_select(cands, ["a b d", "r s t"], jaccard)
    assert chosen == [1, 2] and list(sc[1]) == [0, 0, 2 / 3]  # the same one division: exact


def synthetic_runs(tmp_path, minilm_dir, n=24):
    """Three runs over the same rows: per row one good (the reference minus its last word), one
    partial (its first third + another answer's second half) and one wrong (another question's answer)
    candidate, rotated over the runs so that no run is always best."""
    rows = demo_rows(n)
    answers = [r["answer"] for r in rows]
    kinds = []
    runs = [[], [], []]
    for k, r in enumerate(rows):
        words, other = r["answer"].split(), answers[(k + 7) % n].split()
        cand = {"good": " ".join(words[:-1]),
                "partial": " ".join(words[:len(words) // 3] + other[len(other) // 2:]),
                "wrong": answers[(k + 3) % n]}
        order = ["good", "partial", "wrong"][k % 3:] + ["good", "partial", "wrong"][:k % 3]
        kinds.append(order)
        for j, kind in enumerate(order):
            runs[j].append({**r, "generated": cand[kind]})
    folders = []
    for j, run in enumerate(runs):
        folder = tmp_path / f"run{j}"
        evaluate.main(["--generations", str(write_rows(tmp_path / f"run{j}.jsonl", run)), "--out", str(folder),
                       "--bootstrap", "0", "--baseline-pairs", "0", "--bertscore-model", str(minilm_dir),
                       "--bertscore-layer", str(LAYER)])
        folders.append(folder)
    return rows, runs, kinds, folders


def test_select_mbr_and_oracle(tmp_path, minilm_dir, monkeypatch):
    bertscore_in_float64(monkeypatch)  # the oracle's bound below
    rows, runs, kinds, folders = synthetic_runs(tmp_path, minilm_dir)
    common = ["--bertscore-model", str(minilm_dir), "--bertscore-layer", str(LAYER), "--bootstrap", "100",
              "--baseline-pairs", "0"]
    mbr = evaluate.main(["--select", "mbr", *map(str, folders), "--out", str(tmp_path / "mbr"), *common])
    oracle = evaluate.main(["--select", "oracle", *map(str, folders), "--out", str(tmp_path / "oracle"), *common])
    run_metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    for name, res in (("mbr", mbr), ("oracle", oracle)):
        out = [json.loads(x) for x in (tmp_path / name / "generations.jsonl").read_text().splitlines()]
        assert [r["id"] for r in out] == [r["id"] for r in rows]
        picked = []
        for k, r in enumerate(out):  # every selected answer is one of the row's candidates, from the named run
            j = [f.name for f in folders].index(r["selected_from"])
            assert r["generated"] == runs[j][k]["generated"]
            picked.append(kinds[k][j])
        assert set(r.keys()) >= {"generated", "selected_from", "selection", "scores", "question", "answer"}
        if name == "mbr":
            assert picked.count("wrong") <= len(rows) // 10, picked
            assert res["config"]["select"]["upper_bound"] is False
        else:
            assert picked.count("wrong") == 0
            # the oracle's score is at least every run's, row by row and overall, up to the rounding of the
            # three scorings of a pair (its run's, the selection's, the selected rows'), each in other
            # batches: two rebatched_tol (test_metrics.py), in percent; a mean of such rows likewise
            slack = 2 * 100 * rebatched_tol(T_MAX)
            for m in run_metrics:
                assert res["overall"]["bertscore_f1"] >= m["overall"]["bertscore_f1"] - slack
            per_run = np.array([[json.loads(x)["scores"]["bertscore_f1"] for x in
                                 (f / "generations.jsonl").read_text().splitlines()] for f in folders])
            assert np.all(np.array([r["scores"]["bertscore_f1"] for r in out]) >= per_run.max(0) - slack)
            # labelled as an upper bound in every file it writes
            assert res["config"]["select"]["upper_bound"] is True and all(r["selection"]["upper_bound"] for r in out)
            assert "UPPER BOUND" in (tmp_path / "oracle" / "report.md").read_text(encoding="utf-8").splitlines()[0]
    # a selection folder is a normal run folder: --compare takes it, and the table names it
    cmp = evaluate.main(["--compare", str(folders[0]), str(tmp_path / "mbr"), str(tmp_path / "oracle"),
                         "--out", str(tmp_path / "cmp"), "--bootstrap", "50"])
    assert cmp["metrics"]["bertscore_f1"]["oracle"]["overall"]["delta"] >= 0
    table = (tmp_path / "cmp" / "table.md").read_text(encoding="utf-8")
    assert "selection (MBR)" in table and "oracle (upper bound)" in table


def test_select_errors(tmp_path, minilm_dir, capsys):
    with pytest.raises(SystemExit):
        evaluate.get_args(["--select", "mbr", "a", "--compare", "a", "b"])  # two modes
    bert = str(minilm_dir)
    for argv, message in [(["--select", "best", "a", "b", "--bertscore-model", bert], "expected mbr or oracle"),
                          (["--select", "mbr", "a", "--bertscore-model", bert], "two or more run folders"),
                          (["--select", "mbr", "a", "b"], "give --bertscore-model")]:
        with pytest.raises(SystemExit) as e:  # refused at parsing, before any work
            evaluate.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "None:" not in err


# ----------------------------------------------------------------------------- the paper's table


def fake_run(folder, model, f1, ci, mode="generate", select=None):
    """A run folder's metrics.json as evaluate.py writes it (only the fields the table reads)."""
    groups = {g: {"bertscore_f1": f1 + i, "urgent_rate": 10.0 * i, "ref_urgent_rate": 50.0}
              for i, g in enumerate(("mild", "moderate", "critical"))}
    cis = {g: {"bertscore_f1": [v["bertscore_f1"] - ci, v["bertscore_f1"] + ci]} for g, v in groups.items()}
    meta = {"overall": {"bertscore_f1": f1, "urgent_rate": 5.0}, "by_severity": groups,
            "ci": {"overall": {"bertscore_f1": [f1 - ci, f1 + ci]}, "by_severity": cis},
            "n": {"overall": 9, "mild": 3, "moderate": 3, "critical": 3},
            "config": {"mode": mode, "model": str(model) if model else None, "select": select,
                       "bertscore": {"config_string": "x_L6"}}}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(meta))
    return folder


def trained(folder, base, weights, curriculum=None):
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"args": {"model": base, "weights": weights,
                                                           "curriculum": curriculum}, "weights": {}}))
    return folder


def test_paper_table_from_run_metadata(tmp_path):
    base = tmp_path / "models" / "aragpt2-base"
    base.mkdir(parents=True)  # a base model folder: no train_lm meta.json -> zero-shot
    runs = [fake_run(tmp_path / "e-bal", trained(tmp_path / "m-bal", str(base), "balanced"), 60.0, 1.0),
            fake_run(tmp_path / "e-uni", trained(tmp_path / "m-uni", str(base), "uniform"), 55.0, 1.5),
            fake_run(tmp_path / "e-zero", base, 40.0, 2.0),
            fake_run(tmp_path / "e-cur", trained(tmp_path / "m-cur", str(base), "ramp", "cumulative"), 58.0, 1.0),
            fake_run(tmp_path / "e-q", trained(tmp_path / "m-q", "models/qwen2.5-0.5b", "uniform"), 57.0, 1.0)]
    runs.append(fake_run(tmp_path / "e-mbr", None, 61.0, 1.0, "select",
                         {"upper_bound": False, "runs": [str(runs[0]), str(runs[1])]}))
    runs.append(fake_run(tmp_path / "e-or", None, 70.0, 1.0, "select",
                         {"upper_bound": True, "runs": [str(runs[0]), str(runs[1])]}))
    table = R.paper_table(runs)
    assert table["models"] == ["aragpt2-base", "qwen2.5-0.5b"]
    assert table["columns"] == ["zero-shot", "plain", "weighted", "curriculum", "selection (MBR)",
                                "oracle (upper bound)"]
    md = R.paper_table_markdown(table)
    assert "| aragpt2-base | 40.00 [38.00, 42.00] | 55.00 [53.50, 56.50] | 60.00 [59.00, 61.00] | 58.00 [57.00, 59.00] " \
           "| 61.00 [60.00, 62.00] | 70.00 [69.00, 71.00] |" in md
    assert "| qwen2.5-0.5b |  | 57.00 [56.00, 58.00] |  |  |  |  |" in md
    assert "BERTScore-F1, critical (n = 3)" in md and "| aragpt2-base | 42.00 [40.00, 44.00] |" in md
    assert "20.00 / 0.00" in md  # triage: urgent advice on critical / on mild
    # two weighted runs of one model: the columns say which weights
    runs.append(fake_run(tmp_path / "e-ramp", trained(tmp_path / "m-ramp", str(base), "ramp"), 59.0, 1.0))
    assert {"weighted (balanced)", "weighted (ramp)"} <= set(R.paper_table(runs)["columns"])
    plt = pytest.importorskip("matplotlib.pyplot")
    assert R.plot_paper_table(plt, tmp_path / "t.png", table, R.run_colors(runs)).stat().st_size > 1000


def test_plots_start_bars_at_zero_keep_legends_off_the_bars_and_a_run_its_colour(tmp_path, monkeypatch):
    """table.png and metrics_by_severity.png list the runs in different orders (the table by method);
    each run must keep one colour; bars start at 0 (a truncated axis exaggerates a 2-point gap); the
    legend lies outside every axes."""
    plt = pytest.importorskip("matplotlib.pyplot")
    base = tmp_path / "base"
    base.mkdir()
    runs = [fake_run(tmp_path / "e-w", trained(tmp_path / "m-w", str(base), "balanced"), 60.0, 1.0),
            fake_run(tmp_path / "e-z", base, 58.0, 1.0),  # zero-shot: first column of the table, second run here
            fake_run(tmp_path / "e-p", trained(tmp_path / "m-p", str(base), "uniform"), 59.0, 1.0)]
    figs = []
    monkeypatch.setattr(plt, "close", figs.append)  # keep the figures to look at them
    colors = R.run_colors(runs)
    metas = [json.loads((r / "metrics.json").read_text()) for r in runs]
    R.plot_metric_bars(plt, tmp_path / "m.png", ["w", "z", "p"], metas, ["bertscore_f1"], {},
                       [colors[str(r)] for r in runs])
    R.plot_paper_table(plt, tmp_path / "t.png", R.paper_table(runs), colors)

    def bar_colors(fig):  # label -> facecolor of its bars
        ax = fig.axes[0]
        assert ax.get_ylim()[0] == 0 and ax.get_legend() is None and fig.legends
        return {c.get_label(): tuple(c.patches[0].get_facecolor()) for c in ax.containers if hasattr(c, "patches")}

    by_severity, table = bar_colors(figs[0]), bar_colors(figs[1])
    assert list(table) == ["zero-shot", "plain", "weighted"]  # the table's own order
    assert table["zero-shot"] == by_severity["z"] and table["plain"] == by_severity["p"]
    assert table["weighted"] == by_severity["w"] and len(set(table.values())) == 3
