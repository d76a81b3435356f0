from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from lmforge.config import add_config_args, field, resolve, save_config
from lmforge.errors import UserError


@dataclass
class Inner:
    n_layer: int = field(2, "layers")
    norm: str = field("layernorm", "norm", choices=("layernorm", "rmsnorm"))


@dataclass
class Outer:
    name: str = field("run", "name")
    lr: float = field(1e-3, "learning rate")
    compile: bool = field(True, "compile")
    files: list[str] = field(default_factory=list, help="inputs")
    seed: int | None = field(None, "seed")
    model: Inner = field(default_factory=Inner, help="model")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p, Outer)
    return p.parse_args(argv)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.5\nname: fromfile\nmodel:\n  n_layer: 7\n")
    cfg = resolve(Outer, parse(["--config", str(cfg_file), "--name", "fromflag", "--model.norm", "rmsnorm"]))
    assert cfg.lr == 0.5 and cfg.name == "fromflag"
    assert cfg.model.n_layer == 7 and cfg.model.norm == "rmsnorm"
    assert cfg.compile is True and cfg.seed is None


def test_bool_list_and_optional_flags():
    cfg = resolve(Outer, parse(["--no-compile", "--files", "a", "b", "--seed", "3"]))
    assert cfg.compile is False and cfg.files == ["a", "b"] and cfg.seed == 3


def test_effective_config_round_trips(tmp_path):
    cfg = resolve(Outer, parse(["--model.n-layer", "5", "--lr", "0.25"]))
    path = save_config(cfg, tmp_path / "config.yaml")
    assert resolve(Outer, None, config=path) == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("nope: 1\n", "unknown option 'nope'"),
        ("model:\n  width: 3\n", "unknown option 'model.width'"),
        ("lr: fast\n", "option 'lr' must be float"),
        ("model:\n  norm: batchnorm\n", "must be one of layernorm, rmsnorm"),
        ("lr: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_files_give_one_clear_line(tmp_path, text, message):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(text)
    with pytest.raises(UserError) as e:
        resolve(Outer, None, config=cfg_file)
    assert message in e.value.line() and "\n" not in e.value.line()


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        resolve(Outer, None, config=tmp_path / "absent.yaml")
