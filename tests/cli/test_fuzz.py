"""Every verb, fed random and extreme option values drawn from its own option table, exits 0 or 2 with at most a
few lines on stderr and never a traceback.

Each run points the verb's input at a path that does not exist, so a value that passes validation ends in the
one-line "not found" error instead of real work: what is under test is that validation comes first and speaks
in one line.
"""

from __future__ import annotations

import argparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli.main import build_parser, main

MISSING = "/nonexistent/lmforge-fuzz"
# What each verb needs so that, once its options pass, it stops at once on a missing input.
SAFE = {
    "prepare": [f"{MISSING}/corpus.txt", "--out", "data"],
    "train": ["--data", MISSING, "--out", "run"],
    "generate": ["--checkpoint", MISSING],
    "eval": ["--data", MISSING, "--checkpoint", MISSING],
    "explain": ["--checkpoint", MISSING, "some text"],
    "embed": ["--checkpoint", MISSING, "--input", f"{MISSING}/in.txt", "--out", "emb.npy"],
    "export": [MISSING, "--out", "hf"],
    "import": [MISSING, "--out", "ckpt"],
    "quickstart": ["--corpus", f"{MISSING}/corpus.txt", "--out", "qs"],
    "serve": [MISSING, "--port", "0"],
}
EXTREMES = ["-1", "0", "1", "-0.5", "0.5", "2", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "",
            "99999999999999999999", "abc", "1.5"]


def _options(verb: str) -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[verb]._actions
            if a.option_strings and a.option_strings[0] not in ("-h", "--help", "--config")]


def _values(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    flag = action.option_strings[0]
    if action.nargs == 0:  # a switch (--resume / --no-resume)
        return st.sampled_from(action.option_strings).map(lambda f: [f])
    values = st.sampled_from(EXTREMES) | st.integers(-10**12, 10**12).map(str) | st.floats().map(repr)
    if action.choices:
        values = st.sampled_from([str(c) for c in action.choices]) | st.just("nonsense") | values
    elif action.type is str or action.type is None:
        values = values | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
    return values.map(lambda v: [flag, v] if not v.startswith("-") else [f"{flag}={v}"])


def _misspelled(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    flag = action.option_strings[0]
    return st.integers(3, max(3, len(flag) - 1)).map(lambda i: [flag[:i] + flag[i + 1:] + "x", "1"])


@pytest.mark.parametrize("verb", list(SAFE))
def test_every_option_value_gives_exit_0_or_2_and_one_line(verb, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    actions = _options(verb)
    one = st.sampled_from(actions).flatmap(lambda a: _values(a) | _misspelled(a))

    @settings(max_examples=30, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(one, min_size=1, max_size=3))
    def run(chosen):
        argv = [verb, *SAFE[verb], *[x for opt in chosen for x in opt]]
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        err = capsys.readouterr().err
        assert rc in (0, 2), (argv, rc, err)
        assert "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) <= 3, (argv, err)

    run()
