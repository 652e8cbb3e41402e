"""Finding the corpus's source files, telling their kinds apart, and reading them safely.

A corpus is a TypeScript checkout holding @qi packages. Which file is which kind comes from what
the file is, not from where a particular checkout keeps it:

- the @qi packages are the ones the corpus itself declares: its tsconfig's `paths` (`@qi/base`
  -> `./lib/base/src/index.ts`), else its package.json files named `@qi/...`; their source
  folders hold the implementation. A checkout that declares neither is read in qi-v2-qicore's
  conventional layout (`lib/<package>/src`), and the report says so.
- tests: `*.test.ts` / `*.spec.ts`, or files in a `test`, `tests` or `__tests__` folder;
- apps: the other TypeScript files, outside the packages, in a folder below the root (an app is
  the nearest folder with its own package.json or README.md; its README summary is context);
- tutorials: Markdown outside the apps (an app's Markdown belongs to the app).

Not classified, each with its reason: tool configuration (`vite.config.ts`, ...), TypeScript at the
corpus root. `extract.kinds` globs (fnmatch on paths relative to the root, `*` crosses folders)
override all this, first match wins; `extract.exclude` globs are skipped silently.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping, Sequence

from tree_sitter import Tree

from qi_expert.typescript import tsast


class CorpusError(ValueError):
    """The corpus as a whole cannot be used (missing, empty): the stage stops with this."""


@dataclass(frozen=True)
class SourceFile:
    path: Path  # absolute
    rel: str  # posix path relative to the corpus root: what records cite
    kind: str  # tutorial | app | implementation | test
    app_dir: str = ""  # for apps: the app's folder (relative), whose README.md describes it


TEST_DIRS = frozenset({"test", "tests", "__tests__"})
TEST_FILE = re.compile(r"\.(test|spec)\.[cm]?tsx?$")
TOOL_CONFIG = re.compile(r"\.config\.[cm]?ts$")
# The layout read when the corpus declares no @qi package (qi-v2-qicore's own).
CONVENTIONAL_PACKAGE_GLOB = "lib/*/src"


@dataclass
class Layout:
    """Where the corpus's @qi packages keep their sources, and how that was found."""

    package_dirs: list[str]  # relative posix folders
    packages: dict[str, str] = field(default_factory=dict)  # @qi module name -> its source folder
    found_by: str = ""  # tsconfig paths | package.json | conventional layout

    def in_package(self, rel: str) -> bool:
        return any(rel.startswith(d + "/") for d in self.package_dirs)


def read_jsonc(path: Path) -> dict:
    """A tsconfig-style JSON file: // and /* */ comments and trailing commas allowed.

    Written here rather than asking the TypeScript compiler (ts.readConfigFile) so that extraction
    starts no Node.js process: strings are skipped whole, so a glob like "lib/**/*" is not a comment.
    """
    text = path.read_text(encoding="utf-8")
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            i = text.find("*/", i + 2)
            i = n if i < 0 else i + 2
        else:
            out.append(c)
            i += 1
    try:
        return json.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path} is not valid JSON: {e}") from None


def _tsconfig_paths(root: Path, tsconfig: str) -> dict[str, list[str]]:
    """compilerOptions.paths of the corpus's tsconfig (following `extends` to files in the
    checkout), with targets made relative to the corpus root."""
    path, seen = root / tsconfig, set()
    while path.is_file() and path not in seen:
        seen.add(path)
        conf = read_jsonc(path)
        options = conf.get("compilerOptions") or {}
        if "paths" in options:
            base = path.parent / options.get("baseUrl", ".")
            return {k: [(base / t).resolve().relative_to(root.resolve()).as_posix()
                        for t in v if (base / t).resolve().is_relative_to(root.resolve())]
                    for k, v in options["paths"].items()}
        extends = conf.get("extends")
        if not isinstance(extends, str) or not extends.startswith("."):
            break  # an npm package's tsconfig declares no paths into this checkout
        path = (path.parent / extends).resolve()
        path = path if path.suffix == ".json" else path.with_suffix(".json")
    return {}


def _source_folder(target: str) -> str:
    """`lib/base/src/index.ts` or `lib/base/src/*` -> `lib/base/src`."""
    p = PurePosixPath(target.replace("*", "x"))
    return p.parent.as_posix() if p.suffix or "*" in target else p.as_posix()


def _package_jsons(root: Path, exclude: Sequence[str]) -> Iterable[tuple[str, dict]]:
    for path in sorted(root.rglob("package.json")):
        rel = path.relative_to(root).as_posix()
        if "node_modules" in path.parts or any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        try:
            yield rel, json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue


def layout_of(root: Path, tsconfig: str = "tsconfig.json", exclude: Sequence[str] = ()) -> Layout:
    """The corpus's @qi packages: its tsconfig paths, else its @qi package.json files."""
    packages: dict[str, str] = {}
    for key, targets in _tsconfig_paths(root, tsconfig).items():
        if key.startswith("@qi/") and targets:
            name = key.removesuffix("/*")
            packages.setdefault(name, _source_folder(targets[0]))
    if packages:
        return Layout(sorted(set(packages.values())), packages, "tsconfig paths")
    for rel, pkg in _package_jsons(root, exclude):
        name = pkg.get("name")
        if isinstance(name, str) and name.startswith("@qi/") and "/" in rel:
            folder = PurePosixPath(rel).parent
            src = folder / "src"
            packages[name] = (src if (root / src).is_dir() else folder).as_posix()
    if packages:
        return Layout(sorted(set(packages.values())), packages, "package.json")
    nested = _nested_libraries(root, exclude)
    if nested:
        return Layout(sorted(set(nested.values())), nested,
                      "nested package.json exports and tsconfig paths, by the imports other folders use")
    folders = sorted(p.relative_to(root).as_posix() for p in root.glob(CONVENTIONAL_PACKAGE_GLOB) if p.is_dir())
    return Layout(folders, {}, "conventional layout (the corpus declares no @qi package)")


# An import or re-export's module specifier, a dynamic import's, a require's.
_SPECIFIER = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|\brequire\s*\(\s*)["']([^"'.][^"']*)["']""")


def _nested_libraries(root: Path, exclude: Sequence[str]) -> dict[str, str]:
    """{specifier: source folder} of the libraries a checkout keeps in nested projects: a package.json
    below the root with `exports` (any name; `name` and `name/<subpath>` are its specifiers), and
    the `paths` aliases of every tsconfig below the root (`@qicore/*` -> `lib/src/*`). A candidate
    is a library when a file outside its folder imports it: an app's own `@/*` alias, used only
    inside the app, is not. Folders inside another library's folder are that library."""
    candidates: list[tuple[str, bool, str]] = []  # (specifier or alias prefix, is a prefix, folder)
    for rel, pkg in _package_jsons(root, exclude):
        name, exports = pkg.get("name"), pkg.get("exports")
        if "/" not in rel or not isinstance(name, str) or not exports:
            continue
        folder = PurePosixPath(rel).parent
        source = (folder / "src") if (root / folder / "src").is_dir() else folder
        candidates.append((name, True, source.as_posix()))
    for path in sorted(root.rglob("tsconfig*.json")):
        rel = path.relative_to(root).as_posix()
        if "node_modules" in path.parts or any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        for alias, targets in _tsconfig_paths(root, rel).items():
            for target in targets[:1]:
                prefix = alias.endswith("/*")
                candidates.append((alias.removesuffix("/*") if prefix else alias, prefix,
                                   _source_folder(target) if prefix or not target.endswith(".ts")
                                   else PurePosixPath(target).parent.as_posix()))
    if not candidates:
        return {}
    used: dict[str, str] = {}
    for path in sorted(root.rglob("*.ts")):
        rel = path.relative_to(root).as_posix()
        if "node_modules" in path.parts or any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for spec in _SPECIFIER.findall(text):
            for name, prefix, folder in candidates:
                hit = spec == name or (prefix and spec.startswith(name + "/")) or (not prefix and spec == name)
                if hit and folder and not rel.startswith(folder + "/"):
                    used.setdefault(spec, folder)
    outer = sorted(set(used.values()), key=len)
    top = {f: next(o for o in outer if f == o or f.startswith(o + "/")) for f in used.values()}
    return {spec: top[folder] for spec, folder in sorted(used.items())}


@functools.lru_cache(maxsize=4096)
def _app_dir(root: Path, folder: str) -> str:
    """The nearest folder from `folder` up (below the root) with a package.json or README.md,
    else the top folder."""
    parts = PurePosixPath(folder).parts
    for i in range(len(parts), 0, -1):
        here = root.joinpath(*parts[:i])
        if (here / "package.json").is_file() or (here / "README.md").is_file():
            return "/".join(parts[:i])
    return parts[0] if parts else ""


def classify(root: Path, rel: str, layout: Layout, overrides: Mapping[str, Sequence[str]],
             app_folders: set[str] = frozenset()) -> tuple[str | None, str]:
    """(kind, app folder) of a .ts or .md file, or (None, the reason it has no kind).

    `app_folders`: the folders holding TypeScript outside the packages (Markdown there is the app's).
    """
    folder = PurePosixPath(rel).parent.as_posix()
    folder = "" if folder == "." else folder
    for kind, globs in overrides.items():
        if any(fnmatch.fnmatchcase(rel, g) for g in globs):
            return kind, (_app_dir(root, folder) if kind == "app" else "")
    parts = PurePosixPath(rel).parts
    if rel.endswith(".md"):
        app = _app_dir(root, folder) if folder and not layout.in_package(rel) else ""
        return ("app", app) if app in app_folders else ("tutorial", "")
    if TEST_FILE.search(rel) or TEST_DIRS.intersection(parts[:-1]):
        return "test", ""
    if layout.in_package(rel):
        return "implementation", ""
    if TOOL_CONFIG.search(rel):
        return None, "tool configuration"
    if not folder:
        return None, "TypeScript at the corpus root, outside any package or app folder"
    return "app", _app_dir(root, folder)


def _ancestors(rel: str) -> list[str]:
    parts = PurePosixPath(rel).parts[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


@dataclass
class Sources:
    files: list[SourceFile]
    layout: Layout
    unclassified: dict[str, str]  # rel -> why it has no kind


def find_sources(root: Path, overrides: Mapping[str, Sequence[str]], exclude: Sequence[str],
                 tsconfig: str = "tsconfig.json") -> Sources:
    """Sorted source files under root with their kinds, and the .ts/.md files left without one."""
    if not root.exists():
        raise CorpusError(f"corpus root {root} does not exist (set corpus.root)")
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} is not a directory (set corpus.root)")
    layout = layout_of(root, tsconfig, exclude)
    candidates = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".ts", ".md") or not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if not any(fnmatch.fnmatchcase(rel, g) for g in exclude):
            candidates.append((path, rel))
    # TypeScript first: the folders of its apps decide whether a Markdown file is an app's or a tutorial.
    kinds = {rel: classify(root, rel, layout, overrides) for _, rel in candidates if rel.endswith(".ts")}
    app_folders = {a for rel, (kind, _) in kinds.items() if kind == "app" for a in _ancestors(rel)}
    found, unclassified = [], {}
    for path, rel in candidates:
        kind, where = kinds.get(rel) or classify(root, rel, layout, overrides, app_folders)
        if kind is None:
            unclassified[rel] = where
        else:
            found.append(SourceFile(path, rel, kind, where if kind == "app" else ""))
    if not found:
        raise CorpusError(f"corpus root {root} holds no TypeScript or Markdown source (corpus.root)")
    return Sources(found, layout, unclassified)


def read_text(path: Path) -> str:
    """UTF-8 text; raises UnicodeDecodeError for anything else (the caller counts it)."""
    return path.read_bytes().decode("utf-8")


@dataclass
class CodeBlock:
    code: str
    first_line: int  # 1-based line of the code's first line in the Markdown file
    headings: list[str]  # heading path, outermost first
    prose: str  # the paragraph(s) just before the block


TS_FENCES = frozenset({"ts", "typescript", "tsx"})
_HEADING_LEVEL = {"atx_h1_marker": 1, "atx_h2_marker": 2, "atx_h3_marker": 3, "atx_h4_marker": 4,
                  "atx_h5_marker": 5, "atx_h6_marker": 6, "setext_h1_underline": 1, "setext_h2_underline": 2}


def _heading(node) -> tuple[int, str]:
    level, title = 1, ""
    for c in node.children:
        if c.type in _HEADING_LEVEL:
            level = _HEADING_LEVEL[c.type]
        elif c.type == "inline":
            title = tsast.text(c)
        elif c.type == "paragraph":  # setext: the title is a paragraph above the underline
            title = tsast.text(c).strip()
    return level, title.strip()


def _block_nodes(root):
    """Headings, paragraphs and fenced code in document order (lists and quotes opened)."""
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type in ("atx_heading", "setext_heading", "paragraph", "fenced_code_block"):
            yield n
            continue
        stack.extend(reversed(n.named_children))


def markdown_blocks(source: str | Tree, prose_chars: int = 400) -> list[CodeBlock]:
    """Fenced ts/typescript blocks with the heading path and the prose just before each."""
    tree = tsast.parse_markdown(source) if isinstance(source, str) else source
    blocks: list[CodeBlock] = []
    headings: list[tuple[int, str]] = []
    prose: list[str] = []
    for node in _block_nodes(tree.root_node):
        if node.type in ("atx_heading", "setext_heading"):
            level, title = _heading(node)
            headings = [h for h in headings if h[0] < level] + [(level, title)]
            prose = []
        elif node.type == "paragraph":
            prose.append(" ".join(tsast.text(node).split()))
        else:
            info = next((c for c in node.children if c.type == "info_string"), None)
            content = next((c for c in node.children if c.type == "code_fence_content"), None)
            lang = tsast.text(info).split()[0].lower() if info is not None and tsast.text(info).split() else ""
            if lang in TS_FENCES and content is not None:
                blocks.append(CodeBlock(
                    # Fences inside lists or indented keep their indentation in the content.
                    code=textwrap.dedent(tsast.text(content)),
                    first_line=content.start_point[0] + 1,
                    headings=[h for _, h in headings],
                    prose=" ".join(prose)[-prose_chars:],
                ))
            prose = []
    return blocks


def readme_summary(text: str) -> str:
    """The first paragraph of a README: what the demo app is about."""
    for node in _block_nodes(tsast.parse_markdown(text).root_node):
        if node.type == "paragraph":
            return " ".join(tsast.text(node).split())
    return ""


def iter_readmes(root: Path, files: Iterable[SourceFile]) -> dict[str, str]:
    """App folder -> README summary, for every app that has a README.md."""
    out = {}
    for f in files:
        if f.app_dir and f.app_dir not in out:
            readme = root / f.app_dir / "README.md"
            if readme.is_file():
                try:
                    out[f.app_dir] = readme_summary(read_text(readme))
                except UnicodeDecodeError:
                    out[f.app_dir] = ""
    return out
