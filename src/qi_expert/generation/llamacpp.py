"""llama.cpp through llama-cpp-python: loading a GGUF, the llama.cpp backend of the one generation
path (decoding.py), and the streamed chat `qi-expert generate` prints.

The backend feeds the prompts' token ids as the Hugging Face tokenizer made them (the gguf
stage's smoke check proves llama.cpp tokenizes them the same) and stops where decoding.StopPolicy
says, so a GGUF is scored on exactly the terms the transformers model is. One sequence at a time:
llama-cpp-python's high-level API decodes one; benchmarks/llama_batch.py measures its low-level
batched API against this path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator, Sequence

from qi_expert.generation import decoding


def default_threads(n_threads: int | None = None) -> int:
    return int(n_threads) if n_threads else max(1, os.cpu_count() or 1)


def build_info() -> str:
    """What this llama.cpp was compiled for (its instruction sets and backends, llama_print_system_info):
    two builds of one version decode the same file to other text."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()


def load_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None,
               lora_path: str | Path | None = None, verbose: bool = False, seed: int = 0):
    """A llama_cpp.Llama on CPU; the chat format comes from the GGUF's own chat template."""
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF model at {path}")
    threads = default_threads(n_threads)
    return Llama(model_path=str(path), n_ctx=int(n_ctx), n_threads=threads, n_threads_batch=threads,
                 lora_path=str(lora_path) if lora_path else None, n_gpu_layers=0, seed=seed,
                 verbose=verbose)


class LlamaCpp:
    """The llama.cpp backend: greedy, one row after another.

    `reuse_prefix` (the default) lets llama.cpp keep the KV cache of the longest prefix shared with
    the previous row (the system prompt), so consecutive prompts skip most of their prefill; a row's
    tokens then depend on the row before it (the same floating-point sums in another order), which
    is why quantcost caches a file's completions whole. Off, every row is prefilled from scratch
    (the smoke check's speed probe: prefill included, rows independent).
    """

    name = "llama.cpp"

    def __init__(self, llm, *, reuse_prefix: bool = True, progress=None):
        self.llm, self.reuse_prefix = llm, reuse_prefix
        self.progress = progress  # progress(rows_done, rows, new_tokens), as the transformers backend calls it

    def decode(self, rows: Sequence[Sequence[int]], policy: decoding.StopPolicy, *, temperature: float = 0.0,
               seed: int = 0, answers: Sequence[Sequence[int] | None] | None = None) -> decoding.Decoded:
        if answers is not None:
            raise ValueError("the llama.cpp backend does not score answers (the reference loss): use the "
                             "transformers backend")
        if temperature > 0:
            raise ValueError("the llama.cpp backend decodes greedily: use temperature 0 (or the transformers "
                             "backend to sample)")
        llm = self.llm
        eos = set(policy.eos) | ({int(llm.token_eos())} if policy.backend_eos else set())
        tokens: list[list[int]] = []
        reasons: list[str] = []
        first_token_seconds: list[float] = []
        start = time.perf_counter()
        for ids in rows:
            row_start = time.perf_counter()
            out: list[int] = []
            reason = "length"
            if not self.reuse_prefix:
                llm.reset()
            if policy.max_new_tokens > 0:
                # The stop policy's no-repeat n-grams, as the transformers backend applies them.
                processors = _banning(policy, out) if policy.no_repeat_ngram else None
                for token in llm.generate(list(ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                          reset=True, logits_processor=processors):
                    if not out:
                        first_token_seconds.append(time.perf_counter() - row_start)
                    if int(token) in eos:
                        reason = "eos"
                        break
                    out.append(int(token))
                    why = policy.why(out)
                    if why:
                        reason = why
                        break
            tokens.append(out)
            reasons.append(reason)
            if self.progress is not None:
                self.progress(len(tokens), len(rows), sum(len(t) for t in tokens))
        return decoding.Decoded(tokens, reasons, time.perf_counter() - start,
                                {"first_token_seconds": [round(s, 4) for s in first_token_seconds]})


def _banning(policy: decoding.StopPolicy, out: list[int]):
    """llama.cpp logits processors: -inf for the tokens the row `out` may not say next."""
    from llama_cpp import LogitsProcessorList

    def process(input_ids, scores):
        banned = policy.banned(out)
        if banned:
            scores[list(banned)] = -float("inf")
        return scores
    return LogitsProcessorList([process])


def _messages(system_prompt: str | None, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
        [{"role": "user", "content": prompt}]


def stream_chat(llm, prompt: str, system_prompt: str | None, max_tokens: int, *, temperature: float = 0.1,
                top_p: float = 0.9, seed: int | None = None) -> Iterator[str]:
    """Yield the completion's text pieces as llama.cpp produces them."""
    kwargs = {"seed": seed} if seed is not None else {}
    for chunk in llm.create_chat_completion(_messages(system_prompt, prompt), max_tokens=int(max_tokens),
                                            temperature=float(temperature), top_p=float(top_p),
                                            stream=True, **kwargs):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            yield piece


class _LlamaVocab:
    """What decoding.stop_checker asks of a tokenizer, answered by llama.cpp's own vocabulary."""

    def __init__(self, llm):
        self.llm = llm

    def get_vocab(self) -> dict[str, int]:
        return {self.llm._model.token_get_text(i): i for i in range(self.llm.n_vocab())}

    def decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")


def apply_eval_stops(llm) -> None:
    """Stop every completion of `llm` where the eval stops one: at the code fence that closes the
    answer, or in a degenerate loop (decoding.stop_checker). Without the loop rule a small model
    that starts repeating itself runs to max_tokens (26 of the 54 tuned eval completions would).

    llama_cpp.server passes no stopping criteria of its own; its chat handlers call the model's
    create_completion, which takes them: that one method of this instance is wrapped.
    """
    from llama_cpp import StoppingCriteriaList

    check = decoding.stop_checker(_LlamaVocab(llm))
    create_completion = llm.create_completion

    def with_stops(*args, stopping_criteria=None, **kwargs):
        first: list[int] = []

        def stop(input_ids, logits) -> bool:  # input_ids: the prompt and the tokens so far
            if not first:
                first.append(len(input_ids) - 1)  # called after each new token: the first call has one
            return check([int(t) for t in input_ids[first[0]:]]) is not None

        criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
        return create_completion(*args, stopping_criteria=criteria, **kwargs)

    llm.create_completion = with_stops
