"""The model registry: kinds, heads and capabilities; and the rule that nobody outside models/ and interop/ asks a
model for its family name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lmforge.errors import UserError
from lmforge.models import ModelConfig, build_model, get_preset
from lmforge.models.registry import (
    CLASSIFY,
    EMBED,
    EXTRACT_SPAN,
    FAMILIES,
    FILL_MASK,
    GENERATE,
    SCORE,
    Kind,
    capabilities,
    describe,
    families_that,
    kind_of,
    require,
    text_frame,
)

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "lmforge"
ALLOWED = ("models", "interop")  # the registry itself, and interop's per-family Hugging Face tables


def test_every_family_has_a_preset_of_its_own_and_builds_with_each_of_its_heads():
    for f in FAMILIES.values():
        cfg = get_preset(f.preset)
        assert cfg.family == f.name
        for head in f.heads:
            labels = ["a", "b", "c"] if head == "classify" else []
            model = build_model(ModelConfig.from_dict({**cfg.to_dict(), "vocab_size": 64, "head": head,
                                                       "labels": labels}))
            assert isinstance(model, f.model_class(head))


@pytest.mark.parametrize(("preset", "head", "expected"), [
    ("tiny", "lm", {GENERATE, SCORE}),
    ("llama-tiny", "classify", {CLASSIFY}),
    ("bert-tiny", "lm", {FILL_MASK, EMBED}),
    ("bert-tiny", "span", {EXTRACT_SPAN}),
    ("t5-tiny", "lm", {GENERATE}),
    ("lstm-tiny", "lm", {SCORE}),
    ("lstm-tiny", "classify", {CLASSIFY}),
])
def test_capabilities_follow_from_kind_and_head(preset, head, expected):
    cfg = get_preset(preset)
    cfg.head, cfg.labels = head, ["x", "y"] if head == "classify" else []
    assert capabilities(cfg) == expected


def test_require_names_the_capability_the_model_and_who_can():
    cfg = get_preset("bert-tiny")
    with pytest.raises(UserError) as e:
        require(cfg, GENERATE, needed_for="generation")
    assert e.value.what == "generation needs a model that can generate text; this checkpoint is a bert encoder"
    assert e.value.fix == "use a checkpoint of family gpt, llama, t5"
    require(get_preset("t5-tiny"), GENERATE, needed_for="generation")  # can: no error
    assert [f.name for f in families_that(EXTRACT_SPAN)] == ["bert"]
    assert describe(ModelConfig(family="lstm", labels=["a", "b"])) == "a lstm recurrent model with a classify head"


def test_kinds_and_the_frame_each_reads_text_in():
    special = {"eos": 3, "cls": 6, "sep": 5}
    assert kind_of(get_preset("llama-tiny")) == Kind.DECODER
    assert text_frame(get_preset("tiny"), special) == ([3], [])
    assert text_frame(get_preset("lstm-tiny"), special) == ([3], [])
    assert text_frame(get_preset("bert-tiny"), special) == ([6], [5])
    assert text_frame(get_preset("bert-tiny"), {"eos": 3}) == ([], [])  # no <cls>/<sep>: the bare text
    assert text_frame(get_preset("t5-tiny"), special) == ([], [])


def _family_name_uses(tree: ast.AST) -> list[int]:
    """Lines that compare against a family name, or define a collection of family names to compare against."""
    names = set(FAMILIES)

    def holds_family(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return any(holds_family(e) for e in node.elts)
        return False

    def offends(node: ast.AST) -> bool:
        if isinstance(node, ast.Compare):
            return any(holds_family(n) for n in (node.left, *node.comparators))
        collection = isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Tuple | ast.List |
                                                                                   ast.Set)
        return collection and holds_family(node.value)

    lines = [node.lineno for node in ast.walk(tree) if offends(node)]
    return sorted(lines)


def test_no_code_outside_models_and_interop_compares_family_names():
    """Consumers ask a model what it can do (capabilities) or what kind it is, never which family it is."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] in ALLOWED:
            continue
        for line in _family_name_uses(ast.parse(path.read_text(encoding="utf-8"))):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert offenders == []


def test_the_family_name_check_finds_what_it_looks_for():
    bad = 'if cfg.family == "bert":\n    pass\nENCODERS = ("bert",)\nok = kind in (Kind.ENCODER,)\n'
    assert _family_name_uses(ast.parse(bad)) == [1, 3]


def test_configs_written_before_heads_existed_load_as_what_they_were():
    old = get_preset("lstm-tiny").to_dict()
    for key in ("head", "pooling"):
        old.pop(key)
    assert ModelConfig.from_dict(old).head == "lm"
    assert ModelConfig.from_dict({**old, "labels": ["neg", "pos"]}).head == "classify"  # labels named a classifier
