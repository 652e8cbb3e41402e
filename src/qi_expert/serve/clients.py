"""Configurations that point coding tools at `qi-expert serve` (`qi-expert configure` writes them).

- Claude Code Router (`ccr`, @musistudio/claude-code-router 2.x): a provider for the local
  OpenAI-compatible endpoint and a Router whose default and background routes send Claude Code's
  requests to it (the format of its README's config.json: Providers, Router "provider,model").
- Continue (config.yaml, schema v1): the model as an `openai` provider with `apiBase`, in the chat,
  edit and apply roles (an instruction-tuned chat model, not a fill-in-the-middle one: no
  autocomplete role).
- Ollama needs nothing new: the gguf stage's Modelfiles (`ollama create <name>:<kind> -f ...`).

The tests check each file with the tool itself: Continue's own schema (@continuedev/config-yaml),
and a real Claude Code Router started on the written config, answering through `qi-expert serve`.
"""

from __future__ import annotations

import json
from pathlib import Path

from qi_expert.core import files

# The local server needs no key; the tools insist on one.
LOCAL_KEY = "qi-expert-local"
CCR_FILE = Path("claude-code-router") / "config.json"
CONTINUE_FILE = Path("continue") / "config.yaml"


def api_base(host: str, port: int) -> str:
    return f"http://{host}:{port}/v1"


def claude_code_router(base: str, model: str, *, router_port: int = 3456) -> dict:
    return {
        "LOG": False,
        "PORT": router_port,
        "API_TIMEOUT_MS": 600000,
        "Providers": [{"name": "qi-expert", "api_base_url": f"{base}/chat/completions", "api_key": LOCAL_KEY,
                       "models": [model]}],
        "Router": {"default": f"qi-expert,{model}", "background": f"qi-expert,{model}"},
    }


def continue_config(base: str, model: str) -> str:
    import yaml

    config = {"name": "qi-expert", "version": "0.1.0", "schema": "v1",
              "models": [{"name": f"qi-expert ({model})", "provider": "openai", "model": model, "apiBase": base,
                          "apiKey": LOCAL_KEY, "roles": ["chat", "edit", "apply"]}]}
    return yaml.safe_dump(config, sort_keys=False)


def write(out_dir: Path, *, host: str, port: int, model: str, router_port: int = 3456) -> dict[str, Path]:
    """Both files under out_dir; returns {tool: path}."""
    base = api_base(host, port)
    paths = {"claude-code-router": out_dir / CCR_FILE, "continue": out_dir / CONTINUE_FILE}
    files.write_text(paths["claude-code-router"],
                  json.dumps(claude_code_router(base, model, router_port=router_port), indent=2) + "\n")
    files.write_text(paths["continue"], continue_config(base, model))
    return paths
