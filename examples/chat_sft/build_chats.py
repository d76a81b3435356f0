"""An instruction set every Python install can build: questions about the standard library's functions, each
answered by the first sentence of the function's docstring, with the rest of the docstring given as context.

    python examples/chat_sft/build_chats.py --out runs/chat/chats.jsonl

One JSONL line per conversation, in the common `messages` format:

    {"messages": [{"role": "system", "content": "You summarise Python documentation in one sentence."},
                  {"role": "user", "content": "What does json.dumps do?\\n\\nSerialize ``obj`` to a JSON ..."},
                  {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}]}

The docstrings are read with `ast` from the stdlib's source files, as the built-in corpus reads them
(`lmforge.data.builtin`), never by importing the modules.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

from lmforge.data.builtin import stdlib_dir, stdlib_sources

SYSTEM = "You summarise Python documentation in one sentence."
# The first sentence: up to the first full stop followed by whitespace (or the end), on one paragraph.
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.S)


def split_docstring(doc: str) -> tuple[str, str] | None:
    """(first sentence, the rest as context), or None for a docstring that does not make a fair question."""
    paragraph = doc.strip().split("\n\n", 1)[0]
    m = _SENTENCE.match(paragraph)
    if not m:
        return None
    first = " ".join(m.group(1).split())
    rest = " ".join(doc.strip()[m.end():].split())
    if not 20 <= len(first) <= 140 or len(rest) < 40 or ">>>" in rest[:300]:
        return None
    return first, rest[:300].rsplit(" ", 1)[0]


def _public_definitions(tree: ast.Module):
    """(qualified name, node) for the module's public functions and classes and the classes' public methods."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        yield f"{node.name}.{item.name}", item


def conversations(limit: int | None = None) -> list[dict]:
    out = []
    root = stdlib_dir()
    for path in stdlib_sources(root):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if module.startswith("_") or "._" in module:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (OSError, SyntaxError, ValueError):
            continue
        for name, node in _public_definitions(tree):
            doc = ast.get_docstring(node, clean=True)
            parts = split_docstring(doc) if doc else None
            if parts is None:
                continue
            first, context = parts
            out.append({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"What does {module}.{name} do?\n\n{context}"},
                {"role": "assistant", "content": first}]})
            if limit is not None and len(out) >= limit:
                return out
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    chats = conversations(args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    print(f"{len(chats)} conversations -> {args.out}")


if __name__ == "__main__":
    main()
