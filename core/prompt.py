"""The prompt formats, defined once: train_lm.py trains on them, evaluate.py generates from them.

plain (the default, --prompt-format plain):

    <question> "\\nالجواب:\\n" <answer> <EOS>          (no BOS; "الجواب" = "the answer")

chat (--prompt-format chat): the model folder's own chat template, core/chat.py (a ChatFormat is
passed as build_example's `chat`). docs/prompts.md shows both.

Loss only on the answer tokens and the EOS, so the model learns to answer and to stop.
evaluate.py builds its prompts with build_example itself (an empty answer), so the format and the
truncation of a long question are the same in training and in generation.
"""
from core.common import UsageError

SEPARATOR = "\nالجواب:\n"  # "\nthe answer:\n" between question and answer


def format_prompt(question):
    """The text the model sees before it answers: the question, then the separator."""
    return question.strip() + SEPARATOR


def build_example(tokenizer, question, answer, max_len, chat=None):
    """Token ids of one training example, shifted for next-token prediction (chat: a
    core.chat.ChatFormat, whose build_example returns the same dict for the chat format).

    Full sequence: format_prompt(question) + answer + EOS, at most max_len tokens. Returns a dict:
      input_ids  the sequence without its last token (what the model reads)
      labels     the sequence without its first token, -100 wherever the next token is part of
                 the prompt: the loss covers exactly the answer tokens and the EOS. Built from
                 lengths, so the EOS stays a target even when pad id == eos id.
      prompt_ids, n_answer (answer tokens incl. EOS), truncated (None, "question" or "answer")
    Too long: the question loses its end (the complaint is usually stated first), keeping the
    whole answer; if the answer alone leaves the question less than max_len // 4 tokens, the
    question keeps that many and the answer loses its end -- and then has no EOS target, so the
    model never learns to stop in the middle of a sentence. Never more than max_len tokens, whatever
    the tokenizer; a max_len without room for the separator and one answer token is refused
    (UsageError naming --max-len).
    """
    if chat is not None:
        return chat.build_example(tokenizer, question, answer, max_len)
    answer_ids = tokenizer.encode(answer.strip()) + [tokenizer.eos_id]
    prompt_ids = tokenizer.encode(format_prompt(question))  # exactly what evaluate.py will feed
    truncated = None
    if len(prompt_ids) + len(answer_ids) > max_len:
        q_ids, sep_ids = tokenizer.encode(question.strip()), tokenizer.encode(SEPARATOR)
        if len(sep_ids) + 1 > max_len:  # a byte-level tokenizer may spend ~15 tokens on the separator
            raise UsageError(f"--max-len {max_len} leaves no answer token after the separator's {len(sep_ids)} "
                             f"tokens: raise --max-len")
        keep = max_len - len(sep_ids) - len(answer_ids)  # question tokens that fit beside the whole answer
        min_keep = min(len(q_ids), max_len // 4, max_len - len(sep_ids) - 1)  # >= 1 answer token stays
        if keep >= min_keep:
            truncated, prompt_ids = "question", q_ids[:keep] + sep_ids
        else:
            truncated, prompt_ids = "answer", q_ids[:min_keep] + sep_ids
            answer_ids = answer_ids[:max_len - len(prompt_ids)]  # the EOS is cut off with the end
    ids = prompt_ids + answer_ids
    labels = [-100] * (len(prompt_ids) - 1) + answer_ids  # labels[t] = ids[t + 1] on the answer
    return {"input_ids": ids[:-1], "labels": labels, "prompt_ids": prompt_ids, "n_answer": len(answer_ids),
            "truncated": truncated}
