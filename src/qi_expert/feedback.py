"""Feedback on served answers, kept as training data.

`qi-expert feedback <request id> good|bad|corrected [--code FILE]` looks the request up in the
server's log (monitor.py: requests.jsonl, the id is each answer's `x-qi-request-id` header) and
appends one row to the project's feedback file (feedback.file, data/feedback/feedback.jsonl,
committed with the project like the corpus it extends):

    {"id", "request_id", "time", "model", "verdict", "instruction", "code"}

`instruction` is the request's last user message; `code` is the answer's code (good), the
user's correction (corrected), or null (bad: kept, counted, never trained on). The validate
stage checks every row's code like a corpus record's (it must compile alone against the corpus's
@qi packages and break no anti-pattern rule) and the format stage trains on the accepted ones when
feedback.include is true, decontaminated against the benchmark like every row. The file is a
dependency of validate, so `dvc repro` retrains with new feedback.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from qi_expert import io

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
        problem = _problem(row)
        if problem:
            raise FeedbackError(f"{path}:{n}: {problem}")
        rows.append(row)
    return rows


def _problem(row) -> str | None:
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


def find_request(log_dir: Path, request_id: str) -> dict:
    """The logged request whose id is (or starts with) `request_id`."""
    from qi_expert import monitor

    log = log_dir / monitor.REQUESTS
    found = [r for r in monitor.read(log) if str(r.get("id", "")).startswith(request_id)] if request_id else []
    if len(found) != 1:
        why = "no request" if not found else f"{len(found)} requests"
        raise FeedbackError(f"{why} with id {request_id!r} in {log} (`qi-expert serve --log-dir {log_dir}` logs them; "
                            "the id is the answer's x-qi-request-id header)")
    return found[0]


def last_user_message(messages) -> str:
    for m in reversed(messages or []):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def record(path: Path, request: dict, verdict: str, code: str | None = None) -> dict:
    """Append one verdict on a logged request; returns the row."""
    from qi_expert import generate

    if verdict == "good":
        code = generate.extract_code(request.get("completion") or "")
    elif verdict == "bad":
        code = None
    row = {"request_id": request["id"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": request.get("model"),
           "verdict": verdict, "instruction": last_user_message(request.get("messages")), "code": code}
    row["id"] = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]
    problem = _problem(row)
    if problem:
        raise FeedbackError(f"not recorded: {problem}")
    io.append_jsonl(path, {k: row[k] for k in FIELDS})
    return row
