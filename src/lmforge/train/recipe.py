"""Named training recipes: plain YAML files of `lmforge train` options, shipped in the package (train/recipes/).

`lmforge train --recipe fast` starts from the options of `recipes/fast.yaml`; a `--config` file and the flags
override them, as they override the defaults: defaults <- recipe <- config file <- flags. A recipe is a partial
`TrainConfig` (any of its keys, nested as in a run's config.yaml), so a recipe is read, diffed and copied like any
run config, and `lmforge train --config OUT/config.yaml` of a recipe run reproduces it without the recipe.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from lmforge.config import load_yaml, suggest
from lmforge.errors import UserError

_DIR = "recipes"


def recipe_names() -> list[str]:
    """The recipes shipped in the package, sorted."""
    folder = resources.files("lmforge.train").joinpath(_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The options of recipe `name` as a nested mapping (as a config file's)."""
    names = recipe_names()
    if name not in names:
        raise UserError(f"unknown recipe '{name}'{suggest(name, names)}", fix=f"choose one of {', '.join(names)}")
    with resources.as_file(resources.files("lmforge.train").joinpath(_DIR, f"{name}.yaml")) as path:
        data = load_yaml(path)
    if "recipe" in data:
        raise UserError("a recipe cannot name another recipe", where=path, fix="remove its 'recipe' key")
    return data


def under_recipe(recipe: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` (a config file's and the flags' options) over `recipe`, mapping by mapping: a given key wins."""
    merged = dict(recipe)
    for key, value in given.items():
        key_recipe = next((k for k in merged if k.replace("-", "_") == key.replace("-", "_")), key)
        if isinstance(value, dict) and isinstance(merged.get(key_recipe), dict):
            merged[key_recipe] = under_recipe(merged[key_recipe], value)
        else:
            merged.pop(key_recipe, None)
            merged[key] = value
    return merged
