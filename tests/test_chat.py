"""--prompt-format chat (core/chat.py) against transformers, on templates written for these tests in
the style of four instruct families (Qwen2.5: <|im_start|> turns and a default system turn; Qwen3:
the same with an empty think block when thinking is off; Llama-3.x: BOS inside the template, a
system header with a date, <|eot_id|>; Gemma-3: BOS inside, <start_of_turn>, role "model", the
system text folded into the first user turn, roles checked with raise_exception). Each template
marks the assistant's answer and end of turn with {% generation %}, so transformers'
return_assistant_tokens_mask is an independent reference for the targets."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import evaluate
import train_lm
from conftest import write_rows
from conftest import ROOT
from core.chat import RENDER_DATE, ChatFormat, chat_format, conversation
from core.common import USER_ERRORS, UsageError
from models import Tokenizer, build_model, load_pretrained, save_pretrained
from models.generate import generate
from test_new_archs_pipeline import tiny_config
from float64_run import float64_models
from test_train_lm import answer_stats, fused_loss_bound, make_rows

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

QWEN25 = """\
{%- if messages[0].role == 'system' %}
{%- set head = messages[0].content %}{% set turns = messages[1:] %}
{%- else %}
{%- set head = 'Answer the patient.' %}{% set turns = messages %}
{%- endif %}
{{- '<|im_start|>system\\n' + head + '<|im_end|>\\n' }}
{%- for m in turns %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}{% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}
"""

QWEN3 = """\
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- if loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}
{%- generation %}{{ m.content | trim }}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}
{%- endif %}
"""

LLAMA3 = """\
{{- bos_token }}
{%- if date_string is not defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}
{%- if messages[0].role == 'system' %}
{%- set sys = messages[0].content | trim %}{% set turns = messages[1:] %}
{%- else %}
{%- set sys = '' %}{% set turns = messages %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + 'Today: ' + date_string + '\\n\\n' + sys + '<|eot_id|>' }}
{%- for m in turns %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' }}
{%- if m.role == 'assistant' %}
{%- generation %}{{ m.content | trim + '<|eot_id|>' }}{% endgeneration %}
{%- else %}
{{- m.content | trim + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}
"""

GEMMA3 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
{%- set first = messages[0]['content'] | trim + '\\n\\n' %}{% set turns = messages[1:] %}
{%- else %}
{%- set first = '' %}{% set turns = messages %}
{%- endif %}
{%- for m in turns %}
{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('turns must go user, model, user, ...') }}
{%- endif %}
{%- if m['role'] == 'assistant' %}
{{- '<start_of_turn>model\\n' }}{% generation %}{{ m['content'] | trim }}<end_of_turn>{% endgeneration %}{{ '\\n' }}
{%- else %}
{{- '<start_of_turn>' + m['role'] + '\\n' + (first if loop.first else '') + m['content'] | trim + '<end_of_turn>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}
"""

# family: template, special tokens (the first has id 0), the tokenizer's names for them, end of turn,
# generation_config.json eos_token_id (as names), model config
FAMILIES = {
    "qwen2.5": (QWEN25, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                {"eos": "<|im_end|>", "pad": "<|endoftext|>"}, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"], "qwen2"),
    "qwen3": (QWEN3, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              {"eos": "<|im_end|>", "pad": "<|endoftext|>"}, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"], "qwen3"),
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"}, "<|eot_id|>",
               ["<|end_of_text|>", "<|eot_id|>"], "llama3"),  # the end of turn is an end id only via generation_config
    "gemma3": (GEMMA3, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
               {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>"}, "<end_of_turn>", ["<eos>", "<end_of_turn>"], "gemma3"),
}
SYSTEM = "أنت طبيب يجيب باختصار"  # "you are a doctor who answers briefly"


def family_tokenizer(family, rows):
    """A byte-level BPE learned from the rows and the templates' words, with the family's special tokens."""
    _, specials, names, *_ = FAMILIES[family]
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [r["question"] + "\n" + r["answer"] for r in rows] + ["system user assistant model Today"] * 5 + [SYSTEM]
    tok.train_from_iterator(texts, trainer)
    if family == "qwen3":
        tok.add_tokens(["<think>", "</think>"])  # added, not special (as in Qwen3)
    return Tokenizer(tok, names)


@pytest.fixture(scope="module")
def rows():
    return make_rows()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, rows):
    """One tiny model folder per family: weights, tokenizer, chat template, generation_config.json.
    Qwen2.5's template sits in tokenizer_config.json only; the others in chat_template.jinja too."""
    out = {}
    for family, (template, *_, gen_eos, kind) in FAMILIES.items():
        tok = family_tokenizer(family, rows)
        tok.chat_template = template
        cfg = tiny_config("qwen3" if kind == "qwen2" else kind, tok.vocab_size)  # qwen2: qwen3's sizes
        if kind == "qwen2":
            cfg["model_type"] = "qwen2"
        cfg.update(bos_token_id=tok.bos_id or 0, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id or 0)
        torch.manual_seed(0)
        model = build_model(cfg)
        model.generation_config = {"eos_token_id": [tok.tok.token_to_id(s) for s in gen_eos]}
        folder = tmp_path_factory.mktemp(family)
        save_pretrained(model, tok, folder)
        if family == "qwen2.5":
            (folder / "chat_template.jinja").unlink()
        out[family] = folder
    return out


def ours(folder, system=None):
    model, tok = load_pretrained(folder)
    return model, tok, ChatFormat.from_tokenizer(tok, folder, system, model.generation_config)


def hf_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


# what our renderer fixes, given to transformers (whose strftime_now reads the clock)
HF_KW = {"date_string": RENDER_DATE.strftime("%d %b %Y"), "enable_thinking": False}


@pytest.mark.parametrize("family", FAMILIES)
def test_render_matches_apply_chat_template(folders, rows, family):
    _, tok, chat = ours(folders[family])
    hf = hf_tokenizer(folders[family])
    for system in (None, SYSTEM):
        chat.system = system
        for r in rows[:4]:
            for answer, agp in ((r["answer"], False), (None, True), (None, False)):
                msgs = conversation(r["question"], answer, system)
                text = chat.render(msgs, agp)
                assert text == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp, **HF_KW)
                ref = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp, return_dict=False,
                                             **HF_KW)
                assert tok.encode(text) == list(ref)
    if family == "llama3":  # strftime_now: the fixed date, whatever the clock says
        assert "Today: 01 Jan 2026" in chat.render(conversation("q"), True)


def test_template_file_wins_over_tokenizer_config(folders, tmp_path):
    """chat_template.jinja over tokenizer_config.json's chat_template, in ours and in transformers."""
    folder = tmp_path / "both"
    _, tok = load_pretrained(folders["qwen2.5"])
    tok.save(folder)  # tokenizer_config.json holds QWEN25 (and so does chat_template.jinja) ...
    (folder / "chat_template.jinja").write_text(QWEN3, encoding="utf-8")  # ... now the file differs
    assert Tokenizer.from_folder(folder).chat_template == QWEN3 == hf_tokenizer(folder).chat_template


def test_named_templates(folders, tmp_path):
    """tokenizer_config.json's list of named templates: "default" is used (as transformers does
    without tools), and the list is saved back as it was."""
    _, tok = load_pretrained(folders["qwen2.5"])
    tok.chat_template = {"default": QWEN25, "tool_use": "{{ raise_exception('tools') }}"}
    tok.save(tmp_path / "named")
    assert json.loads((tmp_path / "named" / "tokenizer_config.json").read_text())["chat_template"] == [
        {"name": "default", "template": QWEN25}, {"name": "tool_use", "template": "{{ raise_exception('tools') }}"}]
    again = Tokenizer.from_folder(tmp_path / "named")
    assert again.chat_template == tok.chat_template
    chat = ChatFormat.from_tokenizer(again, tmp_path / "named", None, {"eos_token_id": 0})
    msgs = conversation("سؤال", None)
    assert chat.render(msgs, True) == hf_tokenizer(tmp_path / "named").apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_are_the_assistant_tokens_and_end_of_turn(folders, rows, family):
    _, tok, chat = ours(folders[family], SYSTEM)
    hf = hf_tokenizer(folders[family])
    eot = tok.tok.token_to_id(FAMILIES[family][3])
    for r in rows[:6]:
        ex = chat.build_example(tok, r["question"], r["answer"], 512)
        msgs = conversation(r["question"], r["answer"], SYSTEM)
        ref = hf.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                     **HF_KW)
        ids, mask = list(ref["input_ids"]), list(ref["assistant_masks"])
        end = max(i for i, m in enumerate(mask) if m) + 1  # the sequence ends with the end of turn
        assert ids[end - 1] == eot and ids[end:] == tok.encode("\n")[:len(ids) - end]  # only a newline after it
        seq = ex["input_ids"] + ex["labels"][-1:]
        assert seq == ids[:end]
        assert [lab != -100 for lab in ex["labels"]] == [bool(m) for m in mask[1:end]]
        prompt = hf.apply_chat_template(msgs[:-1], add_generation_prompt=True, return_dict=False, **HF_KW)
        assert ex["prompt_ids"] == list(prompt) == chat.prompt_ids(tok, r["question"], 512)[0]
        assert ex["n_answer"] == sum(mask) and ex["truncated"] is None


@pytest.mark.parametrize("family", ["llama3", "gemma3"])
def test_truncation_keeps_the_markup(folders, rows, family):
    """A long complaint loses its end; everything the template writes around it stays."""
    _, tok, chat = ours(folders[family], SYSTEM)
    q, a = " ".join(r["question"] for r in rows[:8]), " ".join(r["answer"] for r in rows[:20])
    full = chat.build_example(tok, q, a, 10**6)
    q_ids = tok.encode(q)
    P = len(full["prompt_ids"])
    start = next(i for i in range(P) if full["prompt_ids"][i:i + 5] == q_ids[:5])  # the complaint's first token
    before, after = full["prompt_ids"][:start], full["prompt_ids"][start + len(q_ids):]
    assert full["prompt_ids"] == before + q_ids + after  # the complaint is tokenized alone in this template
    n_answer, markup = full["n_answer"], len(before) + len(after)
    keep = (markup + n_answer) // 3 + 2  # above max_len // 4: the question keeps what fits beside the answer
    ex = chat.build_example(tok, q, a, markup + n_answer + keep)
    assert ex["truncated"] == "question" and len(ex["input_ids"]) + 1 == markup + n_answer + keep
    assert ex["prompt_ids"] == before + q_ids[:keep] + after and ex["labels"][-n_answer:] == full["labels"][-n_answer:]
    keep = (markup + 1) // 3 + 2  # generation: the prompt alone in max_len tokens
    ids, truncated = chat.prompt_ids(tok, q, markup + keep)
    assert truncated and ids == before + q_ids[:keep] + after
    max_len = 4 * markup // 3 + 4  # the quarter rule: the question keeps max_len // 4, the long answer loses its end
    assert n_answer > max_len
    ex = chat.build_example(tok, q, a, max_len)
    assert ex["truncated"] == "answer" and ex["prompt_ids"] == before + q_ids[:max_len // 4] + after
    assert ex["labels"][-1] not in chat.end_ids and len(ex["input_ids"]) + 1 == max_len  # no end-of-turn target
    with pytest.raises(UsageError, match="no room for an answer"):
        chat.build_example(tok, q, a, markup)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_stops_at_end_of_turn_like_transformers(folders, rows, family, tmp_path):
    """The end-of-turn row of an untied lm_head is set to a multiple of the part of the hidden state
    at step K orthogonal to the states of steps 0..K-1: its logit is 0 before step K (below the best
    token's) and the largest at step K, so greedy decoding emits it there. Our generate (every end id)
    and transformers' generate (the same ids) agree token for token."""
    model, tok, chat = ours(folders[family])
    eot, K = tok.tok.token_to_id(FAMILIES[family][3]), 4
    prompt = chat.prompt_ids(tok, rows[0]["question"], 100)[0]
    model.config.tie_word_embeddings = False  # the prompt holds end-of-turn tokens: their embedding stays
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        model.lm_head.weight[eot] = 0
        free = generate(model, [prompt], K + 1, None, tok.pad_id)[0]  # the path without an end of turn
        h = model(torch.tensor([prompt + free]), return_hidden=True)[0, len(prompt) - 1:].double()  # (K+2, C)
        logits = model.lm_head(h.float())
        assert eot not in free and (logits[:K].max(-1).values > 1e-3).all()  # eot's logit 0 loses before step K
        q, _ = torch.linalg.qr(h[:K].T)  # orthonormal basis of the earlier states
        v = h[K] - q @ (q.T @ h[K])
        model.lm_head.weight[eot] = (v * (10 * logits[K].abs().max() / (v @ h[K]))).float()
    new = generate(model, [prompt], 12, chat.end_ids, tok.pad_id)[0]
    assert new == free[:K]  # stopped at step K, the end of turn not part of the answer
    save_pretrained(model, tok, tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=torch.float32)
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=12, do_sample=False, eos_token_id=chat.end_ids,
                      pad_token_id=tok.pad_id if tok.pad_id is not None else chat.end_ids[0])
    assert out[0, len(prompt):].tolist() == new + [eot]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_then_evaluate_chat(folders, rows, family, tmp_path):
    """2 steps of train_lm.py --prompt-format chat, then evaluate.py, which picks the format up from
    the checkpoint. Step 1's loss (the model loaded in float64) is the float64 token-mean cross-entropy
    of the initial model on transformers' assistant tokens (mask from return_assistant_tokens_mask)."""
    data = write_rows(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    common = ["--data", str(data), "--model", str(folders[family]), "--out", str(out), "--device", "cpu",
              "--weights", "uniform", "--batch-size", "4", "--grad-accum", "6", "--max-steps", "2",
              "--eval-every", "100", "--lr", "3e-3", "--warmup-steps", "1", "--seed", "0"]
    with pytest.MonkeyPatch.context() as mp:  # the model in float64, the fused loss as always: see below
        float64_models(mp)
        train_lm.main(common + ["--prompt-format", "chat", "--system", SYSTEM])
    logged = [json.loads(s) for s in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    loss1 = [m for m in logged if m.get("step") == 1 and "loss" in m][0]["loss"]
    model, _ = load_pretrained(folders[family])
    model64, _ = load_pretrained(folders[family], dtype=torch.float64)
    hf = hf_tokenizer(folders[family])
    ce, n, stats, longest = 0.0, 0, [], 0
    for r in (r for r in rows if r["split"] == "train"):  # step 1 saw all 24 training rows
        ref = hf.apply_chat_template(conversation(r["question"].strip(), r["answer"].strip(), SYSTEM), tokenize=True,
                                     return_dict=True, return_assistant_tokens_mask=True, **HF_KW)
        ids, mask = torch.tensor(ref["input_ids"]), torch.tensor(ref["assistant_masks"], dtype=torch.bool)
        with torch.no_grad():  # float64 logits from the hidden states (the model's own are rounded to float32)
            logits = model64(ids[None, :-1], return_hidden=True)[0] @ model64.lm_head.weight.T
        stats.append(answer_stats(logits[mask[1:]], ids[1:][mask[1:]]))
        ce += stats[-1][1].sum().item()
        n, longest = n + int(mask.sum()), max(longest, int(mask.sum()))
    # the worst case of the fused loss's float32 statistics (tests/test_train_lm.py's fused_loss_bound,
    # 4 rows per micro-batch); one assistant token lost or shifted moves the loss by ~1 / n
    bound = fused_loss_bound([(1.0, *st) for st in stats], model64.lm_head.weight.shape[0], 4 * longest) / n
    assert abs(loss1 - ce / n) <= bound, (loss1, ce / n, bound)

    meta = json.loads((out / "last" / "meta.json").read_text(encoding="utf-8"))
    assert meta["args"]["prompt_format"] == "chat" and meta["prompt"]["system"] == SYSTEM
    gen_eos = json.loads((folders[family] / "generation_config.json").read_text())["eos_token_id"]
    assert meta["prompt"]["end_ids"] == sorted(set(gen_eos + [model.config.eos_token_id]))  # config eos = tokenizer's
    # the saved folder keeps the template and the end ids: transformers renders it the same
    saved = hf_tokenizer(out / "last")
    msgs = conversation(rows[0]["question"], None, SYSTEM)
    assert saved.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False, **HF_KW) == \
        hf.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False, **HF_KW)
    assert (json.loads((out / "last" / "generation_config.json").read_text())
            == json.loads((folders[family] / "generation_config.json").read_text()))

    with pytest.raises(UsageError, match=r"--prompt-format chat, not plain"):
        train_lm.main(common + ["--max-steps", "3"])  # a resume must keep the format

    evaluate.main(["--model", str(out / "last"), "--data", str(data), "--split", "val", "--out",
                   str(tmp_path / "eval"), "--max-new-tokens", "5", "--batch-size", "3", "--bootstrap", "0",
                   "--device", "cpu"])
    cfg = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))["config"]
    trained, tok = load_pretrained(out / "last")
    chat = ChatFormat.from_tokenizer(tok, out / "last", SYSTEM, trained.generation_config)
    assert cfg["prompt_format"] == chat.describe()
    gen = [json.loads(s) for s in (tmp_path / "eval" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [r for r in rows if r["split"] == "val"]
    prompt = chat.prompt_ids(tok, val[0]["question"], 100)[0]
    alone = generate(trained, [prompt], 5, chat.end_ids, tok.pad_id, vocab_limit=tok.vocab_size)[0]
    assert next(g for g in gen if g["id"] == val[0]["id"])["generated"] == tok.decode(alone).strip()
    if family == "qwen2.5":  # the trained format is only a default
        evaluate.main(["--model", str(out / "last"), "--data", str(data), "--split", "val", "--out",
                       str(tmp_path / "eval-plain"), "--max-new-tokens", "2", "--limit", "2", "--bootstrap", "0",
                       "--device", "cpu", "--prompt-format", "plain"])
        cfg = json.loads((tmp_path / "eval-plain" / "metrics.json").read_text(encoding="utf-8"))["config"]
        assert cfg["prompt_format"] == {"format": "plain", "separator": "\nالجواب:\n"}


def bad_folder(folders, tmp_path, template):
    folder = tmp_path / "bad"
    model, tok = load_pretrained(folders["qwen2.5"])
    tok.chat_template = template
    save_pretrained(model, tok, folder)
    return folder


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('this model takes no system turn') }}", "failed to render: TemplateError: this model"),
    ("{% for m in messages %}{% if m.role == 'user' %}<|im_start|>{{ m.content }}<|im_end|>{% endif %}{% endfor %}"
     "{% if add_generation_prompt %}<|im_start|>{% endif %}", "renders no assistant turn"),
    ("{% for m in messages %}{{ m.content }", "does not parse"),
    (None, "has no chat template"),
])
def test_bad_templates_are_one_line(folders, rows, tmp_path, template, message):
    """train_lm.py and evaluate.py refuse the folder with one line, before writing anything."""
    folder = bad_folder(folders, tmp_path, template)
    data = write_rows(tmp_path / "data.jsonl", rows)
    runs = ((train_lm.main, ["--out", str(tmp_path / "run"), "--max-steps", "1", "--weights", "uniform"]),
            (evaluate.main, ["--out", str(tmp_path / "eval"), "--split", "val"]))
    for main, args in runs:
        with pytest.raises(USER_ERRORS) as e:
            main(args + ["--model", str(folder), "--data", str(data), "--device", "cpu", "--prompt-format", "chat"])
        assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run" / "last").exists()
    if template is None:  # as a user sees it: one line on stderr, no traceback
        res = subprocess.run([sys.executable, "evaluate.py", *runs[1][1], "--model", str(folder), "--data", str(data),
                              "--device", "cpu", "--prompt-format", "chat"], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode != 0 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr


def test_system_needs_chat(folders):
    with pytest.raises(UsageError, match="--system"):
        chat_format("plain", SYSTEM, None, None, folders["qwen2.5"])
