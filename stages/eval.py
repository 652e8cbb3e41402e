"""Stage `eval`: how well do the base and the fine-tuned model write @qi code?

    python stages/eval.py                                 # base + tuned (models/adapter)
    python stages/eval.py eval.limit=3                    # the first 3 tasks only
    python stages/eval.py eval.adapter=null               # the base model alone
    python stages/eval.py eval.predictions=preds.jsonl    # score {task_id, completion} rows, no model

Writes data/eval/results.jsonl (one row per task, model and sample), metrics/eval.json,
metrics/eval_by_category.csv (DVC bar plot) and an MLflow run with the results as an artifact.
"""

from qi_expert import evaluate, io, tracking
from qi_expert.config import resolve_path, stage_entry

OUT = resolve_path("data/eval")
METRICS = resolve_path("metrics/eval.json")
PLOTS = resolve_path("metrics/eval_by_category.csv")


def run(cfg):
    rows, metrics = evaluate.run_eval(cfg)
    io.write_jsonl(OUT / "results.jsonl", rows)
    io.write_json(METRICS, metrics)
    PLOTS.parent.mkdir(parents=True, exist_ok=True)
    PLOTS.write_text(evaluate.category_table({m: metrics[m] for m in metrics["models"]}), encoding="utf-8")
    for m in metrics["models"]:
        s = metrics[m]
        print(f"eval: {m}: pass@1 {s.get('pass@1', 0):.3f}, compile {s['compile_rate']:.3f}, "
              f"compliance {s['compliance_rate']:.3f}, forbidden {s['forbidden_rate']:.3f} "
              f"({s['completions']} completions, tests: {s['test_status']})")
    if "delta" in metrics:
        print(f"eval: tuned - base: pass@1 {metrics['delta'].get('pass@1', 0):+.3f}, "
              f"compile {metrics['delta']['compile_rate']:+.3f}, compliance {metrics['delta']['compliance_rate']:+.3f}")
    print(f"eval: {metrics['timing']['wall_seconds']:.1f}s wall")
    params = {"eval": cfg.eval, "base_model": cfg.model.base_model, "seed": cfg.seed}
    with tracking.stage_run(cfg, "eval", params) as mlflow:
        mlflow.set_tags({"adapter": str(cfg.eval.adapter), "mode": metrics["mode"],
                         "predictions": str(cfg.eval.predictions)})
        tracking.log_counts(mlflow, {k: v for k, v in metrics.items() if k != "models"})
        mlflow.log_artifact(str(OUT / "results.jsonl"))
        mlflow.log_artifact(str(PLOTS))
        mlflow.log_artifact(str(METRICS))


if __name__ == "__main__":
    stage_entry(run)()
