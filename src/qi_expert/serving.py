"""`qi-expert serve`: llama-cpp-python's OpenAI-compatible server, answering like the trained model.

The model was trained (and is evaluated) with one system prompt; most clients (Claude Code Router,
Continue, a plain `openai` call) send none, and then the model answers as its base did (a
one-message request for a @qi price validator came back as Python). So a chat request without a
system message gets the trained one put first; a client that sends its own keeps it. The model is
listed under a stable id, `<name>:<kind>` (as `ollama create` names it from the Modelfiles), never
a file path; any model name a client asks for is served by the one model, and the answer names it.
Completions stop where the eval's do (a closed code fence, a degenerate loop).

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

    def __init__(self, app, system_prompt: str | None, model_id: str, log_dir: Path | None = None):
        self.app = app
        self.system_prompt = system_prompt
        self.model_id = model_id
        self.log_dir = log_dir  # monitor.py: one row per chat request, when set

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

        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                 + [(b"content-length", str(len(raw)).encode())]}
        await self.app(scope, replay, tagged_send)
        if self.log_dir is not None and isinstance(body, dict):
            from qi_expert import io, monitor

            io.append_jsonl(self.log_dir / monitor.REQUESTS, monitor.request_row(
                request_id, self.model_id, source.decode(), body, b"".join(response["body"]), response["streamed"],
                time.perf_counter() - started, response["status"]))


class _LlamaVocab:
    """What decoding.stop_checker asks of a tokenizer, answered by llama.cpp's own vocabulary."""

    def __init__(self, llm):
        self.llm = llm

    def get_vocab(self) -> dict[str, int]:
        return {self.llm._model.token_get_text(i): i for i in range(self.llm.n_vocab())}

    def decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")


def apply_eval_stops(llm) -> None:
    """Stop every completion of `llm` where the eval stops one: at the code fence that closes the
    answer, or in a degenerate loop (decoding.stop_checker). Without the loop rule a small model
    that starts repeating itself runs to max_tokens (26 of the 54 tuned eval completions would).

    llama_cpp.server passes no stopping criteria of its own; its chat handlers call the model's
    create_completion, which takes them: that one method of this instance is wrapped.
    """
    from llama_cpp import StoppingCriteriaList

    from qi_expert import decoding

    check = decoding.stop_checker(_LlamaVocab(llm))
    create_completion = llm.create_completion

    def with_stops(*args, stopping_criteria=None, **kwargs):
        first: list[int] = []

        def stop(input_ids, logits) -> bool:  # input_ids: the prompt and the tokens so far
            if not first:
                first.append(len(input_ids) - 1)  # called after each new token: the first call has one
            return check([int(t) for t in input_ids[first[0]:]]) is not None

        criteria = StoppingCriteriaList([*(stopping_criteria or []), stop])
        return create_completion(*args, stopping_criteria=criteria, **kwargs)

    llm.create_completion = with_stops


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
               log_dir: Path | None = None, eval_stops: bool = True):
    """The llama_cpp.server app for one GGUF, wrapped in TrainedDefaults. Returns (app, model id)."""
    from llama_cpp.server.app import create_app as llama_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    name = alias or model_id(path, manifest)
    model = ModelSettings(model=str(path), model_alias=name, n_ctx=n_ctx, n_threads=n_threads,
                          n_threads_batch=n_threads, n_gpu_layers=0, lora_path=lora_path, verbose=False)
    app = llama_app(server_settings=ServerSettings(host=host, port=port), model_settings=[model])
    if eval_stops:
        from llama_cpp.server import app as server_app

        apply_eval_stops(server_app._llama_proxy())  # the one model, loaded by create_app
    return TrainedDefaults(app, system_prompt, name, log_dir), name
