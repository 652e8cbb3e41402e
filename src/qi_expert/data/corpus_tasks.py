"""The corpus's own tests as a second benchmark: units of the @qi packages that a corpus test calls.

A task is a function, arrow function or class a @qi package exports, with every accepted test case
of the corpus that imports it from that package and uses it:

- the prompt is the unit's instruction and signature, written from its JSDoc and name as the
  training rows are (formatting.instruction_for), in the hand-written benchmark's shape (bench.py),
  so the eval prompts, generates and scores both benchmarks the same way;
- the verdict is those test cases, merged into one test module whose import of the unit comes from
  the completion (`./solution`) and everything else from the package as it is, run by the eval's
  isolated runner (Sandbox.run_isolated): the test in the judge's process, the completion in its
  own. The judge serves the completion the package without the unit (`withheld`), and a run in
  which the completion calls the package's own unit anyway fails (scoring.py);
- the reference is the unit's stand-alone module (what validate compiled); required_calls are the
  @qi functions the reference called while its tests ran (the judge counts them), so compliance
  asks of a completion what the corpus's own code does on those inputs.

Methods are not tasks: the unit's place is inside a class the test constructs from the package.

validate builds the candidates and runs each reference and a stub that returns nothing against its
tests (`checked`): a test that fails with the corpus's own code, or passes without it, checks
nothing. format holds a seeded share of them out by file (`hold_out`) and keeps every row derived
from a held-out unit out of training (`derived_ids`).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Mapping, Sequence

from qi_expert.data import formatting, modules
from qi_expert.typescript import patterns, tsast

UNITS = ("function", "arrow_function", "class")
SOLUTION = "./solution"


def _rewire(test_module: str, name: str, package: str) -> tuple[list[str], str] | None:
    """(import statements, body) of a test case's module with `name` imported from the completion
    instead of `package`; None when the module does not import `name` from `package` as a value, or
    does not use it."""
    statements, body = modules._split_imports(test_module)
    out, local = [], None
    for st in statements:
        source, specs, others, type_only = modules._specifiers(st)
        hit = [s for s in specs if s[0] == name and not s[2]] if source == package and not type_only else []
        if not hit:
            out.append(st)
            continue
        local = hit[0][1]
        rest = [s for s in specs if s is not hit[0]]
        if others:  # `import base, { map } from ...`: not a shape the corpus's modules have; leave it
            return None
        if rest:
            kind = "import type" if type_only else "import"
            out.append(f'{kind} {{ {", ".join(modules._specifier_text(*s) for s in rest)} }} from "{source}";')
    if local is None or local not in tsast.referenced_names(tsast.parse(body).root_node):
        return None
    out.append(f'import {{ {modules._specifier_text(name, local, False)} }} from "{SOLUTION}";')
    return out, body


def _unexported(body: str) -> str:
    """A test module's body with its own exports dropped (`export const X` -> `const X`): it is run,
    not imported, and a block (below) cannot hold an export."""
    root = tsast.parse(body).root_node
    data = body.encode("utf-8")
    out, at = bytearray(), 0
    for c in root.children:
        if c.type != "export_statement":
            continue
        decl = c.child_by_field_name("declaration")
        out += data[at:c.start_byte] + (tsast.text(decl).encode("utf-8") if decl is not None else b"")
        at = c.end_byte
    return (out + data[at:]).decode("utf-8")


def _merge(parts: Sequence[tuple[list[str], str]]) -> str | None:
    """One test module from several test cases' (imports, body): the imports united per module, each
    body in a block of its own (their local declarations may share names). None when two of them
    bind one local name differently."""
    named: dict[str, dict[str, tuple[str, bool]]] = {}  # module -> local -> (imported name, type-only)
    whole: list[str] = []
    for statements, _ in parts:
        for st in statements:
            source, specs, others, type_only = modules._specifiers(st)
            if others:
                if st not in whole:
                    whole.append(st)
                continue
            for name, local, spec_type in specs:
                bound = named.setdefault(source, {}).get(local)
                entry = (name, type_only or spec_type)
                if bound is not None and bound[0] != name:
                    return None
                if bound is None or (bound[1] and not entry[1]):  # a value import wins over a type one
                    named[source][local] = entry
    locals_ = [local for specs in named.values() for local in specs]
    if len(locals_) != len(set(locals_)):
        return None  # one local name from two modules
    lines = whole + [f'import {{ {", ".join(modules._specifier_text(n, l, t) for l, (n, t) in specs.items())} }} from "{m}";'
                     for m, specs in named.items()]
    bodies = [_unexported(body).strip() for _, body in parts]
    block = bodies[0] if len(bodies) == 1 else "\n\n".join("{\n" + b + "\n}" for b in bodies)
    return "\n".join(lines) + "\n\n" + block + "\n"


def _exported(module: str, name: str) -> str:
    """The reference module with `name` exported (a unit the package re-exports from an index may
    be declared without `export` in its own file)."""
    root = tsast.parse(module).root_node
    for c in root.children:
        if c.type == "export_statement" and name in tsast.declared_names(c):
            return module
    return module.rstrip() + f"\n\nexport {{ {name} }};\n"


def _task_id(rec: Mapping) -> str:
    stem = re.sub(r"\.(m|c)?tsx?$", "", rec["source_file"])
    return "corpus-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{stem}-{rec['name']}").strip("-").lower()


def candidates(accepted: Sequence[Mapping], qi_files: Mapping[tuple[str, str], str],
               forbidden: Sequence[str]) -> tuple[list[dict], dict]:
    """(tasks, counts): every exported unit of the @qi packages that an accepted test case uses.

    `qi_files` ({(declaring file, name): package}, modules.qi_export_files) says which package
    exports a unit; a test case uses it when its module imports that name from that package.
    The tasks are not checked yet (`checked` runs them)."""
    tests = [r for r in accepted if r["unit"] == "test_case" and r.get("module")]
    counts: Counter = Counter()
    tasks, seen = [], set()
    for rec in accepted:
        if rec.get("source_kind") != "implementation" or rec["unit"] not in UNITS or rec.get("counter_example") \
                or not rec.get("name") or not rec.get("module"):
            continue
        package = qi_files.get((rec["source_file"], rec["name"]))
        if package is None:
            counts["not_exported"] += 1
            continue
        parts, test_ids = [], []
        for t in tests:
            rewired = _rewire(t["module"], rec["name"], package)
            if rewired is not None:
                parts.append(rewired)
                test_ids.append(t["id"])
        if not parts:
            counts["no_test_case"] += 1
            continue
        test = _merge(parts)
        if test is None:
            counts["tests_not_mergeable"] += 1
            continue
        tid = _task_id(rec)
        if tid in seen:
            counts["duplicate_id"] += 1
            continue
        seen.add(tid)
        ctx = rec.get("context", {})
        signature = " ".join(str(ctx.get("signature") or rec["name"]).split())
        tasks.append({
            "id": tid, "category": rec.get("category", "intermediate"), "pattern_types": list(rec.get("pattern_types", [])),
            "instruction": formatting.instruction_for(rec)[0],
            "signature": signature if signature.startswith("export ") else f"export {signature}",
            "entry": rec["name"], "required_calls": [], "forbidden": list(forbidden),
            "reference": _exported(rec["module"], rec["name"]), "test": test,
            "withheld": {package: [rec["name"]]},
            "source_file": rec["source_file"], "record_id": rec["id"], "test_ids": test_ids,
            "_cases": parts,  # (for `checked`, which drops it: the test cases one by one)
        })
    counts["candidates"] = len(tasks)
    return tasks, dict(sorted(counts.items()))


def _stub(task: Mapping) -> str:
    """A solution that declares the unit and does nothing: a test it passes checks nothing."""
    if re.match(r"export\s+(abstract\s+)?class\b", task["signature"]):
        return f"export class {task['entry']} {{}}\n"
    return f"export const {task['entry']}: any = (..._args: any[]): any => undefined;\n"


def checked(tasks: Sequence[dict], sb) -> tuple[list[dict], dict]:
    """(usable tasks, counts): each reference and a do-nothing stub run against the task's test in
    `sb` (a typescript.sandbox.Sandbox, the eval's isolated runner). A task is usable when its
    reference passes and the stub fails; its required_calls become the @qi functions the reference
    called (other than the unit itself) while the test ran.

    A merged test the reference fails is tried case by case: the cases the reference passes alone
    become the task's test (one case that waits for a timer the stand-in vitest never fires would
    otherwise time the whole task out), as many as fit half the sandbox's time limit together, and
    the task is checked again with them."""
    results = _run_pairs(tasks, sb)
    retry, retried = [], {}
    for i, t in enumerate(tasks):
        if results[i][0].status != "pass" and len(t.get("_cases", ())) > 1:
            retry.append(i)
    if retry:
        # (The first job times a test with no case: the start-up every run pays.)
        jobs = [("empty", tasks[retry[0]]["reference"], "export {};\n", tasks[retry[0]]["withheld"])]
        jobs += [(f"c{i}-{k}", tasks[i]["reference"], _merge([case]), tasks[i]["withheld"])
                 for i in retry for k, case in enumerate(tasks[i]["_cases"])]
        empty, *runs = sb.run_isolated(jobs)
        alone = iter(runs)
        for i in retry:
            cases = tasks[i]["_cases"]
            kept = _within(cases, [next(alone) for _ in cases], start=empty.seconds, budget=sb.timeout / 2)
            if kept:
                retried[i] = {**tasks[i], "test": _merge(kept), "cases_dropped": len(tasks[i]["_cases"]) - len(kept)}
        again = _run_pairs(list(retried.values()), sb, round_="again-")
        results = list(results)
        for i, pair in zip(retried, again):
            results[i] = pair
    usable, counts = [], Counter()
    for i, t in enumerate(tasks):
        t = {k: v for k, v in retried.get(i, t).items() if k != "_cases"}
        ref, stub = results[i]
        if ref.status != "pass":
            counts["reference_fails"] += 1
        elif stub.status == "pass":
            counts["passes_without_the_unit"] += 1
        else:
            if t.get("cases_dropped"):
                counts["usable_with_cases_dropped"] += 1
                counts["cases_dropped"] += t["cases_dropped"]
            calls = {k: v for k, v in (ref.qi_calls or {}).items() if k != t["entry"] and not k.startswith("qi-eval:")}
            usable.append({**t, "required_calls": sorted(_functions(calls, t["reference"]))})
    counts["usable"] = len(usable)
    return usable, dict(sorted(counts.items()))


def _within(cases: Sequence, runs: Sequence, *, start: float, budget: float) -> list:
    """The cases whose run passed alone, the quickest first while their time beyond start-up adds up
    to `budget` at most, in their order. A unit's property tests can pass one by one and still take
    20-37 s merged (qi-v2-qicore's `success`, `failure`, `flatMap`, `create`: every @qi call crosses
    to the judge), past the limit the eval gives a completion."""
    kept, spent = [], 0.0
    for k in sorted(range(len(cases)), key=lambda k: runs[k].seconds):
        cost = max(0.0, runs[k].seconds - start)
        if runs[k].status == "pass" and spent + cost <= budget:
            kept.append(k)
            spent += cost
    return [cases[k] for k in sorted(kept)]


def _run_pairs(tasks: Sequence[Mapping], sb, round_: str = "") -> list[tuple]:
    """[(the reference's run, the stub's run)] per task, against the task's test (`round_` names the
    run folders apart from an earlier round's in the same sandbox)."""
    jobs = []
    for i, t in enumerate(tasks):
        jobs.append((f"{round_}r{i}", t["reference"], t["test"], t["withheld"]))
        jobs.append((f"{round_}s{i}", _stub(t), t["test"], t["withheld"]))
    results = sb.run_isolated(jobs) if jobs else []
    return [(results[2 * i], results[2 * i + 1]) for i in range(len(tasks))]


def _functions(calls: Mapping[str, int], reference: str) -> set[str]:
    """The called @qi names the reference imports itself (a method the judge counted by its key is
    not something a completion has to name)."""
    bound, _ = patterns.qi_bindings(tsast.parse(reference).root_node)
    imported = {name for _, name in bound.values()}
    # Functions only: a class the judge counted when the reference constructed it is not a call
    # the compliance rules look for.
    return {name for name in calls if name in imported and not name[:1].isupper()}


def hold_out(tasks: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """The tasks of a seeded share of their source files (at least one file when there are tasks):
    a file's units are held out together, as format splits rows by file."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"format.corpus_bench.holdout_fraction must be in [0, 1], got {fraction}")
    files = sorted({t["source_file"] for t in tasks})
    random.Random(f"corpus-bench:{seed}").shuffle(files)
    chosen = set(files[: max(1 if files and fraction > 0 else 0, math.ceil(fraction * len(files)))])
    return [t for t in tasks if t["source_file"] in chosen]


def derived_ids(held: Sequence[Mapping], records: Sequence[Mapping]) -> set[str]:
    """Ids of the records a held-out task's answer could be learned from: the unit's own record,
    the test cases that are its verdict, and the variants rewritten from the unit (augment.py)."""
    ids = {t["record_id"] for t in held} | {i for t in held for i in t["test_ids"]}
    return ids | {r["id"] for r in records if r.get("parent_id") in ids}


def benchmark_task(task: Mapping) -> dict:
    """A held-out task as the benchmark file holds it (bench.REQUIRED_KEYS plus reference, withheld
    and where it came from)."""
    keys = ("id", "category", "pattern_types", "instruction", "signature", "entry", "required_calls", "forbidden",
            "reference", "test", "withheld", "source_file", "test_ids")
    return {k: task[k] for k in keys}
