# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
.PHONY: setup repro test test-fast bench exps report mlflow

# Stage commands in dvc.yaml say `python`: make it this project's virtual environment.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

setup:
	bash scripts/setup.sh

repro: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest

# The edit loop: every test but those that run a whole stage or pipeline (marked slow; ~5 min here).
test-fast: setup
	.venv/bin/python -m pytest -m "not slow"

# Every benchmark (benchmarks/run_all.py), one at a time, and one table; after `make repro`.
bench: setup
	.venv/bin/python benchmarks/run_all.py

# The experiments side by side, the swept params and the headline figures only (dvc exp show
# lists hundreds of columns: every stage's counts). Pass more with EXPS_ARGS="-A --md".
# Then the spread across seeds of every setting run with several (scripts/seeds.py).
EXPS_KEEP := Experiment|Created|params.yaml:(adapter|max_steps)|^(seed|model\.name|lora_r|lora_alpha|learning_rate)$$|val_loss_final$$|^(corpus_benchmark\.)?(base|tuned)(\+retrieval)?(\+verify)?\.(compile_rate|compliance_rate|pass@1|graded\.reference_loss)$$
exps:
	.venv/bin/dvc exp show --no-pager --drop '.*' --keep '$(EXPS_KEEP)' $(EXPS_ARGS)
	.venv/bin/python scripts/seeds.py

# The figures in README.md and docs/, rewritten from metrics/ (tests/test_readme.py checks they agree).
report: setup
	.venv/bin/python scripts/report.py --write

# The MLflow UI on the project's store. MLflow 3.17 opens an experiment on its (empty) GenAI
# overview in a fresh browser: this prints the address of the experiment's runs view first.
mlflow: setup
	@.venv/bin/python -c "import mlflow, yaml; name = yaml.safe_load(open('params.yaml'))['mlflow']['experiment']; e = mlflow.MlflowClient('sqlite:///mlflow.db').get_experiment_by_name(name); print(f'the runs of {name}: http://127.0.0.1:5000/#/experiments/{e.experiment_id}/runs' if e else 'no runs yet: make repro first')"
	.venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

