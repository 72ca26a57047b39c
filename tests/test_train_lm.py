"""train_lm.py on a tiny GPT-2 (d 32, 2 layers) and a tiny byte-level BPE, against independent
references: F.cross_entropy in float64 on the model's own logits, per-example forward passes
without padding, hand-computed class weights, transformers' GPT2LMHeadModel, and runs that are
split differently (micro-batches, ranks, a crash and a resume) but must end with the same weights.
"""
import errno
import importlib
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import train_lm
from core.common import DataError, UsageError
from models import build_model, load_pretrained, save_pretrained
from conftest import write_rows
from float64_run import PARALLEL_ATOL, float64_models
from test_loss import FP32_TOL
from core.prompt import build_example, format_prompt

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
Q_WORDS = ["أعاني", "من", "ألم", "في", "الصدر", "صداع", "حمى", "سعال", "منذ", "يومين", "أسبوع", "طفلي",
           "عندي", "دوخة", "غثيان", "ضيق", "التنفس", "حكة", "الجلد", "شديد", "خفيف", "مع", "قيء", "ظهر"]
A_WORDS = ["يجب", "مراجعة", "الطبيب", "الطوارئ", "فورا", "اشرب", "الماء", "راحة", "تحليل", "دم", "خذ",
           "دواء", "مسكن", "لا", "تقلق", "الحالة", "بسيطة", "اتصل", "بالإسعاف", "وصفة", "كريم", "مرطب"]


def make_rows(n=30, seed=0, val_every=5):
    """Synthetic rows of various lengths with random severity probabilities (every 5th is val)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choices(Q_WORDS, k=rng.randint(3, 14)))
        a = " ".join(rng.choices(A_WORDS, k=rng.randint(2, 16)))
        p = [rng.random() ** 2 for _ in range(3)]
        p[i % 3] += 1.0  # every class is the argmax of some train and some val rows
        probs = [x / sum(p) for x in p]
        rows.append({"id": f"ex{i}", "question": q, "answer": a, "split": "val" if i % val_every == 0 else "train",
                     "severity": ["mild", "moderate", "critical"][int(np.argmax(probs))], "severity_probs": probs})
    return rows


def tiny_model_dir(folder, tok, **overrides):
    torch.manual_seed(0)
    cfg = dict(model_type="gpt2", vocab_size=tok.vocab_size, n_positions=128, n_embd=32, n_layer=2, n_head=2,
               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    save_pretrained(build_model({**cfg, **overrides}), tok, folder)
    return folder


@pytest.fixture(scope="module")
def tok():
    mk = importlib.import_module("tools.make_demo_tokenizer")
    texts = [r["question"] + "\n" + r["answer"] for r in make_rows(200, seed=1)] + ["الجواب:"] * 20
    return mk.train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("train_lm")
    return {"tok": tok, "model": tiny_model_dir(d / "tiny", tok), "data": write_rows(d / "data.jsonl", make_rows()),
            "root": d}


def tiny_qwen2_dir(folder, tok):
    """A tiny Qwen2 with tied embeddings and grouped-query attention (the Qwen2.5-0.5B layout)."""
    torch.manual_seed(0)
    cfg = dict(model_type="qwen2", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
               initializer_range=0.1, bos_token_id=0, eos_token_id=0)
    save_pretrained(build_model(cfg), tok, folder)
    return folder


def fused_loss_bound(tokens, V, n_mb):
    """Worst-case |logged - exact| x denominator of a step loss that train_lm.py computed with the fused
    loss on a float64 model (tests/float64_run.py), for the step's answer tokens given as (w, zmax, ce):
    the example's weight, the token's largest |logit| and its cross-entropy (float64 tensors [T]); V the
    vocabulary (the lm_head's rows), n_mb the most answer tokens of one micro-batch (the length of the
    fused loss's float32 sums).

    Everything but the fused loss's statistics is float64: the forward in other batch shapes is off by
    ~1e3 x 2**-53 of a logit, and in Qwen-style RMSNorms (fp32 inside, as transformers') that shows
    only if a float64 value straddles a float32 rounding boundary (chance ~2**-29 per value). In
    float32 (u = 2**-24, models/loss.py): each logit is rounded (u |z|, counted 1.5x for the float64
    part; ce moves by twice that), the statistics add (V (1 + 1/e) + 3 + 3 ce) u (tests/test_loss.py's
    ce_bound: the row sum of V terms dominates), the weight is rounded to float32 and so is w * ce
    (2 u ce), and the micro-batch sum of <= n_mb terms plus its chunk adds carries (n_mb + 1) u of the
    sum of w ce. The logged loss is the float64 sum over micro-batches / the float64 denominator."""
    u = 2.0 ** -24
    return sum(w * ((3 * zmax + V * (1 + 1 / math.e) + 3 + (3 + 2 + n_mb + 1) * ce) * u).sum().item()
               for w, zmax, ce in tokens)


def answer_stats(logits, targets):
    """(zmax, ce) per answer token from float64 logits [T, V] and targets [T] (for fused_loss_bound)."""
    return logits.abs().amax(-1), F.cross_entropy(logits, targets, reduction="none")


def args_for(setup, out, *extra):
    return ["--data", str(setup["data"]), "--model", str(setup["model"]), "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--grad-accum", "2", "--max-steps", "10", "--eval-every", "5", "--save-every", "5",
            "--lr", "3e-3", "--warmup-steps", "2", "--seed", "0", *extra]


def metrics(out):
    return [json.loads(s) for s in (Path(out) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def tensors(folder):
    return load_file(Path(folder) / "model.safetensors")


# ----------------------------------------------------------------------------- prompt and targets


def test_build_example_targets(tok):
    assert tok.pad_id == tok.eos_id == 0
    q, a = "أعاني من ألم في الصدر منذ يومين", "يجب مراجعة الطوارئ فورا"
    ex = build_example(tok, q, a, max_len=64)
    prompt, answer = tok.encode(format_prompt(q)), tok.encode(a) + [0]
    full = prompt + answer
    assert format_prompt(q) == q + "\nالجواب:\n"
    assert ex["input_ids"] == full[:-1] and ex["prompt_ids"] == prompt and ex["truncated"] is None
    assert ex["labels"] == [-100] * (len(prompt) - 1) + answer  # the EOS (= pad id) is the last target
    assert ex["n_answer"] == len(answer)
    # in a right-padded batch (pad id 0 == eos id) the EOS target survives, the padding does not count
    short = build_example(tok, "صداع", "راحة", max_len=64)
    exs = [{k: np.array(e[k]) for k in ("input_ids", "labels")} | {"weight": 1.0, "n_answer": e["n_answer"], "id": i}
           for i, e in enumerate([ex, short])]
    mb = train_lm.collate(exs, [0, 1], pad_id=0, device="cpu")
    n = len(short["labels"])
    assert mb["labels"][1, n - 1].item() == 0 and (mb["labels"][1, n:] == -100).all()
    assert (mb["input_ids"][1, n:] == 0).all() and mb["n_tokens"] == ex["n_answer"] + short["n_answer"]


def test_overlong_examples_truncated_and_counted(tok, setup, tmp_path):
    q, a = " ".join(Q_WORDS * 3), "يجب مراجعة الطبيب"
    sep, q_ids, a_ids = tok.encode("\nالجواب:\n"), tok.encode(q), tok.encode(a) + [0]
    ex = build_example(tok, q, a, max_len=40)  # the question loses its end, the answer stays whole
    assert ex["truncated"] == "question" and len(ex["input_ids"]) + 1 == 40
    assert ex["prompt_ids"] == q_ids[:40 - len(sep) - len(a_ids)] + sep and ex["labels"][-len(a_ids):] == a_ids
    long_a = " ".join(A_WORDS * 4)  # the answer alone is too long: question keeps max_len // 4, no EOS
    ex = build_example(tok, q, long_a, max_len=40)
    assert ex["truncated"] == "answer" and len(ex["input_ids"]) + 1 == 40
    assert ex["prompt_ids"] == q_ids[:10] + sep and ex["labels"][-1] != 0
    assert ex["labels"][-ex["n_answer"]:] == tok.encode(long_a)[:ex["n_answer"]]
    # the run counts them: independently, an example is too long iff prompt + answer + EOS > max_len
    rows = make_rows()
    max_len = 24
    too_long = {s: sum(len(tok.encode(r["question"] + "\nالجواب:\n")) + len(tok.encode(r["answer"])) + 1 > max_len
                       for r in rows if r["split"] == s) for s in ("train", "val")}
    assert too_long["train"] > 0
    train_lm.main(args_for(setup, tmp_path / "run", "--max-len", str(max_len), "--max-steps", "1"))
    meta = json.loads((tmp_path / "run" / "last" / "meta.json").read_text(encoding="utf-8"))
    c = meta["data"]["truncated"]
    assert c["train_question"] + c["train_answer"] == too_long["train"]
    assert c["val_question"] + c["val_answer"] == too_long["val"]


# ----------------------------------------------------------------------------- weights


def test_balanced_weights_by_hand():
    probs = [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 0, 1]]
    n = [2, 4, 6, 8]
    # every check below: float64 on both sides, a few operations on these small numbers, so they agree
    # within ~10 u = 1e-15 relative (atol=0: numpy's default 1e-8 would be the real tolerance)
    raw, alpha = train_lm.severity_alpha("balanced", probs, n)
    # alpha_c = N / (3 * sum_i p_ic) = 4 / (3 * (2.5, 0.5, 1))
    assert np.allclose(raw, [8 / 15, 8 / 3, 4 / 3], rtol=1e-12, atol=0)
    # example weights (8/15, 8/15, 8/5, 4/3); token mean = (2+4)*8/15 + 6*8/5 + 8*4/3 over 20 = 88/75
    assert np.allclose(alpha, np.array([8 / 15, 8 / 3, 4 / 3]) * 75 / 88, rtol=1e-12, atol=0)
    w = train_lm.example_weights("balanced", probs, alpha)
    assert np.isclose((np.array(n) * w).sum() / sum(n), 1.0, rtol=1e-12, atol=0)
    # balanced makes the mean *example* weight 1 before rescaling
    assert np.isclose(train_lm.example_weights("balanced", probs, raw).mean(), 1.0, rtol=1e-12, atol=0)
    # ramp and a custom triple: rescaled so the token mean is 1
    raw, alpha = train_lm.severity_alpha("ramp", probs, n)
    assert raw.tolist() == [1.0, 1.5, 2.0]
    mean = (2 * 1 + 4 * 1 + 6 * 1.25 + 8 * 2) / 20
    assert np.allclose(alpha, np.array([1, 1.5, 2]) / mean, rtol=1e-12, atol=0)
    raw, alpha = train_lm.severity_alpha("1,0,3", probs, n)
    assert np.allclose(alpha, np.array([1, 0, 3]) / ((2 + 4 + 3 + 24) / 20), rtol=1e-12, atol=0)
    assert (train_lm.example_weights("uniform", probs, np.ones(3)) == 1).all()
    with pytest.raises(ValueError, match="three"):
        train_lm.severity_alpha("1,2", probs, n)


def test_missing_probs_error_unless_uniform(setup, tmp_path):
    rows = make_rows()
    del rows[3]["severity_probs"]
    data = write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d.jsonl, line 4, field 'severity_probs'"):
        train_lm.main(args_for(setup, tmp_path / "a", "--data", str(data), "--weights", "ramp", "--max-steps", "1"))
    bad = [dict(r) for r in rows]
    bad[3]["severity_probs"], bad[5]["severity_probs"] = [0.2, 0.3, 0.5], [0.5, 0.5, 0.5]
    data = write_rows(tmp_path / "e.jsonl", bad)
    with pytest.raises(DataError, match=r"line 6, field 'severity_probs'.*sum"):
        train_lm.main(args_for(setup, tmp_path / "b", "--data", str(data), "--weights", "balanced"))
    del rows[5]["severity_probs"]
    data = write_rows(tmp_path / "f.jsonl", rows)
    train_lm.main(args_for(setup, tmp_path / "c", "--data", str(data), "--weights", "uniform", "--max-steps", "1"))
    assert metrics(tmp_path / "c")[-1]["step"] == 1


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("weights,denominator,kind", [("uniform", "tokens", "gpt2"), ("ramp", "tokens", "gpt2"),
                                                      ("balanced", "weights", "gpt2"), ("ramp", "tokens", "qwen2")])
def test_step0_loss_matches_cross_entropy(setup, tmp_path, monkeypatch, weights, denominator, kind):
    """The logged step-1 loss, recomputed with F.cross_entropy in float64 on the model's logits.

    batch 4 x grad-accum 6 = the 24 training rows: the first step sees every training example.
    qwen2: tied embeddings, so the fused loss's weight is the embedding matrix. The run loads the
    model in float64 (tests/float64_run.py) and keeps the fused loss, whose float32 statistics are
    then the only float32 rounding: fused_loss_bound."""
    model_dir = setup["model"] if kind == "gpt2" else tiny_qwen2_dir(tmp_path / "qwen2", setup["tok"])
    out = tmp_path / "run"
    float64_models(monkeypatch)
    train_lm.main(args_for(setup, out, "--model", str(model_dir), "--weights", weights, "--denominator", denominator,
                           "--grad-accum", "6", "--max-steps", "1", "--eval-every", "100"))
    logged = [m for m in metrics(out) if m.get("step") == 1 and "loss" in m][0]["loss"]

    tok, rows = setup["tok"], [r for r in make_rows() if r["split"] == "train"]
    model, _ = load_pretrained(model_dir, dtype=torch.float64)
    ce, n, stats = [], [], []
    for r in rows:
        prompt, answer = tok.encode(r["question"] + "\nالجواب:\n"), tok.encode(r["answer"]) + [tok.eos_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():  # float64 logits from the hidden states (the model's own are rounded to float32)
            logits = (model(ids[:, :-1], return_hidden=True) @ model.lm_head.weight.T)[0, len(prompt) - 1:]
        stats.append(answer_stats(logits, torch.tensor(answer)))  # positions predicting the answer
        ce.append(stats[-1][1].sum().item())
        n.append(len(answer))
    ce, n = np.array(ce), np.array(n)
    P = np.array([r["severity_probs"] for r in rows])
    if weights == "uniform":
        w = np.ones(len(rows))
    else:
        raw = np.array([1, 1.5, 2]) if weights == "ramp" else len(rows) / (3 * P.sum(0))
        w = P @ raw
        w = w / ((n * w).sum() / n.sum())  # rescaled: token-mean weight 1
    denom = n.sum() if denominator == "tokens" else (n * w).sum()
    expected = (w * ce).sum() / denom
    if weights == "uniform":  # float64 both, the same 24 terms summed in two ways: within 24 u = 3e-15
        assert math.isclose(expected, ce.sum() / n.sum(), rel_tol=1e-12)  # plain token-mean cross-entropy
    # the worst case of the fused loss's float32 statistics: 2.2e-5 relative (the row sums over V = 300
    # dominate; measured 2e-9 to 5e-8 relative); one answer token lost, added or shifted moves the loss
    # by ~1 / n = 3e-3 relative, a wrong weight or denominator by more
    bound = fused_loss_bound([(wr, *st) for wr, st in zip(w, stats)], model.lm_head.weight.shape[0],
                             4 * n.max()) / denom
    assert abs(logged - expected) <= bound, (logged, expected, bound)
    meta = json.loads((out / "last" / "meta.json").read_text(encoding="utf-8"))
    if weights != "uniform":
        # float64 on both sides, sums of 24 rows in another order: <= 24 u = 3e-15 relative
        assert np.allclose(meta["weights"]["alpha_raw"], raw, rtol=1e-12, atol=0)
        assert np.allclose(meta["weights"]["alpha"], raw / ((n * (P @ raw)).sum() / n.sum()), rtol=1e-12, atol=0)


def test_grad_accum_equals_full_batch(setup):
    """forward_backward over 4 micro-batches == over one batch == per-example unpadded references."""
    tok = setup["tok"]
    rows = make_rows(8, seed=3, val_every=100)
    exs = []
    for i, r in enumerate(rows):
        ex = build_example(tok, r["question"], r["answer"], 128)
        exs.append({"id": r["id"], "n_answer": ex["n_answer"], "weight": 0.5 + i / 4,
                    "input_ids": np.array(ex["input_ids"]), "labels": np.array(ex["labels"])})
    assert len({len(e["input_ids"]) for e in exs}) > 3  # variable lengths: padding differs per split
    model, _ = load_pretrained(setup["model"], dtype=torch.float64)  # float64: see the tolerances below
    model.train()
    denom = torch.tensor(float(sum(e["n_answer"] for e in exs)))

    def grads(splits, fused=True):
        model.zero_grad()
        mbs = [train_lm.collate(exs, idx, 0, "cpu") for idx in splits]
        loss_fn = train_lm.fused_linear_cross_entropy if fused else train_lm.linear_cross_entropy_reference
        train_lm.forward_backward(model, model.lm_head.weight, mbs, denom, 1, loss_fn, lambda: torch.autocast("cpu", enabled=False))
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    splits = [[0, 5], [1, 2], [3, 7], [4, 6]]
    full, accum = grads([list(range(8))]), grads(splits)  # the fused loss: float32 inside
    ref_loss, ref_loss_accum = grads([list(range(8))], fused=False), grads(splits, fused=False)
    # reference: every example alone, no padding, sum of w * CE / total answer tokens, all in float64
    # (the logits from the hidden states: the model's own logits are rounded to float32)
    model.zero_grad()
    for e in exs:
        logits = model(torch.from_numpy(e["input_ids"])[None].long(), return_hidden=True)[0] @ model.lm_head.weight.T
        loss = e["weight"] * F.cross_entropy(logits, torch.from_numpy(e["labels"]).long(), reduction="sum") / denom
        loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    for k in ref:
        # float64 throughout: the same sums over <= 8 x 40 positions in another order, terms <~ 1:
        # <= 320 u = 4e-14 of the sum of their sizes; 1e-12 leaves 25x (measured 1.1e-16), a wrong split or
        # denominator is O(1)
        for g in (ref_loss, ref_loss_accum):
            torch.testing.assert_close(g[k], ref[k], rtol=0, atol=1e-12, msg=k)
        # the fused loss rounds logits, softmax and its lm_head gradient to float32: as in test_loss.py
        # (FP32_TOL, derived there), within 1e-5 of the float64 gradient's norm (measured 4e-8)
        for g in (full, accum):
            diff, size = (g[k] - ref[k]).norm().item(), ref[k].norm().item()
            assert diff <= FP32_TOL * size, (k, diff, size)
    assert max(ref[k].abs().max().item() for k in ref) > 1e-3  # the gradients are not trivially zero


def test_nan_loss_names_step_and_examples(setup, tmp_path):
    """A NaN position embedding reached only by the one long training example: the run stops at
    the step that example is in, naming it, before any weight update from that step."""
    tok = setup["tok"]
    rows = [{**r, "question": " ".join(r["question"].split()[:3]), "answer": " ".join(r["answer"].split()[:2])}
            for r in make_rows()]
    rows[7]["answer"] = " ".join(A_WORDS)  # ex7 (train) is the only sequence past position 40
    lengths = [len(build_example(tok, r["question"], r["answer"], 64)["input_ids"]) for r in rows]
    assert lengths[7] > 41 and max(lengths[:7] + lengths[8:]) <= 40
    model, _ = load_pretrained(setup["model"])
    with torch.no_grad():
        model.transformer.wpe.weight[40] = float("nan")
    save_pretrained(model, tok, tmp_path / "nan_model")
    data = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    with pytest.raises(UsageError) as e:
        train_lm.main(args_for(setup, out, "--data", str(data), "--model", str(tmp_path / "nan_model"),
                               "--batch-size", "1", "--grad-accum", "1", "--max-steps", "30"))
    msg = str(e.value)
    step = int(re.search(r"step (\d+)", msg).group(1))
    assert "ex7" in msg and not re.search(r"ex(?!7\b)\d+", msg)
    done = [m["step"] for m in metrics(out) if "loss" in m]
    assert done == list(range(1, step))  # every earlier step was logged, this one was not


# ----------------------------------------------------------------------------- checkpoints and resume


def test_resume_is_exact(setup, tmp_path, tok):
    """8 steps straight == crash at step 6 (last checkpoint: step 4) + resume, bit for bit,
    with dropout on (its RNG is restored) and 3 epochs (the data position is restored)."""
    model = tiny_model_dir(tmp_path / "dropout_model", tok, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    common = ("--model", str(model), "--weights", "balanced", "--max-steps", "8", "--save-every", "4",
              "--eval-every", "4")
    train_lm.main(args_for(setup, tmp_path / "straight", *common))
    with pytest.raises(SystemExit, match="crash"):
        train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", "6"))
    assert json.loads((tmp_path / "resumed" / "last" / "meta.json").read_text())["step"] == 4
    train_lm.main(args_for(setup, tmp_path / "resumed", *common, "--crash-at-step", "6"))  # crashes only once

    a, b = tensors(tmp_path / "straight" / "last"), tensors(tmp_path / "resumed" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], tensors(model)["transformer.h.0.mlp.c_fc.weight"])
    sa = torch.load(tmp_path / "straight" / "last" / "trainer_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "last" / "trainer_state.pt", weights_only=True)
    for k, st in sa["optimizer"]["state"].items():
        assert all(torch.equal(st[n], sb["optimizer"]["state"][k][n]) for n in st)
    assert (sa["step"], sa["epoch"], sa["data_pos"]) == (sb["step"], sb["epoch"], sb["data_pos"]) and sa["epoch"] >= 2
    la = [m for m in metrics(tmp_path / "straight") if "loss" in m]
    lb = [m for m in metrics(tmp_path / "resumed") if "loss" in m]
    assert [m["step"] for m in lb] == list(range(1, 9))  # the redone steps 5-6 are logged once
    assert [m["loss"] for m in la] == [m["loss"] for m in lb]
    # best checkpoint and validation records
    best = json.loads((tmp_path / "straight" / "best" / "meta.json").read_text())
    vals = [m for m in metrics(tmp_path / "straight") if "val_loss" in m]
    assert [m["step"] for m in vals] == [0, 4, 8] and best["best_val"] == min(m["val_loss"] for m in vals)
    assert {"val_loss_mild", "val_loss_moderate", "val_loss_critical", "val_ppl"} <= vals[-1].keys()


def test_resume_after_kill_inside_checkpoint_write(setup, tmp_path):
    """Killed between replace_dir's two renames (last -> .last.old, new -> last) and in the middle of
    a metrics.jsonl line: the run still resumes from its previous checkpoint (not from scratch, which
    would also wipe its metrics) and ends as an uninterrupted run does."""
    common = ("--max-steps", "4", "--save-every", "2", "--eval-every", "2")
    train_lm.main(args_for(setup, tmp_path / "straight", *common))
    run = tmp_path / "killed"
    with pytest.raises(SystemExit, match="crash"):
        train_lm.main(args_for(setup, run, *common, "--crash-at-step", "3"))
    os.replace(run / "last", run / ".last.old")  # the state between the two renames
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 4, "loss": 2.71')  # a torn last line
    train_lm.main(args_for(setup, run, *common, "--crash-at-step", "3"))
    resumed = [m for m in metrics(run) if "resumed_at" in m]
    assert [m["resumed_at"] for m in resumed] == [2] and not (run / ".last.old").exists()
    a, b = tensors(tmp_path / "straight" / "last"), tensors(run / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = [(m["step"], m["loss"]) for m in metrics(tmp_path / "straight") if "loss" in m]
    assert la == [(m["step"], m["loss"]) for m in metrics(run) if "loss" in m] and len(la) == 4


def test_resume_with_other_max_steps_is_refused(setup, tmp_path):
    """Rerunning a finished 4-step run with --max-steps 2 or 8 is refused naming --max-steps (the cosine
    would be recomputed for the new length mid-run: 8 steps used to continue at another learning rate,
    and 2 to train on past step 4 forever) and changes nothing: not the weights, not metrics.jsonl.
    The same command again resumes and stops at once."""
    out = tmp_path / "run"
    common = ("--save-every", "4", "--eval-every", "4")
    train_lm.main(args_for(setup, out, *common, "--max-steps", "4"))
    before, lines = tensors(out / "last"), (out / "metrics.jsonl").read_text(encoding="utf-8")
    for other in ("2", "8"):
        with pytest.raises(ValueError, match=f"--max-steps 4, not {other}: .*To train longer, start a new run from "
                                             f"its weights .*--model {re.escape(str(out / 'last'))}"):
            train_lm.main(args_for(setup, out, *common, "--max-steps", other, "--crash-at-step", "6"))
    assert train_lm.main(args_for(setup, out, *common, "--max-steps", "4"))["step"] == 4
    after = tensors(out / "last")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (out / "metrics.jsonl").read_text(encoding="utf-8").startswith(lines)
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2, 3, 4]


def test_resume_refuses_changed_data(setup, tmp_path):
    """Same --data path, other rows: resuming would silently mix two data sets, so it stops."""
    data = write_rows(tmp_path / "data.jsonl", make_rows())
    args = args_for(setup, tmp_path / "run", "--max-steps", "2", "--save-every", "2", "--eval-every", "2")
    args[args.index("--data") + 1] = str(data)
    train_lm.main(args)
    write_rows(data, make_rows(seed=7))
    with pytest.raises(ValueError, match="other training rows"):
        train_lm.main(args)


def test_saved_model_opens_in_transformers(setup, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "run"
    train_lm.main(args_for(setup, out, "--max-steps", "3", "--eval-every", "100"))
    # both in float64 (an exact upcast of the saved float32 weights): the two implementations then
    # differ by ~1e-15, and ours rounds its logits to float32 (models/gpt2.py): |diff| <= 2**-24 |logit|
    ours, tok = load_pretrained(out / "last", dtype=torch.float64)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out / "last", dtype=torch.float64).eval()
    ids = torch.tensor([tok.encode(format_prompt("عندي صداع شديد منذ يومين")) + [5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).double(), rtol=2 ** -24 + 1e-12, atol=1e-12)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "last")
    text = "أعاني من ألم في الصدر\nالجواب:\n"
    assert hf_tok(text)["input_ids"] == tok.encode(text) and hf_tok.eos_token_id == 0


# ----------------------------------------------------------------------------- torchrun


def torchrun(setup, out, nproc, *extra, restarts=0, float64=False):
    return torchrun_args(args_for(setup, out, *extra), nproc, restarts, float64)


def torchrun_args(args, nproc, restarts=0, float64=False):
    """train_lm.py with these flags under torchrun (nproc gloo ranks); asserts it exits 0.
    float64: model folders loaded in float64 (tests/float64_run.py)."""
    script = [str(ROOT / "tests" / "float64_run.py"), "train_lm.py"] if float64 else [str(ROOT / "train_lm.py")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--max-restarts", str(restarts), *script, *args]
    # a fresh rendezvous store per restart: see train_lm's docstring (pytorch/pytorch#135712)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:  # say where it hung: the ends of both streams, not their starts
        tails = [(x.decode(errors="replace") if isinstance(x, bytes) else x or "")[-3000:]
                 for x in (e.stdout, e.stderr)]
        raise AssertionError(f"torchrun still running after 300 s:\n{tails[0]}\n--- stderr ---\n{tails[1]}") from None
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_ddp_two_ranks_match_one(setup, tmp_path, monkeypatch):
    """2 gloo ranks x grad-accum 2 == 1 process x grad-accum 4 (same global batch), and a 2-rank run
    killed at step 4 under torchrun --max-restarts 1 ends with the same weights as one that was not.
    torchrun with one process and --force-ddp takes the DDP path (what a 1-GPU check exercises) and equals
    the plain loop; without the flag one process is not wrapped.

    Every run is in float64 (tests/float64_run.py, with the reference loss), so the runs differ
    only by float64 rounding and PARALLEL_ATOL is derived there; the fused loss is held to the
    reference per micro-batch in test_loss.py and test_fast_step.py."""
    float64_models(monkeypatch)
    common = ("--max-steps", "6", "--save-every", "3", "--eval-every", "3", "--no-fused-loss")
    train_lm.main(args_for(setup, tmp_path / "one", *common, "--grad-accum", "4"))
    torchrun(setup, tmp_path / "two", 2, *common, "--grad-accum", "2", float64=True)
    torchrun(setup, tmp_path / "one_rank", 1, *common, "--grad-accum", "4", "--force-ddp", float64=True)
    r = torchrun(setup, tmp_path / "crash", 2, *common, "--grad-accum", "2", "--crash-at-step", "4", restarts=1,
                 float64=True)
    assert (tmp_path / "crash" / ".crashed").exists() and "resumed from" in r.stdout + r.stderr
    parallel = {run: json.loads((tmp_path / run / "last" / "meta.json").read_text())["parallel"]
                for run in ("one", "two", "one_rank")}
    assert parallel == {"one": "none", "two": "ddp", "one_rank": "ddp"}
    one = tensors(tmp_path / "one" / "last")
    assert all(v.dtype == torch.float64 for v in one.values())  # the comparison below is a float64 one
    for run in ("two", "crash", "one_rank"):
        other = tensors(tmp_path / run / "last")
        for k in one:
            torch.testing.assert_close(other[k], one[k], rtol=0, atol=PARALLEL_ATOL, msg=f"{run}: {k}")
    # and the logged losses agree step by step (float64 sums of ~10^3 terms, same bound)
    l1 = [m["loss"] for m in metrics(tmp_path / "one") if "loss" in m]
    l2 = [m["loss"] for m in metrics(tmp_path / "crash") if "loss" in m]
    assert l1 == pytest.approx(l2, rel=PARALLEL_ATOL) and len(l1) == 6


@pytest.mark.slow
def test_demo_default_model_trains(tmp_path):
    """No --model: the small GPT-2 from scratch with the shipped demo tokenizer, loss going down."""
    if not (train_lm.DEMO_TOKENIZER / "tokenizer.json").is_file():
        pytest.skip("data/demo_tokenizer not generated yet (tools/make_demo_tokenizer.py)")
    rows = make_rows(80)
    data = write_rows(tmp_path / "d.jsonl", rows)
    train_lm.main(["--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", "--max-steps", "40",
                   "--eval-every", "20", "--batch-size", "8", "--grad-accum", "1"])
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert losses[-1] < 0.7 * losses[0]


def test_rows_are_grouped_by_label_first_as_in_evaluate(tmp_path):
    """Per-class validation uses the row's severity label, else the argmax of its probabilities
    (common.severity_class, the rule evaluate.py reports under); a bad label is an error."""
    rows = [{"id": "a", "question": "q", "answer": "a", "split": "val", "severity": "critical",
             "severity_probs": [0.8, 0.1, 0.1]},
            {"id": "b", "question": "q", "answer": "a", "split": "val", "severity_probs": [0.1, 0.7, 0.2]},
            {"id": "c", "question": "q", "answer": "a", "split": "val"}]
    _, val = train_lm.read_rows(write_rows(tmp_path / "rows.jsonl", rows), need_probs=False)
    assert [r["cls"] for r in val] == [2, 1, 3]  # 3 = no class at all
    rows[0]["severity"] = "severe"
    with pytest.raises(DataError, match="line 1, field 'severity'"):
        train_lm.read_rows(write_rows(tmp_path / "bad.jsonl", rows), need_probs=False)


# ----------------------------------------------------------------------------- the first hour: fail early, clearly


@pytest.mark.parametrize("weights", ["1,2", "0,0,0", "nan,1,1", "1,-1,1", "inf,1,1", "heavy"])
def test_bad_weights_are_a_usage_error(weights, capsys):
    with pytest.raises(SystemExit) as e:
        train_lm.get_args(["--weights", weights])
    assert e.value.code == 2 and "--weights" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["uniform", "balanced", "ramp", "1,2,3"])
def test_no_val_rows_trains_without_validation(setup, tmp_path, weights, capsys):
    data = write_rows(tmp_path / "train_only.jsonl", [{**r, "split": "train"} for r in make_rows()])
    out = tmp_path / "run"
    res = train_lm.main(["--data", str(data), "--model", str(setup["model"]), "--out", str(out), "--device", "cpu",
                         "--batch-size", "4", "--grad-accum", "1", "--max-steps", "3", "--eval-every", "1",
                         "--weights", weights])
    printed = capsys.readouterr().out
    assert res["step"] == 3 and "no 'val' rows" in printed and "no best/" in printed
    # the step lines name the loss they show: the weighted loss, plain under uniform weights
    loss = [m["loss"] for m in metrics(out) if "loss" in m]
    name = "loss" if weights == "uniform" else "weighted loss"
    assert [line.split(" lr ")[0] for line in printed.splitlines() if re.match(r"step \d+: ", line)] == \
        [f"step {k + 1}: {name} {x:.4f}" for k, x in enumerate(loss)]
    assert (out / "last" / "model.safetensors").is_file() and not (out / "best").exists()
    assert not any("val_loss" in m for m in metrics(out))


def test_resume_refuses_another_lr_or_world_size(setup, tmp_path):
    out = tmp_path / "run"
    train_lm.main(args_for(setup, out, "--max-steps", "2", "--save-every", "2"))
    with pytest.raises(ValueError, match="--lr 0.003, not 0.001"):
        train_lm.main(args_for(setup, out, "--max-steps", "4", "--lr", "1e-3"))
    meta = json.loads((out / "last" / "meta.json").read_text(encoding="utf-8"))
    (out / "last" / "meta.json").write_text(json.dumps({**meta, "world_size": 2}), encoding="utf-8")
    with pytest.raises(ValueError, match="trained on 2 processes, not 1"):
        train_lm.main(args_for(setup, out, "--max-steps", "4"))


def test_ctrl_c_names_the_step_and_the_checkpoint(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = train_lm.lr_at

    def interrupt_at_4(step, args):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, args)
    monkeypatch.setattr(train_lm, "lr_at", interrupt_at_4)
    with pytest.raises(SystemExit) as e:
        train_lm.main(args_for(setup, out, "--save-every", "3"))
    assert str(e.value) == (f"interrupted at step 4; the last checkpoint is step 3 in {out / 'last'}: run the same "
                            f"command to resume")
    # the progress bar (on stderr, redrawn after \r) was closed with a newline: the message starts a line
    bar = capsys.readouterr().err
    assert "train:" in bar and bar.endswith("\n")
    assert not (tmp_path / ".run.lock").exists()  # the lock went with the run


def test_disk_full_in_a_checkpoint_keeps_the_previous_one(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    from core import checkpoint
    real = checkpoint.write_pretrained

    def full_on_second(model, tok, folder):
        calls.append(folder)
        if len(calls) == 3:  # best/ at step 0, last/ at step 2, then last/ at step 4: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))
        return real(model, tok, folder)
    monkeypatch.setattr(checkpoint, "write_pretrained", full_on_second)
    with pytest.raises(SystemExit, match=r"disk full .*; the last checkpoint is step 2 in .*run.last"):
        train_lm.main(args_for(setup, out, "--save-every", "2", "--eval-every", "100"))
    assert json.loads((out / "last" / "meta.json").read_text(encoding="utf-8"))["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted([".written-by-severity-ft", "best", "last", "metrics.jsonl"])


def test_out_holding_a_users_files_is_refused(setup, tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "paper.tex").write_text("x", encoding="utf-8")
    monkeypatch.setattr(train_lm, "train", lambda *a: pytest.fail("trained into a user's folder"))
    with pytest.raises(ValueError, match="did not write"):
        train_lm.main(args_for(setup, out))
    assert [p.name for p in out.iterdir()] == ["paper.tex"]


def test_classifier_warnings_are_repeated(setup, tmp_path, capsys):
    data = write_rows(tmp_path / "scored.jsonl", make_rows())
    (tmp_path / "scored.jsonl.meta.json").write_text(json.dumps(
        {"written_by": "score_severity.py", "warnings": ["the training loss stayed at chance"]}), encoding="utf-8")
    train_lm.main(["--data", str(data), "--model", str(setup["model"]), "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--batch-size", "4", "--grad-accum", "1", "--max-steps", "1"])
    assert "WARNING (severity classifier): the training loss stayed at chance" in capsys.readouterr().out


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        train_lm.get_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    for flag, default in (("--max-steps", "300"), ("--weights", "balanced"), ("--grad-clip", "1.0")):
        assert re.search(rf"{flag} \S+ (?:(?! --[a-z]).)*\(default: {re.escape(default)}\)", text), flag
    assert "(default: None)" not in text and "(default: False)" not in text  # flags without a default say nothing
    assert "Reading the code: train()" in text  # the docstring, the manual, comes first


def test_run_folder_as_model_names_its_checkpoints(setup, tmp_path):
    """--model RUN (a run folder, not RUN/best): the loader's error names best/ and last/ (evaluate.py
    loads models the same way)."""
    out = tmp_path / "run"
    train_lm.main(args_for(setup, out, "--max-steps", "1", "--eval-every", "1"))
    with pytest.raises(ValueError, match=re.escape(f"give {out / 'best'} (the lowest validation loss) or "
                                                   f"{out / 'last'} (the latest step)")):
        train_lm.main(args_for(setup, tmp_path / "again", "--model", str(out)))
