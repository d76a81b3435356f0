"""Constraints declared beside a config field (`field(min=, max=, gt=, lt=, non_empty=, choices=)`, floats finite)
are checked wherever a config is built: in Python, from YAML, from flags, in one line naming the option."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import pkgutil
from dataclasses import dataclass

import pytest

import lmforge
from lmforge.config import Config, OptionError, add_config_args, field, resolve
from lmforge.errors import UserError


@dataclass
class Inner(Config):
    heads: int = field(4, "heads", min=1)


@dataclass
class Knobs(Config):
    p: float = field(1.0, "probability", gt=0, max=1)
    k: int = field(0, "count", min=0)
    name: str = field("x", "name", non_empty=True)
    betas: tuple[float, float] = field((0.9, 0.95), "betas", min=0, lt=1)
    kind: str = field("a", "kind", choices=("alpha", "beta", "a"))
    inner: Inner = field(default_factory=Inner, help="inner")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p, Knobs)
    return p.parse_args(argv)


@pytest.mark.parametrize("kwargs, must", [
    (dict(p=0.0), "in (0, 1]"), (dict(p=1.5), "in (0, 1]"), (dict(k=-1), ">= 0"), (dict(name=" "), "non-empty"),
    (dict(betas=(0.9, 1.0)), "in [0, 1)"), (dict(kind="alpah"), "one of alpha, beta, a (did you mean alpha?)"),
    (dict(p=math.nan), "a finite number"), (dict(p=math.inf), "a finite number"),
])
def test_python_construction_checks_declared_constraints(kwargs, must):
    with pytest.raises(OptionError) as e:
        Knobs(**kwargs)
    assert e.value.line().endswith(f"but must be {must}") and "\n" not in e.value.line()


def test_a_flag_is_named_as_typed_and_a_file_key_with_its_file(tmp_path):
    with pytest.raises(UserError) as e:
        resolve(Knobs, _parse(["--inner.heads", "0"]))
    assert e.value.line() == "--inner.heads is 0, but must be >= 1"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inner:\n  heads: -2\n")
    with pytest.raises(UserError) as e:
        resolve(Knobs, None, config=cfg_file)
    assert e.value.line() == f"{cfg_file}: option 'inner.heads' is -2, but must be >= 1"
    with pytest.raises(UserError, match="option 'p' is nan, but must be a finite number"):
        resolve(Knobs, p="nan")


def test_help_shows_the_range():
    p = argparse.ArgumentParser()
    add_config_args(p, Knobs)
    assert "(default: 1.0; in (0, 1])" in " ".join(p.format_help().split())


def test_every_config_dataclass_checks_itself():
    """Each lmforge dataclass built of `config.field`s derives from Config, so Python construction is checked."""
    unchecked = []
    for info in pkgutil.walk_packages(lmforge.__path__, "lmforge."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                    and any("bounds" in f.metadata for f in dataclasses.fields(obj)) and not issubclass(obj, Config)):
                unchecked.append(f"{module.__name__}.{obj.__name__}")
    assert not unchecked


def test_configs_refuse_the_issue_examples():
    from lmforge.infer.generate import GenerationConfig
    from lmforge.models.config import ModelConfig
    from lmforge.train.config import OptimConfig

    G = GenerationConfig
    cases = [(lambda: G(max_new_tokens=-5), ">= 1"), (lambda: G(top_k=-1), ">= 0"),
             (lambda: G(temperature=-1.0), ">= 0"), (lambda: G(temperature=math.nan), "a finite number"),
             (lambda: G(top_p=2.0), "in (0, 1]"), (lambda: G(top_p=0.0), "in (0, 1]"),
             (lambda: ModelConfig(n_head=0), ">= 1"), (lambda: OptimConfig(lr=math.nan), "a finite number")]
    for make, must in cases:
        with pytest.raises(OptionError) as e:
            make()
        assert e.value.line().endswith(f"but must be {must}")
