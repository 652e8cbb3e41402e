# The two commands of the README. Both set up what is missing first (scripts/setup.sh).
.PHONY: setup repro test

# Stage commands in dvc.yaml say `python`: make it this project's virtual environment.
export PATH := $(CURDIR)/.venv/bin:$(PATH)

setup:
	bash scripts/setup.sh

repro: setup
	.venv/bin/dvc repro

test: setup
	.venv/bin/python -m pytest
