"""Scoring for the eval stage: compile, @qi compliance, executed tests, pass@k, summaries.

A completion is scored three ways:
- compiles: the TypeScript compiler finds no diagnostic in it, checked as a virtual file placed in
  the corpus project (its tsconfig `paths` resolve @qi/base and @qi/core to the corpus's own
  sources); ONE compiler program holds every completion of the eval (typecheck.check);
- compliance, on the tree-sitter AST (patterns.analyze): each required call ("a|b": either) is
  present as a call, each forbidden construct of the task is absent; score = share of these rules
  satisfied, pass = all of them. Code that is empty scores 0;
- test: compiled code + the task's test run under node in the sandbox (sandbox.py); a completion
  that does not compile is not run and fails.
pass@k uses the unbiased estimator 1 - C(n-c, k) / C(n, k) per task, averaged over tasks.
"""

from __future__ import annotations

import csv
import io as _io
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert import compliance as compliance_rules
from qi_expert import basemodel, generate, graded, npmdeps, patterns, sandbox, stats, typecheck

MAX_DIAGNOSTICS = 20
METRIC_KEYS = ("compile_rate", "compliance_rate", "compliance_score", "forbidden_rate", "test_pass_rate")


# --- compliance: compliance.py (binding-aware rules and tampering) ----------------------------------

compliance = compliance_rules.compliance


# --- pass@k ----------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: n samples, c of them correct (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


# --- scoring ---------------------------------------------------------------------------------

def compile_all(codes: Sequence[str], project: Path, tsconfig: str = "tsconfig.json", *,
                dependencies: Path | None = None, isolated: bool = True,
                try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
                ) -> tuple[list[list[dict]], dict[str, list[str]], dict]:
    """Type-check every code snippet in the corpus project: (diagnostics per snippet, the @qi
    packages' exports, info). Empty code gets one "no code" diagnostic. info["facts"] holds, per
    snippet, its @qi calls and forbidden constructs by the checker's symbols (tscheck.cjs)."""
    t0 = time.perf_counter()
    # Every snippet is a module (moduleDetection: force): two completions declaring the same
    # global name must not collide inside the shared program. (An appended `export {}` did this
    # before; a completion cut off inside a block or comment swallowed it and became a script in
    # one global scope with the others, each getting a TS2451 that another completion caused.)
    sources = {f"c{i}": code for i, code in enumerate(codes) if code.strip()}
    modules = {"moduleDetection": "force"}
    # One program for all (the batching is what makes it fast), except code that would change how
    # the others type-check (`declare global`, `declare module`): each of those in a program alone.
    alone = {k for k, v in sources.items() if compliance_rules.affects_other_files(v)}
    # (isolated: the compiler reads untrusted source, so it runs inside the sandbox too.)
    # The same program lists what the corpus's @qi packages export (graded: API validity).
    diagnostics = typecheck.check({k: v for k, v in sources.items() if k not in alone}, project, tsconfig,
                                  options=modules, exports=typecheck.QI_MODULES, isolated=isolated,
                                  dependencies=dependencies, facts=list(try_catch_allowed_in))
    facts = diagnostics.pop("__facts__", {})
    for k in sorted(alone):
        one = typecheck.check({k: sources[k]}, project, tsconfig, options=modules, isolated=isolated,
                              dependencies=dependencies, facts=list(try_catch_allowed_in))
        facts.update(one.pop("__facts__", {}))
        diagnostics.update(one)
    exports = {m: [e["name"] for e in entries or []] for m, entries in diagnostics.pop("__exports__").items()}
    per_code = [diagnostics.get(f"c{i}", []) if code.strip() else [{"code": 0, "line": 0, "message": "no code in the completion"}]
                for i, code in enumerate(codes)]
    info = {"compiled_alone": len(alone), "compile_seconds": round(time.perf_counter() - t0, 3),
            "qi_exports": {m: len(v) for m, v in exports.items()},
            "facts": [facts.get(f"c{i}") for i in range(len(codes))]}
    return per_code, exports, info


def check_code(codes: Sequence[str], *, project: Path, tsconfig: str = "tsconfig.json",
               forbidden: Iterable[str] = (), try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
               isolation: str = "bwrap") -> list[dict]:
    """Code written outside the benchmark (a served completion): compiled, the forbidden
    constructs found, the graded fields; no test to run. Same compiler program and rules as score()."""
    isolated = sandbox.isolation_mode(isolation) == "bwrap"
    allowed = tuple(try_catch_allowed_in)
    diagnostics, exports, info = compile_all(codes, project, tsconfig, isolated=isolated, try_catch_allowed_in=allowed)
    rule = {"required_calls": [], "forbidden": list(forbidden)}
    rows = []
    for code, diags, facts in zip(codes, diagnostics, info["facts"]):
        c = compliance(code, rule, allowed, facts)
        rows.append({"compiled": bool(code.strip()) and not diags, "n_compile_errors": len(diags),
                     "compile_errors": diags[:MAX_DIAGNOSTICS], "forbidden_found": c["forbidden_found"],
                     "graded": graded.grade(code, diags, exports)})
    return rows


# How a test run's verdict is reached (recorded per task in metrics/eval.json): "isolated", the
# task's test with its assertions and expected values in one sandboxed process, the completion in
# another, values crossing between them only as data (sandbox.Sandbox.run_isolated).
VERDICT = "isolated"


def score(items: Sequence[Mapping], tasks: Mapping[str, Mapping], *, project: Path, tsconfig: str = "tsconfig.json",
          timeout: float = 10, memory_mb: int = 512,
          try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
          isolation: str = "bwrap", module_format: str = "commonjs",
          dependencies: Path | None = None) -> tuple[list[dict], dict]:
    """Score completions [{model, task_id, sample, completion, prompt?, new_tokens?}].

    Returns (one result row per item, timing/set-up info). All completions share one compiler
    program and one sandbox workspace.
    """
    allowed = tuple(try_catch_allowed_in)
    info: dict = {"isolation": sandbox.isolation_mode(isolation)}  # fails closed before any work
    codes = [generate.extract_code(it["completion"] or "", tasks[it["task_id"]].get("entry")) for it in items]
    diagnostics, exports, compile_info = compile_all(codes, project, tsconfig, isolated=info["isolation"] == "bwrap",
                                                     dependencies=dependencies, try_catch_allowed_in=allowed)
    facts = compile_info.pop("facts")
    info.update(compile_info)
    rows = []
    jobs = []
    for i, (it, code) in enumerate(zip(items, codes)):
        task = tasks[it["task_id"]]
        diags = diagnostics[i]
        compiled = code.strip() != "" and not diags
        rows.append({
            "model": it["model"], "task_id": it["task_id"], "category": task["category"],
            "sample": it.get("sample", 0), "prompt": it.get("prompt", ""), "completion": it["completion"] or "",
            "code": code, "new_tokens": it.get("new_tokens"),
            "compiled": compiled, "compile_errors": diags[:MAX_DIAGNOSTICS], "n_compile_errors": len(diags),
            "compliance": None,  # below, once the test run says which @qi calls executed
            "graded": graded.grade(code, diags, exports),
            **{k: it[k] for k in ("reference_nll", "retrieved", "verify") if k in it},
        })
        if code.strip():
            # Code with type errors runs too (transpiled as it is), only to observe which @qi calls
            # its inputs execute (compliance); its verdict stays "not_compiled", never passed.
            jobs.append((i, (f"c{i}", code, task["test"])))
    t0 = time.perf_counter()
    info["module_format"] = module_format
    with sandbox.Sandbox(project, tsconfig, timeout=timeout, memory_mb=memory_mb, isolation=info["isolation"],
                         module_format=module_format, dependencies=dependencies) as sb:
        # The test runs in its own process and sandbox, the completion in another (Sandbox.run_isolated).
        results = sb.run_isolated([job for _, job in jobs])
    info["test_seconds"] = round(time.perf_counter() - t0, 3)
    info["verdict"] = VERDICT
    by_item = {i: r for (i, _), r in zip(jobs, results)}
    for i, row in enumerate(rows):
        r = by_item.get(i)
        if r is None:
            row["test"] = {"status": "not_compiled", "exit_code": None, "stdout": "", "stderr": ""}
        elif not row["compiled"]:
            row["test"] = {"status": "not_compiled", "exit_code": None, "stdout": "", "stderr": "",
                           "ran_as_transpiled": r.status, "qi_calls": r.qi_calls}
        else:
            d = r.to_dict()
            d.pop("seconds")  # keep results.jsonl reproducible
            row["test"] = {**d, "verdict": VERDICT, "qi_calls": r.qi_calls}
        # Required @qi calls count where the checker resolves them to @qi AND the judge saw them
        # run on the task's inputs (code that never ran ran none).
        row["compliance"] = compliance(row["code"], tasks[row["task_id"]], allowed, facts[i],
                                       executed=(r.qi_calls or {}) if r is not None else {})
        # A tampering completion never counts as passed, whatever its test run reported.
        row["passed"] = row["test"]["status"] == "pass" and not row["compliance"]["tampering"]
        row["forbidden_found"] = row["compliance"]["forbidden_found"]
    return rows, info


# --- summaries -------------------------------------------------------------------------------

def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def summarize(rows: Sequence[Mapping], ks: Sequence[int] = (1,)) -> dict:
    """Metrics of one model's rows: rates over completions, pass@k over tasks, per category."""
    by_task: dict[str, list[Mapping]] = defaultdict(list)
    for r in rows:
        by_task[r["task_id"]].append(r)

    def block(task_ids: Sequence[str]) -> dict:
        rs = [r for t in task_ids for r in by_task[t]]
        out = {
            "tasks": len(task_ids),
            "completions": len(rs),
            "compile_rate": _mean([float(r["compiled"]) for r in rs]),
            "compliance_rate": _mean([float(r["compliance"]["pass"]) for r in rs]),
            "compliance_score": _mean([r["compliance"]["score"] for r in rs]),
            "forbidden_rate": _mean([float(bool(r["forbidden_found"])) for r in rs]),
            "test_pass_rate": _mean([float(r["passed"]) for r in rs]),
        }
        n_min = min((len(by_task[t]) for t in task_ids), default=0)
        for k in ks:
            if 0 < k <= n_min:
                out[f"pass@{k}"] = _mean([pass_at_k(len(by_task[t]), sum(r["passed"] for r in by_task[t]), k)
                                          for t in task_ids])
        return out

    tasks = list(by_task)
    summary = block(tasks)
    cats: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        cats[by_task[t][0]["category"]].append(t)
    summary["by_category"] = {c: block(cats[c]) for c in patterns.CATEGORIES if c in cats}
    statuses: dict[str, int] = defaultdict(int)
    for r in rows:
        statuses[r["test"]["status"]] += 1
    summary["test_status"] = dict(sorted(statuses.items()))
    if all("graded" in r for r in rows):
        summary["graded"] = graded.summarize(rows)
        summary["graded"]["by_category"] = {c: {k: v for k, v in graded.summarize([r for t in cats[c] for r in by_task[t]]).items()
                                                if k not in ("invented_names", "not_imported_names")}
                                            for c in patterns.CATEGORIES if c in cats}
    return summary


def paired_comparison(a_rows: Sequence[Mapping], b_rows: Sequence[Mapping], seed: int = 0) -> dict:
    """Arm a vs arm b on the tasks both answered: stats.paired for every measure of graded.PAIRED_MEASURES.

    A task's value is the mean over its samples; tasks where a measure is undefined in either arm
    (reference loss of a task without a reference) are left out of that measure.
    """
    def per_task(rows, value):
        by_task: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            v = value(r)
            if v is not None:
                by_task[r["task_id"]].append(float(v))
        return {t: sum(v) / len(v) for t, v in by_task.items()}

    out = {}
    for name, value, binary in graded.PAIRED_MEASURES:
        if name != "pass@1" and not all("graded" in r for r in [*a_rows, *b_rows]):
            continue
        a, b = per_task(a_rows, value), per_task(b_rows, value)
        tasks = [t for t in a if t in b]
        if not tasks:
            continue
        xs, ys = [a[t] for t in tasks], [b[t] for t in tasks]
        is_binary = binary and all(v in (0.0, 1.0) for v in xs + ys)
        out[name] = stats.paired(xs, ys, binary=is_binary, seed=seed)
    return out


def comparisons(arm_names: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs an eval reports (a - b): what tuning adds, what retrieval adds, and both together."""
    wanted = [("tuned", "base"), ("base+retrieval", "base"), ("tuned+retrieval", "tuned"),
              ("tuned+retrieval", "base"), ("tuned", "base+retrieval"),
              # what checking before answering adds, on each model, and the fine-tune's share under it
              ("tuned+verify", "tuned"), ("base+verify", "base"), ("tuned+verify", "base+verify"),
              ("tuned+retrieval+verify", "tuned+retrieval")]
    return [(a, b) for a, b in wanted if a in arm_names and b in arm_names]


def deltas(tuned: Mapping, base: Mapping) -> dict:
    """tuned - base for every shared rate and pass@k, overall and per category."""
    def diff(a: Mapping, b: Mapping) -> dict:
        return {k: round(a[k] - b[k], 4) for k in a
                if k in b and (k in METRIC_KEYS or k.startswith("pass@")) and isinstance(a[k], (int, float))}

    out = diff(tuned, base)
    out["by_category"] = {c: diff(tuned["by_category"][c], base["by_category"][c])
                          for c in tuned.get("by_category", {}) if c in base.get("by_category", {})}
    return out


PLOT_COLUMNS = ("category", "model", "pass@1", "compile", "compliance", "label")


def category_table(summaries: Mapping[str, Mapping]) -> str:
    """CSV for the DVC bar plot: one row per (category, model), plus `overall`.

    `label` ("basic · tuned") is what the bar chart's axis shows, so that the base and tuned bars
    of a category stand side by side rather than on top of each other.
    """
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLOT_COLUMNS)
    cats = [c for c in patterns.CATEGORIES if any(c in s["by_category"] for s in summaries.values())]
    for cat in [*cats, "overall"]:
        for model, s in summaries.items():
            m = s if cat == "overall" else s["by_category"].get(cat)
            if m is None:
                continue
            w.writerow([cat, model, m.get("pass@1", 0.0), m["compile_rate"], m["compliance_rate"], f"{cat} · {model}"])
    return buf.getvalue()


# --- inputs ----------------------------------------------------------------------------------

def items_from_predictions(rows: Iterable[Mapping], tasks: Sequence[Mapping], model: str = "predictions") -> tuple[list[dict], dict]:
    """Predictions JSONL rows {task_id, completion[, model]} -> items for `score`.

    Several rows for one task are several samples (pass@k). A benchmark task without a prediction
    is scored as an empty completion (a failure); predictions for unknown tasks are ignored and
    counted.
    """
    known = {t["id"] for t in tasks}
    samples: dict[tuple[str, str], list[str]] = defaultdict(list)
    unknown = 0
    models: list[str] = []
    for r in rows:
        if "task_id" not in r or "completion" not in r:
            raise ValueError(f"a prediction row needs task_id and completion, got keys {sorted(r)}")
        if r["task_id"] not in known:
            unknown += 1
            continue
        m = str(r.get("model") or model)
        if m not in models:
            models.append(m)
        samples[(m, r["task_id"])].append(str(r["completion"] or ""))
    items, missing = [], 0
    for m in models or [model]:
        for t in tasks:
            completions = samples.get((m, t["id"])) or [""]
            missing += (m, t["id"]) not in samples
            for s, c in enumerate(completions):
                items.append({"model": m, "task_id": t["id"], "sample": s, "completion": c,
                              "prompt": generate.user_message(t)})
    return items, {"unknown_task_predictions": unknown, "missing_predictions": missing}


def items_from_generation(model_name: str, tasks: Sequence[Mapping], prompts: Sequence[str],
                          gen: "decoding.Generation") -> list[dict]:
    return [{"model": model_name, "task_id": t["id"], "sample": s, "completion": c, "prompt": p,
             "new_tokens": gen.new_tokens[i][s]}
            for i, (t, p) in enumerate(zip(tasks, prompts)) for s, c in enumerate(gen.completions[i])]


# --- GGUF files (the gguf stage: what quantization costs) ---------------------------------------

def run_eval(cfg, log=print) -> tuple[list[dict], dict]:
    """Generate every arm (or read predictions), score, summarize, compare: (result rows, metrics)."""
    from qi_expert import arms as arms_mod, bench, io, retrieval
    from qi_expert.config import resolve_path

    ec = cfg.eval
    t_start = time.perf_counter()
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    if ec.limit is not None:
        tasks = tasks[: int(ec.limit)]
    by_id = {t["id"]: t for t in tasks}
    ks = sorted({int(k) for k in ec.k})
    metrics: dict = {"benchmark_tasks": len(tasks)}
    timing: dict = {}
    generation: dict = {}
    if ec.predictions:
        path = resolve_path(ec.predictions)
        items, counts = items_from_predictions(io.read_jsonl(path), tasks)
        metrics.update(counts)
        metrics["mode"] = "predictions"
        log(f"eval: scoring {len(items)} predictions from {path} on {len(tasks)} tasks")
    else:
        metrics["mode"] = "model"
        arms = arms_mod.parse_arms(ec.arms, adapter=ec.adapter)  # bad arms fail before the model loads
        # A Hub id (GPU entries): transformers fetches it; else the prepared (or a local) folder.
        base = str(cfg.model.base_model) if basemodel.is_hub_id(cfg.model) else resolve_path(cfg.model.base_model)
        store = None
        if any(a.retrieval for a in arms):
            store = retrieval.Store(resolve_path(ec.retrieval.store), corpus=cfg.corpus)
        try:
            results = arms_mod.run(cfg, tasks, arms, base=base, adapter=resolve_path(ec.adapter) if ec.adapter else None,
                                   store=store, log=log)
            timing.update(results.pop("_timing"))
            if store is not None:
                metrics["retrieval"] = retrieval_report(results, tasks, cfg, store)
        finally:
            if store is not None:
                store.close()
        items = [it for r in results.values() for it in r["items"]]
        generation = {name: r["generation"] for name, r in results.items()}
    rows, info = score(items, by_id, project=resolve_path(cfg.corpus.root), tsconfig=str(cfg.corpus.tsconfig),
                       timeout=float(ec.timeout_seconds), memory_mb=int(ec.memory_mb),
                       try_catch_allowed_in=cfg.validate.try_catch_allowed_in, isolation=str(ec.sandbox),
                       module_format=sandbox.module_format(resolve_path(cfg.corpus.root), str(cfg.corpus.module_format)),
                       dependencies=npmdeps.install(resolve_path(cfg.corpus.root), log=log)
                       if cfg.corpus.install_dependencies else None)
    metrics["module_format"] = info["module_format"]
    timing.update({k: v for k, v in info.items() if k.endswith("_seconds")})
    metrics["isolation"] = info["isolation"]
    # Which verdict decided each task (every task's test runs apart from the completion today).
    metrics["verdict_by_task"] = {t["id"]: info.get("verdict", VERDICT) for t in tasks}
    if info["isolation"] != "bwrap":
        log(f"eval: WARNING: model-written code ran WITHOUT OS-level isolation ({info['isolation']}, eval.sandbox=unsafe)")
    metrics["qi_exports"] = info["qi_exports"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        metrics[m] = summarize([r for r in rows if r["model"] == m], ks)
        if m in generation:
            metrics[m]["generation"] = generation[m]
    if "base" in metrics and "tuned" in metrics:
        metrics["delta"] = deltas(metrics["tuned"], metrics["base"])
    metrics["paired"] = {f"{a} vs {b}": paired_comparison([r for r in rows if r["model"] == a],
                                                          [r for r in rows if r["model"] == b], seed=int(cfg.seed))
                         for a, b in comparisons(models)}
    no_reference = [t["id"] for t in tasks if not t.get("reference")]
    if no_reference:
        metrics["reference_loss_skipped"] = no_reference
    timing["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    metrics["timing"] = timing
    metrics["models"] = models
    return rows, metrics


def retrieval_report(results: Mapping, tasks: Sequence[Mapping], cfg, store) -> dict:
    """What the +retrieval arms were shown: sizes, and a check that no shown example copies a task."""
    from qi_expert import bench, dedup

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
