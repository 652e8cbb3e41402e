"""Feedback on served answers, kept as training data.

`qi-expert feedback <request id> good|bad|corrected [--code FILE]` looks the request up in the
server's log and appends one row (serve/monitor.py: find_request, record; the id is each answer's
`x-qi-request-id` header) to the project's feedback file (feedback.file, data/feedback/feedback.jsonl,
committed with the project like the corpus it extends):

    {"id", "request_id", "time", "model", "verdict", "instruction", "code"}

`instruction` is the request's last user message; `code` is the answer's code (good), the
user's correction (corrected), or null (bad: kept, counted, never trained on). The validate
stage checks every row's code like a corpus record's (it must compile alone against the corpus's
@qi packages and break no anti-pattern rule) and the format stage trains on the accepted ones when
feedback.include is true, decontaminated against the benchmark like every row. The file is a
dependency of validate, so `dvc repro` retrains with new feedback.

This module is the file's format: reading it, and what makes a row unusable.
"""

from __future__ import annotations

import json
from pathlib import Path

VERDICTS = ("good", "bad", "corrected")
FIELDS = ("id", "request_id", "time", "model", "verdict", "instruction", "code")


class FeedbackError(ValueError):
    pass


def read_rows(path: Path) -> list[dict]:
    """The feedback file's rows ([] when there is none); a malformed row is an error naming its line."""
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise FeedbackError(f"{path}:{n}: not valid JSON ({e})") from e
        problem = row_problem(row)
        if problem:
            raise FeedbackError(f"{path}:{n}: {problem}")
        rows.append(row)
    return rows


def row_problem(row) -> str | None:
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    missing = [k for k in FIELDS if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    if row["verdict"] not in VERDICTS:
        return f"verdict {row['verdict']!r} is not one of {', '.join(VERDICTS)}"
    if not isinstance(row["instruction"], str) or not row["instruction"].strip():
        return "instruction must be the request's text"
    if row["verdict"] == "bad":
        return None if row["code"] is None else "a bad verdict carries no code"
    if not isinstance(row["code"], str) or not row["code"].strip():
        return f"a {row['verdict']} verdict needs its code"
    return None
