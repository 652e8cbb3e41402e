"""`qi-expert serve`: llama-cpp-python's OpenAI-compatible server, answering like the trained model.

The model was trained (and is evaluated) with one system prompt; most clients (Claude Code Router,
Continue, a plain `openai` call) send none, and then the model answers as its base did (a
one-message request for a @qi price validator came back as Python). So a chat request without a
system message gets the trained one put first; a client that sends its own keeps it. The model is
listed under a stable id, `<name>:<kind>` (as `ollama create` names it from the Modelfiles), never
a file path; any model name a client asks for is served by the one model, and the answer names it.
Completions stop where the eval's do (a closed code fence, a degenerate loop). A non-streamed
answer is checked before it is returned (Verification: the compiler and the @qi rules, as the
eval's +verify arms check theirs), and the x-qi-compiled / x-qi-violations / x-qi-rounds headers
say what the checks found; `--no-verify` turns that off.

The server itself (routing, streaming, the chat template embedded in the GGUF) is llama_cpp.server;
this adds one ASGI layer that edits the request body before it reaches it.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
OWNER = "qi-expert"
# Response headers: whose system prompt the model saw ("trained" or "client"), and the request's
# id (what `qi-expert feedback` refers to).
SYSTEM_HEADER = b"x-qi-system-prompt"
REQUEST_HEADER = b"x-qi-request-id"
# The checks of a verified answer (Verification): did its code compile, which @qi anti-patterns
# it has ("none"), and how many candidates and repair turns it took. "unchecked": a streamed answer
# (shown as it is written, so never checked first) or verification turned off.
COMPILED_HEADER = b"x-qi-compiled"
VIOLATIONS_HEADER = b"x-qi-violations"
ROUNDS_HEADER = b"x-qi-rounds"


class Verification:
    """How `qi-expert serve` checks an answer before returning it (verify.py, the eval's +verify arms):
    up to `candidates` answers (the client's request, then seeded samples at `temperature`) and
    `rounds` repair turns, each checked by the compiler against `project` and the @qi rules; the
    first that passes is returned, or the best when `budget_seconds` runs out or none passes."""

    def __init__(self, project: Path, tsconfig: str = "tsconfig.json", *, candidates: int = 3, rounds: int = 1,
                 temperature: float = 0.6, budget_seconds: float = 60.0, try_catch_allowed_in=None):
        from qi_expert.typescript import patterns

        self.project, self.tsconfig = Path(project), tsconfig
        self.candidates, self.rounds = max(1, int(candidates)), max(0, int(rounds))
        self.temperature, self.budget_seconds = float(temperature), float(budget_seconds)
        self.try_catch_allowed_in = tuple(try_catch_allowed_in or patterns.DEFAULT_TRY_CATCH_ALLOWED)

    def check(self, text: str) -> dict | None:
        """The verdict on an answer's code (None: the answer holds no code block to check, e.g. prose)."""
        from qi_expert.data import prompting
        from qi_expert.evaluation import verify
        from qi_expert.typescript import sandbox

        code = prompting.extract_code(text or "") if "```" in (text or "") else ""
        if not code.strip():
            return None
        return verify.check([code], project=self.project, tsconfig=self.tsconfig,
                            try_catch_allowed_in=self.try_catch_allowed_in, isolated=sandbox.bwrap_works())[0]


def model_id(path: Path, manifest: dict) -> str:
    """`qi-expert-smollm2-135m:q4_k_m` for the gguf stage's files (the Ollama tag), else the file's stem."""
    name = manifest.get("model")
    kinds = {v: k for k, v in manifest.get("files", {}).items()}
    kind = kinds.get(Path(path).name)
    return f"{name}:{kind}" if name and kind else Path(path).stem


def with_system_prompt(body: dict, system_prompt: str) -> tuple[dict, bool]:
    """The request with the trained system prompt first when it carries no system message.

    Returns (request, True when the prompt was added).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        return body, False
    return {**body, "messages": [{"role": "system", "content": system_prompt}, *messages]}, True


class TrainedDefaults:
    """ASGI middleware: chat requests without a system message get `system_prompt`, and name the
    served model (`model_id`) whatever model the client asked for, so the answer says which
    model wrote it."""

    def __init__(self, app, system_prompt: str | None, model_id: str, log_dir: Path | None = None,
                 verification: Verification | None = None):
        self.app = app
        self.system_prompt = system_prompt
        self.model_id = model_id
        self.log_dir = log_dir  # monitor.py: one row per chat request, when set
        self.verification = verification  # answers checked before they are returned, when set

    async def _models(self, scope, receive, send):
        await _models_listing(self.app, scope, receive, send, OWNER)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == MODELS_PATH:
            return await self._models(scope, receive, send)
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != CHAT_PATH:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        source = b"client"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None  # not JSON: the server answers with its own validation error
        if isinstance(body, dict):
            added = False
            if self.system_prompt:
                body, added = with_system_prompt(body, self.system_prompt)
            source = b"trained" if added else b"client"
            raw = json.dumps({**body, "model": self.model_id}).encode("utf-8")
        sent = False
        request_id = uuid.uuid4().hex
        response = {"status": 0, "body": [], "streamed": False}
        started = time.perf_counter()

        async def replay():
            nonlocal sent
            if sent:
                return await receive()  # later messages: a client disconnect
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["streamed"] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                           for k, v in message.get("headers", []))
                message = {**message, "headers": [*message.get("headers", []), (SYSTEM_HEADER, source),
                                                  (REQUEST_HEADER, request_id.encode())]}
            elif message["type"] == "http.response.body" and self.log_dir is not None:
                response["body"].append(message.get("body", b""))
            await send(message)

        checked = None
        if self.verification is not None and isinstance(body, dict) and not body.get("stream"):
            checked = await self._verified(scope, receive, body, send, source, request_id)
            response.update(status=checked["status"], body=[checked["body"]])
        else:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                     + [(b"content-length", str(len(raw)).encode())]}
            await self.app(scope, replay, tagged_send)
        if self.log_dir is not None and isinstance(body, dict):
            from qi_expert.core import files
            from qi_expert.serve import monitor

            row = monitor.request_row(request_id, self.model_id, source.decode(), body, b"".join(response["body"]),
                                      response["streamed"], time.perf_counter() - started, response["status"])
            if checked is not None:
                row["verified"] = {k: checked[k] for k in ("compiled", "violations", "rounds")}
            files.append_jsonl(self.log_dir / monitor.REQUESTS, row)

    async def _collect(self, scope, receive, body: dict) -> tuple[dict, bytes]:
        """One non-streamed answer of the inner server: (its response start, its body)."""
        raw = json.dumps({**body, "model": self.model_id}).encode("utf-8")
        start, chunks, sent = {}, [], False

        async def once():
            nonlocal sent
            if sent:
                return await receive()  # later messages: the client's disconnect, if it leaves
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        inner = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                 + [(b"content-length", str(len(raw)).encode())]}
        await self.app(inner, once, keep)
        return start, b"".join(chunks)

    async def _verified(self, scope, receive, body: dict, send, source: bytes, request_id: str) -> dict:
        """Candidates and repair turns until one passes the checks (or the budget is spent); the
        chosen answer is sent with what its checks found in the x-qi-* headers."""
        import asyncio

        from qi_expert.evaluation import verify

        v = self.verification
        deadline = time.monotonic() + v.budget_seconds
        best = None  # (problems, start, body, verdict, rounds)
        base_seed = int(body.get("seed") or 0)
        attempts = [dict(body)] + [{**body, "seed": base_seed + k, "temperature": max(float(body.get("temperature") or 0),
                                                                                       v.temperature)}
                                   for k in range(1, v.candidates)]
        rounds, tried = 0, 0
        while attempts and (tried == 0 or time.monotonic() < deadline):
            request = attempts.pop(0)
            start, payload = await self._collect(scope, receive, request)
            tried += 1
            if start.get("status") != 200:
                best = best or (None, start, payload, None, tried)
                break
            text = _message_text(payload)
            verdict = await asyncio.to_thread(v.check, text)
            if verdict is None:  # no code in the answer: nothing to check, returned as it is
                best = (None, start, payload, None, tried)
                break
            key = verify.problems(verdict)
            if best is None or best[0] is None or key < best[0]:
                best = (key, start, payload, verdict, tried)
            if verdict["ok"]:
                break
            if not attempts and rounds < v.rounds:  # the candidates are spent: a repair turn on the best
                rounds += 1
                fix = verify.repair_turn(_message_text(best[2]), best[3])
                attempts.append({**body, "messages": [*body.get("messages", []), *fix]})
        _, start, payload, verdict, _ = best
        checked = {"compiled": "no-code" if verdict is None else str(bool(verdict["compiled"])).lower(),
                   "violations": "none" if verdict is None or not verdict["forbidden"] else ",".join(verdict["forbidden"]),
                   "rounds": tried, "status": start.get("status", 500), "body": payload}
        headers = [(k, v_) for k, v_ in start.get("headers", []) if k.lower() != b"content-length"]
        headers += [(b"content-length", str(len(payload)).encode()), (SYSTEM_HEADER, source),
                    (REQUEST_HEADER, request_id.encode()), (COMPILED_HEADER, checked["compiled"].encode()),
                    (VIOLATIONS_HEADER, checked["violations"].encode()), (ROUNDS_HEADER, str(tried).encode())]
        await send({"type": "http.response.start", "status": checked["status"], "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        return checked


def _message_text(payload: bytes) -> str:
    """The assistant's text in a chat completion response ("" when it is not one)."""
    try:
        return json.loads(payload)["choices"][0]["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return ""


async def _models_listing(app, scope, receive, send, owner: str) -> None:
    """GET /v1/models with `owned_by` saying who made the model (llama_cpp.server says "me")."""
    start, chunks = {}, []

    async def keep(message):
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))

    await app(scope, receive, keep)
    body = b"".join(chunks)
    try:
        listing = json.loads(body)
        for entry in listing.get("data", []):
            entry["owned_by"] = owner
        body = json.dumps(listing).encode("utf-8")
    except (ValueError, AttributeError):
        pass  # not the JSON listing (an error page): as it came
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def create_app(path: Path, manifest: dict, *, system_prompt: str | None, alias: str | None, n_ctx: int,
               n_threads: int, lora_path: str | None = None, host: str = "127.0.0.1", port: int = 8000,
               log_dir: Path | None = None, eval_stops: bool = True, verification: Verification | None = None):
    """The llama_cpp.server app for one GGUF, wrapped in TrainedDefaults. Returns (app, model id)."""
    from llama_cpp.server.app import create_app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    name = alias or model_id(path, manifest)
    model = ModelSettings(model=str(path), model_alias=name, n_ctx=n_ctx, n_threads=n_threads,
                          n_threads_batch=n_threads, n_gpu_layers=0, lora_path=lora_path, verbose=False)
    app = llama_app(server_settings=ServerSettings(host=host, port=port), model_settings=[model])
    if eval_stops:
        from llama_cpp.server import app as server_app

        from qi_expert.generation import llamacpp

        llamacpp.apply_eval_stops(server_app._llama_proxy())  # the one model, loaded by create_app
    return TrainedDefaults(app, system_prompt, name, log_dir, verification), name
