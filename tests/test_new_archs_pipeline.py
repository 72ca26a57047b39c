"""The second-wave architectures (AraGPT2 Grover, Qwen3, Llama-3 RoPE, Gemma-3) through the real
scripts: one train_lm.py run each, its step-1 loss (the model in float64) recomputed with F.cross_entropy in
float64 on the model's own logits, the saved checkpoint reopened as the same class, and one evaluate.py run
whose greedy answer equals models.generate on the train_lm prompt."""
import importlib
import json

import pytest
import torch
import torch.nn.functional as F

import evaluate
import train_lm
from conftest import write_rows
from models import build_model, load_pretrained, save_pretrained
from models.generate import generate
from core.prompt import format_prompt
from float64_run import float64_models
from test_train_lm import answer_stats, fused_loss_bound, make_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.py)


def tiny_config(kind, vocab):
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=128, initializer_range=0.1,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True)
    if kind == "aragpt2":
        return dict(model_type="aragpt2", vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if kind == "qwen3":
        return dict(common, model_type="qwen3")
    if kind == "llama3":
        return dict(common, model_type="llama", tie_word_embeddings=False,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    return dict(common, model_type="gemma3_text", num_hidden_layers=3, sliding_window=8, query_pre_attn_scalar=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"])  # prompts exceed the window


@pytest.fixture(scope="module")
def tok():
    mk = importlib.import_module("tools.make_demo_tokenizer")
    texts = [r["question"] + "\n" + r["answer"] for r in make_rows(200, seed=1)] + ["الجواب:"] * 20
    return mk.train_tokenizer(texts, vocab_size=300)


@pytest.mark.parametrize("kind", ["aragpt2", "qwen3", "llama3", "gemma3"])
def test_train_then_evaluate(tmp_path, tok, kind):
    torch.manual_seed(0)
    model_dir = tmp_path / "init"
    save_pretrained(build_model(tiny_config(kind, tok.vocab_size)), tok, model_dir)
    rows = make_rows()
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as mp:  # the model in float64, the fused loss as always: see below
        float64_models(mp)
        train_lm.main(["--data", str(data), "--model", str(model_dir), "--out", str(out), "--device", "cpu",
                       "--weights", "uniform", "--batch-size", "4", "--grad-accum", "6", "--max-steps", "1",
                       "--eval-every", "100", "--lr", "3e-3", "--warmup-steps", "1", "--seed", "0"])

    # step 1 saw all 24 training rows: its loss is the token-mean cross-entropy of the initial model
    logged = [json.loads(s) for s in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    logged = [m for m in logged if m.get("step") == 1 and "loss" in m][0]["loss"]
    model, _ = load_pretrained(model_dir)
    model64, _ = load_pretrained(model_dir, dtype=torch.float64)
    ce, n, stats, longest = 0.0, 0, [], 0
    for r in (r for r in rows if r["split"] == "train"):
        prompt, answer = tok.encode(format_prompt(r["question"])), tok.encode(r["answer"]) + [tok.eos_id]
        with torch.no_grad():  # float64 logits from the hidden states (the model's own are rounded to float32)
            hidden = model64(torch.tensor([prompt + answer[:-1]]), return_hidden=True)[0, len(prompt) - 1:]
        stats.append(answer_stats(hidden @ model64.lm_head.weight.T, torch.tensor(answer)))
        ce += stats[-1][1].sum().item()
        n, longest = n + len(answer), max(longest, len(answer))
    # the worst case of the fused loss's float32 statistics (tests/test_train_lm.py's fused_loss_bound,
    # 4 rows per micro-batch): ~2e-5 relative; one answer token lost or shifted moves the loss ~1 / n = 3e-3
    bound = fused_loss_bound([(1.0, *st) for st in stats], model64.lm_head.weight.shape[0], 4 * longest) / n
    assert abs(logged - ce / n) <= bound, (logged, ce / n, bound)

    trained, _ = load_pretrained(out / "last")
    assert type(trained) is type(model)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), model.state_dict().values()))

    res = evaluate.main(["--model", str(out / "last"), "--data", str(data), "--split", "val", "--out",
                         str(tmp_path / "eval"), "--max-new-tokens", "5", "--batch-size", "3", "--bootstrap", "0",
                         "--device", "cpu"])
    gen = [json.loads(s) for s in (tmp_path / "eval" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    assert len(gen) == len(val) == res["n"]["overall"]
    first = next(g for g in gen if g["id"] == val[0]["id"])
    prompt = tok.encode(format_prompt(val[0]["question"]))
    alone = generate(trained, [prompt], 5, tok.eos_id, tok.pad_id, vocab_limit=tok.vocab_size)[0]
    assert first["generated"] == tok.decode(alone).strip()
