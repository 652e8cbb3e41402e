"""Stage `eval`: how well do the base and the fine-tuned model write @qi code?

    python stages/eval.py                                 # every arm of eval.arms
    python stages/eval.py 'eval.arms=[base,tuned]'        # no retrieval arms
    python stages/eval.py eval.limit=3                    # the first 3 tasks only
    python stages/eval.py eval.adapter=null 'eval.arms=[base]'   # the base model alone
    python stages/eval.py eval.predictions=preds.jsonl    # score {task_id, completion} rows, no model

Writes data/eval/results.jsonl (one row per task, arm and sample), metrics/eval.json (per arm: the
binary rates, the graded metrics, generation; `paired`: every comparison with intervals and tests),
metrics/eval_by_category.csv (DVC bar plot) and an MLflow run with the results as an artifact.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's qi_expert

from qi_expert import evaluate, io, tracking  # noqa: E402
from qi_expert.config import resolve_path, stage_entry  # noqa: E402

OUT = resolve_path("data/eval")
METRICS = resolve_path("metrics/eval.json")
PLOTS = resolve_path("metrics/eval_by_category.csv")


def run(cfg):
    rows, metrics = evaluate.run_eval(cfg)
    io.write_jsonl(OUT / "results.jsonl", rows)
    io.write_json(METRICS, metrics)
    io.write_text(PLOTS, evaluate.category_table({m: metrics[m] for m in metrics["models"]}))
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
    params = {"eval": cfg.eval, "base_model": cfg.model.base_model, "seed": cfg.seed}
    with tracking.stage_run(cfg, "eval", params) as mlflow:
        mlflow.set_tags({"adapter": str(cfg.eval.adapter), "mode": metrics["mode"],
                         "predictions": str(cfg.eval.predictions)})
        tracking.log_counts(mlflow, {k: v for k, v in metrics.items() if k != "models"})
        mlflow.set_tags({tracking.safe_name(f"significant.{pair}"): ", ".join(n for n, d in ms.items() if d["significant"]) or "none"
                         for pair, ms in metrics["paired"].items()})
        # The figures experiments are compared by, per arm, on the experiment's parent run.
        tracking.log_headline_active(mlflow, {
            f"{arm}.{name}": value for arm in metrics["models"]
            for name, value in (("compile_rate", metrics[arm]["compile_rate"]),
                                ("compliance_rate", metrics[arm]["compliance_rate"]),
                                ("pass_at_1", metrics[arm]["pass@1"]),
                                ("reference_loss", metrics[arm]["graded"].get("reference_loss")),
                                ("syntax_valid_rate", metrics[arm]["graded"].get("syntax_valid_rate")))
            if value is not None})
        # Every completion, readable side by side in the MLflow UI's artifact table view.
        rows = list(io.read_jsonl(OUT / "results.jsonl"))
        mlflow.log_table({"task": [r["task_id"] for r in rows], "category": [r["category"] for r in rows],
                          "arm": [r["model"] for r in rows], "completion": [r["completion"] for r in rows],
                          "compiled": [r["compiled"] for r in rows],
                          "compliant": [bool(r["compliance"].get("pass")) for r in rows],
                          "passed": [r["passed"] for r in rows]}, artifact_file="eval/per_task.json")
        tracking.log_datasets(mlflow.MlflowClient(), mlflow.active_run().info.run_id,
                              {"evaluation": resolve_path(cfg.eval.benchmark)})
        mlflow.log_artifact(str(OUT / "results.jsonl"))
        mlflow.log_artifact(str(PLOTS))
        mlflow.log_artifact(str(METRICS))


if __name__ == "__main__":
    stage_entry(run)()
