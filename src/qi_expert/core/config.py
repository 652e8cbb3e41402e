"""Configuration: Hydra composes conf/ into params.yaml; every stage reads params.yaml.

`dvc exp run -S lora_r=32` composes conf/ with the override and overwrites params.yaml before
the pipeline runs, so params.yaml is the single source a stage reads. A by-hand run may still
override keys (`python stages/extract.py corpus.root=/path`): Hydra's compose API applies them
on top of params.yaml. We use compose rather than @hydra.main so that no outputs/ folders or
log files appear beside the DVC outs.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # src/qi_expert/core/config.py -> the checkout


def _project_root() -> Path:
    """The checkout a stage runs in: DVC runs stages from the folder holding dvc.yaml, and a
    queued experiment runs in a temporary copy, whose outputs must land in that copy."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "conf").is_dir():
            return folder
    return PACKAGE_ROOT


ROOT = _project_root()
CONF_DIR = ROOT / "conf"
PARAMS_FILE = ROOT / "params.yaml"


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir)):
        return compose(config_name=config_name, overrides=overrides)


def compose_conf(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/config.yaml with its defaults list, as DVC does for `dvc exp run`."""
    return _compose(CONF_DIR, "config", list(overrides or []))


def load_params(overrides: list[str] | None = None, params_file: Path = PARAMS_FILE) -> DictConfig:
    """The composed parameters a stage runs with: params.yaml plus key overrides."""
    if not params_file.exists():
        raise FileNotFoundError(
            f"{params_file} is missing: compose it with `python -m qi_expert.core.config > params.yaml`"
        )
    return _compose(params_file.parent, params_file.stem, list(overrides or []))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def resolve_path(path: str | Path) -> Path:
    """Paths in the config are relative to the repository root (where dvc runs stages)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p


# ---------------------------------------------------------------------------------------------
# A stage sees the params dvc.yaml lists for it, and nothing else
# ---------------------------------------------------------------------------------------------

_WHOLE: DictConfig | None = None  # the whole parameters of this process's stage run (stage_entry)
_READ: set[str] | None = None  # with $QI_PARAMS_READ: every key the stage read (_trace_reads)
TRACE_FLAG = "qi_params_traced"  # on the stage's view; pickled with it into worker processes


def _trace_reads(path: str, stage: str, listed: list[str]) -> None:
    """Append to `path` a JSON line per parameter key the stage reads from its view (by attribute,
    item or .get(), and setting()) from here on: tests run a stage with $QI_PARAMS_READ and check
    that each param dvc.yaml lists for it is read (a listed group through one of its keys). A line
    as each key is first read, so that forked worker processes (extract's parser pool) add theirs."""
    global _READ
    _READ = set()

    def note(key: str) -> None:
        if key not in _READ:
            _READ.add(key)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"stage": stage, "listed": listed, "read": key}) + "\n")

    for name in ("__getattr__", "__getitem__", "get"):
        original = getattr(DictConfig, name)

        def traced(self, key, *args, _original=original, **kwargs):
            value = _original(self, key, *args, **kwargs)
            if isinstance(key, str) and not key.startswith("_"):
                try:
                    if self._get_root()._get_flag(TRACE_FLAG):
                        note(self._get_full_key(key))
                except Exception:  # noqa: BLE001 (a node without a parent chain: nothing to record)
                    pass
            return value

        setattr(DictConfig, name, traced)

    # A group converted whole (extract_corpus turns cfg.extract into a namespace): "group.*", all of
    # it read. Not when MLflow logging converts it (core/tracking.py logs every listed param).
    to_container = OmegaConf.to_container

    def traced_to_container(cfg, *args, **kwargs):
        if isinstance(cfg, DictConfig) and sys._getframe(1).f_globals.get("__name__") != "qi_expert.core.tracking":
            try:
                if cfg._get_root()._get_flag(TRACE_FLAG):
                    note(f"{cfg._get_full_key('') or ''}.*".lstrip("."))
            except Exception:  # noqa: BLE001
                pass
        return to_container(cfg, *args, **kwargs)

    OmegaConf.to_container = traced_to_container
    globals()["_note"] = note


_note = None


def dvc_stage_of(script: Path, dvc_file: Path | None = None) -> tuple[str, list[str]] | None:
    """(stage name, params) of the dvc.yaml stage whose cmd runs `script`; None when none does."""
    dvc_file = dvc_file or ROOT / "dvc.yaml"
    if not dvc_file.is_file():
        return None
    stages = yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("stages", {})
    for name, stage in stages.items():
        if str(stage.get("cmd", "")).split()[-1:] == [f"stages/{script.name}"]:
            return name, [str(p) for p in stage.get("params", [])]
    return None


def stage_params(whole: DictConfig, keys: list[str]) -> DictConfig:
    """The stage's view of the parameters: the keys dvc.yaml lists for it and nothing else, so a
    stage cannot read a parameter DVC does not know it depends on (reading one raises, naming it)."""
    view = OmegaConf.create({})
    for key in keys:
        value = OmegaConf.select(whole, key, throw_on_missing=True)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(view, key, value, force_add=True)
    OmegaConf.set_struct(view, True)
    return view


def whole_params() -> DictConfig:
    """All parameters, for what no stage output depends on (where MLflow runs go, their tags)."""
    return _WHOLE if _WHOLE is not None else load_params([])


def setting(cfg: DictConfig, key: str):
    """`key` from the stage's own parameters when they hold it, else from the whole parameters."""
    if _note is not None:
        _note(key)
    value = OmegaConf.select(cfg, key, default=None)
    return value if value is not None else OmegaConf.select(whole_params(), key)


class StageError(RuntimeError):
    """A failure the stage explains in one message (printed without a traceback, exit status 1)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, DVC's own cancellation), raised like Ctrl+C's KeyboardInterrupt."""


# A full disk, a quota, a read-only folder, a file-size limit: one line, not a traceback.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signal.Signals(signum).name)


def stage_entry(run: Callable[[DictConfig], object]) -> Callable[[], None]:
    """Turn `run(cfg)` into a command-line entry point taking Hydra key overrides.

    Ctrl+C and SIGTERM unwind the stage like an error: child processes are stopped, no final
    output is moved into place (io writes atomically), the MLflow run ends KILLED, and the stage
    exits non-zero saying so, so DVC records nothing and the next `dvc repro` runs it again.
    """

    def main() -> None:
        signal.signal(signal.SIGTERM, _raise_interrupted)
        stage = Path(sys.argv[0]).stem
        try:
            _main()
        except KeyboardInterrupt as e:
            how = f"by {e.args[0]}" if isinstance(e, Interrupted) and e.args else "by Ctrl+C (SIGINT)"
            print(f"{stage}: interrupted {how}; its outputs were not completed. Rerun `dvc repro` "
                  f"(or `python stages/{stage}.py`) to run it again.", file=sys.stderr)
            sys.exit(130)
        except StageError as e:
            sys.exit(f"{stage}: {e}")
        except (ConfigAttributeError, ConfigKeyError) as e:
            if _WHOLE is None or OmegaConf.select(_WHOLE, str(e.full_key)) is None:
                raise
            sys.exit(f"{stage}: reads the parameter `{e.full_key}`, which dvc.yaml does not list among the "
                     f"stage's params: add it there, so that DVC reruns the stage when it changes")
        except OSError as e:
            if e.errno not in DISK_ERRORS:
                raise
            # io writes every output atomically: what the stage had not finished is as it was.
            sys.exit(f"{stage}: cannot write {e.filename or 'its outputs'}: {e.strerror}; no output of the stage "
                     f"was left half-written. Free space (or make the folder writable) and rerun `dvc repro`.")

    def _main() -> None:
        overrides = sys.argv[1:]
        groups = [o.split("=", 1)[0] for o in overrides if "=" in o and (CONF_DIR / o.split("=", 1)[0]).is_dir()]
        if groups:
            # params.yaml is already composed: a group switch must recompose conf/.
            sys.exit(f"{groups[0]} is a config group: switch it with `dvc exp run -S {groups[0]}=...`, "
                     f"or recompose params.yaml with `python -m qi_expert.core.config {' '.join(overrides)} > params.yaml`")
        global _WHOLE
        _WHOLE = load_params(overrides)
        declared = dvc_stage_of(Path(sys.argv[0]))
        view = stage_params(_WHOLE, declared[1]) if declared else _WHOLE
        trace = os.environ.get("QI_PARAMS_READ")
        if not (trace and declared):
            run(view)
            return
        view._set_flag(TRACE_FLAG, True)
        _trace_reads(trace, *declared)
        run(view)

    return main


if __name__ == "__main__":
    # `python -m qi_expert.core.config [overrides...]` prints the composition of conf/.
    sys.stdout.write(to_yaml(compose_conf(sys.argv[1:])))
