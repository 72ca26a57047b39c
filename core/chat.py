"""The chat prompt format: a model folder's own chat template, rendered as transformers does.

    chat = ChatFormat.from_tokenizer(tokenizer, folder, system="أنت طبيب")   # --prompt-format chat
    ex = chat.build_example(tokenizer, question, answer, max_len)          # what train_lm.py trains on
    ids, truncated = chat.prompt_ids(tokenizer, question, max_len)          # what evaluate.py feeds

An instruct model (Qwen2.5-Instruct, Qwen3, Llama-3.x-Instruct, gemma-3-it) was tuned on its own
conversation markup; its folder ships that markup as a Jinja template (`chat_template.jinja`, or
`chat_template` in tokenizer_config.json; the file wins, as in transformers; models.Tokenizer reads
it and saves it back). The conversation here is: an optional system message (--system), the
complaint as the user turn, the doctor's answer as the assistant turn.

Rendering matches transformers' apply_chat_template: jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension and a no-op {% generation %} block, the
globals raise_exception and strftime_now, the tojson filter (no HTML escaping), the variables
messages, add_generation_prompt and the special tokens (bos_token, eos_token, ...), and the text
tokenized as a whole without added special tokens. Two choices make renders reproducible:
strftime_now always returns RENDER_DATE (Llama-3.x writes "Today Date" into its system turn), and
enable_thinking=False is passed (Qwen3 then writes an empty think block), so the prompt of a training
example is exactly the generation prompt (the rendering with add_generation_prompt=True).

Targets, found from character offsets, never from per-family token ids: the generation prompt is a
prefix of the full rendering; the tokens after it are the assistant's answer, and the first token
after the answer text is the end of turn (<|im_end|>, <|eot_id|>, <end_of_turn>), which must be
one of the end ids (generation_config.json eos_token_id, one id or a list, plus the tokenizer's
EOS); whatever the template writes after it (a newline) is neither a target nor fed to the model.
Too long: the complaint loses its end, the template's markup stays whole (core/prompt.py's rule).
"""
import json
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from core.common import UsageError
from core.prompt import SEPARATOR

PROMPT_FORMATS = ("plain", "chat")
RENDER_DATE = datetime(2026, 1, 1)  # what strftime_now returns: renders do not change with the day they run on


class _Generation(Extension):
    """{% generation %}...{% endgeneration %} (transformers' assistant-mask tag): renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_template(source, where):
    """A jinja2 Template in the environment transformers gives chat templates; UsageError if it does not parse."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: RENDER_DATE.strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise UsageError(f"{where}: the chat template does not parse: {_one_line(e)}") from None


def _one_line(e):
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def end_ids(tokenizer, generation_config):
    """Every id that ends an answer: generation_config.json's eos_token_id (an int or a list) and the
    tokenizer's EOS, sorted."""
    ids = set()
    eos = (generation_config or {}).get("eos_token_id")
    for i in (eos if isinstance(eos, list) else [eos]):
        if isinstance(i, int) and not isinstance(i, bool):
            ids.add(i)
    if tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return sorted(ids)


def conversation(question, answer=None, system=None):
    """The messages: [system], user (the complaint), [assistant (the doctor's answer)]."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


class ChatFormat:
    """A model folder's chat template with the settings of one run (system message, end ids)."""

    def __init__(self, template, special_tokens, stop_ids, system=None, where="the model folder"):
        self.template, self.where, self.system = template, where, system or None
        self.variables = {f"{n}_token": s for n, s in special_tokens.items()}
        self.variables["enable_thinking"] = False
        self.end_ids = list(stop_ids)
        if not self.end_ids:
            raise UsageError(f"{where}: no end id (generation_config.json eos_token_id or the tokenizer's EOS): "
                             "a chat answer could not end")

    @classmethod
    def from_tokenizer(cls, tokenizer, folder, system=None, generation_config=None):
        """From the template the tokenizer read from `folder`; UsageError when it has none, or when a
        probe conversation shows a template that raises, renders no assistant turn or no end id."""
        source = tokenizer.chat_template
        if isinstance(source, dict):  # named templates: transformers uses "default" when no tools are given
            source = source.get("default")
        if not isinstance(source, str) or not source.strip():
            raise UsageError(f"--prompt-format chat: {folder} has no chat template (chat_template.jinja, or "
                             "chat_template in tokenizer_config.json): use --prompt-format plain")
        where = f"{folder}'s chat template"
        chat = cls(compile_template(source, where), tokenizer.special_tokens, end_ids(tokenizer, generation_config),
                   system, where)
        # a template that raises, drops the answer or ends it with no end id fails here, before any data
        chat.build_example(tokenizer, "probe question", "probe answer", 10**6)
        return chat

    def render(self, messages, add_generation_prompt):
        """The template's text for `messages` (apply_chat_template with tokenize=False)."""
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        tools=None, documents=None, **self.variables)
        except Exception as e:  # raise_exception, the sandbox, or Python's own errors inside the template
            raise UsageError(f"{self.where} failed to render: {_one_line(e)}") from None

    def spans(self, question, answer):
        """(full text, generation prompt length P, answer end A): the assistant's answer is full[P:A]."""
        prompt = self.render(conversation(question, None, self.system), add_generation_prompt=True)
        full = self.render(conversation(question, answer, self.system), add_generation_prompt=False)
        if not full.startswith(prompt) or full.find(answer, len(prompt)) != len(prompt):
            raise UsageError(f"{self.where} renders no assistant turn where its generation prompt ends (the "
                             f"answer must follow add_generation_prompt's text): it cannot be trained on")
        return full, len(prompt), len(prompt) + len(answer)

    def tokens(self, tokenizer, full, P):
        """(ids, offsets, k): the full text tokenized as transformers does, k = its generation-prompt tokens.
        Should a token straddle the prompt's end, prompt and rest are tokenized apart, so the prompt
        tokens always equal what generation is fed."""
        enc = tokenizer.tok.encode(full, add_special_tokens=False)
        ids, offsets = list(enc.ids), list(enc.offsets)
        k = sum(1 for _, end in offsets if end <= P)
        if any(s < P < e for s, e in offsets):
            head = tokenizer.tok.encode(full[:P], add_special_tokens=False)
            tail = tokenizer.tok.encode(full[P:], add_special_tokens=False)
            ids, k = list(head.ids) + list(tail.ids), len(head.ids)
            offsets = list(head.offsets) + [(s + P, e + P) for s, e in tail.offsets]
        return ids, offsets, k

    def build_example(self, tokenizer, question, answer, max_len):
        """core/prompt.build_example's dict for the chat format (see the module doc)."""
        question, answer = question.strip(), answer.strip()
        full, P, A = self.spans(question, answer)
        ids, offsets, k = self.tokens(tokenizer, full, P)
        j = next((t for t in range(k, len(ids)) if offsets[t][1] > A), None)  # the first token past the answer
        if j is None or ids[j] not in self.end_ids:
            what = "nothing" if j is None else repr(tokenizer.tok.id_to_token(ids[j]))
            raise UsageError(f"{self.where} writes {what} after the assistant's answer, not an end id "
                             f"{self.end_ids} (generation_config.json eos_token_id, the tokenizer's EOS): "
                             "the model would not learn to stop")
        prompt_ids, answer_ids = ids[:k], ids[k:j + 1]  # answer tokens and the end of turn
        qs = full.rfind(question, 0, P)  # the complaint inside the prompt (the user turn comes last)
        a, b = k, k  # not found (a template that rewrites it): only the answer can be cut
        if qs >= 0:
            a = next(t for t in range(k + 1) if t == k or offsets[t][0] >= qs)
            b = next(t for t in range(a, k + 1) if t == k or offsets[t][0] >= qs + len(question))
        return fit(prompt_ids, a, b, answer_ids, max_len)

    def prompt_ids(self, tokenizer, question, max_len):
        """(generation prompt ids, truncated): build_example's prompt with an empty answer, at most max_len tokens."""
        ex = self.build_example(tokenizer, question, "", max_len + 1)  # room for the end-of-turn target
        if len(ex["prompt_ids"]) > max_len:
            raise UsageError(f"{max_len} prompt tokens leave no room for the chat template and a question: "
                             "lower --max-new-tokens")
        return ex["prompt_ids"], ex["truncated"] is not None

    def describe(self):
        """What metrics.json / meta.json record about the format."""
        return {"format": "chat", "system": self.system, "date": RENDER_DATE.date().isoformat(),
                "enable_thinking": False, "end_ids": self.end_ids}


def fit(prompt_ids, a, b, answer_ids, max_len):
    """The example dict of core/prompt.build_example from a prompt whose tokens a:b are the question.
    Too long: the question loses its end, keeping the whole answer; if that leaves the question less
    than min(its length, max_len // 4) tokens, it keeps that many and the answer loses its end (and its
    end-of-turn target: the model never learns to stop mid-sentence). The markup is never cut."""
    truncated = None
    if len(prompt_ids) + len(answer_ids) > max_len:
        n_q, markup = b - a, len(prompt_ids) - (b - a)
        keep = max_len - markup - len(answer_ids)  # question tokens that fit beside the whole answer
        min_keep = min(n_q, max_len // 4)
        truncated = "question" if keep >= min_keep else "answer"
        keep = max(keep, min_keep)
        if markup + keep >= max_len:
            raise UsageError(f"{max_len} tokens leave no room for an answer after the chat template's markup "
                             f"({markup} tokens) and {keep} question tokens: raise --max-len (training) or "
                             "lower --max-new-tokens (generation)")
        prompt_ids = prompt_ids[:a + keep] + prompt_ids[b:]
        answer_ids = answer_ids[:max(max_len - len(prompt_ids), 0)]
    ids = prompt_ids + answer_ids
    labels = [-100] * (len(prompt_ids) - 1) + answer_ids  # labels[t] = ids[t + 1] on the answer
    return {"input_ids": ids[:-1], "labels": labels, "prompt_ids": prompt_ids, "n_answer": len(answer_ids),
            "truncated": truncated}


# -----------------------------------------------------------------------------
# The scripts' side: flags, the format of a run, the format a model folder was trained with


def add_prompt_flags(parser, default):
    """--prompt-format and --system (train_lm.py: default plain; evaluate.py: None = as trained)."""
    parser.add_argument("--prompt-format", default=default, choices=PROMPT_FORMATS,
                        help="plain: question + '\\nالجواب:\\n' + answer + EOS; chat: the model folder's own chat "
                             "template (instruct models; docs/prompts.md)" +
                             ("" if default else "; default: the format the model folder was trained with, else plain"))
    parser.add_argument("--system", default=None, help="--prompt-format chat: a system message opening every "
                                                       "conversation (default none" +
                                                       (")" if default else "; or the one the model was trained with)"))


def trained_prompt(folder):
    """(prompt_format, system) a train_lm.py checkpoint folder records in meta.json, or (None, None)."""
    path = Path(folder) / "meta.json"
    try:
        args = json.loads(path.read_text(encoding="utf-8")).get("args", {})
    except (OSError, ValueError, AttributeError):  # not a checkpoint of this project: nothing recorded
        return None, None
    return (args.get("prompt_format"), args.get("system")) if isinstance(args, dict) else (None, None)


def chat_format(prompt_format, system, tokenizer, model, folder):
    """The run's ChatFormat for --prompt-format chat (end ids from the model's generation_config.json
    and the tokenizer), None for plain; UsageError for --system without chat or a folder the chat
    format cannot use."""
    if prompt_format != "chat":
        if system:
            raise UsageError("--system is part of the chat format: add --prompt-format chat")
        return None
    return ChatFormat.from_tokenizer(tokenizer, folder, system, getattr(model, "generation_config", None))


def evaluation_format(args, tokenizer, model):
    """evaluate.py's chat_format: --prompt-format (None: the format args.model was trained with,
    else plain) and --system (None: the trained one, when the format is the trained one). The
    resolved values are written back to args, so they are recorded."""
    trained_format, trained_system = trained_prompt(args.model)
    args.prompt_format = args.prompt_format or trained_format or "plain"
    if args.system is None and args.prompt_format == trained_format:
        args.system = trained_system
    return chat_format(args.prompt_format, args.system, tokenizer, model, args.model)


def describe(chat):
    """metrics.json's / meta.json's record of a run's prompt format."""
    return chat.describe() if chat is not None else {"format": "plain", "separator": SEPARATOR}
