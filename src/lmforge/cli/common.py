"""What every verb's parser shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lmforge.config import add_config_args


def add_verb(sub: Any, name: str, cls: type | None, func: Callable[[argparse.Namespace], int | None],
             help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Register verb `name` whose options are the fields of config dataclass `cls`."""
    parser = sub.add_parser(name, help=help, description=description or help,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    if cls is not None:
        add_config_args(parser, cls)
    parser.set_defaults(func=func)
    return parser
