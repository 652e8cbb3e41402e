"""Stage `eval`: how well do the base and the fine-tuned model write @qi code?

    python stages/eval.py                                 # every arm of eval.arms
    python stages/eval.py 'eval.arms=[base,tuned]'        # no retrieval or verified arms
    python stages/eval.py eval.limit=3                    # the first 3 tasks only
    python stages/eval.py eval.adapter=null 'eval.arms=[base]'   # the base model alone
    python stages/eval.py eval.predictions=preds.jsonl    # score {task_id, completion} rows, no model

1. the tasks: the hand-written benchmark (data/qi-bench) and the corpus's own tests (eval.corpus_benchmark,
held out by format; skipped with a predictions file), then for each 2. the completions: every arm generates (evaluation/arms.py) or a
predictions file is read, 3. scoring: compile, @qi compliance by the checker's symbols, the test
run apart from the completion (evaluation/scoring.py), 4. the figures: rates per arm and paired
comparisons (evaluation/summary.py), 5. outputs: data/eval/results.jsonl (one row per task, arm
and sample; corpus_results.jsonl for the corpus benchmark), metrics/eval.json (the corpus benchmark
under corpus_benchmark), metrics/eval_by_category.csv (DVC bar plot) and an MLflow run with
the results as artifacts.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert
from qi_expert.core import runtime  # noqa: E402

runtime.setup()  # first, before torch or llama_cpp load (core/runtime.py)

from qi_expert.core import files, tracking  # noqa: E402
from qi_expert.core.config import resolve_path, stage_entry  # noqa: E402
from qi_expert.data import bench, retrieval  # noqa: E402
from qi_expert.evaluation import arms as eval_arms  # noqa: E402
from qi_expert.evaluation import scoring, summary
from qi_expert.generation import basemodel  # noqa: E402
from qi_expert.typescript import npmdeps, sandbox  # noqa: E402

OUT = resolve_path("data/eval")
METRICS = resolve_path("metrics/eval.json")
PLOTS = resolve_path("metrics/eval_by_category.csv")


def run(cfg):
    ec = cfg.eval
    t_start = time.perf_counter()
    if not ec.predictions:  # bad arms fail before any file or model is read
        eval_arms.parse_arms(ec.arms, adapter=ec.adapter)

    # 1. The tasks: the hand-written benchmark, and the corpus's own tests (format holds them out).
    tasks = bench.load_tasks(resolve_path(ec.benchmark))
    if ec.limit is not None:
        tasks = tasks[: int(ec.limit)]
    corpus_tasks = []
    if ec.corpus_benchmark and not ec.predictions:  # (a predictions file answers the hand-written tasks)
        path = resolve_path(ec.corpus_benchmark)
        if not path.is_file():
            raise FileNotFoundError(f"eval.corpus_benchmark: {path} does not exist: the format stage writes it "
                                    "(`dvc repro format`), or set eval.corpus_benchmark=null")
        corpus_tasks = bench.load_tasks(path)[: ec.limit and int(ec.limit)]

    # 2.-4. Completions, scoring and figures, per benchmark.
    rows, metrics = evaluate(cfg, tasks)
    # The hand-written benchmark's dev part chooses settings (decoding, the retrieval block:
    # bench.split); its test part is where a setting chosen so is reported.
    metrics["parts"] = parts(cfg, tasks, rows, metrics["models"])
    if corpus_tasks:
        print(f"eval: the corpus benchmark: {len(corpus_tasks)} tasks ({ec.corpus_benchmark})")
        corpus_rows, metrics["corpus_benchmark"] = evaluate(cfg, corpus_tasks)
        files.write_jsonl(OUT / "corpus_results.jsonl", corpus_rows)
    metrics["timing"]["wall_seconds"] = round(time.perf_counter() - t_start, 2)

    # 5. Outputs: files, the console, MLflow.
    files.write_jsonl(OUT / "results.jsonl", rows)
    files.write_json(METRICS, metrics)
    files.write_text(PLOTS, summary.category_table({m: metrics[m] for m in metrics["models"]}))
    print_summary(metrics)
    if corpus_tasks:
        print("eval: the corpus benchmark:")
        print_summary(metrics["corpus_benchmark"])
    log_to_mlflow(cfg, metrics)


def evaluate(cfg, tasks: list[dict]) -> tuple[list[dict], dict]:
    """Steps 2-4 for one benchmark: (one result row per task, arm and sample; its metrics)."""
    ec = cfg.eval
    t_start = time.perf_counter()
    metrics: dict = {"benchmark_tasks": len(tasks)}
    timing: dict = {}
    generation: dict = {}

    # 2. The completions: a predictions file, or every arm's model.
    if ec.predictions:
        path = resolve_path(ec.predictions)
        items, counts = scoring.items_from_predictions(files.read_jsonl(path), tasks)
        metrics.update(counts, mode="predictions")
        print(f"eval: scoring {len(items)} predictions from {path} on {len(tasks)} tasks")
    else:
        metrics["mode"] = "model"
        arms = eval_arms.parse_arms(ec.arms, adapter=ec.adapter)  # bad arms fail before the model loads
        # A Hub id (GPU entries): transformers fetches it; else the prepared (or a local) folder.
        base = str(cfg.model.base_model) if basemodel.is_hub_id(cfg.model) else resolve_path(cfg.model.base_model)
        store = retrieval.Store(resolve_path(ec.retrieval.store), corpus=cfg.corpus) if any(a.retrieval for a in arms) else None
        try:
            results = eval_arms.run(cfg, tasks, arms, base=base, adapter=resolve_path(ec.adapter) if ec.adapter else None,
                                    store=store, log=print)
            timing.update(results.pop("_timing"))
            if store is not None:
                metrics["retrieval"] = eval_arms.retrieval_report(results, tasks, cfg, store)
        finally:
            if store is not None:
                store.close()
        items = [it for r in results.values() for it in r["items"]]
        generation = {name: r["generation"] for name, r in results.items()}

    # 3. Scoring: every completion compiled in one program, its test run in the sandbox.
    project = resolve_path(cfg.corpus.root)
    rows, info = scoring.score(
        items, {t["id"]: t for t in tasks}, project=project, tsconfig=str(cfg.corpus.tsconfig),
        timeout=float(ec.timeout_seconds), memory_mb=int(ec.memory_mb),
        try_catch_allowed_in=cfg.validate.try_catch_allowed_in, isolation=str(ec.sandbox),
        module_format=sandbox.module_format(project, str(cfg.corpus.module_format)),
        dependencies=npmdeps.install(project, log=print) if cfg.corpus.install_dependencies else None)
    if info["isolation"] != "bwrap":
        print(f"eval: WARNING: model-written code ran WITHOUT OS-level isolation ({info['isolation']}, eval.sandbox=unsafe)")
    metrics.update(module_format=info["module_format"], isolation=info["isolation"])
    # Which verdict decided each task (every task's test runs apart from the completion today).
    metrics["verdict_by_task"] = {t["id"]: info.get("verdict", scoring.VERDICT) for t in tasks}
    metrics["qi_exports"] = info["qi_exports"]
    timing.update({k: v for k, v in info.items() if k.endswith("_seconds")})

    # 4. The figures: per arm, and every pair of arms compared on the same tasks.
    models = list(dict.fromkeys(r["model"] for r in rows))
    ks = sorted({int(k) for k in ec.k})
    for m in models:
        metrics[m] = summary.summarize([r for r in rows if r["model"] == m], ks)
        if m in generation:
            metrics[m]["generation"] = generation[m]
    if "base" in metrics and "tuned" in metrics:
        metrics["delta"] = summary.deltas(metrics["tuned"], metrics["base"])
    metrics["paired"] = {f"{a} vs {b}": summary.paired_comparison([r for r in rows if r["model"] == a],
                                                                  [r for r in rows if r["model"] == b], seed=int(cfg.seed))
                         for a, b in summary.comparisons(models)}
    no_reference = [t["id"] for t in tasks if not t.get("reference")]
    if no_reference:
        metrics["reference_loss_skipped"] = no_reference
    timing["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    metrics["timing"] = timing
    metrics["models"] = models
    return rows, metrics


def parts(cfg, tasks: list[dict], rows: list[dict], models: list[str]) -> dict:
    """Each arm's figures on the benchmark's dev and test parts, and the paired comparisons on test."""
    ks = sorted({int(k) for k in cfg.eval.k})
    out: dict = {}
    for name, part in zip(("dev", "test"), bench.split(tasks)):
        ids = {t["id"] for t in part}
        mine = [r for r in rows if r["task_id"] in ids]
        out[name] = {"tasks": len(ids), **{m: summary.summarize([r for r in mine if r["model"] == m], ks) for m in models}}
        if name == "test":
            out[name]["paired"] = {f"{a} vs {b}": summary.paired_comparison([r for r in mine if r["model"] == a],
                                                                            [r for r in mine if r["model"] == b], seed=int(cfg.seed))
                                   for a, b in summary.comparisons(models)}
    return out


def print_summary(metrics: dict) -> None:
    for m in metrics["models"]:
        s, g = metrics[m], metrics[m].get("graded", {})
        print(f"eval: {m}: pass@1 {s.get('pass@1', 0):.3f}, compile {s['compile_rate']:.3f}, "
              f"compliance {s['compliance_rate']:.3f}, forbidden {s['forbidden_rate']:.3f} "
              f"({s['completions']} completions, tests: {s['test_status']})")
        if g:
            print(f"eval: {m}: reference loss {g.get('reference_loss', float('nan')):.4f}, syntax valid "
                  f"{g['syntax_valid_rate']:.3f}, type errors {g['type_errors_mean']:.2f} (median "
                  f"{g['type_errors_median']:g}), @qi names real {g['qi_api_valid_share']}, only missing @qi "
                  f"imports {g['only_missing_qi_imports_rate']:.3f}; invented: "
                  + (", ".join(f"{n} x{c}" for n, c in g["invented_names"][:5]) or "none")
                  + "; used, not imported: "
                  + (", ".join(f"{n} x{c}" for n, c in g["not_imported_names"][:5]) or "none"))
    for pair, measures in metrics["paired"].items():
        print(f"eval: {pair} (paired, {next(iter(measures.values()))['n'] if measures else 0} tasks, 95% bootstrap "
              f"interval, exact test p):")
        for name, d in measures.items():
            print(f"eval:   {name:34s} {d['delta']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] "
                  f"p={d['p_value']:.4f}{'  significant' if d['significant'] else ''}")
    print(f"eval: {metrics['timing']['wall_seconds']:.1f}s wall")


def headline(metrics: dict, prefix: str = "") -> dict:
    """The figures experiments are compared by: per arm, `{prefix}{arm}.{figure}`."""
    return {f"{prefix}{arm}.{name}": value for arm in metrics["models"]
            for name, value in (("compile_rate", metrics[arm]["compile_rate"]),
                                ("compliance_rate", metrics[arm]["compliance_rate"]),
                                ("pass_at_1", metrics[arm]["pass@1"]),
                                ("reference_loss", metrics[arm]["graded"].get("reference_loss")),
                                ("syntax_valid_rate", metrics[arm]["graded"].get("syntax_valid_rate")))
            if value is not None}


def log_to_mlflow(cfg, metrics: dict) -> None:
    params = {"eval": cfg.eval, "base_model": cfg.model.base_model, "seed": cfg.seed}
    with tracking.stage_run(cfg, "eval", params) as mlflow:
        mlflow.set_tags({"adapter": str(cfg.eval.adapter), "mode": metrics["mode"],
                         "predictions": str(cfg.eval.predictions)})
        tracking.log_counts(mlflow, {k: v for k, v in metrics.items() if k != "models"})
        mlflow.set_tags({tracking.safe_name(f"significant.{pair}"): ", ".join(n for n, d in ms.items() if d["significant"]) or "none"
                         for pair, ms in metrics["paired"].items()})
        # The figures experiments are compared by, per arm, on the experiment's parent run.
        tracking.log_headline_active(mlflow, headline(metrics))
        if "corpus_benchmark" in metrics:
            tracking.log_headline_active(mlflow, headline(metrics["corpus_benchmark"], prefix="corpus."))
        # Every completion, readable side by side in the MLflow UI's artifact table view.
        rows = list(files.read_jsonl(OUT / "results.jsonl"))
        mlflow.log_table({"task": [r["task_id"] for r in rows], "category": [r["category"] for r in rows],
                          "arm": [r["model"] for r in rows], "completion": [r["completion"] for r in rows],
                          "compiled": [r["compiled"] for r in rows],
                          "compliant": [bool(r["compliance"].get("pass")) for r in rows],
                          "passed": [r["passed"] for r in rows]}, artifact_file="eval/per_task.json")
        tracking.log_datasets(mlflow.MlflowClient(), mlflow.active_run().info.run_id,
                              {"evaluation": resolve_path(cfg.eval.benchmark)})
        mlflow.log_artifact(str(OUT / "results.jsonl"))
        if (OUT / "corpus_results.jsonl").is_file() and "corpus_benchmark" in metrics:
            mlflow.log_artifact(str(OUT / "corpus_results.jsonl"))
        mlflow.log_artifact(str(PLOTS))
        mlflow.log_artifact(str(METRICS))



if __name__ == "__main__":
    stage_entry(run)()
