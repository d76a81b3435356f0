"""The one chat template: rendered and tokenized exactly as transformers' apply_chat_template does, assistant
answers (with their end-of-turn token) and nothing else marked for training, bad conversations one line each."""

from __future__ import annotations

import json

import pytest

from lmforge.data.chat import (
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    END_OF_TURN,
    ChatFormatError,
    add_chat_tokens,
    check_messages,
    encode_chat,
    load_chat_template,
    render_chat,
    save_chat_tokenizer,
)
from lmforge.data.tokenizer import TokenizerOptions, load_tokenizer, train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You answer questions about Python."},
    {"role": "user", "content": "What does len() return?"},
    {"role": "assistant", "content": "The number of items of a container."},
    {"role": "user", "content": "And of a string?"},
    {"role": "assistant", "content": "Its number of characters."},
]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    texts = ["What does len() return? The number of items.", "A string is a sequence of characters."] * 30
    tok = train_tokenizer(texts, TokenizerOptions(vocab_size=300))
    directory = tmp_path_factory.mktemp("chat_tok")
    save_chat_tokenizer(tok, directory)
    return directory


def test_render_is_the_documented_layout():
    text = render_chat(CHAT_TEMPLATE, CONVERSATION[1:3], add_generation_prompt=False)
    assert text == ("<|user|>\nWhat does len() return?<|end|>\n"
                    "<|assistant|>\nThe number of items of a container.<|end|>\n")
    prompt = render_chat(CHAT_TEMPLATE, CONVERSATION[1:2], add_generation_prompt=True)
    assert prompt == "<|user|>\nWhat does len() return?<|end|>\n<|assistant|>\n"


def test_transformers_renders_and_tokenizes_identically(chat_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(chat_dir))
    for add in (False, True):
        assert hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add) == \
            render_chat(load_chat_template(chat_dir), CONVERSATION, add_generation_prompt=add)
    tok = load_tokenizer(chat_dir)
    ours = encode_chat(tok, load_chat_template(chat_dir), CONVERSATION)
    theirs = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert theirs["input_ids"] == ours.ids
    assert [bool(m) for m in theirs["assistant_masks"]] == ours.trained


def test_trained_tokens_are_the_answers_with_their_end_of_turn(chat_dir):
    tok = load_tokenizer(chat_dir)
    enc = encode_chat(tok, CHAT_TEMPLATE, CONVERSATION)
    trained = [i for i, t in zip(enc.ids, enc.trained) if t]
    assert tok.decode(trained, skip_special_tokens=False) == \
        f"The number of items of a container.{END_OF_TURN}Its number of characters.{END_OF_TURN}"
    end = tok.token_to_id(END_OF_TURN)
    # Every turn ends in <|end|>; only the assistants' are trained.
    assert [t for i, t in zip(enc.ids, enc.trained) if i == end] == [False, False, True, False, True]


def test_chat_tokens_are_special_and_saved(chat_dir):
    tok = load_tokenizer(chat_dir)
    ids = [tok.token_to_id(t) for t in CHAT_TOKENS]
    assert None not in ids and ids == sorted(ids)
    assert tok.encode("<|user|>", add_special_tokens=False).ids == [ids[1]]
    assert add_chat_tokens(tok) == 0  # already there: nothing added twice
    config = json.loads((chat_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["eos_token"] == "<eos>"


def test_load_chat_template_none_without_one(tmp_path):
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    assert load_chat_template(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "default", "template": "{{ 'x' }}"}]}))
    assert load_chat_template(tmp_path) == "{{ 'x' }}"
    (tmp_path / "chat_template.jinja").write_text("{{ 'y' }}")
    assert load_chat_template(tmp_path) == "{{ 'y' }}"


@pytest.mark.parametrize(("messages", "message"), [
    ([], "non-empty list"),
    ([{"role": "user"}], "turn 1 is malformed"),
    ([{"role": "user", "content": "hi"}, "hello"], "turn 2 is malformed"),
    ([{"role": "robot", "content": "beep"}], "unknown role 'robot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "turn 2 is an empty assistant"),
])
def test_bad_conversations_are_one_line(messages, message):
    with pytest.raises(ChatFormatError, match=message) as e:
        check_messages(messages, where="chat.jsonl:3")
    assert "\n" not in e.value.line() and e.value.line().startswith("chat.jsonl:3: ")


def test_the_template_refuses_an_unknown_role_in_one_line():
    with pytest.raises(ChatFormatError, match="unknown role tool"):
        render_chat(CHAT_TEMPLATE, [{"role": "tool", "content": "{}"}])


def test_sandbox_refuses_attribute_escapes():
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        render_chat("{{ messages.__class__.__mro__ }}", [])
