"""The severity curriculum (core/curriculum.py, train_lm.py --curriculum): stage order and membership,
the documented step split (checked against hand-computed largest-remainder splits), the rows each
step actually trains on, and exact resume in the middle of a stage and at a stage boundary."""
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import train_lm
from core.common import SEVERITIES, UsageError
from conftest import write_rows
from core.curriculum import curriculum_stages, stage_at
from test_train_lm import args_for, make_rows, metrics, setup, tensors, tiny_model_dir, tok  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)


def test_stage_order_membership_and_split():
    classes = [2, 0, 1, 0, 2, 0, 1, 0, 1, 0]  # 5 mild, 3 moderate, 2 critical
    d = curriculum_stages(classes, "disjoint", 10)
    assert [s["name"] for s in d] == ["mild", "moderate", "critical"]
    assert [s["rows"].tolist() for s in d] == [[1, 3, 5, 7, 9], [2, 6, 8], [0, 4]]
    assert [(s["first_step"], s["steps"]) for s in d] == [(0, 5), (5, 3), (8, 2)]
    # 7 steps: quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the one left over to the largest remainder (mild)
    assert [s["steps"] for s in curriculum_stages(classes, "disjoint", 7)] == [4, 2, 1]
    c = curriculum_stages(classes, "cumulative", 10)
    assert [s["rows"].tolist() for s in c] == [[1, 3, 5, 7, 9], [1, 2, 3, 5, 6, 7, 8, 9], list(range(10))]
    # stage rows 5, 8, 10 of 23: quotas 2.17, 3.48, 4.35 -> 2, 3, 4 + 1 to moderate
    assert [(s["first_step"], s["steps"]) for s in c] == [(0, 2), (2, 4), (6, 4)]
    # ties go to the earlier stage: 1 step over two equal stages
    assert [s["name"] for s in curriculum_stages([0, 2], "disjoint", 1)] == ["mild"]
    # a class without rows has no stage; the steps still add up
    s = curriculum_stages([0, 0, 2], "cumulative", 9)
    assert [(x["name"], x["steps"]) for x in s] == [("mild", 4), ("critical", 5)]
    assert [stage_at(s, k)["name"] for k in range(11)] == ["mild"] * 4 + ["critical"] * 7
    with pytest.raises(UsageError, match="neither severity nor severity_probs"):
        curriculum_stages([0, 3], "disjoint", 4)


def largest_remainder(sizes, budget):
    """The documented split in exact arithmetic (Fraction): each stage's quota budget * size / total,
    its floor, and the steps left over one each to the largest fractional parts, ties to the earlier stage."""
    quotas = [Fraction(budget * n, sum(sizes)) for n in sizes]
    steps = [math.floor(q) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda j: (-(quotas[j] - steps[j]), j))
    for j in order[:budget - sum(steps)]:
        steps[j] += 1
    return steps


def test_split_ties_go_to_the_earlier_stage():
    """The issue's cases: quotas with equal fractional parts that floating point made unequal
    (10 steps over 1/1/4 rows: 1.67 each of 1.67, 1.67, 6.67; 3 steps over 1/1/7: 0.33, 0.33, 2.33)."""
    assert [s["steps"] for s in curriculum_stages([0, 1, 2, 2, 2, 2], "disjoint", 10)] == [2, 2, 6]
    split = curriculum_stages([0, 1] + [2] * 7, "disjoint", 3)  # moderate gets 0 steps: no stage
    assert [(s["name"], s["first_step"], s["steps"]) for s in split] == [("mild", 0, 1), ("critical", 1, 2)]


@pytest.mark.parametrize("mode", ["disjoint", "cumulative"])
def test_split_matches_exact_largest_remainder(mode):
    """Every class count 0..5 (124 mixes) and every budget 1..16 against the Fraction reference: the
    steps per stage, stages in order and back to back, a stage only where it has a step."""
    for counts in itertools.product(range(6), repeat=3):
        if not any(counts):
            continue
        classes = [k for k, n in enumerate(counts) for _ in range(n)]
        present = [k for k in range(3) if counts[k]]
        sizes = [counts[k] if mode == "disjoint" else sum(counts[:k + 1]) for k in present]
        for budget in range(1, 17):
            want = [(SEVERITIES[k], n) for k, n in zip(present, largest_remainder(sizes, budget)) if n > 0]
            got = curriculum_stages(classes, mode, budget)
            assert [(s["name"], s["steps"]) for s in got] == want, (counts, budget)
            assert [s["first_step"] for s in got] == [sum(s["steps"] for s in got[:i]) for i in range(len(got))]
            assert sum(s["steps"] for s in got) == budget


def curriculum_rows():
    """make_rows, with a few labels that disagree with the argmax of the probabilities and a few
    rows without a label (their argmax decides), so 'label first, else argmax' is exercised."""
    rows = make_rows(36)
    for i, r in enumerate(rows):
        if i % 7 == 3:
            r["severity"] = ["mild", "moderate", "critical"][(int(np.argmax(r["severity_probs"])) + 1) % 3]
        elif i % 7 == 5:
            del r["severity"]
    return rows


def expected_class(row):
    return row.get("severity") or ["mild", "moderate", "critical"][int(np.argmax(row["severity_probs"]))]


@pytest.mark.parametrize("mode", ["disjoint", "cumulative"])
def test_each_step_trains_on_its_stage(setup, tmp_path, monkeypatch, capsys, mode):
    """Every row a step trains on belongs to that step's stage, the stages come in order with the
    documented number of steps, every step line of metrics.jsonl names its stage, and the terminal
    says when a stage begins."""
    rows = curriculum_rows()
    data = write_rows(tmp_path / "d.jsonl", rows)
    cls_of = {r["id"]: expected_class(r) for r in rows if r["split"] == "train"}
    seen = []  # the classes of each micro-batch the loop collates for training
    real_collate = train_lm.collate

    def spy(examples, indices, pad_id, device, **kw):
        if examples and "weight" in examples[0] and len(examples) == len(cls_of):
            seen.append({cls_of[examples[i]["id"]] for i in indices})
        return real_collate(examples, indices, pad_id, device, **kw)

    monkeypatch.setattr(train_lm, "collate", spy)
    train_lm.main(args_for(setup, tmp_path / "run", "--data", str(data), "--curriculum", mode, "--weights", "ramp",
                           "--max-steps", "12", "--eval-every", "100", "--save-every", "100"))
    counts = {c: sum(v == c for v in cls_of.values()) for c in ("mild", "moderate", "critical")}
    sizes = ([counts["mild"], counts["moderate"], counts["critical"]] if mode == "disjoint" else
             [counts["mild"], counts["mild"] + counts["moderate"], len(cls_of)])
    steps = largest_remainder(sizes, 12)
    plan = [name for name, n in zip(("mild", "moderate", "critical"), steps) for _ in range(n)]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("curriculum stage")]
    assert printed == [f"curriculum stage {name}: {rows} rows, steps {sum(steps[:k]) + 1} to {sum(steps[:k + 1])}"
                       for k, (name, rows) in enumerate(zip(("mild", "moderate", "critical"), sizes)) if k > 0]
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert [m["stage"] for m in lines] == plan
    allowed = {"mild": {"mild"}, "moderate": {"moderate"}, "critical": {"critical"}} if mode == "disjoint" else \
        {"mild": {"mild"}, "moderate": {"mild", "moderate"}, "critical": {"mild", "moderate", "critical"}}
    assert len(seen) == 2 * 12  # grad_accum 2
    for k, classes in enumerate(seen):
        assert classes <= allowed[plan[k // 2]], (k, classes)
    if mode == "cumulative":  # the last stage really mixes classes
        assert set().union(*seen[2 * plan.index("critical"):]) == {"mild", "moderate", "critical"}
    meta = json.loads((tmp_path / "run" / "last" / "meta.json").read_text())
    assert [s["steps"] for s in meta["data"]["curriculum"]["stages"]] == steps


@pytest.mark.parametrize("save_every,crash", [(4, 6), (3, 5)])  # resume mid-stage; resume at a stage boundary
def test_curriculum_resume_is_exact(setup, tmp_path, tok, save_every, crash):  # noqa: F811
    """9 steps straight == crash + resume from the last checkpoint, bit for bit, with dropout on.
    Disjoint stages of 3 steps each over 24 training rows: the checkpoint at step 4 is in the
    middle of the moderate stage, the one at step 3 exactly where it begins."""
    model = tiny_model_dir(tmp_path / "dropout_model", tok, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    common = ("--model", str(model), "--weights", "balanced", "--curriculum", "disjoint", "--max-steps", "9",
              "--save-every", str(save_every), "--eval-every", "100")
    train_lm.main(args_for(setup, tmp_path / "straight", *common))
    with pytest.raises(SystemExit, match="crash"):
        train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", str(crash)))
    train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", str(crash)))
    a, b = tensors(tmp_path / "straight" / "last"), tensors(tmp_path / "resumed" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [(m["step"], m["stage"], m["loss"]) for m in metrics(tmp_path / "straight") if "loss" in m]
    lb = [(m["step"], m["stage"], m["loss"]) for m in metrics(tmp_path / "resumed") if "loss" in m]
    assert la == lb and [s for _, s, _ in la] == ["mild"] * 3 + ["moderate"] * 3 + ["critical"] * 3
    # a resume with another step budget (so other stage boundaries) is refused
    with pytest.raises(ValueError, match="max-steps"):
        train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--max-steps", "12"))


def test_tiny_stage_is_refused(setup, tmp_path):
    rows = make_rows(30)
    for r in rows:
        if r["severity"] == "critical" and r["split"] == "train":
            r["severity"] = "moderate"
    rows[1]["severity"] = "critical"  # one critical training row: less than a step's 2 micro-batches
    data = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(UsageError, match="stage critical has 1 training rows"):
        train_lm.main(args_for(setup, tmp_path / "run", "--data", str(data), "--curriculum", "disjoint"))
