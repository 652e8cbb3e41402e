"""`qi-expert`: run the exported GGUF model (models/gguf/, written by the gguf stage).

    qi-expert generate "Create a price validation function"   # streams a completion
    qi-expert generate --model models/gguf/qi-expert-smollm2-135m-q8_0.gguf "..."
    qi-expert generate --retrieve "..."   # with the pattern store's @qi API entries and examples (data/index)
    qi-expert serve --port 8000        # OpenAI-compatible API on 127.0.0.1 (llama_cpp.server, serving.py)
    qi-expert configure --port 8000    # Claude Code Router and Continue configs for that server (clients.py)
    qi-expert serve --log-dir models/served   # ... logging requests, their code checked (monitor.py)
    qi-expert report                   # adherence of the served answers
    qi-expert feedback <id> good|bad|corrected [--code fixed.ts]   # into the training data (feedback.py)
    qi-expert drift [--since REV]      # docs that do not compile against the packages; the API's changes since REV
    qi-expert patterns [--history N]   # @qi pattern usage by kind, training gaps, trends over N sampled commits

Defaults (system prompt, temperature, top_p, context) come from the manifest.json the stage
writes beside the GGUF files, else from params.yaml; flags override them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qi_expert.core.config import PARAMS_FILE
from qi_expert.generation import gguf, llamacpp


def _params_system_prompt() -> str | None:
    try:
        import yaml

        return yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))["format"]["system_prompt"]
    except (OSError, KeyError, TypeError):
        return None


def _model(args) -> tuple[Path, dict]:
    path = Path(args.model) if args.model else gguf.default_model(args.models_dir)
    return path, gguf.read_manifest(path)


def _system_prompt(args, manifest: dict) -> str | None:
    """--system, else the one the model was trained with (the manifest's, else params.yaml's); none with --no-system."""
    if args.no_system:
        return None
    return args.system if args.system is not None else (manifest.get("system_prompt") or _params_system_prompt())


def _setting(value, manifest: dict, key: str, default):
    return value if value is not None else manifest.get(key, default)


def cmd_generate(args) -> int:
    path, manifest = _model(args)
    system = _system_prompt(args, manifest)
    prompt = args.prompt
    if args.retrieve:
        prompt = _with_retrieved(prompt, Path(args.store))
    llm = llamacpp.load_llama(path, n_ctx=_setting(args.n_ctx, manifest, "n_ctx", 2048), n_threads=args.threads,
                              lora_path=args.lora)
    llamacpp.apply_eval_stops(llm)  # stops where the eval and the server stop: a closed fence, a loop
    try:
        for piece in llamacpp.stream_chat(llm, prompt, system, args.max_tokens,
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

    from qi_expert.data import retrieval

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

        from qi_expert.serve import serving
    except ImportError as e:
        print(f"qi-expert serve: llama-cpp-python's server cannot be imported ({e}); install its extra "
              f"dependencies: `.venv/bin/pip install -r requirements.txt -c requirements.lock`", file=sys.stderr)
        return 2
    path, manifest = _model(args)
    system = _system_prompt(args, manifest)
    log_dir = Path(args.log_dir) if args.log_dir else None
    verification = None
    if not args.no_verify:
        checks = _check_settings()
        verification = serving.Verification(checks["project"], checks["tsconfig"], candidates=args.verify_candidates,
                                            rounds=args.verify_rounds, budget_seconds=args.verify_budget,
                                            try_catch_allowed_in=checks["try_catch_allowed_in"])
    app, name = serving.create_app(path, manifest, system_prompt=system, alias=args.alias,
                                   n_ctx=_setting(args.n_ctx, manifest, "n_ctx", 2048),
                                   n_threads=llamacpp.default_threads(args.threads), lora_path=args.lora,
                                   host=args.host, port=args.port, log_dir=log_dir,
                                   eval_stops=not args.no_eval_stops, verification=verification)
    how = ("requests without a system message get the trained one" if system
           else "no system prompt is added")
    how += ("; answers checked before they are returned (up to "
            f"{args.verify_candidates} candidates, {args.verify_rounds} repair turn(s), {args.verify_budget:g} s)"
            if verification else "; answers returned unchecked (--no-verify)")
    if log_dir is not None:
        from qi_expert.serve import monitor

        monitor.Checker(log_dir, interval=args.check_every, **_check_settings()).start()
        how += f"; requests logged to {log_dir / monitor.REQUESTS}, checked every {args.check_every:g} s"
    print(f"qi-expert serve: {path} as '{name}' on http://{args.host}:{args.port}/v1 ({how})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _check_settings() -> dict:
    """How served answers are checked: the project's corpus, anti-pattern rules and MLflow store."""
    from qi_expert.core import tracking
    from qi_expert.core.config import load_params, resolve_path

    cfg = load_params()
    return {"project": resolve_path(cfg.corpus.root), "tsconfig": str(cfg.corpus.tsconfig),
            "forbidden": list(cfg.validate.anti_patterns), "try_catch_allowed_in": list(cfg.validate.try_catch_allowed_in),
            "tracking_uri": tracking.tracking_uri(cfg), "experiment": str(cfg.mlflow.experiment)}


def cmd_drift(args) -> int:
    """The validate stage's drift report (metrics/drift.json); with --since, the @qi packages' public
    surface now against git revision REV of the checkout, and which failing blocks each change breaks."""
    import json

    from qi_expert.core.config import load_params, resolve_path
    from qi_expert.data import drift, retrieval
    from qi_expert.typescript import typecheck

    cfg = load_params()
    path = resolve_path("metrics/drift.json")
    if not path.is_file():
        print(f"qi-expert drift: {path} does not exist: run `dvc repro validate`", file=sys.stderr)
        return 1
    found = json.loads(path.read_text(encoding="utf-8"))
    if args.since:
        root, tsconfig = resolve_path(cfg.corpus.root), str(cfg.corpus.tsconfig)
        exports = lambda folder: typecheck.module_exports(folder, tsconfig, missing_ok=True)  # noqa: E731
        try:
            before = drift.surface_at(root, args.since, exports, retrieval.api_surface)
        except ValueError as e:
            print(f"qi-expert drift: {e}", file=sys.stderr)
            return 1
        found["surface_diff"] = {"since": args.since,
                                 **drift.surface_diff(before, retrieval.api_surface(root, exports(root)), found)}
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(drift.markdown(found, str(cfg.corpus.name), limit=args.limit))
    return 0


def cmd_patterns(args) -> int:
    """Pattern usage in the extracted records, where training rows or benchmark tasks are few, and
    (--history N) the usage at N sampled commits of the corpus checkout with its trends."""
    import json

    from qi_expert.core import files
    from qi_expert.core.config import load_params, resolve_path
    from qi_expert.data import bench, evolution, extract, revisions

    cfg = load_params()
    records_file, accepted_file = resolve_path("data/extracted/records.jsonl"), resolve_path("data/validated/accepted.jsonl")
    for f in (records_file, accepted_file):
        if not f.is_file():
            print(f"qi-expert patterns: {f} does not exist: run `dvc repro validate`", file=sys.stderr)
            return 1
    out = {"usage": evolution.usage(files.read_jsonl(records_file)),
           "gaps": evolution.gaps(files.read_jsonl(accepted_file), bench.load_tasks(resolve_path(cfg.eval.benchmark)),
                                  args.minimum)}
    if args.history:
        root, tsconfig = resolve_path(cfg.corpus.root), str(cfg.corpus.tsconfig)
        count = lambda tree: evolution.counts_of(extract.extract_corpus(tree, cfg.extract, tsconfig)[0])  # noqa: E731
        try:
            points = evolution.history(root, revisions.sampled_commits(root, args.history), count, evolution.code_key())
        except ValueError as e:
            print(f"qi-expert patterns: {e}", file=sys.stderr)
            return 1
        out["history"], out["trends"] = points, evolution.trends(points)
        if points:
            out["since_last"] = evolution.since_last(root, points[-1])
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    kinds = sorted({k for by_kind in out["usage"].values() for k in by_kind})
    print("| pattern | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for p, by_kind in out["usage"].items():
        print(f"| {p} | " + " | ".join(str(by_kind.get(k, 0)) for k in kinds) + " |")
    for g in out["gaps"]:
        print(f"gap: {g['pattern']}: {g['training_records']} accepted training records, {g['benchmark_tasks']} benchmark tasks")
    for p, t in out.get("trends", {}).items():
        print(f"trend: {p}: {t['first']:.1%} -> {t['last']:.1%} of the records ({t['trend']})")
    new = out.get("since_last")
    if new and new["last"] is None:
        print(f"since the last run: none before; {new['head'][:8]} remembered")
    elif new and new["last"] == new["head"]:
        print(f"since the last run: nothing new ({new['head'][:8]} again)")
    elif new:
        print(f"since the last run ({new['last'][:8]} -> {new['head'][:8]}): {new['records']:+d} records; "
              + (", ".join(f"{p} {d:+d}" for p, d in new["by_pattern"].items()) or "no pattern type changed")
              + (f"; new pattern types: {', '.join(new['new_patterns'])}" if new["new_patterns"] else ""))
    return 0


def cmd_report(args) -> int:
    import json

    from qi_expert.serve import monitor

    log_dir = Path(args.log_dir)
    if not (log_dir / monitor.REQUESTS).is_file():
        print(f"qi-expert report: {log_dir / monitor.REQUESTS} does not exist: start the server with "
              f"`qi-expert serve --log-dir {log_dir}`", file=sys.stderr)
        return 1
    checked = monitor.check_pending(log_dir, **_check_settings())
    summary = monitor.report(log_dir)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    rate = lambda v: "-" if v is None else f"{v:.1%}"
    print(f"{summary['requests']} requests ({summary['trained_system_prompt']} with the trained system prompt), "
          f"{summary['checked']} checked ({checked} just now), {summary['with_code']} with code")
    print(f"TypeScript {rate(summary['typescript_rate'])}, compiles {rate(summary['compile_rate'])}, "
          f"anti-patterns {rate(summary['forbidden_rate'])}, "
          f"invented @qi names per answer {summary['qi_names_invented_per_answer']}")
    for day, b in summary["by_day"].items():
        print(f"  {day}: {b['with_code']} answers with code, TypeScript {rate(b['typescript_rate'])}, "
              f"compiles {rate(b['compile_rate'])}, "
              f"anti-patterns {rate(b['forbidden_rate'])}")
    if summary["invented"]:
        print("invented: " + ", ".join(f"{n} x{c}" for n, c in summary["invented"]))
    if summary["not_imported"]:
        print("used, not imported: " + ", ".join(f"{n} x{c}" for n, c in summary["not_imported"]))
    return 0


def cmd_feedback(args) -> int:
    from qi_expert.core.config import load_params, resolve_path
    from qi_expert.data import feedback
    from qi_expert.serve import monitor

    code = None
    if args.verdict == "corrected":
        if not args.code:
            print("qi-expert feedback: a correction needs --code FILE (the corrected TypeScript)", file=sys.stderr)
            return 2
        code = Path(args.code).read_text(encoding="utf-8")
    elif args.code:
        print(f"qi-expert feedback: --code goes with `corrected`, not `{args.verdict}`", file=sys.stderr)
        return 2
    target = Path(args.file) if args.file else resolve_path(str(load_params().feedback.file))
    try:
        request = monitor.find_request(Path(args.log_dir), args.request_id)
        row = monitor.record(target, request, args.verdict, code)
    except feedback.FeedbackError as e:
        print(f"qi-expert feedback: {e}", file=sys.stderr)
        return 1
    print(f"qi-expert feedback: {row['verdict']} on request {row['request_id']} -> {target} "
          f"(checked and used by the next `dvc repro`)")
    return 0


def cmd_configure(args) -> int:
    from qi_expert.serve import clients, serving

    path, manifest = _model(args)
    model = args.alias or serving.model_id(path, manifest)
    paths = clients.write(Path(args.out), host=args.host, port=args.port, model=model, router_port=args.router_port)
    serve = f"qi-expert serve --port {args.port}" + (f" --model {path}" if args.model else "")
    print(f"""qi-expert configure: '{model}' at {clients.api_base(args.host, args.port)} (start it with `{serve}`)
  Claude Code Router: {paths['claude-code-router']}
      cp {paths['claude-code-router']} ~/.claude-code-router/config.json && ccr restart && ccr code
  Continue:           {paths['continue']}
      cp {paths['continue']} ~/.continue/config.yaml   (or add its `models` entry to yours)
  Ollama:             ollama create {model} -f {path.parent / 'Modelfile'}""")
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
    srv.add_argument("--alias", help="model id in the API (default: <name>:<kind>, as Ollama tags it)")
    srv.add_argument("--system", help="system prompt for requests that send none (default: the training one)")
    srv.add_argument("--no-system", action="store_true", help="add no system prompt (the client's messages as sent)")
    srv.add_argument("--log-level", default="info")
    srv.add_argument("--log-dir", help="log each chat request and answer here and check its code (opt-in; local)")
    srv.add_argument("--check-every", type=float, default=30.0, help="seconds between checks of logged answers")
    srv.add_argument("--no-eval-stops", action="store_true",
                     help="do not stop at the closing code fence or a repetition loop (the eval's rules)")
    srv.add_argument("--no-verify", action="store_true",
                     help="return answers unchecked (by default a non-streamed answer's code is compiled and "
                          "checked against the @qi rules first, resampled and repaired while it fails)")
    srv.add_argument("--verify-candidates", type=int, default=3, help="answers tried before repair turns (default %(default)s)")
    srv.add_argument("--verify-rounds", type=int, default=1, help="repair turns after the candidates (default %(default)s)")
    srv.add_argument("--verify-budget", type=float, default=60.0,
                     help="seconds after which the best answer so far is returned (default %(default)s)")
    srv.set_defaults(func=cmd_serve)

    rep = sub.add_parser("report", help="adherence of the served answers (checks what the server had not)")
    rep.add_argument("--log-dir", default="models/served", help="the server's --log-dir (default %(default)s)")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=cmd_report)

    fb = sub.add_parser("feedback", help="a verdict or a correction on a served answer, kept as training data")
    fb.add_argument("request_id", help="the answer's x-qi-request-id (a unique prefix will do)")
    fb.add_argument("verdict", choices=["good", "bad", "corrected"])
    fb.add_argument("--code", help="the corrected code (a .ts file), with `corrected`")
    fb.add_argument("--log-dir", default="models/served", help="the server's --log-dir (default %(default)s)")
    fb.add_argument("--file", help="the feedback file (default: feedback.file of params.yaml)")
    fb.set_defaults(func=cmd_feedback)

    dr = sub.add_parser("drift", help="documentation blocks that do not compile against the packages, by cause")
    dr.add_argument("--since", help="a git revision of the corpus checkout: what the public surface changed since")
    dr.add_argument("--limit", type=int, default=50, help="blocks to list (default %(default)s)")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_drift)

    pa = sub.add_parser("patterns", help="@qi pattern usage by kind, training gaps, trends over the git history")
    pa.add_argument("--history", type=int, default=0, help="sample this many commits of the corpus checkout")
    pa.add_argument("--minimum", type=int, default=10, help="fewer training records or tasks than this is a gap")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(func=cmd_patterns)

    cfg = sub.add_parser("configure", help="write Claude Code Router and Continue configs for `qi-expert serve`")
    common(cfg)
    cfg.add_argument("--host", default="127.0.0.1")
    cfg.add_argument("--port", type=int, default=8000, help="the port `qi-expert serve` listens on (default %(default)s)")
    cfg.add_argument("--router-port", type=int, default=3456, help="Claude Code Router's own port (default %(default)s)")
    cfg.add_argument("--alias", help="model id (default: <name>:<kind>, as `qi-expert serve` lists it)")
    cfg.add_argument("--out", default="models/clients", help="where to write them (default %(default)s)")
    cfg.set_defaults(func=cmd_configure)
    return parser


def main(argv: list[str] | None = None) -> int:
    from qi_expert.core import runtime

    runtime.setup()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"qi-expert: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
