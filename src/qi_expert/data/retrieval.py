"""The pattern store: training examples and the @qi API surface, searchable offline (BM25, SQLite FTS5).

Two kinds of documents go in:
- api: every name the corpus's @qi packages export (the TypeScript compiler's export list), with
  its declaration's signature and doc comment read by tree-sitter from the file that declares it;
- example: every formatted training row (instruction + the answer module), which format has
  already decontaminated; rows that still match a benchmark reference or test are dropped again
  here and counted, so a retrieved example can never hand the model a task's answer.

Why BM25 over SQLite FTS5 and not an embedding model: nothing can be downloaded at run time, and
the question asked of the store is lexical (which @qi names and which examples share the task's
words and identifiers). sqlite3's FTS5 is in the standard library, persistent (one file, a DVC
out) and ranks with BM25 in C. Identifiers are indexed as written and split into their words
(validatePrice -> validate price), so "validate a price" finds `validatePrice`. Measured against
the base model's own hidden states as embeddings: benchmarks/retrieval_quality.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qi_expert.typescript import tsast

STORE = "store.sqlite"
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1

_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*|\d+")
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b)|[A-Z]?[a-z]+|[A-Z]+|\d+")


def terms(text: str) -> str:
    """Words for the index: each identifier lowercased as written, plus its camelCase parts."""
    out: list[str] = []
    for w in _WORD.findall(text):
        low = w.lower()
        out.append(low)
        parts = [p.lower() for p in _PARTS.findall(w)]
        if len(parts) > 1:
            out += parts
    return " ".join(out)


# --- the @qi API surface ------------------------------------------------------------------------

MAX_SIGNATURE_CHARS = 300


def _signature(decl) -> str:
    """The declaration without its body: `function f<T>(x: T): Result<T>`, `type Result<T> = ...`."""
    body = decl.child_by_field_name("body")
    if decl.type in ("lexical_declaration", "variable_declaration"):
        d = next((c for c in decl.named_children if c.type == "variable_declarator"), None)
        value = d.child_by_field_name("value") if d is not None else None
        if value is not None and value.type == "arrow_function":
            body = value.child_by_field_name("body")
    text = tsast.text(decl)
    if body is not None and decl.type not in ("interface_declaration", "enum_declaration"):
        text = text[: body.start_byte - decl.start_byte]
    text = " ".join(text.replace("=>", "=> ").split()).rstrip(" ={")
    return text if len(text) <= MAX_SIGNATURE_CHARS else text[:MAX_SIGNATURE_CHARS] + " …"


def _doc(node) -> str:
    prev = node.prev_named_sibling
    if prev is None or prev.type != "comment" or not tsast.text(prev).startswith("/**"):
        return ""
    lines = [ln.strip().lstrip("*").strip() for ln in tsast.text(prev)[3:-2].splitlines()]
    text = " ".join(ln for ln in lines if ln and not ln.startswith("@"))
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text)[:200]


def api_surface(project: Path, exports: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    """One entry per exported @qi name: {module, name, kind, signature, doc} (tree-sitter on its file)."""
    wanted: dict[str, dict[str, list[str]]] = {}
    for module, entries in exports.items():
        for e in entries:
            if e.get("file"):
                wanted.setdefault(e["file"], {}).setdefault(e["name"], []).append(module)
    out = []
    for rel in sorted(wanted):
        path = Path(project) / rel
        if path.suffix != ".ts" or not path.is_file():
            continue
        root = tsast.parse(path.read_bytes()).root_node
        for node in root.named_children:
            decl = node.child_by_field_name("declaration") if node.type == "export_statement" else node
            if decl is None or decl.type not in tsast.DECLARATIONS:
                continue
            for name in tsast.declared_names(decl):
                for module in wanted[rel].get(name, []):
                    out.append({"module": module, "name": name, "kind": decl.type.replace("_declaration", ""),
                                "signature": _signature(decl), "doc": _doc(node)})
    # Overloads declare a name twice: keep the first signature of each (module, name).
    return list({(e["module"], e["name"]): e for e in reversed(out)}.values())[::-1]


# --- building the store ---------------------------------------------------------------------------

def build(path: Path, api: Sequence[Mapping], examples: Sequence[Mapping], *, source: Mapping) -> dict:
    """Write the store (replacing any old one) and its manifest; returns the manifest."""
    path.mkdir(parents=True, exist_ok=True)
    db = path / STORE
    tmp = db.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    with con:
        con.execute("CREATE TABLE docs (id INTEGER PRIMARY KEY, kind TEXT, module TEXT, name TEXT, text TEXT)")
        con.execute("CREATE VIRTUAL TABLE fts USING fts5(terms, content='', tokenize='unicode61')")
        rows = [("api", e["module"], e["name"], _api_line(e), f"{e['name']} {e['signature']} {e['doc']}") for e in api]
        rows += [("example", "", ex.get("id", ""), ex["output"], f"{ex['instruction']} {ex.get('input', '')} {ex['output']}")
                 for ex in examples]
        for i, (kind, module, name, text, search) in enumerate(rows, start=1):
            con.execute("INSERT INTO docs VALUES (?, ?, ?, ?, ?)", (i, kind, module, name, text))
            con.execute("INSERT INTO fts(rowid, terms) VALUES (?, ?)", (i, terms(search)))
    con.execute("VACUUM")
    con.close()
    tmp.replace(db)
    manifest = {"schema": SCHEMA_VERSION, **source, "api_entries": len(api), "examples": len(examples),
                "store_sha256": hashlib.sha256(db.read_bytes()).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _api_line(e: Mapping) -> str:
    doc = f"  // {e['doc']}" if e.get("doc") else ""
    return f"{e['signature']}{doc}"


# --- querying ------------------------------------------------------------------------------------

class Store:
    """A built store, opened read-only; checked against the corpus the caller expects."""

    def __init__(self, path: Path, *, corpus: Mapping | None = None):
        self.path = Path(path)
        db, manifest = self.path / STORE, self.path / MANIFEST
        if not db.is_file() or not manifest.is_file():
            raise FileNotFoundError(f"retrieval store {self.path} is missing ({STORE}, {MANIFEST}): run the "
                                    "index stage (`dvc repro index`) or drop the +retrieval arms from eval.arms")
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        if corpus is not None:
            built = {k: self.manifest.get(k) for k in ("corpus_name", "corpus_root")}
            expected = {"corpus_name": str(corpus["name"]), "corpus_root": str(corpus["root"])}
            if built != expected:
                raise ValueError(f"retrieval store {self.path} was built from corpus {built}, but the eval runs on "
                                 f"{expected}: rebuild it (`dvc repro index`)")
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        self.con.close()

    def texts(self, ids) -> dict[int, tuple[str, str]]:
        """{id: (name, text)} of stored documents."""
        ids = sorted(ids)
        if not ids:
            return {}
        sql = f"SELECT id, name, text FROM docs WHERE id IN ({', '.join('?' * len(ids))})"
        return {i: (n, t) for i, n, t in self.con.execute(sql, ids)}

    def search(self, text: str, kind: str, k: int) -> list[dict]:
        words = sorted(set(terms(text).split()))
        if not words or k <= 0:
            return []
        query = " OR ".join(f'"{w}"' for w in words)
        sql = ("SELECT d.id, d.module, d.name, d.text, bm25(fts) AS score FROM fts JOIN docs d ON d.id = fts.rowid "
               "WHERE fts MATCH ? AND d.kind = ? ORDER BY score, d.id LIMIT ?")
        return [{"id": i, "module": m, "name": n, "text": t, "score": round(s, 4)}
                for i, m, n, t, s in self.con.execute(sql, (query, kind, k))]

    def context(self, text: str, *, examples: int, api: int, max_chars: int) -> tuple[str, list[dict]]:
        """The block put before a task: the nearest @qi API entries, then the nearest examples."""
        api_hits = self.search(text, "api", api)
        example_hits = self.search(text, "example", examples)
        parts: list[str] = []
        if api_hits:
            by_module: dict[str, list[str]] = {}
            for h in api_hits:
                by_module.setdefault(h["module"], []).append(h["text"])
            for module, lines in by_module.items():
                parts.append(f"Relevant exports of {module}:\n" + "\n".join(lines))
        used = [*api_hits]
        for h in example_hits:
            block = f"Example from the codebase:\n```typescript\n{h['text'].rstrip()}\n```"
            if sum(len(p) for p in parts) + len(block) > max_chars:
                continue
            parts.append(block)
            used.append(h)
        return "\n\n".join(parts), [{k: h[k] for k in ("id", "module", "name", "score")} for h in used]


def with_context(context: str, user: str) -> str:
    """The user turn with the retrieved block before the task (eval arms and `qi-expert generate --retrieve`)."""
    return f"{context}\n\nTask: {user}" if context else user


def load_examples(paths: Iterable[Path]) -> list[dict]:
    from qi_expert.core import files

    rows: list[dict] = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: run the format stage before index")
        rows += list(files.read_jsonl(p))
    return rows
