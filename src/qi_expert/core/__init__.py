"""Shared by every part: params (config: Hydra composition, stage_entry), files (atomic writes, JSONL),
runtime (the process set-up entry points call first), lifetime (child processes that die with us),
node (the Node.js binary), stats (paired tests), tracking (MLflow), gencache (the content-keyed
cache of what a model computes). Imports nothing else of qi_expert."""
