"""Which extracted records are fit to train on, and why the others are not.

Order of the checks, each record rejected for the first reason that applies:
counter-example, compile error (TypeScript, against the corpus's own @qi packages, in its file's
context), not self-contained (its training answer, the module `modules.standalone` builds, needs
more than max_dependency_lines of declarations besides the unit, or does not compile as a file of
its own), anti-pattern (on the AST), exact duplicate, near duplicate. Counter-examples are never training targets as they are; the
ones whose corrected version was accepted become "rewrite this with @qi/base" pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from qi_expert.data import dedup, modules
from qi_expert.typescript import patterns, typecheck

# TypeScript's "cannot find name" family: the snippet leans on declarations around it.
MISSING_NAME_CODES = frozenset({2304, 2305, 2552, 2339, 2307, 2503, 2694, 2724})


def check_source(rec: dict, with_support: bool) -> str:
    """The virtual file a (non-method) record is type-checked as."""
    parts = list(rec.get("imports", [])) + (rec["support"] if with_support else []) + [rec["code"]]
    # `export {}` makes every snippet a module, so top-level names never clash across snippets.
    return "\n\n".join(parts) + "\n\nexport {};\n"


def _class_source(rec: dict) -> tuple[str, str, int]:
    """(key, source, line of the class's first line) for the class a method belongs to."""
    class_text, others = rec["support"][0], rec["support"][1:]
    head = "\n\n".join(list(rec.get("imports", [])) + others + [""])
    source = head + class_text + "\n\nexport {};\n"
    key = "class_" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    return key, source, head.count("\n") + 1


TYPE_ONLY_IMPORT = 1484  # "'X' is a type and must be imported using a type-only import when 'verbatimModuleSyntax' ..."


def type_only_imports(code: str, names: set[str]) -> str:
    """`import { Result, success } from ...` -> `import { type Result, success } from ...` for `names`:
    the compiler's own quick fix for TS1484, where the corpus sets verbatimModuleSyntax."""
    def fix(m: re.Match) -> str:
        specs = m.group(2).split(",")
        for i, spec in enumerate(specs):
            words = spec.split()
            if words and words[-1] in names and words[0] != "type":
                specs[i] = spec.replace(words[0], "type " + words[0], 1)
        return m.group(1) + ",".join(specs) + m.group(3)

    return re.sub(r"(\bimport\s*\{)([^}]*)(\}\s*from\b)", fix, code)


def compile_records(records: Sequence[dict], project: Path, tsconfig: str,
                    ignore_missing_packages: bool = False, dependencies: Path | None = None,
                    fix_type_imports: bool = False) -> dict[str, dict]:
    """id -> {"compiles", "context", "diagnostics"[, "fixed"]}: two batched compiler programs at most.

    First every record with only its imports; those that fail for missing names get a second
    try with the declarations of their own file they refer to. A method is checked inside its
    class, one virtual file per class, and owns the diagnostics that fall on its own lines.
    With `fix_type_imports`, a record whose only fault may be importing a type without `type`
    (TS1484 under the corpus's verbatimModuleSyntax; tutorials often do) is tried again with the
    compiler's quick fix applied; "fixed" then holds its rewritten code and imports.
    """
    sources: dict[str, str] = {}
    method_span: dict[str, tuple[str, int, int]] = {}  # id -> (class key, first line, last line)
    for r in records:
        if r["unit"] == "method":
            key, source, class_line = _class_source(r)
            sources[key] = source
            offset = r["support"][0][: r["support"][0].find(r["code"])].count("\n")
            first = class_line + offset
            method_span[r["id"]] = (key, first, first + r["code"].count("\n"))
        else:
            sources[r["id"]] = check_source(r, False)
    places = {r["id"]: _place(r) for r in records}
    places.update({key: _place(r) for r in records if r["id"] in method_span for key in [method_span[r["id"]][0]]})
    diags = _check(sources, places, project, tsconfig, ignore_missing_packages, dependencies)

    result = {}
    for r in records:
        if r["id"] in method_span:
            key, first, last = method_span[r["id"]]
            d = [x for x in diags[key] if first <= x["line"] <= last]
        else:
            d = diags[r["id"]]
        result[r["id"]] = {"compiles": not d, "context": "imports", "diagnostics": d}
    fixed: dict[str, dict] = {}
    for r in records if fix_type_imports else ():
        names = {d["message"].split("'")[1] for d in result[r["id"]]["diagnostics"]
                 if d["code"] == TYPE_ONLY_IMPORT and d["message"].count("'") >= 2}
        if names and r["id"] not in method_span:
            fixed[r["id"]] = {"code": type_only_imports(r["code"], names),
                              "imports": [type_only_imports(i, names) for i in r.get("imports", [])]}
    retry = [{**r, **fixed.get(r["id"], {})} for r in records if r["id"] in fixed or (
        r["id"] not in method_span and result[r["id"]]["diagnostics"] and r["support"]
        and any(d["code"] in MISSING_NAME_CODES for d in result[r["id"]]["diagnostics"]))]
    if retry:
        second = _check({r["id"]: check_source(r, bool(r["support"])) for r in retry}, places, project, tsconfig,
                        ignore_missing_packages, dependencies)
        for rid, d in second.items():
            context = "file" if next(r for r in retry if r["id"] == rid)["support"] else "imports"
            if not d:
                result[rid] = {"compiles": True, "context": context, "diagnostics": []}
            else:
                # The fullest check's errors are the ones to report: the first pass's "cannot find
                # name" are what this one answered with the file's declarations. Their lines are
                # lines of that check's source (check_source with the support: context "file").
                result[rid]["diagnostics"] = d
                result[rid]["context"] = context
            if rid in fixed:
                result[rid]["fixed"] = fixed[rid]
    return result


def compile_modules(texts: dict[str, str], project: Path, tsconfig: str,
                    ignore_missing_packages: bool = False, dependencies: Path | None = None) -> dict[str, list[dict]]:
    """id -> diagnostics of each module compiled as a file of its own at the project's root (one program)."""
    diags = _check({f"module_{k}": v + "\n\nexport {};\n" for k, v in texts.items()}, {}, project, tsconfig,
                   ignore_missing_packages, dependencies)
    return {k: diags[f"module_{k}"] for k in texts}


def _place(rec: dict) -> str:
    """Where the snippet sits virtually: beside its source file, so relative imports resolve."""
    folder = rec["source_file"].rsplit("/", 1)[0] if "/" in rec["source_file"] else ""
    return folder if rec["source_file"].endswith(".ts") else ""


def _check(sources: dict[str, str], places: dict[str, str], project: Path, tsconfig: str,
           ignore_missing_packages: bool, dependencies: Path | None = None) -> dict[str, list[dict]]:
    named = {f"{places.get(k, '')}/{k}".lstrip("/"): v for k, v in sources.items()}
    out = typecheck.check(named, project, tsconfig, dependencies=dependencies)
    diags = {name.rsplit("/", 1)[-1]: d for name, d in out.items()}
    if ignore_missing_packages:
        diags = {k: [x for x in d if not _missing_package(x)] for k, d in diags.items()}
    return diags


def _missing_package(diag: dict) -> bool:
    """TS2307 for a bare npm package (not @qi, not relative) that the checkout has not installed."""
    if diag["code"] not in (2307, 7016):
        return False
    msg = diag["message"]
    spec = msg.split("'")[1] if msg.count("'") >= 2 else ""
    return bool(spec) and not spec.startswith((".", "/", "@qi/"))


def answer_builder(project: Path, tsconfig: str) -> modules.AnswerBuilder:
    """Training answers for this corpus (a corpus of @qi/base alone has no @qi/core to import from)."""
    return modules.AnswerBuilder(project, typecheck.module_exports(project, tsconfig, missing_ok=True))


def validate(records: list[dict], project: Path, tsconfig: str, cfg,
             build: modules.AnswerBuilder | None = None,
             dependencies: Path | None = None) -> tuple[list[dict], list[dict], list[dict], dict]:
    """(accepted, rejected, pairs, metrics)."""
    compiled = compile_records(records, project, tsconfig, cfg.ignore_missing_packages, dependencies,
                               fix_type_imports=bool(cfg.fix_type_imports))
    # A record the compiler's quick fix made compile is that record from here on.
    records = [{**r, **compiled[r["id"]]["fixed"]} if compiled[r["id"]].get("fixed") and compiled[r["id"]]["compiles"]
               else r for r in records]
    build = build or answer_builder(project, tsconfig)
    answers = {r["id"]: build(r) for r in records if not r["counter_example"] and compiled[r["id"]]["compiles"]}
    alone = compile_modules(answers, project, tsconfig, cfg.ignore_missing_packages, dependencies)
    rules = set(cfg.anti_patterns)
    exact_seen: dict[str, str] = {}
    near = dedup.NearDuplicateIndex(cfg.near_duplicate_threshold)
    accepted, rejected = [], []
    for rec in records:
        c = compiled[rec["id"]]
        rec = {**rec, "compiles": c["compiles"], "check_context": c["context"], "module": answers.get(rec["id"])}
        reason, detail = None, None
        if rec["counter_example"]:
            # Never a target as it is; only the input of a pair, so it need not compile.
            reason = "counter_example"
        elif not c["compiles"]:
            reason, detail = "compile_error", c["diagnostics"][:5]
        elif answers[rec["id"]].count("\n") - rec["code"].count("\n") > cfg.max_dependency_lines:
            reason = "not_self_contained:too_long"
            detail = {"module_lines": answers[rec["id"]].count("\n"), "unit_lines": rec["code"].count("\n")}
        elif alone[rec["id"]]:
            local = modules.local_imports(answers[rec["id"]])
            reason = "not_self_contained:" + ("local_import" if local else "compile_error")
            detail = {"local_imports": local} if local else alone[rec["id"]][:5]
        else:
            found = [f for f in patterns.analyze(rec["code"], cfg.try_catch_allowed_in).anti_patterns if f["rule"] in rules]
            if found:
                reason, detail = f"anti_pattern:{found[0]['rule']}", found
        if reason is None:
            toks = dedup.tokens(rec["code"])
            h = dedup.normal_form_hash(toks)
            sh = dedup.shingles(toks, cfg.shingle_size)
            if h in exact_seen:
                reason, detail = "exact_duplicate", {"of": exact_seen[h]}
            elif (m := near.match(sh)) is not None:
                reason, detail = "near_duplicate", {"of": m[0], "similarity": round(m[1], 4)}
            else:
                exact_seen[h] = rec["id"]
                near.add(rec["id"], sh)
        if reason is None:
            accepted.append(rec)
        else:
            rejected.append({**rec, "reason": reason, "detail": detail})

    accepted_ids = {r["id"]: r for r in accepted}
    pairs = [{"counter_id": r["id"], "corrected_id": r["corrected_id"], "counter_code": r["code"],
              "corrected_code": accepted_ids[r["corrected_id"]]["module"], "source_file": r["source_file"],
              "context": r["context"]}
             for r in rejected if r["reason"] == "counter_example" and r.get("corrected_id") in accepted_ids]
    checked = len(records)
    n_compiled = sum(1 for c in compiled.values() if c["compiles"])
    reasons = Counter(r["reason"].split(":")[0] for r in rejected)
    metrics = {
        "records_in": checked,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "compile_rate": round(n_compiled / checked, 4) if checked else 0.0,
        # Of the answers built from records that compile in their file: the share that compile alone.
        "self_contained_rate": round(sum(1 for d in alone.values() if not d) / len(alone), 4) if alone else 0.0,
        "compiled_with_file_context": sum(1 for c in compiled.values() if c["compiles"] and c["context"] == "file"),
        "compiled_after_type_import_fix": sum(1 for c in compiled.values() if c.get("fixed") and c["compiles"]),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "not_self_contained_by_cause": dict(sorted(Counter(r["reason"].split(":")[1] for r in rejected
                                                           if r["reason"].startswith("not_self_contained:")).items())),
        "rejected_by_anti_pattern": dict(sorted(Counter(r["reason"].split(":")[1] for r in rejected
                                                        if r["reason"].startswith("anti_pattern:")).items())),
        "counter_example_pairs": len(pairs),
        "accepted_by_kind": dict(sorted(Counter(r["source_kind"] for r in accepted).items())),
        "accepted_by_unit": dict(sorted(Counter(r["unit"] for r in accepted).items())),
        "accepted_by_type": {t: sum(1 for r in accepted if t in r["pattern_types"]) for t in patterns.PATTERN_TYPES},
    }
    return accepted, rejected, pairs, metrics


def module_refusal(code: str, diagnostics: Sequence[dict], cfg) -> dict | None:
    """Why a module that must stand alone is refused ({"reason", "detail"}), or None: it must compile
    alone (`diagnostics`, from compile_modules) and break no anti-pattern rule of `cfg`."""
    if diagnostics:
        return {"reason": "compile_error", "detail": list(diagnostics[:5])}
    rules = set(cfg.anti_patterns)
    found = [f for f in patterns.analyze(code, cfg.try_catch_allowed_in).anti_patterns if f["rule"] in rules]
    return {"reason": f"anti_pattern:{found[0]['rule']}", "detail": found} if found else None


def admit_variants(candidates: list[dict], accepted: Sequence[dict], project: Path, tsconfig: str,
                   cfg, build: modules.AnswerBuilder | None = None,
                   dependencies: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(admitted, refused) of augment.variants' candidates: the checks a corpus record passes.

    A variant's module must compile alone and break no anti-pattern rule (module_refusal); one
    whose code is an exact copy (normal form) of an accepted record or an earlier variant is
    refused. Near-duplicate detection does not apply: a variant is its parent rewritten, near it by
    design (its share is capped instead).
    """
    build = build or answer_builder(project, tsconfig)
    texts = {c["id"]: build(c) for c in candidates}
    alone = compile_modules(texts, project, tsconfig, cfg.ignore_missing_packages, dependencies)
    seen = {dedup.normal_form_hash(dedup.tokens(r["code"])) for r in accepted}
    admitted, refused = [], []
    for c in candidates:
        c = {**c, "module": texts[c["id"]], "compiles": not alone[c["id"]], "check_context": "module"}
        h = dedup.normal_form_hash(dedup.tokens(c["code"]))
        refusal = module_refusal(c["code"], alone[c["id"]], cfg)
        if refusal:
            refused.append({**c, **refusal})
        elif h in seen:
            refused.append({**c, "reason": "exact_duplicate", "detail": None})
        else:
            seen.add(h)
            admitted.append(c)
    return admitted, refused


def test_variants(variants: Sequence[dict], accepted: Sequence[dict], project: Path, tsconfig: str, cfg, *,
                  isolation: str = "bwrap", timeout: float = 10,
                  dependencies: Path | None = None, module_format: str = "commonjs") -> tuple[list[dict], list[dict], dict]:
    """(kept, refused, counts): the corpus's own test cases run against the variants they can check.

    A test case's module carries what it tests word for word (modules.standalone inlines it), so a
    variant of that unit is checked by the same module with the variant in its place
    (modules.swap_unit): compiled, then run in the eval's sandbox next to the unchanged module. A
    variant whose test does not compile, or fails where the parent's passes, is refused
    (test_compile_error, test_failed); a test that fails with the parent too checks nothing and is
    counted as unusable. Each kept variant records the test cases it passed (`tests_passed`).
    """
    from qi_expert.typescript import sandbox

    by_id = {r["id"]: r for r in accepted}
    tests = [r for r in accepted if r["unit"] == "test_case" and r.get("module")]
    plan: dict[str, list[tuple[str, str]]] = {}  # variant id -> [(test id, swapped module)]
    for v in variants:
        parent = by_id.get(v.get("parent_id", ""))
        for t in tests if parent is not None else ():
            swapped = modules.swap_unit(t["module"], parent["code"], v["code"], v["module"])
            if swapped is not None:
                plan.setdefault(v["id"], []).append((t["id"], swapped))
    counts = {"variants_with_tests": len(plan), "test_runs": 0, "unusable_tests": 0}
    if not plan:
        return list(variants), [], counts
    try:
        mode = sandbox.isolation_mode(isolation, "augment.sandbox")
    except sandbox.SandboxError as e:
        raise sandbox.SandboxError(f"augment.run_tests runs the corpus's test cases against {len(plan)} variants: {e}; "
                                   "or admit variants without running them: augment.run_tests=false") from None
    swapped = {f"{vid}_{tid}": src for vid, checks in plan.items() for tid, src in checks}
    diagnostics = compile_modules(swapped, project, tsconfig, cfg.ignore_missing_packages, dependencies)
    parents = sorted({tid for checks in plan.values() for tid, _ in checks})
    jobs = [(f"p_{tid}", "export {};\n", by_id[tid]["module"]) for tid in parents]
    jobs += [(f"v_{name}", "export {};\n", src) for name, src in swapped.items() if not diagnostics[name]]
    with sandbox.Sandbox(project, tsconfig, timeout=timeout, isolation=mode, module_format=module_format,
                         dependencies=dependencies) as sb:
        status = {name: r.status for (name, _, _), r in zip(jobs, sb.run_tests(jobs))}
    counts["test_runs"] = len(jobs)
    kept, refused = [], []
    for v in variants:
        passed, refusal = [], None
        for tid, _ in plan.get(v["id"], []):
            name = f"{v['id']}_{tid}"
            if status[f"p_{tid}"] != "pass":
                counts["unusable_tests"] += 1
            elif diagnostics[name]:
                refusal = {"reason": "test_compile_error", "detail": {"test": tid, "diagnostics": diagnostics[name][:5]}}
            elif status[f"v_{name}"] != "pass":
                refusal = {"reason": "test_failed", "detail": {"test": tid, "status": status[f"v_{name}"]}}
            else:
                passed.append(tid)
            if refusal:
                break
        if refusal:
            refused.append({**v, **refusal})
        else:
            kept.append({**v, "tests_passed": passed} if v["id"] in plan else dict(v))
    return kept, refused, counts


def admit_feedback(rows: Sequence[dict], project: Path, tsconfig: str, cfg,
                   dependencies: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(accepted, rejected) of the feedback rows with code (feedback.py): checked as a corpus
    record's module is (module_refusal). Accepted rows come out shaped like records for
    formatting.rows_from_feedback."""
    coded = [r for r in rows if r["code"]]
    alone = compile_modules({r["id"]: r["code"] for r in coded}, project, tsconfig, cfg.ignore_missing_packages,
                            dependencies)
    accepted, rejected = [], []
    for r in coded:
        refusal = module_refusal(r["code"], alone[r["id"]], cfg)
        if refusal:
            rejected.append({**r, **refusal})
        else:
            accepted.append({**r, "module": r["code"], "source_file": f"feedback/{r['request_id']}", "origin": "feedback"})
    return accepted, rejected
