"""What every verb's parser shares."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from lmforge.config import add_config_args, suggest


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (what, how to fix), never the usage dump; a bad choice lists the
    valid ones, with the closest as "did you mean". Subparsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            name = "/".join(action.option_strings) or action.metavar or action.dest
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(None, f"{name} is {value!r}, but must be one of "
                                               f"{choices}{suggest(value, action.choices)}")

    def unknown(self, extras: list[str]) -> NoReturn:
        """Refuse flags this parser does not know, suggesting the closest it does."""
        flags = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        first = next((x for x in extras if x.startswith("-")), extras[0])
        hint = suggest(first.split("=", 1)[0], flags) if first.startswith("-") else ""
        what = "unknown option" if first.startswith("-") else "unexpected argument"
        self.error(f"{what} {first!r}{hint}")


def add_verb(sub: Any, name: str, cls: type | None, func: Callable[[argparse.Namespace], int | None],
             help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Register verb `name` whose options are the fields of config dataclass `cls`."""
    parser = sub.add_parser(name, help=help, description=description or help,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    if cls is not None:
        add_config_args(parser, cls)
    parser.set_defaults(func=func)
    return parser


def add_no_verify(parser: argparse.ArgumentParser, what: str = "load the checkpoint") -> None:
    """`--no-verify` on a verb that loads checkpoints (read back with `verify_wanted`)."""
    parser.add_argument("--no-verify", action="store_true",
                        help=f"{what} without checking it against its checksums (huge models)")


def verify_wanted(args: argparse.Namespace) -> bool:
    """False when --no-verify was given; the flag is taken out so that the config never sees it."""
    return not vars(args).pop("no_verify", False)

