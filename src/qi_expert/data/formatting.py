"""Training rows from validated records: instructions from each record's own context.

An instruction is written from what the corpus says about the code (its JSDoc, the tutorial
heading and prose before it, the demo's README, the name and signature), so rows differ the
way the code does, rather than one fixed sentence per pattern type.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Iterable, Sequence

from qi_expert.data import dedup
from qi_expert.typescript import patterns, tsast

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

_PATTERN_PHRASES = {
    "result_creation": "returns Result values with success/failure",
    "error_handling": "reports failures as categorised QiError values",
    "functional_composition": "composes Results with map/flatMap/match",
    "config_management": "reads configuration through @qi/core",
    "logger_integration": "logs through the @qi/core logger",
    "cache_patterns": "uses the @qi/core cache",
    "factory_functions": "is a factory returning Result",
    "integration_patterns": "ties @qi/base and @qi/core together",
}


def words(identifier: str) -> str:
    """validateOHLCVBar -> "validate OHLCV bar" (a name read as the words it is made of)."""
    parts = re.findall(r"[A-Z]+(?=[A-Z][a-z]|\d|\b)|[A-Z]?[a-z]+|[A-Z]+|\d+", identifier)
    return " ".join(p if p.isupper() and len(p) > 1 else p.lower() for p in parts)


def _first_sentence(text: str) -> str:
    text = re.sub(r"@\w+[^@]*", "", text).strip()  # drop @param/@returns tags
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    s = (m.group(1) if m else text).strip()
    return s[:1].lower() + s[1:] if s[:2] != s[:2].upper() else s


def _pick(options: Sequence[str], key: str) -> str:
    """A stable choice among phrasings, keyed by the record (no global RNG state)."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def _qi_modules(rec: dict) -> str:
    mods = sorted(rec.get("qi_imports", {})) or ["@qi/base"]
    return " and ".join(mods)


def instruction_for(rec: dict) -> tuple[str, str]:
    """(instruction, input) for a validated record."""
    ctx = rec.get("context", {})
    name, unit = rec.get("name", ""), rec["unit"]
    doc = _first_sentence(ctx["jsdoc"]) if ctx.get("jsdoc") else ""
    traits = [_PATTERN_PHRASES[t] for t in rec.get("pattern_types", [])][:2]
    trait = f" It {' and '.join(traits)}." if traits else ""
    signature = ctx.get("signature", "")
    inputs = []
    if signature:
        inputs.append(f"Signature: {signature}")
    if ctx.get("readme"):
        inputs.append(f"Project context: {ctx['readme']}")

    if unit == "test_case":
        within = " > ".join(ctx.get("describe", []))
        instruction = (f"Write a test case \"{name}\"" + (f" (in describe \"{within}\")" if within else "")
                       + f" with node:assert for code built on {_qi_modules(rec)}.")
    elif unit == "block":
        heading = " > ".join(ctx.get("headings", [])[-2:])
        prose = ctx.get("prose", "")
        lead = _pick(["Write a TypeScript example for", "Show, in TypeScript with @qi, how to handle",
                      "Give a self-contained example of"], rec["id"])
        topic = heading or (words(name) if name else "this @qi pattern")
        instruction = f"{lead} \"{topic}\" using {_qi_modules(rec)}." + (f" {prose}" if prose else "") + trait
    elif unit == "method":
        what = doc or words(name)
        instruction = f"Implement the method `{name}` of class `{ctx.get('class_name', '')}`: {what}." + trait
    elif unit == "class":
        what = doc or f"a {words(name)}"
        instruction = f"Write the TypeScript class `{name}` with {_qi_modules(rec)}: {what}." + trait
    else:
        what = doc or words(name)
        exported = rec["code"].lstrip().startswith("export ")
        lead = _pick(["Write a TypeScript function", "Implement"]
                     + (["Create an exported function", "Write the exported function"] if exported else []), rec["id"])
        instruction = f"{lead} `{name}` that does the following: {what}." + trait
    instruction = re.sub(r"\.\.+", ".", " ".join(instruction.split()))
    return instruction, "\n".join(inputs)


def imports_from(code: str, module: str) -> set[str]:
    """Local names `code` imports from the @qi module `module` (`type` imports included)."""
    bound, _ = patterns.qi_bindings(tsast.parse(code).root_node)
    return {local for local, (source, _) in bound.items() if source == module}


def rows_from_records(records: Iterable[dict]) -> list[dict]:
    """One row per validated record; the answer is the record's stand-alone module (validate built
    and compiled it alone: modules.standalone)."""
    rows = []
    for rec in records:
        instruction, inp = instruction_for(rec)
        rows.append({"id": rec["id"], "source_file": rec["source_file"], "instruction": instruction,
                     "input": inp, "output": rec["module"].strip() + "\n", "origin": rec.get("origin", "corpus")})
    return rows


def rows_from_feedback(rows: Iterable[dict]) -> list[dict]:
    """Accepted feedback (validate.admit_feedback): the user's request -> the good or corrected code."""
    return [{"id": f"feedback-{r['id']}", "source_file": r["source_file"], "instruction": r["instruction"].strip(),
             "input": "", "output": r["module"].strip() + "\n", "origin": "feedback"} for r in rows]


def rows_from_pairs(pairs: Iterable[dict]) -> list[dict]:
    """Counter-example + its correction: "rewrite this with @qi/base"."""
    rows = []
    for p in pairs:
        heading = " > ".join(p.get("context", {}).get("headings", [])[-1:])
        rows.append({"id": p["counter_id"], "source_file": p["source_file"],
                     "instruction": "Rewrite this code with @qi/base so that failures are Result values, "
                                    "not exceptions or nulls." + (f" ({heading})" if heading else ""),
                     "input": p["counter_code"].strip(), "output": p["corrected_code"].strip() + "\n",
                     "origin": "counter_example_pair"})
    return rows


def split_by_file(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split with every source file wholly on one side (no leakage between near-twins).

    Rewritten variants (origin other than corpus and counter_example_pair) train only: their
    parents' files decide which side they would fall on, and the validation loss stays a measure
    on the corpus's own rows.
    """
    files = sorted({r["source_file"] for r in rows})
    random.Random(seed).shuffle(files)
    n_val = min(len(files) - 1, max(1, math.ceil(val_fraction * len(files)))) if len(files) > 1 else 0
    val_files = set(files[:n_val])
    corpus = ("corpus", "counter_example_pair")
    return ([r for r in rows if r["source_file"] not in val_files],
            [r for r in rows if r["source_file"] in val_files and r.get("origin", "corpus") in corpus])


def decontaminate(rows: list[dict], benchmark_codes: Sequence[str], threshold: float,
                  shingle_size: int) -> tuple[list[dict], list[dict]]:
    """Drop rows whose code matches a benchmark task's reference or test (exact or near)."""
    if not benchmark_codes:
        return rows, []
    is_copy = dedup.copy_detector(benchmark_codes, threshold, shingle_size)
    kept, dropped = [], []
    for r in rows:
        (dropped if is_copy(r["output"]) else kept).append(r)
    return kept, dropped


def alpaca(row: dict) -> dict:
    prompt = (ALPACA_PROMPT if row["input"] else ALPACA_PROMPT_NO_INPUT).format(**row)
    return {"instruction": row["instruction"], "input": row["input"], "output": row["output"],
            "text": prompt + row["output"]}


def chat(row: dict, system_prompt: str) -> dict:
    user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return {"messages": [{"role": "system", "content": system_prompt},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": f"```typescript\n{row['output'].rstrip()}\n```"}]}
