"""Chat SFT: loss on the assistants' answers with their end-of-turn token, packing that changes nothing but the
padding, the two mask failures refused, bad conversations one line each, and a tuned model that answers through
its template."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.data.chat import CHAT_TEMPLATE, END_OF_TURN, load_chat_template, render_chat
from lmforge.eval.metrics import IGNORE_INDEX

from . import make_objective, run_train

QA = [("What is a list?", "A mutable sequence."), ("What is a tuple?", "An immutable sequence."),
      ("What does len return?", "The number of items."), ("What is a dict?", "A mapping of keys to values."),
      ("What is a set?", "An unordered collection."), ("What is None?", "The null object.")]


def conversations(n: int = 60) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            q2, a2 = QA[(i + 1) % len(QA)]
            turns = [{"role": "system", "content": "Answer briefly."}, *turns,
                     {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        out.append({"messages": turns})
    return out


def write_chats(path, chats) -> str:
    path.write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    return str(path)


CHAT = ["--objective", "chat_sft", "--seq-len", "96", "--model.max-seq-len", "128"]


def test_only_answers_and_their_end_of_turn_are_trained(tmp_path, tiny_data):
    obj = make_objective(tiny_data, "chat_sft", "tiny", seq_len=96, model__max_seq_len=128,
                         objective_options__chats=write_chats(tmp_path / "c.jsonl", conversations(6)))
    conv = obj.conversations[0]  # system, user, assistant, user, assistant
    trained = [i for i, t in zip(conv.ids, conv.trained) if t]
    assert obj.tok.decode(trained, skip_special_tokens=False) == \
        f"A mutable sequence.{END_OF_TURN}An immutable sequence.{END_OF_TURN}"
    assert conv.labels.count(obj.end_id) == 2 and len(conv.labels) == len(conv.inputs)


def test_packed_and_unpacked_batches_give_the_same_loss(tmp_path, tiny_data):
    chats = write_chats(tmp_path / "c.jsonl", conversations(12))
    packed = make_objective(tiny_data, "chat_sft", "tiny", seq_len=96, model__max_seq_len=128, batch_size=8,
                            objective_options__chats=chats)
    unpacked = make_objective(tiny_data, "chat_sft", "tiny", seq_len=96, model__max_seq_len=128, batch_size=8,
                              objective_options__chats=chats, objective_options__pack=False)
    torch.manual_seed(0)
    model = packed.build_model().eval()
    idx = packed.train_idx[:8]
    a, b = packed.batch(idx), unpacked.batch(idx)
    assert a["x"].shape[0] < b["x"].shape[0]  # fewer rows: short conversations share one
    assert (a["y"] != IGNORE_INDEX).sum() == (b["y"] != IGNORE_INDEX).sum()
    with torch.no_grad():
        la, lb = packed.forward(model, a), unpacked.forward(model, b)
    torch.testing.assert_close(la.loss, lb.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(la.sums["correct"], lb.sums["correct"])


@pytest.mark.slow
def test_chat_sft_trains_saves_its_template_and_answers_through_it(tmp_path, tiny_data):
    from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
    from lmforge.infer.generate import GenerationConfig, generate_ids

    chats = write_chats(tmp_path / "c.jsonl", conversations(60))
    rc, records = run_train(tiny_data, tmp_path / "run", *CHAT, "--objective-options.chats", chats, "--steps", "100",
                            "--optim.lr", "5e-3", "--batch-size", "8")
    assert rc == 0
    losses = [r["loss"] for r in records if r.get("event") == "train"]
    assert losses[-1] < losses[0] / 3, losses
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert load_chat_template(ckpt) == CHAT_TEMPLATE
    model, cfg = load_model(ckpt)
    tok = load_checkpoint_tokenizer(ckpt, cfg)
    assert cfg.vocab_size == tok.get_vocab_size() == 512 + 4  # the data's tokenizer and the four chat tokens
    # (A conversation the training set holds without a system turn.)
    prompt = render_chat(load_chat_template(ckpt), [{"role": "user", "content": "What is a tuple?"}],
                         add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=False).ids
    out = generate_ids(model, [ids], GenerationConfig(max_new_tokens=20, temperature=0.0),
                       eos_id=tok.token_to_id(END_OF_TURN))[0]
    assert tok.decode(out) == "An immutable sequence."  # learned, and stopped at <|end|>

    # The Hugging Face export carries the template: transformers renders and tokenizes the prompt the same way.
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.hf import export_hf

    hf_dir = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    messages = [{"role": "user", "content": "What is a tuple?"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"] == ids


def test_chat_sft_from_a_pretrained_checkpoint_grows_its_vocabulary(tmp_path, tiny_data):
    rc, _ = run_train(tiny_data, tmp_path / "base", "--steps", "2", "--model.max-seq-len", "128")
    assert rc == 0
    chats = write_chats(tmp_path / "c.jsonl", conversations(20))
    rc, records = run_train(tiny_data, tmp_path / "chat", *CHAT, "--objective-options.chats", chats,
                            "--init-from", str(tmp_path / "base"), "--steps", "2")
    assert rc == 0
    report = next(r["report"] for r in records if r.get("event") == "init_from")
    assert "grown: embed +4 tokens" in report


def test_show_mask_prints_the_trained_tokens(tmp_path, tiny_data, capsys):
    make_objective(tiny_data, "chat_sft", "tiny", seq_len=96, model__max_seq_len=128,
                   objective_options__chats=write_chats(tmp_path / "c.jsonl", conversations(6)),
                   objective_options__show_mask=True)
    err = capsys.readouterr().err
    assert "chat mask:" in err and "tokens train" in err
    assert "[<|end|>]" in err or "<|end|>" in err


NO_MARKERS = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
END_OUTSIDE = CHAT_TEMPLATE.replace("{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}",
                                    "{% generation %}{{ message['content'] }}{% endgeneration %}{{ '<|end|>' }}")


@pytest.mark.parametrize(("template", "message"), [
    (NO_MARKERS, "mask selects no token to train on"),
    (END_OUTSIDE, "mask leaves the end-of-turn token <|end|> out of 1 of the 1 answers of conversation 1"),
])
def test_a_mask_that_trains_nothing_or_never_stops_is_refused(tmp_path, tiny_data, capsys, template, message):
    assert END_OUTSIDE != CHAT_TEMPLATE
    (tmp_path / "t.jinja").write_text(template)
    chats = write_chats(tmp_path / "c.jsonl", conversations(6)[1:])
    rc, _ = run_train(tiny_data, tmp_path / "run", *CHAT, "--objective-options.chats", chats,
                      "--objective-options.template", str(tmp_path / "t.jinja"))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("line", "message"), [
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}', "c.jsonl:2: turn 2 is malformed"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "c.jsonl:2: turn 1 has the unknown role 'bot'"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
     "c.jsonl:2: turn 2 is an empty assistant turn"),
    ('{"messages": [{"role": "user", "content": "' + "word " * 200 + '"}, {"role": "assistant", "content": "ok"}]}',
     "conversation 2 has"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "conversation 2 has no assistant turn"),
    ("not json", "c.jsonl:2: not a JSON object"),
])
def test_bad_conversations_are_one_line(tmp_path, tiny_data, capsys, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(conversations(1)[0]) + "\n" + line + "\n")
    rc, _ = run_train(tiny_data, tmp_path / "run", *CHAT, "--objective-options.chats", str(path))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
