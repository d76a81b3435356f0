"""lm-evaluation-harness against the server, offline, on small local JSONL tasks: `local-completions` for
loglikelihood (echo + prompt logprobs) and `local-chat-completions` for generate_until."""

from __future__ import annotations

import json

import pytest
import torch

from serve.conftest import make_app, running

QUESTIONS = [
    {"question": "The list of names is", "choices": ["a list", "a module", "the file"], "answer": 0},
    {"question": "Return the value of", "choices": ["the function", "an error"], "answer": 1},
    {"question": "A module is", "choices": ["a file", "imported", "not found", "ready"], "answer": 2},
]

MC_TASK = """task: lmforge_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""

GEN_TASK = """task: lmforge_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["never-said"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e .[dev])")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "lmforge_mc.yaml").write_text(MC_TASK.format(path=data), encoding="utf-8")
    (task_dir / "lmforge_gen.yaml").write_text(GEN_TASK.format(path=data), encoding="utf-8")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)  # not the thousands built in


def loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), split into tokens as lm-evaluation-harness splits them."""
    ctx = tok.encode(context, add_special_tokens=False).ids
    whole = tok.encode(context + continuation, add_special_tokens=False).ids
    cont = whole[len(ctx):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole]))[0].float(), dim=-1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


@pytest.mark.slow
def test_lm_eval_loglikelihood_and_generation_through_the_server(chat_checkpoint, tasks):
    from lm_eval import simple_evaluate

    from lmforge.checkpoints import load_model
    from lmforge.data.tokenizer import load_tokenizer

    with running(make_app(chat_checkpoint)) as url:
        common = {"model": "tiny", "num_concurrent": 1, "max_retries": 1, "timeout": 60}
        completions = {**common, "base_url": f"{url}/v1/completions", "tokenizer_backend": "huggingface",
                       "tokenizer": str(chat_checkpoint), "max_length": 64}
        mc = simple_evaluate(model="local-completions", tasks=["lmforge_mc"], task_manager=tasks, log_samples=True,
                             bootstrap_iters=0, model_args=completions)
        gen = simple_evaluate(model="local-chat-completions", tasks=["lmforge_gen"], task_manager=tasks,
                              log_samples=True, apply_chat_template=True, bootstrap_iters=0,
                              model_args={**common, "base_url": f"{url}/v1/chat/completions"})
        import httpx

        direct = [httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": q["question"]}], "max_tokens": 6, "temperature": 0,
            "stop": ["never-said"]}).json()["choices"][0]["message"]["content"] for q in QUESTIONS]

    model, _ = load_model(chat_checkpoint)
    tok = load_tokenizer(chat_checkpoint)
    right = 0
    for sample in mc["samples"]["lmforge_mc"]:
        doc = sample["doc"]
        want = [loglikelihood(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        got = [resp[0][0] for resp in sample["resps"]]
        assert got == pytest.approx(want, abs=1e-3)
        right += max(range(len(want)), key=want.__getitem__) == doc["answer"]
    assert mc["results"]["lmforge_mc"]["acc,none"] == pytest.approx(right / len(QUESTIONS))
    outputs = {s["doc"]["question"]: s["resps"][0][0] for s in gen["samples"]["lmforge_gen"]}
    assert [outputs[q["question"]] for q in QUESTIONS] == direct
