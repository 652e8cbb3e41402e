"""Graded metrics, paired statistics and the retrieval store, checked against values worked out by hand.

Completions here are written for the test; the compiler, tree-sitter and the sample corpus's
@qi packages are the real ones (a few seconds of node).
"""

from __future__ import annotations

import json
import math
import re

import pytest

from qi_expert.core import stats
from qi_expert.core.config import ROOT, load_params
from qi_expert.data import bench, dedup, retrieval
from qi_expert.evaluation import arms, graded, scoring, summary
from qi_expert.generation import refloss
from qi_expert.typescript import typecheck

CORPUS = ROOT / "data/sample/typescript"
TASKS = {t["id"]: t for t in bench.load_tasks(ROOT / "data/qi-bench/tasks.yaml")}
PRICE = "price-validate-positive"

# The reference, and four ways to miss it.
REFERENCE = TASKS[PRICE]["reference"]
NO_IMPORTS = REFERENCE.split("\n", 2)[2]  # drops the import line: success/failure/validationError/Result/QiError
INVENTED = ('import { success, failure, validatePrice as vp, checkPositive } from "@qi/base";\n'
            "export function validatePrice(price: number) { return price > 0 ? success(price) : failure(price); }\n")
BROKEN = "export function validatePrice(price: number {\n  return price\n"
NAMESPACE = ('import * as qi from "@qi/base";\n'
             "export function validatePrice(price: number): qi.Result<number, qi.QiError> {\n"
             '  return price > 0 ? qi.success(price) : qi.failure(qi.validationError("bad", { price }));\n}\n'
             "export const x = qi.notThere;\n")


@pytest.fixture(scope="module")
def exports() -> dict[str, list[str]]:
    return {m: [e["name"] for e in v] for m, v in typecheck.module_exports(CORPUS).items()}


# --- one completion ----------------------------------------------------------------------------

def test_export_list_comes_from_the_compiler(exports):
    assert {"success", "failure", "validationError", "Result", "QiError", "flatMap", "match"} <= set(exports["@qi/base"])
    assert "createLogger" in exports["@qi/core"]
    assert "validatePrice" not in exports["@qi/base"]


def test_api_validity_splits_real_from_invented_names(exports):
    v = graded.api_validity(INVENTED, exports)
    assert v["real"] == ["@qi/base:success", "@qi/base:failure"]
    assert v["invented"] == ["@qi/base:validatePrice", "@qi/base:checkPositive"]
    assert v["used"] == 4 and v["share"] == 0.5
    ns = graded.api_validity(NAMESPACE, exports)
    assert sorted(ns["real"]) == ["@qi/base:QiError", "@qi/base:Result", "@qi/base:failure", "@qi/base:success",
                                  "@qi/base:validationError"]
    assert ns["invented"] == ["@qi/base:notThere"] and ns["share"] == round(5 / 6, 4)
    # A module the corpus does not have makes every name from it invented; no @qi import: no share.
    assert graded.api_validity('import { success } from "@qi/utils";\n', exports)["invented"] == ["@qi/utils:success"]
    assert graded.api_validity("export const a = 1;\n", exports) == {"used": 0, "real": [], "invented": [], "share": None}


def test_syntax_validity():
    assert graded.syntax_valid(REFERENCE) and graded.syntax_valid(NO_IMPORTS)
    assert not graded.syntax_valid(BROKEN) and not graded.syntax_valid("   ")


def test_only_missing_qi_imports(exports):
    missing = [{"code": 2304, "line": 3, "message": "Cannot find name 'QiError'."},
               {"code": 2552, "line": 5, "message": "Cannot find name 'success'. Did you mean 'access'?"}]
    assert graded.only_missing_qi_imports(missing, exports)
    assert not graded.only_missing_qi_imports(missing + [{"code": 2322, "line": 6, "message": "Type 'string'..."}], exports)
    assert not graded.only_missing_qi_imports([{"code": 2304, "line": 1, "message": "Cannot find name 'helper'."}], exports)
    assert not graded.only_missing_qi_imports([], exports)  # compiling code is not "only missing imports"


# --- scored rows, summaries and paired statistics -------------------------------------------------

@pytest.fixture(scope="module")
def scored():
    """Arm "a" and arm "b" on the same 4 completions' slots of one task (as 4 tasks' worth of pairs)."""
    task = TASKS[PRICE]
    tasks = {f"t{i}": {**task, "id": f"t{i}"} for i in range(4)}
    a = [REFERENCE, REFERENCE, NO_IMPORTS, INVENTED]
    b = [NO_IMPORTS, BROKEN, BROKEN, BROKEN]
    items = [{"model": arm, "task_id": f"t{i}", "sample": 0, "completion": code, "reference_nll": nll}
             for arm, codes, nlls in (("a", a, [0.5, 0.5, 1.0, 2.0]), ("b", b, [1.0, 1.5, 2.0, None]))
             for i, (code, nll) in enumerate(zip(codes, nlls))]
    rows, info = scoring.score(items, tasks, project=CORPUS)
    return rows, info


def test_score_rows_carry_graded_fields(scored):
    rows, info = scored
    assert info["qi_exports"]["@qi/base"] > 10
    a = [r for r in rows if r["model"] == "a"]
    assert [r["compiled"] for r in a] == [True, True, False, False]
    assert a[2]["graded"]["only_missing_qi_imports"] and not a[3]["graded"]["only_missing_qi_imports"]
    assert a[2]["graded"]["not_imported"] == ["QiError", "Result", "failure", "success", "validationError"]
    assert a[3]["graded"]["not_imported"] == []  # invented names are "no exported member", not missing imports
    # NO_IMPORTS: Result and QiError in the signature, failure x2, validationError x2, success x1.
    assert a[2]["n_compile_errors"] == 7 and {d["code"] for d in a[2]["compile_errors"]} <= graded.MISSING_NAME_CODES
    assert a[3]["graded"]["api"]["invented"] == ["@qi/base:validatePrice", "@qi/base:checkPositive"]
    assert [d["code"] for d in a[3]["compile_errors"]] == [2305, 2305]


def test_summary_graded_values_by_hand(scored):
    rows, _ = scored
    s = summary.summarize([r for r in rows if r["model"] == "a"])["graded"]
    assert s["syntax_valid_rate"] == 1.0
    assert s["only_missing_qi_imports_rate"] == 0.25
    # Errors 0, 0, 7, 2 (INVENTED: TS2305 "has no exported member" for each invented name).
    assert s["type_errors_mean"] == 2.25 and s["type_errors_median"] == 1.0
    # Reference: success, failure, validationError, Result, QiError (5 real) twice; INVENTED: 2 real, 2 invented.
    assert s["qi_names_used"] == 14 and s["qi_api_valid_share"] == round(12 / 14, 4)
    assert s["qi_names_real_per_completion"] == 3.0 and s["qi_names_invented_per_completion"] == 0.5
    assert s["qi_uses_rate"] == 0.75
    assert s["invented_names"] == [["@qi/base:checkPositive", 1], ["@qi/base:validatePrice", 1]]
    # NO_IMPORTS uses five real names without importing them; no other completion misses one.
    assert s["qi_names_not_imported_per_completion"] == 1.25 and s["not_imported_rate"] == 0.25
    assert s["not_imported_names"] == [[n, 1] for n in ["QiError", "Result", "failure", "success", "validationError"]]
    assert s["reference_loss"] == 1.0  # (0.5 + 0.5 + 1.0 + 2.0) / 4
    b = summary.summarize([r for r in rows if r["model"] == "b"])["graded"]
    assert b["syntax_valid_rate"] == 0.25 and b["reference_loss"] == 1.5  # the task without a value is left out


def test_paired_statistics_by_hand(scored):
    rows, _ = scored
    p = summary.paired_comparison([r for r in rows if r["model"] == "a"], [r for r in rows if r["model"] == "b"])
    # compile: a compiles t0, t1; b compiles nothing -> 2 discordant pairs, both for a: p = 2 * (1/2)^2 = 0.5.
    c = p["compile_rate"]
    assert (c["a"], c["b"], c["delta"], c["up"], c["down"], c["test"]) == (0.5, 0.0, 0.5, 2, 0, "mcnemar_exact")
    assert c["p_value"] == 0.5
    # syntax valid: a 4/4, b 1/4 (t0) -> up 3, down 0, p = 2 * (1/2)^3 = 0.25; every resample's mean is >= 0.
    sv = p["syntax_valid_rate"]
    assert (sv["delta"], sv["up"], sv["down"], sv["p_value"]) == (0.75, 3, 0, 0.25)
    assert 0 <= sv["ci95"][0] <= sv["ci95"][1] <= 1
    # reference loss on the 3 tasks both have: diffs -0.5, -1.0, -1.0 -> mean -0.8333, all below zero.
    rl = p["reference_loss"]
    assert rl["n"] == 3 and rl["delta"] == -0.8333 and rl["test"] == "sign" and (rl["up"], rl["down"]) == (0, 3)
    assert rl["p_value"] == 0.25 and rl["ci95"][1] <= -0.5 and rl["ci95"][0] >= -1.0
    # The interval excludes zero, but 3 tasks cannot make an exact test significant: not significant.
    assert not rl["significant"]


def test_stats_known_values():
    # McNemar exact: 8 vs 1 discordant pairs -> 2 * (C(9,0) + C(9,1)) / 2^9 = 20 / 512.
    assert stats.exact_binomial_p(8, 9) == pytest.approx(20 / 512)
    assert stats.exact_binomial_p(0, 0) == 1.0
    assert stats.bootstrap_interval([0.25] * 10) == (0.25, 0.25)
    lo, hi = stats.bootstrap_interval([1, -1] * 20, seed=3)
    assert lo < 0 < hi and stats.bootstrap_interval([1, -1] * 20, seed=3) == (lo, hi)  # seeded
    d = stats.paired([1, 1, 0, 1], [0, 0, 0, 1], binary=True)
    assert (d["delta"], d["up"], d["down"], d["p_value"], d["significant"]) == (0.5, 2, 0, 0.5, False)
    # 12 tasks all better by 1 +- 0.5: interval above zero and sign test p = 2 / 2^12.
    d = stats.paired([1.5, 1.0, 2.0] * 4, [0.0] * 12, binary=False)
    assert d["p_value"] == round(2 / 4096, 6) and d["ci95"][0] > 0 and d["significant"]
    with pytest.raises(ValueError, match="one value per task"):
        stats.paired([1, 2], [1], binary=False)


# --- reference loss -----------------------------------------------------------------------------

@pytest.mark.parametrize("continuous", [True, False])
def test_reference_loss_equals_the_models_own_loss(tiny_model, continuous, monkeypatch):
    """The answers' NLL scored on each prompt's prefill (refloss.answer_nll, inside the transformers
    backend) == transformers' loss with the prompt masked, row by row; decoding is unchanged by it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_model
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    from qi_expert.data import prompting
    from qi_expert.generation import decoding, transformers_backend

    tasks = [TASKS[PRICE], *list(TASKS.values())[1:4]]
    messages = [prompting.chat_messages(t, "Be brief.") for t in tasks]
    prompts = [prompting.render_prompt(tok, t, "Be brief.") for t in tasks]
    answers = [refloss.answer_text(tok, m, p, t["reference"]) for m, p, t in zip(messages, prompts, tasks)]
    assert answers[0].startswith("```typescript\nimport {") and answers[0].endswith("<|im_end|>")
    answers[2] = None  # a task without a reference
    monkeypatch.setattr(refloss, "CHUNK", 7)  # answers go in over many forward passes
    # Batches of 2 over 4 prompts: the continuous backend scores rows as they join (a refill).
    backend = transformers_backend.Transformers(model, batch_size=2, continuous=continuous, pad_id=tok.pad_token_id)
    policy = decoding.StopPolicy.eval(tok, 12, model=model)
    scored = decoding.complete(backend, tok, prompts, policy, answers=answers)
    plain = decoding.complete(backend, tok, prompts, policy)
    assert scored.completions == plain.completions and scored.new_tokens == plain.new_tokens
    assert plain.answer_nll is None and scored.answer_nll[2] is None
    assert scored.stats["reference_loss_seconds"] > 0
    for p, a, value in zip(prompts, answers, scored.answer_nll):
        if a is None:
            continue
        pi, ai = tok(p, add_special_tokens=False)["input_ids"], tok(a, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pi + ai])
        labels = torch.tensor([[-100] * len(pi) + ai])
        with torch.inference_mode():
            expected = float(model(input_ids=ids, labels=labels).loss)
        assert math.isclose(value, expected, rel_tol=1e-4), (value, expected)
    with pytest.raises(ValueError, match="answers: 1 for 4 prompts"):
        decoding.complete(backend, tok, prompts, policy, answers=answers[:1])


# --- the retrieval store ---------------------------------------------------------------------------

def test_store_finds_api_and_examples(sample_store):
    store = retrieval.Store(sample_store, corpus={"name": "sample", "root": "data/sample/typescript"})
    try:
        api = store.search("validate a price and return a validation error", "api", 5)
        assert "validationError" in [h["name"] for h in api]
        assert all(h["module"] in ("@qi/base", "@qi/core") for h in api)
        ex = store.search("parse a port number", "example", 1)
        assert ex and "toPort" in ex[0]["text"]
        context, hits = store.context("parse a port number into a Result", examples=1, api=3, max_chars=2000)
        assert context.startswith("Relevant exports of @qi/") and "```typescript" in context
        assert len(hits) == 4
        # The signature, not the body; the doc comment's first sentence beside it.
        line = next(h for h in store.search("validationError", "api", 3) if h["name"] == "validationError")["text"]
        assert "validationError" in line and "{" not in line.split("//")[0].split("=>")[-1]
        # Same query, same answer.
        assert store.context("parse a port number into a Result", examples=1, api=3, max_chars=2000)[0] == context
    finally:
        store.close()


def test_store_from_another_corpus_or_missing_is_a_clear_error(sample_store, tmp_path):
    with pytest.raises(ValueError, match="built from corpus"):
        retrieval.Store(sample_store, corpus={"name": "qicore", "root": "../qi-v2-qicore/typescript"})
    with pytest.raises(FileNotFoundError, match="dvc repro index"):
        retrieval.Store(tmp_path / "nowhere")


def test_unknown_arm_and_tuned_without_adapter_are_errors():
    assert [a.name for a in arms.parse_arms(["tuned+retrieval", "base"], adapter="x")] == ["base", "tuned+retrieval"]
    with pytest.raises(ValueError, match=re.escape("unknown arm 'tuned+rag'")):
        arms.parse_arms(["base", "tuned+rag"], adapter="x")
    with pytest.raises(ValueError, match="eval.adapter is null"):
        arms.parse_arms(["tuned"], adapter=None)
    with pytest.raises(ValueError, match="twice"):
        arms.parse_arms(["base", "base"], adapter=None)


def test_eval_stage_rejects_bad_arms_before_loading_anything(tmp_path):
    import importlib.util

    cfg = load_params(["eval.arms=[base,tuned+rag]", f"model.base_model={tmp_path / 'no-model'}"])
    spec = importlib.util.spec_from_file_location("eval_stage", ROOT / "stages" / "eval.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(ValueError, match="eval.arms"):
        stage.run(cfg)


def test_index_stage_drops_benchmark_copies(tmp_path, monkeypatch):
    """The index stage: a formatted row that copies a benchmark reference never enters the store."""
    import importlib.util

    from qi_expert.core import files

    rows = [{"instruction": "copy", "input": "", "output": REFERENCE},
            {"instruction": "near copy", "input": "", "output": REFERENCE.replace("greater than zero", "positive")},
            {"instruction": "log", "input": "", "output": 'import { createLogger } from "@qi/core";\nexport const l = createLogger({ level: "info" });\n'}]
    files.write_jsonl(tmp_path / "rows.jsonl", rows)
    spec = importlib.util.spec_from_file_location("index_stage", ROOT / "stages" / "index.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(stage, "OUT", tmp_path / "index")
    monkeypatch.setattr(stage, "METRICS", tmp_path / "index.json")
    stage.run(load_params([f"index.examples=[{tmp_path / 'rows.jsonl'}]"]))
    metrics = json.loads((tmp_path / "index.json").read_text())
    assert metrics["examples"] == 1 and metrics["decontaminated_examples"] == 2
    assert metrics["api_entries"] > 20 and metrics["by_module"]["@qi/core"] > 0
    store = retrieval.Store(tmp_path / "index")
    try:
        texts = [t for _, t in store.texts(range(1, 1000)).values()]
        is_copy = dedup.copy_detector([REFERENCE], 0.6, 5)
        assert not any(is_copy(t) for t in texts) and any("createLogger" in t for t in texts)
    finally:
        store.close()
