from __future__ import annotations

import json

import pytest

from lmforge.data.squad import read_squad
from lmforge.errors import UserError

CONTEXT = "Paris is the capital of France. It lies on the Seine."


def squad_file(tmp_path, qas, context=CONTEXT, version="v2.0"):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": version, "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}), encoding="utf-8")
    return path


def q(qid, answers, impossible=False):
    return {"id": qid, "question": "which?", "answers": answers, "is_impossible": impossible}


def test_reads_answerable_and_unanswerable_questions(tmp_path):
    read = read_squad(squad_file(tmp_path, [
        q("a", [{"text": "Paris", "answer_start": 0}, {"text": "France", "answer_start": 24}]),
        q("b", [], impossible=True)]))
    a, b = read.questions
    assert (a.id, a.context, [(x.text, x.start, x.end) for x in a.answers]) == (
        "a", CONTEXT, [("Paris", 0, 5), ("France", 24, 30)])
    assert a.answerable and not b.answerable and read.skipped == 0 and read.version == "v2.0"


@pytest.mark.parametrize(("qas", "message"), [
    ([q("x", [{"text": "Seine", "answer_start": 3}])],
     "question x (article 1 paragraph 1 question 1): answer 'Seine' does not occur in the context at answer_start 3 "
     "(the context has 'is is' there)"),
    ([q("x", [{"text": "Seine", "answer_start": 500}])],
     "answer 'Seine' does not occur in the context at answer_start 500 (the context has 53 characters)"),
    ([q("x", [{"text": "Seine", "answer_start": None}])], "answer 'Seine' has no integer answer_start (it has null)"),
    ([q("x", [])], "question x (article 1 paragraph 1 question 1) has no answers and is not marked is_impossible"),
])
def test_a_bad_answer_is_one_line_naming_the_question_and_the_fix(tmp_path, qas, message):
    with pytest.raises(UserError) as e:
        read_squad(squad_file(tmp_path, qas))
    line = str(e.value)
    assert message in line and "\n" not in line, line
    if "answer_start" in message:
        assert "--objective-options.skip-bad-rows" in line


def test_skip_bad_rows_skips_and_counts(tmp_path):
    read = read_squad(squad_file(tmp_path, [q("ok", [{"text": "Seine", "answer_start": 47}]),
                                            q("bad", [{"text": "Seine", "answer_start": 3}])]), skip_bad=True)
    assert [x.id for x in read.questions] == ["ok"] and read.skipped == 1
    with pytest.raises(UserError, match=r"holds no questions \(1 skipped for bad answers\)"):
        read_squad(squad_file(tmp_path, [q("bad", [{"text": "Seine", "answer_start": 3}])]), skip_bad=True)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "SQuAD file is not valid JSON (Expecting property name enclosed in double quotes at line 1"),
    ('{"version": "1.1"}', "not a SQuAD file: no 'data' list at the top level"),
    ('{"data": [{"title": "t"}]}', "article 1 has no 'paragraphs' list"),
    ('{"data": [{"paragraphs": [{"qas": []}]}]}', "article 1 paragraph 1 lacks a 'context' text or a 'qas' list"),
])
def test_a_malformed_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_squad(path)
    assert message in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.shared_data
def test_the_shared_subsets(shared_data):
    v2 = read_squad(shared_data / "squad" / "squad-v2.0-dev-subset.json")
    assert len(v2.questions) == 1407 and sum(not x.answerable for x in v2.questions) == 702
    assert all(x.context[a.start:a.end] == a.text for x in v2.questions for a in x.answers)
    # The v1.1 subset gives most answers without answer_start: an error, or skipped with a count.
    v1_path = shared_data / "squad" / "squad-v1.1-dev-subset.json"
    with pytest.raises(UserError, match="has no integer answer_start"):
        read_squad(v1_path)
    v1 = read_squad(v1_path, skip_bad=True)
    assert len(v1.questions) + v1.skipped == 158 and v1.questions
