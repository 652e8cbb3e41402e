"""Scoring for the eval stage: compile, @qi compliance, executed tests (summary.py turns the rows into rates).

A completion is scored three ways:
- compiles: the TypeScript compiler finds no diagnostic in it, checked as a virtual file placed in
  the corpus project (its tsconfig `paths` resolve @qi/base and @qi/core to the corpus's own
  sources); ONE compiler program holds every completion of the eval (typecheck.check);
- compliance, on the tree-sitter AST (patterns.analyze): each required call ("a|b": either) is
  present as a call, each forbidden construct of the task is absent; score = share of these rules
  satisfied, pass = all of them. Code that is empty scores 0;
- test: compiled code + the task's test run under node in the sandbox (sandbox.py); a completion
  that does not compile is not run and fails.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from qi_expert.data import prompting
from qi_expert.evaluation import compliance as compliance_rules
from qi_expert.evaluation import graded
from qi_expert.typescript import patterns, sandbox, typecheck

if TYPE_CHECKING:
    from qi_expert.generation import decoding

MAX_DIAGNOSTICS = 20


# --- compliance: compliance.py (binding-aware rules and tampering) ----------------------------------

compliance = compliance_rules.compliance


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
    codes = [prompting.extract_code(it["completion"] or "", tasks[it["task_id"]].get("entry")) for it in items]
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
            jobs.append((i, (f"c{i}", code, task["test"], task.get("withheld"))))
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
        # A corpus task's completion that called the package's own unit (withheld from it) did not write it.
        if r is not None and (r.qi_calls or {}).get(sandbox.Sandbox.WITHHELD_CALL):
            row["test"]["status"], row["test"]["withheld_called"] = "fail", True
        # A tampering completion never counts as passed, whatever its test run reported.
        row["passed"] = row["test"]["status"] == "pass" and not row["compliance"]["tampering"]
        row["forbidden_found"] = row["compliance"]["forbidden_found"]
    return rows, info


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
                              "prompt": prompting.user_message(t)})
    return items, {"unknown_task_predictions": unknown, "missing_predictions": missing}


def items_from_generation(model_name: str, tasks: Sequence[Mapping], prompts: Sequence[str],
                          gen: "decoding.Generation") -> list[dict]:
    return [{"model": model_name, "task_id": t["id"], "sample": s, "completion": c, "prompt": p,
             "new_tokens": gen.new_tokens[i][s]}
            for i, (t, p) in enumerate(zip(tasks, prompts)) for s, c in enumerate(gen.completions[i])]
