"""Configs: one dataclass per verb, filled from a YAML file and/or command-line flags.

Every field of a verb's config dataclass is both a YAML key and a flag (`n_layer` <-> `--n-layer`; a nested
dataclass field `model.n_layer` <-> `--model.n-layer`). Flags override the file, the file overrides the defaults.
The effective config is written next to a run's outputs (`save_config`) so the run can be reproduced with
`--config that/file.yaml`. The field's `help` metadata becomes the `--help` text.

A field declares its constraints beside its default (`field(1e-3, "lr", gt=0)`; see `field`): every config class
derives from `Config`, whose `__post_init__` runs `check` before the class's own, so a config built from YAML, from
flags or in Python is refused in one line naming the option, its value and what it may be (a float field is always
refused NaN and infinities). Cross-field rules stay in each class's own `__post_init__`/`validate`.

A field may be a dataclass chosen by a sibling field's value (`field(variants=("objective", table))`, as
`TrainConfig.objective_options`, whose fields are those of the chosen objective's own options): its flags are the
union of every variant's fields, shown in `--help` in one group per set of variants that take them, and a field of
another variant is refused in one line that names the variants it belongs to.

Written by hand rather than taken from jsonargparse to keep the core dependencies lean.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lmforge.atomic import write_text
from lmforge.errors import UserError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, help: str = "", *, choices: typing.Sequence[Any] | None = None,
          min: float | None = None, max: float | None = None, gt: float | None = None, lt: float | None = None,
          finite: bool = True, non_empty: bool = False, repeat: bool = False,
          default_factory: Any = dataclasses.MISSING,
          variants: tuple[str, typing.Callable[[], dict[str, type]]] | None = None) -> Any:
    """A dataclass field with `--help` text and the constraints `check` enforces on its value.

    `choices`: the allowed values. `min` / `max`: inclusive bounds, `gt` / `lt`: exclusive ones (a list or tuple
    field bounds each item). `finite`: a float value may not be NaN or infinite (on unless `finite=False`).
    `non_empty`: a string or list may not be empty. None is never checked (an optional field left unset).
    `repeat`: a list field's flag takes one value and is repeated (`--stop a --stop b`), so it never swallows a
    positional argument after it (a list flag otherwise takes every value that follows).
    `variants=(selector, table)`: the field holds the dataclass `table()[value of the sibling field selector]`.
    """
    bounds = {k: v for k, v in (("min", min), ("max", max), ("gt", gt), ("lt", lt)) if v is not None}
    meta = {"help": help, "choices": tuple(choices) if choices else None, "variants": variants, "bounds": bounds,
            "finite": finite, "non_empty": non_empty, "repeat": repeat}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def suggest(word: Any, candidates: typing.Iterable[Any]) -> str:
    """' (did you mean X?)' for the closest of `candidates` to `word`, or ''."""
    names = [str(c) for c in candidates]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def rule_text(bounds: dict[str, float]) -> str:
    """The range `bounds` allows, as a reader writes it: '>= 1', '> 0', 'in (0, 1]'."""
    low = ("[", bounds["min"]) if "min" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["max"]) if "max" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]:g}"
    return ""


class OptionError(UserError):
    """An option's value breaks its field's declared constraint. `option` is the dotted name (`optim.lr`);
    `spelled` how the message names it (`--optim.lr` when it came from a flag, see `resolve`)."""

    def __init__(self, option: str, value: Any, must: str, where: str | Path | None = None) -> None:
        self.option, self.value, self.must = option, value, must
        self.spelled = f"option '{option}'"
        super().__init__(self._what(), where=where)

    def _what(self) -> str:
        return f"{self.spelled} is {self.value!r}, but must be {self.must}"

    def renamed(self, option: str | None = None, spelled: str | None = None,
                where: str | Path | None = None) -> OptionError:
        if option is not None:
            self.option = option
            self.spelled = f"option '{option}'"
        if spelled is not None:
            self.spelled = spelled
        if where is not None:
            self.where = str(where)
        self.what = self._what()
        self.args = (self.line(),)
        return self


def _violation(f: dataclasses.Field, value: Any) -> str | None:
    """What `value` must be to satisfy `f`'s declared constraints, or None when it does."""
    meta = f.metadata
    if meta.get("non_empty") and isinstance(value, str | list | tuple) and not (
            value.strip() if isinstance(value, str) else value):
        return "non-empty"
    if meta.get("choices") and not isinstance(value, list | tuple) and value not in meta["choices"]:
        return f"one of {', '.join(map(str, meta['choices']))}{suggest(value, meta['choices'])}"
    items = value if isinstance(value, list | tuple) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and meta.get("finite", True) and not math.isfinite(v):
            return "a finite number"
        b = meta.get("bounds") or {}
        if b and not (v >= b.get("min", -math.inf) and v <= b.get("max", math.inf)
                      and v > b.get("gt", -math.inf) and v < b.get("lt", math.inf)):
            return rule_text(b)
    return None


def check(obj: Any) -> None:
    """Refuse the first field of config `obj` whose value breaks its declared constraints (`field`)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or dataclasses.is_dataclass(value):
            continue
        must = _violation(f, value)
        if must is not None:
            raise OptionError(f.name, value, must)


class Config:
    """Base of every config dataclass: `check`s the declared constraints before the class's own `__post_init__`.

    A subclass's `__post_init__` is wrapped when the class is made, so it need not call `super()`."""

    def __post_init__(self) -> None:
        check(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None or getattr(own, "_checks", False):
            return

        @functools.wraps(own)
        def post_init(self: Any) -> None:
            check(self)
            own(self)

        post_init._checks = True  # type: ignore[attr-defined]
        cls.__post_init__ = post_init  # type: ignore[method-assign]


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one flag per (nested) field of dataclass `cls`. Defaults are suppressed so only given flags override."""
    if not prefix:
        parser.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                            help="YAML file with any of the options below; flags given here override it")
    hints = _hints(cls)
    group = parser.add_argument_group(prefix.rstrip(".") or "options") if prefix else parser
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if f.metadata.get("variants"):
            _add_variant_args(parser, f, prefix + f.name + ".")
        elif dataclasses.is_dataclass(tp):
            add_config_args(parser, tp, prefix + f.name + ".")
        else:
            _add_flag(group, prefix, f, tp)


def _add_flag(group: Any, prefix: str, f: dataclasses.Field, tp: Any) -> None:
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    help_text = f.metadata.get("help", "")
    rule = rule_text(f.metadata.get("bounds") or {})
    if "default" not in help_text:
        shown = f"default: {default!r}" + (f"; {rule}" if rule else "")
        help_text = f"{help_text} ({shown})" if help_text else shown
    elif rule:
        help_text = f"{help_text} ({rule})"
    kwargs: dict[str, Any] = {"dest": prefix + f.name, "default": argparse.SUPPRESS, "help": help_text}
    if f.metadata.get("choices"):
        kwargs["choices"] = f.metadata["choices"]
    origin = typing.get_origin(tp)
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1]
        kwargs.update(type=item if item in (int, float) else str)
        kwargs.update(action="append") if f.metadata.get("repeat") else kwargs.update(nargs="+")
    elif tp in (int, float, str):
        kwargs["type"] = tp
        kwargs["metavar"] = tp.__name__.upper()
    else:
        kwargs["type"] = str
    group.add_argument(_flag(prefix, f.name), **kwargs)


def _variant_fields(table: dict[str, type]) -> dict[str, tuple[list[str], type, dataclasses.Field]]:
    """Every field name of the variants -> (the variants that have it, the first such class, its field)."""
    out: dict[str, tuple[list[str], type, dataclasses.Field]] = {}
    for value, cls in table.items():
        for f in dataclasses.fields(cls):
            out.setdefault(f.name, ([], cls, f))[0].append(value)
    return out


def _add_variant_args(parser: argparse.ArgumentParser, f: dataclasses.Field, prefix: str) -> None:
    """One flag per field of any variant (a field shared by several variants once), in one group per set of
    variants that take them: "objective_options of objective mlm, mlm_nsp"."""
    selector, table = f.metadata["variants"]
    variants = table()
    by_owners: dict[tuple[str, ...], list[tuple[type, dataclasses.Field]]] = {}
    for owners, cls, g in _variant_fields(variants).values():
        by_owners.setdefault(tuple(owners), []).append((cls, g))
    bare = [value for value, cls in variants.items() if not dataclasses.fields(cls)]
    note = f.metadata.get("help", "") + (f"; {', '.join(bare)} {'takes' if len(bare) == 1 else 'take'} none"
                                         if bare else "")
    for n, (owners, fields) in enumerate(by_owners.items()):
        group = parser.add_argument_group(f"{prefix.rstrip('.')} of {selector} {', '.join(owners)}",
                                          description=note if n == 0 else None)
        for cls, g in fields:
            _add_flag(group, prefix, g, _unwrap_optional(_hints(cls)[g.name])[0])


def variant(cls: type, name: str, selected: Any, value: Any, prefix: str = "") -> Any:
    """The value of `cls`'s variant field `name` when its selector is `selected`: `value` (a mapping, or a dataclass
    of some variant) as the selected variant's dataclass, in one line when a field belongs to another variant."""
    f = {g.name: g for g in dataclasses.fields(cls)}[name]
    selector, table = f.metadata["variants"]
    variants = table()
    where = prefix + name
    if selected not in variants:
        raise UserError(f"unknown {selector} '{selected}'", fix=f"choose one of {', '.join(variants)}")
    chosen = variants[selected]
    if type(value) is chosen:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"option '{where}' must be a mapping of its sub-options, got {value!r}")
    own = [g.name for g in dataclasses.fields(chosen)]
    valid = f"options of {selector} '{selected}': {', '.join(own)}" if own else f"{selector} '{selected}' takes none"
    everyone = _variant_fields(variants)
    kept = {}
    for key, v in value.items():
        key = key.replace("-", "_")
        if key in own:
            kept[key] = v
            continue
        if key not in everyone:
            raise UserError(f"unknown option '{where}.{key}'", fix=valid)
        owners = everyone[key][0]
        # A field of another variant at that variant's default changes nothing, so it is dropped without a word:
        # a run config written when these options were one flat dataclass (a config.yaml from before objectives
        # had their own options) holds every objective's fields, each at its default unless the user set it, and
        # must still resume. A value other than the default was a mistake (it never did anything): refused.
        if any(v == _default(variants[o], key) for o in owners):
            continue
        raise UserError(f"option '{where}.{key}' is an option of {selector} {', '.join(owners)}, not of "
                        f"'{selected}'", fix=valid)
    return from_dict(chosen, kept, prefix=where + ".")


def _default(cls: type, name: str) -> Any:
    f = {g.name: g for g in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"option '{where}' may not be empty", fix="give it a value or leave it out")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"option '{where}' must be a mapping of its sub-options, got {value!r}")
        return from_dict(tp, value, prefix=where + ".")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if origin in (list, tuple):
            item = typing.get_args(tp)[0]
            items = value if isinstance(value, list | tuple) else [value]
            out = [_coerce(v, item, where) for v in items]
            return tuple(out) if origin is tuple else out
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
    except (TypeError, ValueError):
        name = getattr(tp, "__name__", str(tp))
        raise UserError(f"option '{where}' must be {name}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys with a clear message."""
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    variant_values: dict[str, Any] = {}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key not in names:
            raise UserError(f"unknown option '{prefix}{key}'{suggest(key, names)}",
                            fix=f"valid options here: {', '.join(sorted(names))}")
        f = names[key]
        if f.metadata.get("variants"):
            variant_values[key] = value  # once the selector's value is known
            continue
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    for key, f in names.items():
        if f.metadata.get("variants"):
            selector = f.metadata["variants"][0]
            selected = kwargs[selector] if selector in kwargs else _default(cls, selector)
            kwargs[key] = variant(cls, key, selected, variant_values.get(key), prefix)
    try:
        obj = cls(**kwargs)
        if not isinstance(obj, Config):  # a plain dataclass of `field`s: checked here, as a Config checks itself
            check(obj)
    except TypeError as e:
        raise UserError(f"incomplete config for {cls.__name__}: {e}") from None
    except OptionError as e:  # named relative to cls: name it from the top
        raise e.renamed(option=prefix + e.option) from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain, YAML-safe dict of a config dataclass (paths become strings, tuples lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError("config file not found", where=path, fix="check the path given to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(f"config file is not valid YAML ({getattr(e, 'problem', e)})", where=where) from None
    if not isinstance(data, dict):
        raise UserError("config file must hold a mapping of option: value", where=path)
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"option '{dotted}' conflicts with a non-mapping value of '{p}' in the config file")
    node[last] = value


def resolve(cls: type[T], args: argparse.Namespace | None = None, config: str | Path | None = None,
            **overrides: Any) -> T:
    """Defaults <- YAML file <- flags (or keyword overrides, with dots as `model__n_layer` or nested dicts)."""
    data: dict[str, Any] = {}
    cfg_path = config if config is not None else getattr(args, "config", None)
    if cfg_path is not None:
        data = load_yaml(cfg_path)
    given = {k: v for k, v in vars(args).items() if k not in ("config", "func", "verb")} if args else {}
    given.update({k.replace("__", "."): v for k, v in overrides.items()})
    for dotted, value in given.items():
        _set_dotted(data, dotted, value)
    # A config class may fill defaults that depend on other options (e.g. a model preset under model overrides).
    if hasattr(cls, "config_defaults"):
        try:  # a bad value is reported before the defaults are filled (that may read the data, or a checkpoint)
            precheck(cls, data)
        except OptionError as e:
            raise _spelled(e, given, args, cfg_path) from None
        data = cls.config_defaults(data)
    try:
        return from_dict(cls, data)
    except OptionError as e:
        raise _spelled(e, given, args, cfg_path) from None


def _spelled(e: OptionError, given: dict[str, Any], args: argparse.Namespace | None,
             cfg_path: str | Path | None) -> OptionError:
    """`e` naming the option as the user gave it: a flag (`--optim.lr`), or a key of the config file."""
    if e.option in given and args is not None and e.option in vars(args):
        return e.renamed(spelled=_flag("", e.option))
    if cfg_path is not None:
        return e.renamed(where=cfg_path)
    return e


def precheck(cls: type, data: dict[str, Any], prefix: str = "") -> None:
    """`check` the values `data` gives (a nested mapping, as `from_dict` takes) before `cls` is built from it.
    Unknown keys and values of the wrong type are left to `from_dict`."""
    if not isinstance(data, dict):
        return
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        key = key.replace("-", "_")
        f = names.get(key)
        if f is None or value is None:
            continue
        tp = _unwrap_optional(hints[key])[0]
        if f.metadata.get("variants"):
            selector, table = f.metadata["variants"]
            chosen = table().get(data.get(selector, _default(cls, selector)))
            if chosen is not None:
                precheck(chosen, value, prefix + key + ".")
        elif dataclasses.is_dataclass(tp):
            precheck(tp, value, prefix + key + ".")
        else:
            try:
                coerced = _coerce(value, hints[key], prefix + key)
            except UserError:
                continue
            must = _violation(f, coerced)
            if must is not None:
                raise OptionError(prefix + key, coerced, must)


def save_config(obj: Any, path: str | Path) -> Path:
    """Write the effective config as YAML (atomically) and return its path."""
    path = Path(path)
    write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
    return path
