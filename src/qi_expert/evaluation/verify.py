"""Answers checked before they are shown: candidates judged by the compiler and the @qi rules.

What a user has when code is generated is the compiler and the project's rules, never a test or a
reference solution. So a candidate is judged by exactly those (the eval's one compiler program and
its rules by the checker's symbols, scoring.compile_all + compliance):

- it compiles against the corpus's @qi packages;
- it makes at least one call the checker resolves to a @qi declaration;
- it has none of the @qi anti-patterns (throw in any form, try/catch outside a @qi wrapper,
  Promise.reject / .catch, null or undefined returned as a Result).

`choose` takes the first candidate that passes, else the one with the fewest problems;
`repair_turn` is the follow-up message that hands the model its best candidate and the
compiler's first diagnostics (Self-Debugging, Chen et al. 2023). The eval's verified arms
(arms.py, `+verify`) and `qi-expert serve` both go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.data import prompting
from qi_expert.evaluation import scoring
from qi_expert.typescript import patterns

# The @qi anti-patterns every answer must avoid, whatever the task (compliance.py finds them).
RULES = ("throw", "try_catch", "promise_catch", "promise_reject", "return_null")
MAX_FEEDBACK = 3  # diagnostics handed back in a repair turn


def check(codes: Sequence[str], *, project: Path, tsconfig: str = "tsconfig.json",
          try_catch_allowed_in: Iterable[str] = patterns.DEFAULT_TRY_CATCH_ALLOWED,
          isolated: bool = True, dependencies: Path | None = None) -> list[dict]:
    """Each code's verdict: {ok, compiled, n_errors, diagnostics, forbidden, qi_calls}."""
    allowed = tuple(try_catch_allowed_in)
    diagnostics, _, info = scoring.compile_all(codes, project, tsconfig, isolated=isolated,
                                                try_catch_allowed_in=allowed, dependencies=dependencies)
    rule = {"required_calls": [], "forbidden": list(RULES)}
    out = []
    for code, diags, facts in zip(codes, diagnostics, info["facts"]):
        c = scoring.compliance(code, rule, allowed, facts)
        qi_calls = len((facts or {}).get("qi_calls", []))
        compiled = bool(code.strip()) and not diags
        forbidden = [f for f in c["forbidden_found"]]
        out.append({"ok": compiled and not forbidden and qi_calls > 0, "compiled": compiled,
                    "n_errors": len(diags), "diagnostics": diags[:MAX_FEEDBACK], "forbidden": forbidden,
                    "anti_patterns": [a for a in c["anti_patterns"] if a["rule"] in RULES][:MAX_FEEDBACK],
                    "qi_calls": qi_calls})
    return out


def problems(verdict: Mapping) -> tuple:
    """Sort key: fewer problems first (an ok candidate sorts before every other)."""
    return (not verdict["ok"], not verdict["compiled"], verdict["n_errors"] + len(verdict["forbidden"]),
            verdict["qi_calls"] == 0)


def choose(verdicts: Sequence[Mapping]) -> int:
    """The first candidate that passes, else the one with the fewest problems (the earliest on a tie)."""
    return min(range(len(verdicts)), key=lambda i: (problems(verdicts[i]), i))


def repair_turn(completion: str, verdict: Mapping, entry: str | None = None) -> list[dict]:
    """The assistant's candidate and the user's follow-up with what the checker found."""
    code = prompting.extract_code(completion, entry).strip()
    found = [f"- line {d['line']}: TS{d['code']} {d['message'].splitlines()[0]}" for d in verdict["diagnostics"]]
    found += [f"- line {a['line']}: {a['rule'].replace('_', ' ')} is not allowed: return a Result "
              "(success/failure from @qi/base) instead" for a in verdict["anti_patterns"]]
    if verdict["qi_calls"] == 0:
        found.append("- it uses nothing from @qi/base or @qi/core: build the Result with their functions")
    feedback = ("The TypeScript compiler and the @qi rules reject this code:\n" + "\n".join(found)
                + "\nWrite the corrected, complete code in one ```typescript block.")
    return [{"role": "assistant", "content": f"```typescript\n{code}\n```"}, {"role": "user", "content": feedback}]
