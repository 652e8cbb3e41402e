"""Eval arms: which model answers, with or without retrieved context, all through one generation path.

An arm is a name from `eval.arms`: `base` (the base model), `tuned` (base + the train stage's
adapter), and either with `+retrieval` (the pattern store's nearest @qi API entries and training
examples put before the task), `+verify` (candidates checked before one is the answer: verify.py)
and `+names` (decoding constrained to the @qi names the packages export: generation/qi_names.py). Every arm answers the same tasks through the one generation path
(decoding.complete on the transformers backend, under the eval's StopPolicy), so their differences
are the model's and the context's alone; arms of one model share one loaded model (the adapter is
merged once, after the base arms).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from qi_expert.core import gencache
from qi_expert.data import prompting, retrieval
from qi_expert.generation import basemodel, decoding, models, qi_names, refloss, transformers_backend

MODELS = ("base", "tuned")
RETRIEVAL = "retrieval"
VERIFY = "verify"
NAMES = "names"


@dataclass(frozen=True)
class Arm:
    name: str
    model: str  # base | tuned
    retrieval: bool
    verify: bool = False  # candidates checked by the compiler and the rules before one is the answer
    names: bool = False  # decoding may write only @qi names the packages export (qi_names.py)


def parse_arms(names: Sequence[str], *, adapter) -> list[Arm]:
    """eval.arms -> Arms (base arms first, then tuned); a clear error for anything else."""
    arms = []
    for raw in names:
        name = str(raw)
        model, *extras = name.split("+")
        if model not in MODELS or any(e not in (RETRIEVAL, VERIFY, NAMES) for e in extras) or len(set(extras)) != len(extras):
            raise ValueError(f"eval.arms: unknown arm {name!r}; arms are {', '.join(MODELS)}, "
                             f"optionally with +{RETRIEVAL}, +{VERIFY} and/or +{NAMES} (e.g. tuned+{RETRIEVAL}+{VERIFY})")
        if model == "tuned" and not adapter:
            raise ValueError(f"eval.arms has {name!r} but eval.adapter is null: drop the tuned arms or set the adapter")
        arms.append(Arm(name, model, RETRIEVAL in extras, VERIFY in extras, NAMES in extras))
    if len({a.name for a in arms}) != len(arms):
        raise ValueError(f"eval.arms names an arm twice: {list(names)}")
    return sorted(arms, key=lambda a: MODELS.index(a.model))


def contexts(store: retrieval.Store, tasks: Sequence[dict], rc) -> tuple[list[str], list[list[dict]]]:
    """The retrieved block for each task (queried with its instruction and signature)."""
    blocks, hits = [], []
    for t in tasks:
        block, used = store.context(f"{t['instruction']} {t['signature']}", examples=int(rc.examples),
                                    api=int(rc.api), max_chars=int(rc.max_chars))
        blocks.append(block)
        hits.append(used)
    return blocks, hits


def run(cfg, tasks: Sequence[dict], arms: Sequence[Arm], *, base: Path | str, adapter: Path | None,
        store: retrieval.Store | None, log=print) -> dict:
    """Generate every arm's completions (and reference losses); returns per-arm results.

    {arm name: {"items": [...], "generation": {...}, "reference_nll": [...] or None,
                "retrieved": [[hits], ...] or None}}, plus "_timing".
    """
    ec = cfg.eval
    timing: dict = {}
    t0 = time.perf_counter()
    model, tokenizer = models.load_model(base, requires_cuda=bool(cfg.model.requires_cuda), bf16=bool(cfg.model.bf16))
    timing["load_seconds"] = round(time.perf_counter() - t0, 2)
    blocks, hits = (contexts(store, tasks, ec.retrieval) if store is not None else ([""] * len(tasks), None))
    from qi_expert.data import bench

    budget = bench.token_budget(ec.max_new_tokens, list(tasks), tokenizer, float(ec.budget_quantile))
    timing["max_new_tokens"] = budget
    settings = {"max_new_tokens": budget, "batch_size": int(ec.batch_size),
                **({"no_repeat_ngram": int(ec.no_repeat_ngram)} if int(ec.no_repeat_ngram) else {}),
                "n_samples": int(ec.n_samples), "temperature": float(ec.temperature), "seed": int(cfg.seed)}
    base_folder = Path(base) if isinstance(base, Path) else None
    # Decoding precision on CPU (eval.cpu_precision): bf16 where the CPU has it, on a copy of the
    # fp32 model (the adapter is merged into the fp32 weights). The reference loss is scored by the
    # same decoding model on its own prefill of each prompt (refloss.answer_nll).
    precision = basemodel.cpu_precision(str(ec.get("cpu_precision", "fp32")), "eval.cpu_precision")
    # The +names arms' constraint: the corpus's @qi export lists, as the compiler resolves them.
    names = _qi_names(cfg, tokenizer) if any(a.names for a in arms) else None
    out: dict = {}
    current = "base"
    decoder = None
    for arm in arms:
        if arm.model == "tuned" and current != "tuned":
            t0 = time.perf_counter()
            model = models.apply_adapter(model, adapter, merge=True)
            timing["adapter_seconds"] = round(time.perf_counter() - t0, 2)
            current, decoder = "tuned", None
        if decoder is None:
            decoder = models.generation_model(model, precision)
        context = blocks if arm.retrieval else [""] * len(tasks)
        messages = [prompting.chat_messages(t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        prompts = [prompting.render_prompt(tokenizer, t, cfg.format.system_prompt, c) for t, c in zip(tasks, context)]
        cache = bool(ec.cache) and base_folder is not None
        folders = [base_folder, *([adapter] if arm.model == "tuned" else [])]
        answers = ([refloss.answer_text(tokenizer, m, p, t["reference"]) if t.get("reference") else None
                    for m, p, t in zip(messages, prompts, tasks)] if ec.reference_loss else None)
        constraint = names if arm.names else None
        gen = _generate_cached(decoder, tokenizer, prompts, settings, answers=answers, cache=cache, folders=folders,
                               precision=precision, progress=decoding.Progress(f"eval: {arm.name}", log=log), names=constraint)
        info = {"seconds": round(gen.seconds, 2), "new_tokens": gen.total_new_tokens,
                "tokens_per_second": round(gen.tokens_per_second, 2),
                "precision": precision,
                "hit_max_new_tokens": sum(n >= settings["max_new_tokens"] for ns in gen.new_tokens for n in ns),
                "prompt_tokens_mean": round(sum(len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                                for p in prompts) / max(1, len(prompts)), 1),
                **gen.stats}
        log(f"eval: {arm.name}: {gen.stats['rows']} completions, {gen.total_new_tokens} new tokens in "
            f"{gen.seconds:.1f}s ({gen.tokens_per_second:.1f} tokens/s){' (cached)' if gen.stats.get('cached') else ''}")
        nll = gen.answer_nll
        if answers is not None:  # scored with the generation (its `cached` and `precision` hold for both)
            timing[f"reference_loss_seconds.{arm.name}"] = gen.stats.get("reference_loss_seconds")
        if arm.verify:
            gen, info["verify"] = _verified(decoder, tokenizer, tasks, messages, prompts, gen, settings, cfg,
                                            cache=cache, folders=folders, precision=precision, log=log, names=constraint)
        items = [{"model": arm.name, "task_id": t["id"], "sample": s, "completion": c, "prompt": p,
                  "new_tokens": gen.new_tokens[i][s], "reference_nll": nll[i] if nll else None,
                  **({"retrieved": hits[i]} if arm.retrieval and hits else {}),
                  **({"verify": info["verify"]["per_task"][i]} if arm.verify else {})}
                 for i, (t, p) in enumerate(zip(tasks, prompts)) for s, c in enumerate(gen.completions[i])]
        if arm.verify:
            del info["verify"]["per_task"]
        out[arm.name] = {"items": items, "generation": info}
    del model, decoder
    out["_timing"] = timing
    return out


def _verified(decoder, tokenizer, tasks: Sequence[dict], messages: list[list[dict]], prompts: list[str],
              greedy: decoding.Generation, settings: dict, cfg, *, cache: bool, folders: list, precision: str,
              log=print, names: qi_names.QiNames | None = None) -> tuple[decoding.Generation, dict]:
    """A verified arm's answers: the greedy completion, then for the tasks it does not settle
    eval.verify.n - 1 seeded samples, then up to eval.verify.rounds repair turns; every candidate is
    judged by verify.check (the compiler and the rules, never the task's test) and the first that
    passes is the answer (else the one with the fewest problems). Returns the answers (one per task)
    and their cost: per task, and a curve of the static figures against the tokens spent."""
    from qi_expert.core.config import resolve_path
    from qi_expert.evaluation import verify
    from qi_expert.typescript import npmdeps, sandbox

    vc = cfg.eval.verify
    n, rounds = int(vc.n), int(vc.rounds)
    project = resolve_path(cfg.corpus.root)
    deps = npmdeps.install(project, log=lambda *_: None) if cfg.corpus.install_dependencies else None
    isolated = sandbox.isolation_mode(str(cfg.eval.sandbox)) == "bwrap"
    entries = [t.get("entry") for t in tasks]

    def judge(texts: list[str], which: list[int]) -> list[dict]:
        return verify.check([prompting.extract_code(c, entries[i]) for c, i in zip(texts, which)], project=project,
                            tsconfig=str(cfg.corpus.tsconfig), try_catch_allowed_in=cfg.validate.try_catch_allowed_in,
                            isolated=isolated, dependencies=deps)

    def add(gen: decoding.Generation, which: list[int], stage: str) -> None:
        texts = [c for cs in gen.completions for c in cs]
        owners = [i for i, cs in zip(which, gen.completions) for _ in cs]
        counts = [n_ for ns in gen.new_tokens for n_ in ns]
        for i, text, v, n_tok in zip(owners, texts, judge(texts, owners), counts):
            candidates[i].append(text)
            verdicts[i].append(v)
            spent[i]["tokens"] += n_tok
            spent[i]["seconds"] += gen.seconds * n_tok / max(1, gen.total_new_tokens)
        curve.append(point(stage))

    def point(stage: str) -> dict:
        chosen = [verdicts[i][verify.choose(verdicts[i])] for i in range(len(tasks))]
        return {"after": stage, "tokens_per_task": round(sum(s["tokens"] for s in spent) / len(tasks), 1),
                "compiles": round(sum(c["compiled"] for c in chosen) / len(tasks), 4),
                "checks_pass": round(sum(c["ok"] for c in chosen) / len(tasks), 4)}

    candidates: list[list[str]] = [[] for _ in tasks]
    verdicts: list[list[dict]] = [[] for _ in tasks]
    spent = [{"tokens": 0, "seconds": 0.0, "rounds": 0} for _ in tasks]
    curve: list[dict] = []
    add(greedy, list(range(len(tasks))), "greedy")
    open_ = [i for i in range(len(tasks)) if not verdicts[i][0]["ok"]]
    if n > 1 and open_:
        sampled = _generate_cached(decoder, tokenizer, [prompts[i] for i in open_],
                                   {**settings, "n_samples": n - 1, "temperature": float(vc.temperature)},
                                   answers=None, cache=cache, folders=folders, precision=precision,
                                   progress=decoding.Progress(f"eval: verify: {n - 1} samples a task", log=log), names=names)
        add(sampled, open_, f"{n} candidates")
    for r in range(rounds):
        open_ = [i for i in range(len(tasks)) if not any(v["ok"] for v in verdicts[i])]
        if not open_:
            break
        turns = []
        for i in open_:
            best = verify.choose(verdicts[i])
            turns.append(tokenizer.apply_chat_template(
                messages[i] + verify.repair_turn(candidates[i][best], verdicts[i][best], entries[i]),
                tokenize=False, add_generation_prompt=True))
            spent[i]["rounds"] += 1
        repaired = _generate_cached(decoder, tokenizer, turns, {**settings, "n_samples": 1}, answers=None, cache=cache,
                                    folders=folders, precision=precision,
                                    progress=decoding.Progress(f"eval: verify: repair round {r + 1}", log=log), names=names)
        add(repaired, open_, f"repair round {r + 1}")
    picks = [verify.choose(v) for v in verdicts]
    answers = [[candidates[i][k]] for i, k in enumerate(picks)]
    new_tokens = [[spent[i]["tokens"]] for i in range(len(tasks))]
    seconds = sum(s["seconds"] for s in spent)
    # Per task what is reproducible (the result rows are byte-identical across reruns); the seconds,
    # which are not, only as the mean in the metrics.
    per_task = [{"candidates": len(candidates[i]), "rounds": spent[i]["rounds"], "tokens": spent[i]["tokens"],
                 "chosen": picks[i], "checks_pass": verdicts[i][picks[i]]["ok"]}
                for i in range(len(tasks))]
    cost = {"n": n, "rounds": rounds, "temperature": float(vc.temperature),
            "candidates_per_task": round(sum(p["candidates"] for p in per_task) / len(tasks), 2),
            "rounds_per_task": round(sum(p["rounds"] for p in per_task) / len(tasks), 2),
            "tokens_per_task": round(sum(p["tokens"] for p in per_task) / len(tasks), 1),
            "seconds_per_task": round(seconds / len(tasks), 2), "curve": curve, "per_task": per_task}
    log(f"eval: verify: {cost['candidates_per_task']} candidates and {cost['rounds_per_task']} repair rounds a task, "
        f"{cost['tokens_per_task']} tokens, {cost['seconds_per_task']} s; the checks pass for "
        f"{sum(p['checks_pass'] for p in per_task)} of {len(tasks)}")
    return decoding.Generation(answers, new_tokens, seconds, {**greedy.stats, "verified": True}), cost


def _qi_names(cfg, tokenizer) -> qi_names.QiNames:
    from qi_expert.core.config import resolve_path
    from qi_expert.typescript import typecheck

    exports = typecheck.module_exports(resolve_path(cfg.corpus.root), str(cfg.corpus.tsconfig))
    return qi_names.QiNames(tokenizer, {m: [e["name"] for e in entries or []] for m, entries in exports.items()})


def _generate_cached(model, tokenizer, prompts: list[str], settings: dict, *, answers: list | None, cache: bool,
                     folders: list, precision: str, progress=None, names: qi_names.QiNames | None = None) -> decoding.Generation:
    """decoding.complete on the transformers backend (with the answers' reference loss), cached by
    content: the base arms' completions and losses do not change across a sweep. `names`: the @qi
    names constraint (its export lists and code are then part of the key)."""
    if names is not None:
        settings = {**settings, "qi_names": f"{names.digest}:{qi_names.code_digest()}"}
    scoring = {"reference_answers": list(answers)} if answers is not None else {}
    key = gencache.key([Path(f) for f in folders], prompts, {**settings, "precision": precision, **scoring}) if cache else None
    hit = gencache.load(key) if key else None
    if hit is not None:
        return decoding.Generation(hit["completions"], hit["new_tokens"], hit["seconds"], {**hit["stats"], "cached": True},
                                   answer_nll=hit.get("answer_nll"))
    policy = decoding.StopPolicy.eval(tokenizer, settings["max_new_tokens"], model=model,
                                      no_repeat_ngram=settings.get("no_repeat_ngram", 0))
    if names is not None:
        policy = qi_names.NamesPolicy(policy.max_new_tokens, policy.eos, policy.check, policy.backend_eos,
                                      policy.no_repeat_ngram, names=names)
    backend = transformers_backend.Transformers(model, batch_size=settings["batch_size"], pad_id=tokenizer.pad_token_id,
                                                progress=progress)
    gen = decoding.complete(backend, tokenizer, prompts, policy, n_samples=settings["n_samples"],
                            temperature=settings["temperature"], seed=settings["seed"], answers=answers)
    if key:
        gencache.store(key, {"completions": gen.completions, "new_tokens": gen.new_tokens,
                             "seconds": gen.seconds, "stats": gen.stats, "answer_nll": gen.answer_nll})
    gen.stats["cached"] = False
    return gen


def retrieval_report(results: Mapping, tasks: Sequence[Mapping], cfg, store) -> dict:
    """What the +retrieval arms were shown: sizes, and a check that no shown example copies a task."""
    from qi_expert.data import bench, dedup

    is_copy = dedup.copy_detector(bench.contamination_sources(list(tasks)), float(cfg.format.decontaminate_threshold),
                                  int(cfg.validate.shingle_size))
    shown = [it["retrieved"] for r in results.values() for it in r["items"] if "retrieved" in it]
    examples = store.texts({h["id"] for hits in shown for h in hits if not h["module"]})
    copies = sorted(name for name, text in examples.values() if is_copy(text))
    if copies:  # the index stage drops them; a store built some other way must not leak answers
        raise RuntimeError(f"retrieval showed copies of benchmark code ({copies}): rebuild the store (`dvc repro index`)")
    n = max(1, len(shown))
    return {"store_sha256": store.manifest.get("store_sha256"), "api_entries": store.manifest.get("api_entries"),
            "examples_in_store": store.manifest.get("examples"), "distinct_examples_shown": len(examples),
            "contaminated_examples_shown": len(copies),
            "api_per_task": round(sum(sum(1 for h in hits if h["module"]) for hits in shown) / n, 2),
            "examples_per_task": round(sum(sum(1 for h in hits if not h["module"]) for hits in shown) / n, 2)}
