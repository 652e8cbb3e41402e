"""The checks a candidate answer must pass before it is shown (verify.py): the compiler and the
@qi rules by the checker's symbols, never a task's test."""

from __future__ import annotations

from qi_expert.core.config import ROOT
from qi_expert.data import bench
from qi_expert.evaluation import verify

CORPUS = ROOT / "data/sample/typescript"
TASKS = {t["id"]: t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")}


def test_check_choose_and_repair_turn():
    reference = TASKS["price-validate-positive"]["reference"]
    throwing = TASKS["price-validate-positive"]["wrong"]  # throws on a bad price
    no_qi = "export function validatePrice(price: number): number { return price; }\n"
    broken = "export function validatePrice(price: number): Result<number, QiError> { return succes(price); }\n"
    verdicts = verify.check([broken, throwing, no_qi, reference], project=CORPUS)
    assert [v["ok"] for v in verdicts] == [False, False, False, True]
    assert not verdicts[0]["compiled"] and verdicts[0]["n_errors"] > 0 and verdicts[0]["diagnostics"]
    assert verdicts[1]["compiled"] and verdicts[1]["forbidden"] == ["throw"]
    assert verdicts[2]["compiled"] and verdicts[2]["qi_calls"] == 0
    assert verify.choose(verdicts) == 3  # the one that passes, wherever it is
    assert verify.choose(verdicts[:3]) in (1, 2)  # compiles beats does not
    turn = verify.repair_turn("```ts\n" + throwing + "```", verdicts[1], "validatePrice")
    assert [m["role"] for m in turn] == ["assistant", "user"]
    assert "throw is not allowed" in turn[1]["content"] and throwing.strip() in turn[0]["content"]
    turn = verify.repair_turn(broken, verdicts[0])
    assert "TS2304" in turn[1]["content"] or "TS2552" in turn[1]["content"]
    # Every benchmark reference passes the checks: they ask nothing a correct @qi answer lacks.
    refs = [t["reference"] for t in TASKS.values()]
    assert all(v["ok"] for v in verify.check(refs, project=CORPUS))


def test_token_budget_covers_the_reference_solutions():
    """eval.max_new_tokens: auto is the quantile of the references' lengths as fenced answers."""
    import pytest

    class Words:  # a tokenizer whose tokens are words
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    tasks = [{"reference": " ".join(["w"] * n)} for n in range(1, 101)]  # 1..100 words (+2 fence tokens)
    assert bench.token_budget("auto", tasks, Words(), 0.95) == 97 and bench.token_budget("auto", tasks, Words(), 1.0) == 102
    assert bench.token_budget(384, tasks, Words()) == 384 and bench.token_budget("512", tasks, Words()) == 512
    with pytest.raises(ValueError, match="eval.max_new_tokens is 'lots'"):
        bench.token_budget("lots", tasks, Words())
