"""One generation path: prompts in, completions out, through either backend, under one stop policy.

A backend turns token ids into new token ids. Two exist: transformers (generate.Transformers:
batched, continuous, our own loop over the model's forward pass) and llama.cpp
(llamacpp.LlamaCpp: a GGUF file, one sequence at a time). Everything that decides what a
completion is lives here, once, for both:

- the stop policy: end-of-turn ids, max_new_tokens, a closed code fence, a degenerate loop
  (StopPolicy.eval), or exactly n tokens for speed probes (StopPolicy.fixed);
- `complete()`: encode the prompts with the tokenizer the model was trained with, let the
  backend decode them, decode the tokens back to text (per prompt, per sample).

The eval's arms (arms.py) and the gguf stage's quantization cost (quantcost.py) both score what
`complete()` returns, so a GGUF is scored on exactly the terms the transformers model is. The
server (serving.py) applies the same stop rules inside llama.cpp's own completion loop.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

# A closed code block: what follows it is never scored.
_CLOSED_BLOCK = re.compile(r"```[^\n]*\n.*?\n[ \t]*```", re.S)

REPEAT_MIN_TOKENS = 48  # a block repeated back to back over at least this many tokens...
REPEAT_MIN_COPIES = 3  # ...and at least this many times is a loop greedy decoding does not leave
REPEAT_MAX_PERIOD = 64


def repeating(tokens: Sequence[int]) -> bool:
    """Does the sequence end with one block of tokens repeated back to back (a degenerate loop)?"""
    n = len(tokens)
    last = tokens[-1] if n else None
    for period in range(1, min(REPEAT_MAX_PERIOD, n // REPEAT_MIN_COPIES) + 1):
        if tokens[-1 - period] != last:
            continue
        copies = max(REPEAT_MIN_COPIES, -(-REPEAT_MIN_TOKENS // period))
        span = copies * period
        if span > n:
            continue
        block = tokens[n - period:]
        if all(tokens[n - (c + 1) * period: n - c * period] == block for c in range(1, copies)):
            return True
    return False


def ngram_bans(tokens: Sequence[int], n: int) -> set[int]:
    """The tokens that would repeat an n-gram already in `tokens` (no_repeat_ngram_size, as
    transformers' NoRepeatNGramLogitsProcessor has it, over the generated tokens only: the prompt's
    names must stay free to reuse). Written here once for both backends: llama.cpp has no such
    sampler, and the quantization cost must decode its GGUFs under the eval's own rules."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    if n == 1:
        return set(tokens)
    prefix = list(tokens[len(tokens) - (n - 1):])
    first = prefix[0]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1)
            if tokens[i] == first and list(tokens[i:i + n - 1]) == prefix}


def _fence_token_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokens holding a backtick: only they can close a code fence."""
    return frozenset(i for t, i in tokenizer.get_vocab().items() if "`" in t)


def stop_checker(tokenizer, *, stop_at_fence: bool = True, stop_on_repetition: bool = True):
    """f(tokens so far) -> why the row stops ("fence", "repetition") or None. `tokenizer` needs
    get_vocab() and decode(ids, skip_special_tokens=True) (serving adapts llama.cpp's vocabulary)."""
    fence_ids = _fence_token_ids(tokenizer) if stop_at_fence else frozenset()

    def stop_check(toks: list[int]) -> str | None:
        if fence_ids and toks[-1] in fence_ids and _CLOSED_BLOCK.search(tokenizer.decode(toks, skip_special_tokens=True)):
            return "fence"
        if stop_on_repetition and repeating(toks):
            return "repetition"
        return None

    return stop_check


def _ids(value) -> list[int]:
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def generation_config_eos(model) -> list[int]:
    """The end-of-generation ids a transformers model's generation config names (the GGUF's
    tokenizer may name a wrong eos: this one is right)."""
    return _ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def stop_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the model's generation config's + the tokenizer's + the chat templates' usual ones.

    `model` may be None (the llama.cpp backend adds the GGUF's own end-of-generation id)."""
    ids: list[int] = []
    for v in generation_config_eos(model) + _ids(tokenizer.eos_token_id):
        if v not in ids:
            ids.append(v)
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|EOT|>"):
        tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
        if tid is not None and tid not in ids and tid != tokenizer.unk_token_id:
            ids.append(int(tid))
    return ids


@dataclass(frozen=True)
class StopPolicy:
    """When a row stops, and what it may not say next. `backend_eos`: also at the backend's own
    end-of-generation id. `no_repeat_ngram`: a token that would repeat an n-gram the row already
    wrote is never chosen (0: off), so greedy decoding cannot enter a loop (eval.no_repeat_ngram)."""
    max_new_tokens: int
    eos: frozenset[int] = frozenset()
    check: Callable[[list[int]], str | None] | None = None
    backend_eos: bool = True
    no_repeat_ngram: int = 0

    @classmethod
    def eval(cls, tokenizer, max_new_tokens: int, *, model=None, stop_at_fence: bool = True,
             stop_on_repetition: bool = True, no_repeat_ngram: int = 0) -> "StopPolicy":
        """The eval's rules: end of turn, max_new_tokens, a closed code fence, a degenerate loop."""
        return cls(int(max_new_tokens), frozenset(stop_ids(model, tokenizer)),
                   stop_checker(tokenizer, stop_at_fence=stop_at_fence, stop_on_repetition=stop_on_repetition),
                   no_repeat_ngram=int(no_repeat_ngram))

    def banned(self, tokens: Sequence[int]) -> set[int]:
        """The tokens this row may not choose next."""
        return ngram_bans(tokens, self.no_repeat_ngram) if self.no_repeat_ngram else set()

    @classmethod
    def fixed(cls, n: int) -> "StopPolicy":
        """Exactly n tokens, end-of-generation ids included: a speed probe decodes like for like."""
        return cls(int(n), frozenset(), None, backend_eos=False)

    def why(self, tokens: list[int]) -> str | None:
        """After a token was appended: why the row stops now (None: it goes on)."""
        reason = self.check(tokens) if self.check else None
        if reason:
            return reason
        return "length" if len(tokens) >= self.max_new_tokens else None


@dataclass
class Decoded:
    """What a backend returns: new tokens and the stop reason per row, wall seconds, its own stats."""
    tokens: list[list[int]]
    reasons: list[str]
    seconds: float
    stats: dict = field(default_factory=dict)
    answer_nll: list[float | None] | None = None  # per row, when answers were scored


class Progress:
    """A line per `every` seconds while a backend decodes: rows done, new tokens, tokens/s. Work of
    minutes shows it is moving (as Axolotl's training bar does); the text decoded never depends on it."""

    def __init__(self, label: str, every: float = 20.0, log=print):
        self.label, self.every, self.log = label, every, log
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, rows: int, new_tokens: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < rows:
            return
        self.last = now
        rate = new_tokens / max(now - self.start, 1e-9)
        self.log(f"{self.label}: {done}/{rows} rows, {new_tokens:,} new tokens, {rate:.1f} tokens/s")


class Backend(Protocol):
    name: str

    def decode(self, rows: Sequence[Sequence[int]], policy: StopPolicy, *, temperature: float = 0.0,
               seed: int = 0, answers: Sequence[Sequence[int] | None] | None = None) -> Decoded:
        """New tokens for every row of prompt ids, in the given order (greedy at temperature 0);
        with `answers`, also each answer's reference loss after its row's prompt (refloss)."""


@dataclass
class Generation:
    completions: list[list[str]]  # per prompt, n samples
    new_tokens: list[list[int]]
    seconds: float
    stats: dict = field(default_factory=dict)
    answer_nll: list[float | None] | None = None  # per prompt: the reference loss, when answers were given

    @property
    def total_new_tokens(self) -> int:
        return sum(sum(n) for n in self.new_tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.total_new_tokens / self.seconds if self.seconds else 0.0


def encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Rendered chat prompts to ids as the model saw them in training (no extra BOS)."""
    return [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


def complete(backend: Backend, tokenizer, prompts: Sequence[str], policy: StopPolicy, *, n_samples: int = 1,
             temperature: float = 0.0, seed: int = 0, answers: Sequence[str | None] | None = None) -> Generation:
    """Completions for every prompt: greedy when n_samples == 1 or temperature == 0, else n samples each.

    `answers` (one per prompt, or None): the reference loss of each is computed on its prompt's
    prefill (the first sample's row) and returned as Generation.answer_nll."""
    sample = n_samples > 1 and temperature > 0
    per_prompt = n_samples if sample else 1
    encoded = encode(tokenizer, prompts)
    rows = [(i, s) for i in range(len(prompts)) for s in range(per_prompt)]
    scoring = {}
    if answers is not None:
        if len(answers) != len(prompts):
            raise ValueError(f"answers: {len(answers)} for {len(prompts)} prompts")
        answer_ids = encode(tokenizer, [a or "" for a in answers])
        scoring = {"answers": [answer_ids[i] if s == 0 and answers[i] else None for i, s in rows]}
    out = backend.decode([encoded[i] for i, _ in rows], policy, temperature=temperature if sample else 0.0, seed=seed,
                         **scoring)
    completions = [[""] * per_prompt for _ in prompts]
    new_tokens = [[0] * per_prompt for _ in prompts]
    stop_reasons: dict[str, int] = {}
    for (i, s), t, reason in zip(rows, out.tokens, out.reasons):
        completions[i][s] = tokenizer.decode(t, skip_special_tokens=True)
        new_tokens[i][s] = len(t)
        stop_reasons[reason] = stop_reasons.get(reason, 0) + 1
    stats = {**out.stats, "backend": backend.name, "rows": len(rows), "sampled": sample,
             "stop_reasons": dict(sorted(stop_reasons.items()))}
    nll = [out.answer_nll[k] for k, (_, s) in enumerate(rows) if s == 0] if out.answer_nll is not None else None
    return Generation(completions, new_tokens, out.seconds, stats, answer_nll=nll)
