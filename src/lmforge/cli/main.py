"""`lmforge` entry point.

Every module in `lmforge.cli` that defines `register(subparsers)` is a verb; `ORDER` (an int) places it in
`--help`. A verb parses its flags into a config dataclass (`lmforge.config`) and calls a library function; it holds
no logic a user could not reach by importing. Heavy imports (torch) happen inside the verb's function so that
`lmforge --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import lmforge
import lmforge.cli
from lmforge.cli.common import Parser
from lmforge.errors import UserError

DESCRIPTION = """\
lmforge: from raw text to a trained, evaluated and served language model.

Start with `lmforge quickstart` (tokenizer + small model on the built-in corpus, a few minutes on a CPU), then
`lmforge prepare` your own corpus, `lmforge train` on it and `lmforge generate` from the checkpoint.
Every verb takes `--config FILE.yaml` and/or flags (flags win); `lmforge VERB --help` lists its options.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lmforge", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lmforge {lmforge.__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")  # each verb's parser is a Parser too
    modules = []
    for info in pkgutil.iter_modules(lmforge.cli.__path__):
        if info.name == "main":
            continue
        module = importlib.import_module(f"lmforge.cli.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(sub)
    for verb_parser in sub.choices.values():  # one usage line, not every flag twice: the list below has them
        positionals = " ".join(f"[{a.metavar or a.dest} ...]" if a.nargs in ("*", "+") else str(a.metavar or a.dest)
                               for a in verb_parser._actions if not a.option_strings)
        verb_parser.usage = f"%(prog)s [--config FILE.yaml] [options] {positionals}".rstrip()
    return parser


def main(argv: list[str] | None = None) -> int:
    code = _run(sys.argv[1:] if argv is None else argv)
    env = sys.modules.get("lmforge.parallel.env")  # loaded by the verbs that may run under torchrun
    if env is not None and env.joined_process_group():
        # A torchrun rank leaves without the interpreter's finalisation: gloo's worker threads can still hold work
        # objects then, and tearing them down aborts the rank (SIGABRT, "terminate called without an active
        # exception"; pytorch/pytorch#179291) after a run that finished and wrote everything, which torchrun then
        # reports as a failed job. Every file was closed by the verb; only the streams need flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(argv: list[str]) -> int:
    nul = next((a for a in argv if "\x00" in a), None)
    if nul is not None:  # no path or text can hold one; the OS would refuse it later with a traceback
        sys.stderr.write(f"lmforge: error: argument {nul.split(chr(0))[0]!r}... holds a NUL byte (fix: remove it)\n")
        return 2
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # a misspelled flag: one line from the verb's own parser, with the closest of its flags
        verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        verb_parser = verbs.get(getattr(args, "verb", None) or "")
        (verb_parser if isinstance(verb_parser, Parser) else parser).unknown(extras)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        sys.stderr.write(f"lmforge {args.verb}: error: {e.line()}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"lmforge {args.verb}: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
