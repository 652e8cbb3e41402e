# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
.PHONY: setup repro test bench

setup:
	bash scripts/setup.sh

repro: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python benchmarks/run_all.py
