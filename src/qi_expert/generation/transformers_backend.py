"""The transformers backend of the one generation path (decoding.complete).

Decoding is our own loop over the model's forward pass with a KV cache (greedy, or sampling at a
temperature for pass@k), BATCHED with LEFT padding, and continuous: `batch_size` rows decode
together, a row that finishes leaves the batch at once and a waiting prompt takes its slot, so a
long completion does not keep a nearly empty batch running. The token prefix every prompt shares
(system prompt + chat markup, ~90 tokens for SmolLM2) is run once and its KV cache copied into
each new row. Greedy outputs are token-for-token those of `model.generate` (checked in the tests).
Where a row stops is decoding.StopPolicy's to say (the same for the llama.cpp backend): the
end-of-turn token, max_new_tokens, a closed code fence (what follows a finished code block is
never scored), or a loop on one block of tokens.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from qi_expert.generation import attention, decoding, refloss


def _next_tokens(logits, rows: list[int], tokens: list[list[int]], reasons: list[str], *, eos: set[int],
                 stop_check, max_new_tokens: int, sample: bool, temperature: float, generator, ban=None):
    """One decoding step's token per running row (arg-max, or sampled at `temperature`), appended to
    its row; a row that stops gets its reason. `ban(tokens) -> ids` a row may not choose (the stop
    policy's no-repeat n-grams). Returns (the tokens, positions of the rows going on)."""
    import torch

    if ban is not None:
        for j, row in enumerate(rows):
            banned = ban(tokens[row])
            if banned:
                logits[j, list(banned)] = float("-inf")
    if sample:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    else:
        nxt = logits.argmax(dim=-1)
    keep = []
    for j, (row, tok) in enumerate(zip(rows, nxt.tolist())):
        if tok in eos:
            reasons[row] = "eos"
            continue
        tokens[row].append(tok)
        reason = stop_check(tokens[row])
        if reason:
            reasons[row] = reason
        elif len(tokens[row]) < max_new_tokens:
            keep.append(j)
    return nxt, keep


def _decode(model, input_ids, attention_mask, *, max_new_tokens: int, eos: set[int], sample: bool,
            temperature: float, generator, stop_check, marks: list | None = None, ban=None,
            score: Sequence | None = None, score_rows: Sequence[int] = (), pad_id: int = 0,
            scored: dict | None = None) -> tuple[list[list[int]], list[str]]:
    """Greedy/sampled decoding of one left-padded batch with a KV cache.

    Rows that finish (end of turn, closed code block, repetition) leave the batch at once: the
    cache and the mask are cut down to the rows still running, so a batch costs the sum of its
    rows' lengths rather than rows x the longest. `score`: answer ids by row id (or None); the
    batch's rows are `score_rows` of them, scored on the prefilled cache before decoding (_score).
    """
    import torch

    rows = list(range(input_ids.shape[0]))
    tokens: list[list[int]] = [[] for _ in rows]
    reasons = ["length"] * len(rows)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = _new_cache(model)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1, :]
    if marks is not None:
        marks.append(time.perf_counter())  # the first token is one arg-max away: its time is the prefill's
    if score is not None:
        _score(model, cache, attention_mask, logits, score_rows, score, pad_id=pad_id, scored=scored)
    for _ in range(max_new_tokens):
        nxt, keep = _next_tokens(logits, rows, tokens, reasons, eos=eos, stop_check=stop_check,
                                 max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                                 generator=generator, ban=ban)
        if not keep:
            break
        if len(keep) < len(rows):
            idx = torch.tensor(keep, device=nxt.device)
            cache.batch_select_indices(idx)
            attention_mask, nxt = attention_mask[idx], nxt[idx]
            rows = [rows[j] for j in keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], dim=1)
        position_ids = attention_mask.long().sum(-1, keepdim=True) - 1
        out = model(input_ids=nxt[:, None], attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :]
    return tokens, reasons


def _score(model, cache, mask, last_logits, rows: Sequence[int], score: Sequence, *, pad_id: int,
           scored: dict) -> None:
    """The reference loss of freshly prefilled rows (refloss.answer_nll on their cache), timed apart
    from generation: scored["nll"][row] for each of `rows`, scored["seconds"] the time it took."""
    t0 = time.perf_counter()
    nll = refloss.answer_nll(model, cache, mask, last_logits, [score[r] for r in rows], pad_id=pad_id,
                             scratch=_new_cache(model))
    scored["nll"].update(zip(rows, nll))
    scored["seconds"] += time.perf_counter() - t0


class _Rows:
    """The running batch of continuous batching: one KV cache, mask and next-token logits for all rows.

    Rows are right-aligned (each row's newest token is in the last column, padding on the left),
    so new rows are merged in by left-padding the shorter side with masked zero columns, and
    finished rows are dropped by selecting the others. Positions come from the mask (the n-th
    real token of a row is at position n-1), so padding anywhere is invisible to the model. The
    cache object is kept for the whole run and its layers' tensors are edited in place: building
    a DynamicCache from tensors copies all of them (~0.8 s a step here).
    """

    def __init__(self, cache):
        self.cache = cache
        self.ids: list[int] = []  # row ids, in batch order
        self.mask = None  # [B, T] long
        self.logits = None  # [B, V]

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def _pad_left(t, n: int):
        if n == 0:
            return t
        import torch
        return torch.cat([t.new_zeros(t.shape[:-2] + (n, t.shape[-1])), t], dim=-2)

    def add(self, ids: list[int], mask, cache, logits) -> None:
        import torch
        if not self.ids:
            self.ids, self.mask, self.logits = list(ids), mask, logits
            for mine, theirs in zip(self.cache.layers, cache.layers):
                if not mine.is_initialized:
                    mine.lazy_initialization(theirs.keys, theirs.values)
                mine.keys, mine.values = theirs.keys, theirs.values
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        self.mask = torch.cat([torch.nn.functional.pad(self.mask, (width - t_old, 0)),
                               torch.nn.functional.pad(mask, (width - t_new, 0))])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([self._pad_left(mine.keys, width - t_old), self._pad_left(theirs.keys, width - t_new)])
            mine.values = torch.cat([self._pad_left(mine.values, width - t_old),
                                     self._pad_left(theirs.values, width - t_new)])
        self.logits = torch.cat([self.logits, logits])
        self.ids += list(ids)

    def keep(self, positions: list[int]) -> None:
        import torch
        if len(positions) == len(self.ids):
            return
        if not positions:
            self.ids, self.mask, self.logits = [], None, None
            for layer in self.cache.layers:
                layer.keys = layer.keys[:0]
                layer.values = layer.values[:0]
            return
        idx = torch.tensor(positions, device=self.mask.device)
        self.ids = [self.ids[j] for j in positions]
        self.mask, self.logits = self.mask[idx], self.logits[idx]
        # Columns that only the dropped rows used are cut, so attention does not scan them.
        first = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, first:]
            layer.values = layer.values[idx, :, first:]


def _growing_layer(kv_dtype=None):
    """A DynamicLayer that appends into spare room instead of torch.cat-ing its whole cache every step.

    DynamicLayer.update copies the layer's keys and values on each token (for 16 rows x 600
    positions that is ~16 ms a layer here, more than the attention itself). This one keeps a buffer
    with `HEADROOM` free columns and exposes a view of the filled part; it reallocates only when
    the buffer is full or the rows were edited from outside (a finished row left, new rows came).
    """
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        HEADROOM = 128
        KV_DTYPE = kv_dtype  # None: the model's; float32 for a bf16 model on CPU (see _kv_dtype)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.keys.shape[-2] if self.keys.dim() == 4 else 0
            add = key_states.shape[-2]
            kbuf, vbuf = getattr(self, "_kbuf", None), getattr(self, "_vbuf", None)
            if (kbuf is None or n + add > kbuf.shape[-2] or kbuf.shape[0] != key_states.shape[0]
                    or (n and (self.keys.data_ptr() != kbuf.data_ptr() or self.values.data_ptr() != vbuf.data_ptr()))):
                shape = tuple(key_states.shape[:2]) + (n + add + self.HEADROOM, key_states.shape[-1])
                dtype = self.KV_DTYPE or key_states.dtype
                kbuf, vbuf = key_states.new_empty(shape, dtype=dtype), value_states.new_empty(shape, dtype=dtype)
                if n:
                    kbuf[..., :n, :] = self.keys
                    vbuf[..., :n, :] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            kbuf[..., n:n + add, :] = key_states
            vbuf[..., n:n + add, :] = value_states
            self.keys, self.values = kbuf[..., :n + add, :], vbuf[..., :n + add, :]
            return self.keys, self.values

    return GrowingLayer


def _plain_layers(cache) -> bool:
    return all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def _kv_dtype(model):
    """float32 for a bf16 model on CPU decoding through attention._sdpa_gqa, else None (the model's dtype).

    torch's CPU flash-attention kernel is ~3x slower in bf16 than in fp32 for one query token
    (profile of 33 decode steps x 16 rows: 2.29 vs 0.75 s), while the bf16 matmuls take half the
    time of fp32 ones (weights read from memory: 217 vs 418 us for a 576x1536 linear at 16 rows).
    So a bf16 model keeps its KV cache in fp32 and attends in fp32 (attention._sdpa_gqa casts the query).
    """
    import torch

    param = next(model.parameters())
    fast = getattr(model.config, "_attn_implementation", None) == attention.GQA
    return torch.float32 if (fast and param.device.type == "cpu" and param.dtype == torch.bfloat16) else None


def _new_cache(model):
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    if _plain_layers(cache):
        layer_class = _growing_layer(_kv_dtype(model))
        cache.layers = [layer_class() for _ in cache.layers]
    return cache


def _plain_dynamic_cache(model) -> bool:
    """Continuous batching edits the cache tensors: only for models whose every layer is a plain one."""
    try:
        from transformers import DynamicCache
        return _plain_layers(DynamicCache(config=model.config))
    except Exception:  # noqa: BLE001 - an unusual cache: use the simple path
        return False


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share (system prompt and chat markup), keeping >= 1 token each."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _decode_continuous(model, encoded: Sequence[Sequence[int]], *, batch_size: int, max_new_tokens: int,
                       eos: set[int], pad_id: int, sample: bool, temperature: float, generator,
                       stop_check, device, score: Sequence | None = None, ban=None,
                       scored: dict | None = None, progress=None) -> tuple[list[list[int]], list[str], dict]:
    """Continuous batching over all rows: a finished row leaves at once and its slot is refilled.

    The prefix every prompt shares (the system prompt and the chat markup) is run through the model
    once; each new row only prefills its own suffix on top of a copy of that prefix's KV cache.
    `score`: answer ids per row (or None); each refill's rows are scored on their prefilled cache
    before they join the batch, into `scored` (see _score).
    """
    import torch

    n_rows = len(encoded)
    prefix = _common_prefix(encoded)
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    reasons = ["length"] * n_rows
    queue = list(range(n_rows))
    queue.reverse()  # pop() from the end takes rows in the given (length-sorted) order
    prefix_kv: list[tuple] = []
    if prefix:
        cache = _new_cache(model)
        model(input_ids=torch.tensor([encoded[0][:prefix]], device=device), past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
    running = _Rows(_new_cache(model))
    stats = {"shared_prefix_tokens": prefix, "prefill_tokens": prefix, "refills": 0}
    refill_at = max(1, batch_size // 4)  # free slots that make a refill worth its prefill pass
    while queue or running:
        free = batch_size - len(running)
        if queue and (not running or free >= min(refill_at, len(queue))):
            new = [queue.pop() for _ in range(min(free, len(queue)))]
            width = max(len(encoded[r]) - prefix for r in new)
            ids = torch.full((len(new), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(new), prefix + width), dtype=torch.long)
            mask[:, :prefix] = 1
            for j, r in enumerate(new):
                suffix = encoded[r][prefix:]
                ids[j, width - len(suffix):] = torch.tensor(suffix)
                mask[j, prefix + width - len(suffix):] = 1
            ids, mask = ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix:]
            cache = _new_cache(model)
            for layer, (k, v) in zip(cache.layers, prefix_kv):
                layer.update(k.expand(len(new), -1, -1, -1), v.expand(len(new), -1, -1, -1))
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
            if score is not None:
                _score(model, cache, mask, out.logits[:, -1, :], new, score, pad_id=pad_id, scored=scored)
            running.add(new, mask, cache, out.logits[:, -1, :])
            stats["refills"] += 1
            stats["prefill_tokens"] += sum(len(encoded[r]) - prefix for r in new)
        nxt, keep = _next_tokens(running.logits, running.ids, tokens, reasons, eos=eos, stop_check=stop_check,
                                 max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                                 generator=generator, ban=ban)
        nxt = nxt[keep] if len(keep) < len(nxt) else nxt
        running.keep(keep)
        if progress is not None:
            progress(n_rows - len(queue) - len(running), n_rows, sum(len(t) for t in tokens))
        if not running:
            continue
        running.mask = torch.cat([running.mask, running.mask.new_ones((len(running), 1))], dim=1)
        positions = running.mask.sum(-1, keepdim=True) - 1
        out = model(input_ids=nxt[:, None], attention_mask=running.mask, position_ids=positions,
                    past_key_values=running.cache, use_cache=True)
        running.logits = out.logits[:, -1, :]
    return tokens, reasons, stats


class Transformers:
    """The transformers backend of decoding.complete(): rows sorted by length and decoded in
    continuous batches (`continuous`, the default: `batch_size` rows decode at all times, the
    shared system-prompt prefix is prefilled once) or fixed left-padded batches (rows still leave
    when done); greedy, or sampled at a temperature with a seeded generator.

    Hand-written rather than `model.generate`: the library's batched generation keeps every row
    of a batch decoding until the longest is done and prefills the shared prefix once per row.
    Measured (benchmarks/eval_batching.py --n-gen 16 --batch-size 16 --max-new-tokens 384, the
    SmolLM2 base in fp32, 2 cores, both stopping at end of turn or 384 tokens alone): this loop
    48.7 s, model.generate in batches of 16 82.3 s (1.69x), the same text on 16 of 16 prompts.
    Its greedy tokens equal model.generate's (tests/test_eval.py).
    """

    name = "transformers"

    def __init__(self, model, *, batch_size: int, continuous: bool = True, pad_id: int | None = None,
                 progress=None):
        self.model, self.batch_size, self.continuous, self.pad_id = model, int(batch_size), continuous, pad_id
        # progress(rows_done, rows, new_tokens): called as rows finish (decoding.Progress prints it).
        self.progress = progress

    def decode(self, rows: Sequence[Sequence[int]], policy: decoding.StopPolicy, *, temperature: float = 0.0,
               seed: int = 0, answers: Sequence[Sequence[int] | None] | None = None) -> decoding.Decoded:
        """`answers`: ids per row (or None) whose reference loss is computed on the row's prefilled
        prompt before it decodes (refloss.answer_nll); Decoded.answer_nll then holds them, and
        Decoded.seconds excludes that time (stats["reference_loss_seconds"])."""
        import torch

        model, batch_size = self.model, self.batch_size
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        eos = set(policy.eos) | (set(decoding.generation_config_eos(model)) if policy.backend_eos else set())
        pad_id = self.pad_id
        if pad_id is None:
            pad_id = getattr(model.generation_config, "pad_token_id", None)
            pad_id = pad_id if pad_id is not None else min(eos) if eos else 0
        sample = temperature > 0
        # Sorted by length so batches pad little; results go back to the caller's order.
        order = sorted(range(len(rows)), key=lambda r: (len(rows[r]), r))
        encoded = [list(rows[r]) for r in order]
        score = [answers[r] for r in order] if answers is not None else None
        scored: dict = {"nll": {}, "seconds": 0.0}
        stop_check = policy.check or (lambda toks: None)
        ban = policy.banned if policy.no_repeat_ngram else None
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed) if sample else None
        t0 = time.perf_counter()
        with torch.inference_mode(), attention.gqa_attention(model):
            if self.continuous and _plain_dynamic_cache(model):
                toks, reasons, stats = _decode_continuous(
                    model, encoded, batch_size=batch_size, max_new_tokens=policy.max_new_tokens, eos=eos,
                    pad_id=pad_id, sample=sample, temperature=temperature, generator=generator, stop_check=stop_check,
                    device=device, score=score, scored=scored, ban=ban, progress=self.progress)
                stats["mode"] = "continuous"
            else:
                toks, reasons, first_token_seconds = [], [], []
                for b in range(0, len(encoded), batch_size):
                    batch_start, marks = time.perf_counter(), []
                    chunk = encoded[b:b + batch_size]
                    width = max(len(e) for e in chunk)
                    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for r, e in enumerate(chunk):  # LEFT padding: every row ends at the last column
                        ids[r, width - len(e):] = torch.tensor(e)
                        mask[r, width - len(e):] = 1
                    t, why = _decode(model, ids.to(device), mask.to(device), max_new_tokens=policy.max_new_tokens,
                                     eos=eos, sample=sample, temperature=temperature, generator=generator,
                                     stop_check=stop_check, marks=marks, score=score, ban=ban,
                                     score_rows=range(b, b + len(chunk)), pad_id=pad_id, scored=scored)
                    toks += t
                    reasons += why
                    first_token_seconds.append(round(marks[0] - batch_start, 4))
                    if self.progress is not None:
                        self.progress(len(toks), len(encoded), sum(len(x) for x in toks))
                stats = {"mode": "static", "batches": -(-len(encoded) // batch_size),
                         "prefill_tokens": sum(len(e) for e in encoded),
                         "first_token_seconds": first_token_seconds}  # per batch
        seconds = time.perf_counter() - t0 - scored["seconds"]
        tokens: list[list[int]] = [[] for _ in rows]
        why_stopped = [""] * len(rows)
        nll: list[float | None] | None = [None] * len(rows) if score is not None else None
        for k, (r, t, reason) in enumerate(zip(order, toks, reasons)):
            tokens[r], why_stopped[r] = t, reason
            if nll is not None:
                nll[r] = scored["nll"][k]
        if score is not None:
            stats["reference_loss_seconds"] = round(scored["seconds"], 2)
        return decoding.Decoded(tokens, why_stopped, seconds, {**stats, "batch_size": batch_size}, answer_nll=nll)
