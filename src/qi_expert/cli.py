"""`qi-expert`: run the exported GGUF model (models/gguf/, written by the gguf stage).

    qi-expert generate "Create a price validation function"   # streams a completion
    qi-expert generate --model models/gguf/qi-expert-smollm2-135m-q8_0.gguf "..."
    qi-expert generate --retrieve "..."   # with the pattern store's @qi API entries and examples (data/index)
    qi-expert serve --port 8000        # OpenAI-compatible API on 127.0.0.1 (llama_cpp.server)

Defaults (system prompt, temperature, top_p, context) come from the manifest.json the stage
writes beside the GGUF files, else from params.yaml; flags override them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qi_expert import gguf
from qi_expert.config import PARAMS_FILE


def _params_system_prompt() -> str | None:
    try:
        import yaml

        return yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["format"]["system_prompt"]
    except (OSError, KeyError, TypeError):
        return None


def _model(args) -> tuple[Path, dict]:
    path = Path(args.model) if args.model else gguf.default_model(args.models_dir)
    return path, gguf.read_manifest(path)


def _setting(value, manifest: dict, key: str, default):
    return value if value is not None else manifest.get(key, default)


def cmd_generate(args) -> int:
    path, manifest = _model(args)
    if args.no_system:
        system = None
    else:
        system = args.system if args.system is not None else (manifest.get("system_prompt") or _params_system_prompt())
    prompt = args.prompt
    if args.retrieve:
        prompt = _with_retrieved(prompt, Path(args.store))
    llm = gguf.load_llama(path, n_ctx=_setting(args.n_ctx, manifest, "n_ctx", 2048), n_threads=args.threads,
                          lora_path=args.lora)
    try:
        for piece in gguf.stream_chat(llm, prompt, system, args.max_tokens,
                                      temperature=_setting(args.temperature, manifest, "temperature", 0.1),
                                      top_p=_setting(args.top_p, manifest, "top_p", 0.9), seed=args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        llm.close()
    return 0


def _with_retrieved(prompt: str, store_dir: Path) -> str:
    """The prompt with the pattern store's context before it, as the eval's +retrieval arms ask."""
    import yaml

    from qi_expert import retrieval

    try:
        rc = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["eval"]["retrieval"]
    except (OSError, KeyError, TypeError) as e:
        raise FileNotFoundError(f"--retrieve reads eval.retrieval from {PARAMS_FILE}: {e!r}") from e
    store = retrieval.Store(store_dir)
    try:
        context, hits = store.context(prompt, examples=int(rc["examples"]), api=int(rc["api"]), max_chars=int(rc["max_chars"]))
    finally:
        store.close()
    print(f"qi-expert: retrieved {', '.join(h['name'] for h in hits) or 'nothing'}", file=sys.stderr)
    return retrieval.with_context(context, prompt)


def cmd_serve(args) -> int:
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        print(f"qi-expert serve: llama-cpp-python's server cannot be imported ({e}); install its extra "
              f"dependencies: `.venv/bin/pip install -r requirements.txt -c requirements.lock`", file=sys.stderr)
        return 2
    path, manifest = _model(args)
    model = ModelSettings(model=str(path), model_alias=args.alias or path.stem,
                          n_ctx=_setting(args.n_ctx, manifest, "n_ctx", 2048),
                          n_threads=gguf.default_threads(args.threads), n_threads_batch=gguf.default_threads(args.threads),
                          n_gpu_layers=0, lora_path=args.lora, verbose=False)
    server = ServerSettings(host=args.host, port=args.port)
    app = create_app(server_settings=server, model_settings=[model])
    print(f"qi-expert serve: {path} as '{model.model_alias}' on http://{args.host}:{args.port}/v1 "
          f"(system prompt: send it as the first message)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qi-expert", description="Run the qi-expert GGUF model.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="GGUF file (default: the newest *-q4_k_m.gguf in --models-dir)")
        p.add_argument("--models-dir", default="models/gguf", help="where the gguf stage writes (default %(default)s)")
        p.add_argument("--lora", help="a LoRA adapter GGUF to apply (with a base GGUF as --model)")
        p.add_argument("--n-ctx", type=int, help="context size (default: the manifest's, 2048)")
        p.add_argument("--threads", type=int, help="CPU threads (default: every core)")

    gen = sub.add_parser("generate", help="stream a completion for one prompt")
    gen.add_argument("prompt")
    common(gen)
    gen.add_argument("--max-tokens", type=int, default=512)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--system", help="system prompt (default: the training system prompt)")
    gen.add_argument("--no-system", action="store_true", help="send no system prompt")
    gen.add_argument("--retrieve", action="store_true",
                     help="put the pattern store's nearest @qi API entries and examples before the prompt")
    gen.add_argument("--store", default="data/index", help="the pattern store (default %(default)s, the index stage's)")
    gen.set_defaults(func=cmd_generate)

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server (llama_cpp.server)")
    common(srv)
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--alias", help="model name in the API (default: the file's stem)")
    srv.add_argument("--log-level", default="info")
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"qi-expert: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
