"""Stage `validate`: type-check records against the corpus's @qi packages, reject
anti-patterns and duplicates, pair counter-examples with their corrections.

    python stages/validate.py

Writes data/validated/{accepted,rejected,pairs,augmented,corpus_tasks}.jsonl and metrics/validate.json.
corpus_tasks.jsonl: the exported units of the @qi packages that a corpus test case calls, each
checked against its tests (qi_expert.data.corpus_tasks): format holds a share of them out as the
second benchmark.
With augment.enabled, rewritten variants of accepted records (qi_expert.data.augment) are checked like
corpus records, and run the corpus's test cases of their parents in the sandbox (augment.run_tests);
the admitted ones, at most augment.max_share of all rows, go to augmented.jsonl.
Feedback on served answers (feedback.file, qi_expert.data.feedback) is checked the same way: the
accepted rows go to feedback.jsonl, the others to feedback_rejected.jsonl (neither is written
while there is no feedback).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

import time
from collections import Counter

from qi_expert.core import files, tracking
from qi_expert.core.config import resolve_path, stage_entry
from qi_expert.data import augment, corpus_tasks, drift, feedback, retrieval, validate
from qi_expert.typescript import npmdeps, sandbox
from qi_expert.typescript.sandbox import SandboxError
from qi_expert.typescript.typecheck import TypeCheckError

RECORDS = resolve_path("data/extracted/records.jsonl")
OUT = resolve_path("data/validated")
METRICS = resolve_path("metrics/validate.json")
DRIFT = resolve_path("metrics/drift.json")
DRIFT_REPORT = resolve_path("reports/drift.md")


def run(cfg):
    records = list(files.read_jsonl(RECORDS))
    started = time.perf_counter()
    project = resolve_path(cfg.corpus.root)
    try:
        # The corpus's npm packages, when asked for (corpus.install_dependencies): installed outside it.
        deps = npmdeps.install(project) if cfg.corpus.install_dependencies else None
        build = validate.answer_builder(project, cfg.corpus.tsconfig)
        accepted, rejected, pairs, metrics = validate.validate(records, project, cfg.corpus.tsconfig, cfg.validate, build,
                                                               dependencies=deps)
        candidates, admitted, refused, tests = [], [], [], {}
        if cfg.augment.enabled:
            candidates = augment.variants(accepted, list(cfg.augment.kinds))
            passed, refused = validate.admit_variants(candidates, accepted, project, cfg.corpus.tsconfig,
                                                      cfg.validate, build, dependencies=deps)
            if cfg.augment.run_tests:
                passed, failed, tests = validate.test_variants(
                    passed, accepted, project, cfg.corpus.tsconfig, cfg.validate,
                    isolation=str(cfg.augment.sandbox), timeout=float(cfg.augment.test_timeout_seconds),
                    dependencies=deps, module_format=sandbox.module_format(project, str(cfg.corpus.module_format)))
                refused += failed
            admitted = augment.capped(passed, len(accepted) + len(pairs), cfg.augment.max_share)
        # The corpus's own tests as a second benchmark: the exported units a test case calls, each
        # reference run against its tests (format holds a share of them out of training).
        corpus_bench = {"enabled": bool(cfg.corpus_bench.enabled)}
        tasks = []
        if cfg.corpus_bench.enabled:
            tasks, corpus_bench["candidates"] = corpus_tasks.candidates(accepted, build.qi_files, list(cfg.validate.anti_patterns))
            with sandbox.Sandbox(project, cfg.corpus.tsconfig, timeout=float(cfg.corpus_bench.timeout_seconds),
                                 isolation=sandbox.isolation_mode(str(cfg.corpus_bench.sandbox), "corpus_bench.sandbox"),
                                 module_format=sandbox.module_format(project, str(cfg.corpus.module_format)),
                                 dependencies=deps) as sb:
                tasks, corpus_bench["checked"] = corpus_tasks.checked(tasks, sb)
        # What the documentation gets wrong about the packages, from the blocks that do not compile.
        drift_report = drift.report(rejected, retrieval.api_surface(project, build.exports))
        feedback_rows = feedback.read_rows(resolve_path(cfg.feedback.file))
        feedback_ok, feedback_refused = validate.admit_feedback(feedback_rows, project, cfg.corpus.tsconfig, cfg.validate,
                                                                dependencies=deps)
    except (TypeCheckError, ValueError, SandboxError, npmdeps.DependencyError) as e:
        sys.exit(f"validate: {e}")
    metrics["augmented"] = {
        "enabled": bool(cfg.augment.enabled),
        "candidates": len(candidates),
        "admitted": len(admitted),
        "left_out_by_cap": len(candidates) - len(refused) - len(admitted),
        "refused_by_reason": dict(sorted(Counter(r["reason"].split(":")[0] for r in refused).items())),
        "admitted_by_origin": dict(sorted(Counter(r["origin"] for r in admitted).items())),
        # Variants a corpus test case can check (augment.run_tests), the test runs in the sandbox,
        # and tests that fail with the parent too (they check nothing).
        "tests": tests,
        "admitted_tested": sum(1 for r in admitted if r.get("tests_passed")),
    }
    metrics["feedback"] = {
        "rows": len(feedback_rows),
        "by_verdict": dict(sorted(Counter(r["verdict"] for r in feedback_rows).items())),
        "accepted": len(feedback_ok),
        "rejected_by_reason": dict(sorted(Counter(r["reason"].split(":")[0] for r in feedback_refused).items())),
    }
    metrics["corpus_bench"] = {**corpus_bench, "tasks": len(tasks)}
    metrics["dependencies"] = {"installed": deps is not None,
                               "packages": len(npmdeps.declared(project)) if deps is not None else 0}
    metrics["seconds"] = round(time.perf_counter() - started, 2)
    files.write_jsonl(OUT / "accepted.jsonl", accepted)
    files.write_jsonl(OUT / "rejected.jsonl", rejected)
    files.write_jsonl(OUT / "pairs.jsonl", pairs)
    files.write_jsonl(OUT / "augmented.jsonl", admitted)
    files.write_jsonl(OUT / "augmented_refused.jsonl", refused)
    files.write_jsonl(OUT / "corpus_tasks.jsonl", tasks)
    if feedback_rows:  # (no feedback: no file, the outputs of a project without any stay as they were)
        files.write_jsonl(OUT / "feedback.jsonl", feedback_ok)
        files.write_jsonl(OUT / "feedback_rejected.jsonl", feedback_refused)
    files.write_json(METRICS, {k: v for k, v in metrics.items() if k != "seconds"})
    files.write_json(DRIFT, drift_report)
    files.write_text(DRIFT_REPORT, drift.markdown(drift_report, str(cfg.corpus.name)))
    print(f"validate: {len(accepted)} accepted, {len(rejected)} rejected "
          f"({metrics['rejected_by_reason']}), compile rate {metrics['compile_rate']:.1%}, "
          f"{len(pairs)} counter-example pairs, {len(admitted)} augmented rows admitted "
          f"({len(refused)} refused), {len(feedback_ok)} of {len(feedback_rows)} feedback rows accepted, "
          f"{len(tasks)} corpus benchmark candidates, "
          f"{metrics['seconds']}s")
    print(f"validate: drift: {drift_report['failing_blocks']} documentation blocks do not compile against the "
          f"packages ({', '.join(f'{k} {n}' for k, n in drift_report['by_cause'].items())}) -> {DRIFT_REPORT}")
    with tracking.stage_run(cfg, "validate", {"validate": cfg.validate, "augment": cfg.augment,
                                              "feedback": cfg.feedback,
                                              "corpus_bench": {k: cfg.corpus_bench[k] for k in ("enabled", "sandbox", "timeout_seconds")}}) as mlflow:
        tracking.log_counts(mlflow, metrics)
        tracking.log_counts(mlflow, {"drift": {"failing_blocks": drift_report["failing_blocks"], **drift_report["by_cause"]}})


if __name__ == "__main__":
    stage_entry(run)()
