"""The prompts a model sees and the code in what it answers.

The prompt is built exactly as the chat training rows are (formatting.chat): the project's
system prompt, then the task instruction and its signature as the user turn (retrieved context
first, for the +retrieval arms), rendered by the tokenizer's own chat template with the
assistant turn opened. extract_code takes the TypeScript back out of an answer.
"""

from __future__ import annotations

import re

from qi_expert.data import formatting, retrieval

# A fenced block: ```ts / ```typescript / ``` ... ```; the closing fence may be missing when the
# model ran out of tokens.
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def user_message(task: dict, context: str = "") -> str:
    """The user turn for a task, as formatting.chat builds it for a training row with input."""
    return chat_messages(task, "", context)[1]["content"]


def chat_messages(task: dict, system_prompt: str, context: str = "") -> list[dict]:
    """System + user turns for a task; `context` (retrieved API entries and examples) goes before the task."""
    row = {"instruction": " ".join(str(task["instruction"]).split()),
           "input": f"Signature: {' '.join(str(task['signature']).split())}", "output": ""}
    messages = formatting.chat(row, system_prompt)["messages"][:2]  # system + user; the assistant turn is ours
    messages[1]["content"] = retrieval.with_context(context, messages[1]["content"])
    return messages


def render_prompt(tokenizer, task: dict, system_prompt: str, context: str = "") -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: the eval prompts (like the chat training "
                         "rows) go through it; the prepare stage must save one with the tokenizer")
    return tokenizer.apply_chat_template(chat_messages(task, system_prompt, context), tokenize=False,
                                         add_generation_prompt=True)


def extract_code(response: str, entry: str | None = None) -> str:
    """The TypeScript in a response: a fenced block (the one defining `entry` if several), else all."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(response)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "ts", "typescript", "tsx", "js", "javascript")
              and body.strip()]
    if not blocks:
        return response.strip() + "\n" if response.strip() else ""
    if entry:
        defining = [b for _, b in blocks if re.search(rf"\b(function|const|let|class)\s+{re.escape(entry)}\b", b)]
        if defining:
            return defining[0].strip() + "\n"
    return max((b for _, b in blocks), key=len).strip() + "\n"
