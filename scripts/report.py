"""The figures in README.md and docs/, written from metrics/ (never by hand).

    python scripts/report.py            # print every block
    python scripts/report.py --write    # rewrite the blocks in README.md and docs/ in place (`make report`)
    python scripts/report.py --check    # exit 1 naming every block that differs from metrics/

A block sits between `<!-- NAME: written by scripts/report.py -->` and `<!-- NAME end -->`; the
text between the markers is exactly what this script writes from the committed metrics, and
tests/test_readme.py checks it still is. The blocks, and where they live (BLOCKS):

- eval-table (README, "Results"): the headline figures per eval arm (with each arm's decoding
  cost), and the paired comparisons that say what the fine-tune and checking before answering add
  (delta, 95% interval, exact p; bold where significant), from metrics/eval.json;
- corpus-table (README, "Results"): the second benchmark, the corpus's own tests, from
  metrics/eval.json (corpus_benchmark), metrics/format.json and metrics/validate.json;
- parts-table (README, "Results"): each arm on the hand-written benchmark's dev and test parts;
- seeds-table (README, "Results"): the headline figures' spread across seeds, from
  metrics/seeds.json (scripts/seeds.py --write);
- run-cost (README, "Quick start"): how long the run in metrics/ took, stage by stage, from
  metrics/train.json, metrics/eval.json and metrics/gguf.json;
- data-figures (docs/stages.md): what extract, validate, format and index produced;
- gguf-figures (docs/stages.md): the GGUF files, their decoding speed and what quantization costs;
- learning-curve (docs/experiments.md): the graded figures against training steps, from
  metrics/learning_curve/*.csv (scripts/learning_curve.py) and metrics/train.json.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# eval-table: metrics/eval.json

ROWS = [  # (label, how to read it from an arm's summary)
    ("compiles", lambda s: _rate(s["compile_rate"], s["tasks"])),
    ("complies (required @qi calls run, no anti-pattern)", lambda s: _rate(s["compliance_rate"], s["tasks"])),
    ("passes its test (pass@1)", lambda s: _rate(s["pass@1"], s["tasks"])),
    ("compliance score", lambda s: f"{s['compliance_score']:.3f}"),
    ("reference loss (nats/token)", lambda s: f"{s['graded']['reference_loss']:.3f}" if s["graded"].get("reference_loss") is not None else "-"),
    ("type errors per completion", lambda s: f"{s['graded']['type_errors_mean']:.1f}"),
    ("real @qi names per completion", lambda s: f"{s['graded']['qi_names_real_per_completion']:.2f}"),
    ("invented @qi names per completion", lambda s: f"{s['graded']['qi_names_invented_per_completion']:.2f}"),
    ("answers ending in a loop", lambda s: _rate(s["generation"]["stop_reasons"].get("repetition", 0) / max(1, s["generation"]["rows"]),
                                                 s["generation"]["rows"])),
    # A verified arm's own count covers every candidate and repair turn (its greedy first answer included).
    ("new tokens per task (all candidates)", lambda s: f"{s['generation']['verify']['tokens_per_task']:.0f}"
                                           if "verify" in s["generation"] else f"{s['generation']['new_tokens'] / s['tasks']:.0f}"),
    ("candidates / repair turns per task", lambda s: (f"{s['generation']['verify']['candidates_per_task']:.2f} / "
                                                      f"{s['generation']['verify']['rounds_per_task']:.2f}")
                                           if "verify" in s["generation"] else "1 / 0"),
]
PAIRS = ["tuned vs base", "tuned+verify vs tuned", "base+verify vs base", "tuned+verify vs base+verify",
         "tuned+retrieval vs tuned"]
MEASURES = [("compile_rate", "compiles"), ("compliance_rate", "complies"), ("pass@1", "pass@1"),
            ("type_errors_mean", "type errors"), ("reference_loss", "reference loss"),
            ("qi_names_real_per_completion", "real @qi names")]


def _rate(value: float, n: int) -> str:
    return f"{round(value * n)} of {n}"


def tables(metrics: dict, rows=ROWS, pairs=PAIRS) -> str:
    """The README's results: per-arm figures, then the paired comparisons."""
    arms = [a for a in metrics["models"]]
    out = ["| measure | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for label, read in rows:
        cells = []
        for a in arms:
            try:
                cells.append(read(metrics[a]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "| paired, same tasks | " + " | ".join(label for _, label in MEASURES) + " |",
            "|---|" + "---|" * len(MEASURES)]
    for pair in pairs:
        if pair not in metrics.get("paired", {}):
            continue
        cells = []
        for key, _ in MEASURES:
            p = metrics["paired"][pair].get(key)
            if p is None:
                cells.append("-")
                continue
            pv = "p < 0.0001" if p["p_value"] < 1e-4 else f"p = {p['p_value']:.2g}"
            text = f"{p['delta']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}], {pv}"
            cells.append(f"**{text}**" if p.get("significant") else text)
        out.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def corpus_table(metrics: dict, formatted: dict, validated: dict) -> str:
    """The corpus benchmark (metrics/eval.json: corpus_benchmark): where its tasks came from, then
    the headline rows and the pairs that say what the fine-tune and checking add."""
    cb, fb = metrics.get("corpus_benchmark"), formatted.get("corpus_bench", {})
    checked = validated.get("corpus_bench", {}).get("checked", {})
    fails = checked.get("reference_fails", 0)
    head = (f"{fb.get('candidates', 0)} units of the @qi packages that a corpus test case calls pass their tests, "
            f"and a do-nothing stub fails them ({fails} more, whose reference fails, {'was' if fails == 1 else 'were'} left out); "
            f"format held out the {fb.get('tasks', 0)} in {fb.get('files', 0)} of their {fb.get('candidate_files', 0)} files, "
            f"with {fb.get('derived_rows_left_out', 0)} training rows derived from them and {fb.get('decontaminated_rows', 0)} near copies.")
    if not cb:
        return head + "\n\nThe eval did not score it (eval.corpus_benchmark: null, or a predictions file)."
    return head + "\n\n" + tables(cb, ROWS[:6], ["tuned vs base", "tuned+verify vs tuned", "tuned+retrieval vs tuned"])


def parts_table(metrics: dict) -> str:
    """Each arm on the hand-written benchmark's dev part (settings are chosen there) and its test part."""
    parts = metrics.get("parts")
    if not parts:
        return "The eval in metrics/ predates the dev/test parts."
    dev, test = parts["dev"], parts["test"]
    out = [f"| arm | dev ({dev['tasks']} tasks): compiles, complies, reference loss "
           f"| test ({test['tasks']} tasks): compiles, complies, reference loss |", "|---|---|---|"]
    cell = lambda s: (f"{_rate(s['compile_rate'], s['tasks'])}, {_rate(s['compliance_rate'], s['tasks'])}, "
                      + (f"{s['graded']['reference_loss']:.3f}" if s["graded"].get("reference_loss") is not None else "-"))
    for arm in metrics["models"]:
        out.append(f"| `{arm}` | {cell(dev[arm])} | {cell(test[arm])} |")
    return "\n".join(out)


def seeds_table(seeds: dict | None) -> str:
    """metrics/seeds.json (scripts/seeds.py --write): each figure's mean and spread across seeds,
    beside one run's task-level 95% interval."""
    if not seeds:
        return "Not measured yet: `dvc exp run --queue -S seed=1,2,3 && dvc queue start`, then `python scripts/seeds.py --write metrics/seeds.json`."
    group = seeds[0]
    out = [f"Seeds {', '.join(str(s) for s in group['seeds'])}, the `tuned` arm:", "",
           "| benchmark (tasks) | figure | mean | sd across seeds | range | one run's 95% interval (Wilson, tasks) |",
           "|---|---|---|---|---|---|"]
    for r in (r for r in group["rows"] if r["arm"] == "tuned" and r["figure"] != "pass@1"):  # the arm the seed trains
        ci = f"[{r['task_ci95'][0]:.3f}, {r['task_ci95'][1]:.3f}]" if r["task_ci95"] is not None else "-"
        out.append(f"| {r['benchmark']} ({r['tasks']}) | {r['figure']} | {r['mean']:.3f} | {r['sd']:.3f} "
                   f"| {r['min']:.3f}-{r['max']:.3f} | {ci} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# run-cost: metrics/train.json, metrics/eval.json, metrics/gguf.json


def _s(seconds: float) -> str:
    return f"{seconds:,.0f} s"


def _min(seconds: float) -> str:
    return f"{seconds / 60:.0f} min"


def _eval_seconds(evals: dict) -> dict:
    """One benchmark's eval time, by what it went to, as the eval recorded it (generation seconds
    come with cached completions too: the time they took when they were made)."""
    arms = evals["models"]
    plain = [a for a in arms if "verify" not in evals[a]["generation"]]
    verified = [a for a in arms if "verify" in evals[a]["generation"]]
    tasks = evals["benchmark_tasks"]
    timing = evals.get("timing", {})
    out = {"arms": arms, "plain": plain, "verified": verified, "tasks": tasks,
           "generation": sum(evals[a]["generation"]["seconds"] for a in plain),
           "refloss": sum(evals[a]["generation"].get("reference_loss_seconds", 0.0) for a in plain),
           "verify": sum(evals[a]["generation"]["verify"]["seconds_per_task"] * tasks for a in verified),
           "other": sum(timing.get(k, 0.0) for k in ("load_seconds", "adapter_seconds", "compile_seconds", "test_seconds"))}
    out["total"] = out["generation"] + out["refloss"] + out["verify"] + out["other"]
    return out


def run_cost(train: dict, evals: dict, gguf: dict) -> str:
    """How long each stage of the run in metrics/ took, as the stages recorded it."""
    e = _eval_seconds(evals)
    arms, plain, verified, tasks = e["arms"], e["plain"], e["verified"], e["tasks"]
    generation, refloss, verify, other = e["generation"], e["refloss"], e["verify"], e["other"]
    corpus = _eval_seconds(evals["corpus_benchmark"]) if evals.get("corpus_benchmark") else None
    eval_total = e["total"] + (corpus["total"] if corpus else 0.0)

    seconds = gguf.get("seconds", {})
    convert = (seconds.get("merge", 0.0) + seconds.get("convert_wall", 0.0)
               + sum(v for k, v in seconds.items() if k.startswith("quantize_")))
    cost = gguf.get("quantization_cost", {})
    files = [k for k in cost.get("cost", {})]
    passes = [cost[f]["generation"]["seconds"] for f in files if "generation" in cost.get(f, {})]
    quant = max(passes) if passes else 0.0  # the files are generated side by side
    gguf_total = convert + quant

    total = train["wall_time_s"] + eval_total + gguf_total
    per_task = ", ".join(f"`{a}` {evals[a]['generation']['verify']['seconds_per_task']:.1f} s" for a in verified)
    verified_text = (f"; the verified arms' extra candidates and repair turns {_s(verify)} ({per_task} a task)"
                     if verified else "")
    rows = [
        "| stage | time | what it spent it on |",
        "|---|---|---|",
        f"| train | {_s(train['wall_time_s'])} | {train['steps']} steps in {train['precision']} "
        f"({train['tokens_seen']:,} token slots; the steps {_s(train['train_steps_s'])}, "
        f"{train['tokens_per_second']:.1f} tokens/s), peak memory {train['peak_memory_mb']:,.0f} MB |",
        f"| eval | {_s(eval_total)} | {len(arms)} arms on {tasks} tasks: greedy generation {_s(generation)} "
        f"({len(plain)} arms), reference loss {_s(refloss)}{verified_text}; loading, compiling "
        f"and the sandboxed tests {_s(other)}"
        + (f"; the corpus benchmark ({corpus['tasks']} tasks, the same arms) {_s(corpus['total'])}" if corpus else "") + " |",
        f"| gguf | {_s(gguf_total)} | merge, conversion and quantization {_s(convert)}; the quantization "
        f"cost's llama.cpp passes over the benchmark ({', '.join('`' + f + '`' for f in files)}, side by side) {_s(quant)} |",
        f"| train + eval + gguf | {_s(total)} (about {_min(total)}) | the sum of the above; the data stages and prepare "
        f"are not timed in `metrics/` |",
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# data-figures: metrics/extract.json, validate.json, format.json, index.json


def _counts(d: dict) -> str:
    """`{a: 3, b: 5}` -> "b 5, a 3" (largest first)."""
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: (-kv[1], kv[0])) if v)


def data_figures(extract: dict, validate: dict, formatted: dict, index: dict) -> str:
    aug = validate.get("augmented", {})
    tests = aug.get("tests", {})
    rows = [
        "| stage | figure |",
        "|---|---|",
        f"| extract | {extract['records']:,} records from {sum(extract['files_by_kind'].values()):,} files "
        f"({_counts(extract['files_by_kind'])}); by kind: {_counts(extract['records_by_kind'])}; "
        f"{extract['test_cases']['in_records']} of {extract['test_cases']['total']} test cases in a record; "
        f"{extract['counter_examples']} counter-examples; files skipped (not UTF-8, parse errors): "
        f"{len(extract['files_not_utf8'])}, {extract['files_with_parse_errors']} |",
        f"| validate | {validate['accepted']:,} of {validate['records_in']:,} records accepted; rejected "
        f"{validate['rejected']:,} ({_counts(validate['rejected_by_reason'])}); not self-contained by cause: "
        f"{_counts(validate.get('not_self_contained_by_cause', {})) or 'none'}; "
        f"{validate['counter_example_pairs']} counter-example pairs |",
        f"| validate: variants | {aug.get('candidates', 0):,} candidates, {aug.get('admitted', 0):,} admitted "
        f"({_counts(aug.get('admitted_by_origin', {}))}), {aug.get('left_out_by_cap', 0):,} left out by "
        f"`augment.max_share`; {tests.get('variants_with_tests', 0)} checked by the corpus's own test cases "
        f"in {tests.get('test_runs', 0)} sandbox runs |",
        f"| validate: feedback | {validate.get('feedback', {}).get('rows', 0)} rows, "
        f"{validate.get('feedback', {}).get('accepted', 0)} accepted |",
        f"| format | {formatted['train_rows']:,} training rows ({_counts(formatted['train_rows_by_origin'])}), "
        f"{formatted['val_rows']:,} validation rows; {formatted['train_rows_importing_qi_base']:,} training rows "
        f"import from @qi/base, {formatted['train_rows_importing_qierror']:,} import `QiError`; "
        f"{formatted['decontaminated_rows']} dropped as copies of a benchmark task |",
        f"| index | {index['examples']:,} examples and {index['api_entries']:,} @qi API entries "
        f"({_counts(index['by_module'])}); {index['decontaminated_examples']} dropped as copies of a benchmark task |",
    ]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# gguf-figures: metrics/gguf.json


def gguf_figures(gguf: dict) -> str:
    size = gguf.get("size_mb", {})
    speed = gguf.get("decode_tokens_per_s", {})
    agree = gguf.get("greedy_agreement", {})
    names = {"f16": "merged model, f16", "q8_0": "q8_0", "q4_k_m": "q4_k_m", "base_lora": "base f16 + adapter",
             "lora_f16": "the adapter alone"}
    out = [f"| file | size (MiB) | decoding, tokens/s ({gguf.get('bench_tokens', '?')} tokens) | greedy tokens equal to "
           f"the merged transformers model (of {gguf.get('compare_tokens', '?')}, worst of {gguf.get('prompts', '?')} prompts) |",
           "|---|---|---|---|"]
    for key in ("f16", "q8_0", "q4_k_m", "base_lora", "lora_f16"):
        if key not in size and key not in speed:
            continue
        mib = size.get(key if key != "base_lora" else "base_f16")
        cells = [f"{mib:.1f}" if mib is not None else "-",
                 f"{speed[key]:.1f}" if key in speed else "-",
                 str(agree[key]["min"]) if key in agree else "-"]
        out.append(f"| {names[key]} | " + " | ".join(cells) + " |")
    if "transformers" in speed:
        out.append(f"| (transformers, for comparison) | - | {speed['transformers']:.1f} | - |")

    cost = gguf.get("quantization_cost", {})
    files = list(cost.get("cost", {}))
    ref = cost.get("reference")
    if files and ref in cost:
        cols = [ref] + files
        measures = [
            ("compiles", lambda s: _rate(s["compile_rate"], s["tasks"])),
            ("complies", lambda s: _rate(s["compliance_rate"], s["tasks"])),
            ("passes its test (pass@1)", lambda s: _rate(s["pass@1"], s["tasks"])),
            ("compliance score", lambda s: f"{s['compliance_score']:.3f}"),
            ("type errors per completion", lambda s: f"{s['graded']['type_errors_mean']:.1f}"),
            ("real / invented @qi names per completion", lambda s: f"{s['graded']['qi_names_real_per_completion']:.2f} / "
                                                                   f"{s['graded']['qi_names_invented_per_completion']:.2f}"),
            ("generation (s, tokens/s)", lambda s: f"{s['generation']['seconds']:.1f}, {s['generation']['tokens_per_second']:.1f}"),
        ]
        out += ["", f"| quantization cost, {cost.get('benchmark_tasks', '?')} benchmark tasks | "
                + " | ".join(f"`{c}`" + (" (the eval's completions)" if c == ref else "") for c in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for label, read in measures:
            cells = []
            for c in cols:
                try:
                    cells.append(read(cost[c]))
                except (KeyError, TypeError, ZeroDivisionError):
                    cells.append("-")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# learning-curve: metrics/learning_curve/*.csv, metrics/train.json


def _d(text: str, places: int) -> str:
    """A figure the CSV holds as text, rounded half up (as a reader would): "0.0185" -> "0.019"."""
    return str(Decimal(text).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def learning_curve(curves: dict[str, list[dict]], train: dict) -> str:
    tuned, tuned_r = curves.get("tuned", []), {r["max_steps"]: r for r in curves.get("tuned+retrieval", [])}
    base, base_r = curves.get("base", []), curves.get("base+retrieval", [])
    out = ["| max_steps | val loss | tuned: reference loss | syntax valid | type errors | real @qi names | "
           "invented @qi names | @qi names real | tuned+retrieval: reference loss / real @qi names / compliance |",
           "|---|---|---|---|---|---|---|---|---|"]

    def cells(r: dict) -> list[str]:
        return [_d(r["reference_loss"], 3), _d(r["syntax_valid_rate"], 3), _d(r["type_errors_mean"], 1),
                _d(r["qi_names_real_per_completion"], 2), _d(r["qi_names_invented_per_completion"], 2),
                str(Decimal(r["qi_api_valid_share"]).scaleb(2).quantize(Decimal(1), rounding=ROUND_HALF_UP)) + "%"]

    def retrieval(r: dict | None) -> str:
        if r is None:
            return "-"
        return (f"{_d(r['reference_loss'], 3)} / {_d(r['qi_names_real_per_completion'], 2)} / "
                f"{_d(r['compliance_rate'], 3)}")

    if base:
        out.append(f"| 0 (base) | {train['val_loss_first']:.3f} | " + " | ".join(cells(base[0])) + " | "
                   + retrieval(base_r[0] if base_r else None) + " (base+retrieval) |")
    for r in sorted(tuned, key=lambda r: int(r["max_steps"])):
        label = r["max_steps"] + (" (the workspace's run)" if r.get("experiment") == "main" else "")
        out.append(f"| {label} | {float(r['val_loss']):.3f} | " + " | ".join(cells(r)) + " | "
                   + retrieval(tuned_r.get(r["max_steps"])) + " |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the blocks, where they live, and the markers around them


def _json(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / name).read_text(encoding="utf-8"))


BLOCKS: dict[str, tuple[str, Callable[[Path], str]]] = {  # name -> (file, writer)
    "eval-table": ("README.md", lambda r: tables(_json(r, "eval.json"))),
    "corpus-table": ("README.md", lambda r: corpus_table(_json(r, "eval.json"), _json(r, "format.json"), _json(r, "validate.json"))),
    "parts-table": ("README.md", lambda r: parts_table(_json(r, "eval.json"))),
    "seeds-table": ("README.md", lambda r: seeds_table(json.loads((r / "metrics/seeds.json").read_text())
                                                       if (r / "metrics/seeds.json").is_file() else None)),
    "run-cost": ("README.md", lambda r: run_cost(_json(r, "train.json"), _json(r, "eval.json"), _json(r, "gguf.json"))),
    "data-figures": ("docs/stages.md", lambda r: data_figures(_json(r, "extract.json"), _json(r, "validate.json"),
                                                              _json(r, "format.json"), _json(r, "index.json"))),
    "gguf-figures": ("docs/stages.md", lambda r: gguf_figures(_json(r, "gguf.json"))),
    "learning-curve": ("docs/experiments.md",
                       lambda r: learning_curve({p.stem: _csv(p) for p in sorted((r / "metrics/learning_curve").glob("*.csv"))},
                                                _json(r, "train.json"))),
}
MARKER = re.compile(r"<!-- ([a-z0-9-]+): written by scripts/report\.py -->\n(.*?)<!-- \1 end -->", re.S)


def start(name: str) -> str:
    return f"<!-- {name}: written by scripts/report.py -->"


def end(name: str) -> str:
    return f"<!-- {name} end -->"


def render(root: Path = ROOT) -> dict[str, str]:
    """Every block as the metrics under `root` say it should read."""
    return {name: write(root) for name, (_, write) in BLOCKS.items()}


def blocks_in(text: str) -> dict[str, str]:
    """name -> the text between its markers, as the file stands (every marked block, known or not)."""
    found: dict[str, str] = {}
    for m in MARKER.finditer(text):
        if m.group(1) in found:
            raise ValueError(f"block {m.group(1)} appears twice")
        found[m.group(1)] = m.group(2).strip()
    return found


def stale(root: Path = ROOT) -> list[str]:
    """Every block that is missing, unknown or differs from what the metrics say: one line each."""
    problems = []
    want = render(root)
    files = sorted({f for f, _ in BLOCKS.values()} | {str(p.relative_to(root)) for p in (root / "docs").glob("*.md")})
    for rel in files:
        path = root / rel
        have = blocks_in(path.read_text(encoding="utf-8")) if path.exists() else {}
        for name, text in have.items():
            if name not in BLOCKS:
                problems.append(f"{rel}: block {name} is not one scripts/report.py writes")
            elif BLOCKS[name][0] != rel:
                problems.append(f"{rel}: block {name} belongs in {BLOCKS[name][0]}")
            elif text != want[name].strip():
                problems.append(f"{rel}: block {name} differs from metrics/ (run `make report`)")
        for name, (home, _) in BLOCKS.items():
            if home == rel and name not in have:
                problems.append(f"{rel}: block {name} is missing (its markers: {start(name)} ... {end(name)})")
    return problems


def write_all(root: Path = ROOT) -> list[str]:
    """Rewrite every block in place; the files changed."""
    want = render(root)
    changed = []
    for rel in sorted({f for f, _ in BLOCKS.values()}):
        path = root / rel
        text = path.read_text(encoding="utf-8")
        new = text
        for name, (home, _) in BLOCKS.items():
            if home != rel:
                continue
            if start(name) not in new or end(name) not in new:
                raise SystemExit(f"{rel}: no markers for block {name}: add {start(name)} and {end(name)}")
            head, rest = new.split(start(name), 1)
            new = head + start(name) + "\n" + want[name] + "\n" + end(name) + rest.split(end(name), 1)[1]
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(rel)
    return changed


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["--write"]:
        for rel in write_all():
            print(f"report: rewrote {rel}")
        sys.exit(0)
    if args == ["--check"]:
        problems = stale()
        print("\n".join(problems) if problems else "report: every block equals metrics/")
        sys.exit(1 if problems else 0)
    if args:
        sys.exit(__doc__)
    for name, text in render().items():
        print(f"{start(name)}\n{text}\n{end(name)}\n")
