"""The built-in corpora: `builtin:python-docs`, English prose that every Python install already holds, and
`builtin:tinyshakespeare`, the char-rnn classic shipped in the package.

`builtin:python-docs` is the default corpus, so quickstart needs no download: the language reference as pydoc renders it
(`pydoc_data.topics`) followed by the docstrings of the standard library's modules, classes and functions.
The docstrings are read from the source files with `ast`, never by importing the modules: importing runs
their code (some open windows, start threads or print), is slow, and would leave hundreds of modules loaded
in the process. About 2 MB of text; produced in about 2 s, in the same order every time.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

NAME = "builtin:python-docs"
# Tiny Shakespeare (Karpathy's char-rnn data set: 40,000 lines of the plays, public domain, 1.1 MB), gzipped into
# the package (0.4 MB) so the guided path and the benchmarks run on a fresh machine; read as the .txt.gz file it
# is, so it splits into documents exactly as the same file given by path does.
TINYSHAKESPEARE = "builtin:tinyshakespeare"
NAMES = (NAME, TINYSHAKESPEARE)

# Bump when the extraction below changes what it yields, so fingerprints (and caches keyed on them) change.
_EXTRACTOR_VERSION = 1

# Docstrings shorter than this are mostly one-line summaries ("Return the name."), too short to be prose.
MIN_DOCSTRING_CHARS = 80

# Directories skipped anywhere under the stdlib: tests and demos (code-heavy, some deliberately malformed),
# the IDE, third-party packages, and `encodings`, ~100 near-identical generated codec modules.
_SKIP_DIRS = frozenset({
    "test", "tests", "idlelib", "turtledemo", "site-packages", "dist-packages", "__pycache__", "encodings",
    "lib-dynload", "pydoc_data", "__phello__", "_bundled",
})


def packaged_file(name: str) -> Path:
    """The file in the package that holds built-in corpus `name` (one of the shipped ones, not python-docs)."""
    from importlib import resources

    stem = name.removeprefix("builtin:")
    return Path(str(resources.files("lmforge.data").joinpath("corpora", f"{stem}.txt.gz")))


def packaged_fingerprint(name: str) -> dict[str, object]:
    """{"path", "bytes", "sha256"} of a shipped corpus: its name, and the size and hash of its compressed file."""
    data = packaged_file(name).read_bytes()
    return {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def stdlib_dir() -> Path:
    """The directory holding the standard library's .py files (the base install's, also inside a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """The stdlib .py files the corpus reads, in sorted (deterministic) order."""
    root = stdlib_dir() if root is None else root
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place keeps os.walk out of skipped trees; sorting makes the walk order reproducible.
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
        found.extend(Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return found


def _topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        return {}
    return topics


def _definitions(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Classes and functions in source order, including those nested in classes, functions and if/try blocks.

    Only statement lists are visited (not expressions), which is several times cheaper than `ast.walk`.
    """
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
            yield from _definitions(node.body)
            continue
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            sub = getattr(node, name, None)
            if isinstance(sub, list):
                yield from _definitions(sub)


def file_docstrings(path: Path) -> list[str]:
    """The long docstrings of one source file, in source order; [] when it cannot be read or parsed."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return []  # a broken or exotic file costs the corpus a few docstrings, never the run
    docs = []
    for node in (tree, *_definitions(tree.body)):
        doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
        if doc and len(doc) >= MIN_DOCSTRING_CHARS:
            docs.append(doc)
    return docs


def python_docs() -> Iterator[str]:
    """The corpus, one document per reference topic and per long docstring, in a fixed order."""
    topics = _topics()
    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text
    for path in stdlib_sources():
        yield from file_docstrings(path)


def fingerprint() -> dict[str, object]:
    """A cheap identity of the corpus (no parsing): Python version, topics text, and source files' sizes.

    `bytes` is the size of the inputs (topics text plus source files), not of the extracted text.
    """
    h = hashlib.sha256()
    h.update(f"{NAME}\0{_EXTRACTOR_VERSION}\0{sys.version}\0".encode())
    size = 0
    topics = _topics()
    for key in sorted(topics):
        data = topics[key].encode("utf-8")
        size += len(data)
        h.update(key.encode() + b"\0" + hashlib.sha256(data).digest())
    root = stdlib_dir()
    for path in stdlib_sources(root):
        try:
            n = path.stat().st_size
        except OSError:
            continue
        size += n
        h.update(f"{path.relative_to(root).as_posix()}\0{n}\0".encode())
    return {"path": NAME, "bytes": size, "sha256": h.hexdigest(), "python": sys.version.split()[0]}
