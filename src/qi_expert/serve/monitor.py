"""What the served model is asked and writes, checked like the eval checks it (opt-in, local).

`qi-expert serve --log-dir DIR` appends one row per chat request to DIR/requests.jsonl (the
messages as the model saw them, the completion, usage, seconds); nothing leaves the machine. A
background thread of the server (and `qi-expert report`, for what the server had not reached)
checks each completion's code with the eval's own compiler program and rules
(scoring.check_code: compiled, forbidden constructs, @qi names real or invented, used without
import) and appends the verdicts to DIR/checks.jsonl, logging them to MLflow as a run
`serve:<model>` (tag stage=serve), one step per request, so adherence over time is a chart.

Rows are appended with one write each (O_APPEND): the server, the checker and `report` never
interleave a line. Feedback on a served answer (`qi-expert feedback`) goes to the project's
feedback file (feedback.py), keyed by the request id written here.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from qi_expert.core import files
from qi_expert.data import feedback, prompting

REQUESTS = "requests.jsonl"
CHECKS = "checks.jsonl"


def read(path: Path) -> list[dict]:
    """A log's rows ([] before the first); a line cut by a crash mid-write is left out."""
    return list(files.read_jsonl(path, skip_broken=True)) if path.is_file() else []


def find_request(log_dir: Path, request_id: str) -> dict:
    """The logged request whose id is (or starts with) `request_id`."""
    log = log_dir / REQUESTS
    found = [r for r in read(log) if str(r.get("id", "")).startswith(request_id)] if request_id else []
    if len(found) != 1:
        why = "no request" if not found else f"{len(found)} requests"
        raise feedback.FeedbackError(f"{why} with id {request_id!r} in {log} (`qi-expert serve --log-dir {log_dir}` logs them; "
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
    if verdict == "good":
        code = prompting.extract_code(request.get("completion") or "")
    elif verdict == "bad":
        code = None
    row = {"request_id": request["id"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": request.get("model"),
           "verdict": verdict, "instruction": last_user_message(request.get("messages")), "code": code}
    row["id"] = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]
    problem = feedback.row_problem(row)
    if problem:
        raise feedback.FeedbackError(f"not recorded: {problem}")
    files.append_jsonl(path, {k: row[k] for k in feedback.FIELDS})
    return row


def completion_text(body: bytes, streamed: bool) -> tuple[str, dict | None]:
    """The assistant's text (and usage) from a chat response body, plain JSON or server-sent events."""
    if not streamed:
        try:
            data = json.loads(body)
            return data["choices"][0]["message"].get("content") or "", data.get("usage")
        except (ValueError, KeyError, IndexError, TypeError):
            return "", None
    parts, usage = [], None
    for line in body.decode("utf-8", errors="replace").splitlines():
        if not line.startswith("data:") or line.strip() == "data: [DONE]":
            continue
        try:
            chunk = json.loads(line[len("data:"):])
        except ValueError:
            continue
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts), usage


def fence_language(text: str) -> str:
    """The tag of the answer's first code fence ("typescript", "python", ...; "" when untagged or none)."""
    m = re.search(r"```([\w+-]*)", text)
    return m.group(1).lower() if m else ""


TYPESCRIPT_TAGS = ("typescript", "ts", "tsx", "")


def request_row(request_id: str, model: str, system_source: str, request: Mapping, body: bytes, streamed: bool,
                seconds: float, status: int) -> dict:
    text, usage = completion_text(body, streamed)
    return {"id": request_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model,
            "system_prompt": system_source, "messages": request.get("messages"), "completion": text,
            "usage": usage, "stream": streamed, "status": status, "seconds": round(seconds, 3)}


def check_pending(log_dir: Path, *, project: Path, tsconfig: str, forbidden: Iterable[str],
                  try_catch_allowed_in: Iterable[str], tracking_uri: str | None = None,
                  experiment: str = "qi-expert") -> int:
    """Check the logged completions not checked yet; returns how many were checked."""
    from qi_expert.data import prompting
    from qi_expert.evaluation import scoring

    done = {r["id"] for r in read(log_dir / CHECKS)}
    pending = [r for r in read(log_dir / REQUESTS) if r["id"] not in done and r.get("status") == 200]
    if not pending:
        return 0
    codes = [prompting.extract_code(r.get("completion") or "") for r in pending]
    verdicts = scoring.check_code(codes, project=project, tsconfig=tsconfig, forbidden=forbidden,
                                   try_catch_allowed_in=try_catch_allowed_in)
    rows = []
    for r, code, v in zip(pending, codes, verdicts):
        g = v["graded"]
        rows.append({"id": r["id"], "time": r["time"], "model": r["model"], "has_code": bool(code.strip()),
                     "language": fence_language(r.get("completion") or ""),
                     "compiled": v["compiled"], "n_compile_errors": v["n_compile_errors"],
                     "forbidden_found": v["forbidden_found"], "qi_names_real": g["api"]["real"],
                     "qi_names_invented": g["api"]["invented"], "qi_names_not_imported": g["not_imported"]})
    for row in rows:
        files.append_jsonl(log_dir / CHECKS, row)
    if tracking_uri:
        _log_to_mlflow(rows, len(done), tracking_uri, experiment)
    return len(rows)


def _log_to_mlflow(rows: list[dict], first_step: int, uri: str, experiment: str) -> None:
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment) or client.get_experiment(client.create_experiment(experiment))
    for model in sorted({r["model"] for r in rows}):
        runs = client.search_runs([exp.experiment_id], f"tags.stage = 'serve' and tags.served_model = '{model}'",
                                  max_results=1)
        run_id = runs[0].info.run_id if runs else client.create_run(
            exp.experiment_id, run_name=f"serve:{model}", tags={"stage": "serve", "served_model": model}).info.run_id
        now = int(time.time() * 1000)
        metrics = []
        for step, r in enumerate((r for r in rows if r["model"] == model), start=first_step):
            metrics += [Metric("served.compiled", float(r["compiled"]), now, step),
                        Metric("served.forbidden_free", float(not r["forbidden_found"]), now, step),
                        Metric("served.qi_names_invented", float(len(r["qi_names_invented"])), now, step),
                        Metric("served.qi_names_not_imported", float(len(r["qi_names_not_imported"])), now, step)]
        client.log_batch(run_id, metrics=metrics)


def report(log_dir: Path) -> dict:
    """Adherence of the served answers so far (from checks.jsonl), overall and by day."""
    checks = read(log_dir / CHECKS)
    requests = read(log_dir / REQUESTS)

    def block(rows: list[dict]) -> dict:
        n = len(rows)
        coded = [r for r in rows if r["has_code"]]
        return {"checked": n, "with_code": len(coded),
                # An answer in another language (the untrained failure: Python) is not @qi code at all.
                "typescript_rate": round(sum(r.get("language", "") in TYPESCRIPT_TAGS for r in coded) / len(coded), 4)
                if coded else None,
                "compile_rate": round(sum(r["compiled"] for r in coded) / len(coded), 4) if coded else None,
                "forbidden_rate": round(sum(bool(r["forbidden_found"]) for r in coded) / len(coded), 4) if coded else None,
                "qi_names_invented_per_answer": round(sum(len(r["qi_names_invented"]) for r in coded) / len(coded), 4)
                if coded else None}

    by_day: dict[str, list[dict]] = {}
    for r in checks:
        by_day.setdefault(r["time"][:10], []).append(r)
    invented = Counter(n for r in checks for n in r["qi_names_invented"])
    unimported = Counter(n for r in checks for n in r["qi_names_not_imported"])
    return {"requests": len(requests), "trained_system_prompt": sum(r.get("system_prompt") == "trained" for r in requests),
            **block(checks), "by_day": {d: block(rs) for d, rs in sorted(by_day.items())},
            "invented": invented.most_common(10), "not_imported": unimported.most_common(10)}


class Checker(threading.Thread):
    """The server's background checker: every `interval` seconds, check what is pending."""

    def __init__(self, log_dir: Path, interval: float = 30.0, **kwargs):
        super().__init__(name="qi-expert-checker", daemon=True)
        self.log_dir, self.interval, self.kwargs = log_dir, interval, kwargs
        self.stopped = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                check_pending(self.log_dir, **self.kwargs)
            except Exception as e:  # a failed check must not take the server down; report says so
                self.error = f"{type(e).__name__}: {e}"
