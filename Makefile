# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
.PHONY: setup repro test bench

# Stage commands in dvc.yaml say `python`: make it this project's virtual environment.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

setup:
	bash scripts/setup.sh

repro: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest

# Every benchmark (benchmarks/run_all.py), one at a time, and one table; after `make repro`.
bench: setup
	.venv/bin/python benchmarks/run_all.py
