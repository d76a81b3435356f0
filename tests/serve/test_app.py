"""The OpenAI API as the official `openai` client sees it, against a server on a loopback port."""

from __future__ import annotations

import httpx
import openai
import pytest

from serve.conftest import make_app, running

KEY = "test-key"


@pytest.fixture(scope="module")
def server(chat_checkpoint):
    with running(make_app(chat_checkpoint, api_keys=(KEY, "second-key"), max_batch=4, max_queue=8)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_lists_the_one_model_served(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_greedy_is_repeatable_and_counts_its_tokens(client):
    a = client.completions.create(model="tiny", prompt="The list", max_tokens=6, temperature=0)
    b = client.completions.create(model="tiny", prompt="The list", max_tokens=6, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text
    assert a.choices[0].finish_reason in ("length", "stop")
    assert a.usage.completion_tokens == 6 or a.choices[0].finish_reason == "stop"
    assert a.usage.prompt_tokens == len(client.post("/../tokenize", body={"prompt": "The list"}, cast_to=object)
                                        ["tokens"])
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens


def test_streamed_completion_is_the_same_text_as_the_whole_one(client):
    whole = client.completions.create(model="tiny", prompt="A module", max_tokens=8, temperature=0)
    pieces, usage = [], None
    for chunk in client.completions.create(model="tiny", prompt="A module", max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        pieces += [c.text for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].text
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_with_a_seed_differ_from_each_other_and_repeat_exactly(client):
    def sample():
        r = client.completions.create(model="tiny", prompt="The", max_tokens=12, temperature=1.0, n=3, seed=7)
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    first = sample()
    assert len(first) == 3 and sample() == first
    assert len(set(first)) > 1  # seed + index: three draws, not one repeated
    other = client.completions.create(model="tiny", prompt="The", max_tokens=12, temperature=1.0, seed=8)
    assert other.choices[0].text != first[0] or other.choices[0].text != first[1]


def test_chat_completion_uses_the_checkpoint_template_streaming_or_not(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=8, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    rendered = client.post("/../tokenize", body={"messages": messages}, cast_to=object)
    assert whole.usage.prompt_tokens == rendered["count"]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_completion_tokens=8, temperature=0,
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_logprobs_give_each_token_and_its_alternatives(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        # (alternatives are keyed by their text: tokens that decode alike, such as partial UTF-8, count once)
        assert entry.logprob <= 0 and 1 <= len(entry.top_logprobs) <= 3
        assert entry.logprob >= max(t.logprob for t in entry.top_logprobs) - 1e-4  # greedy: none is likelier


def test_echo_scores_the_prompt_as_lm_evaluation_harness_asks(client):
    """loglikelihood requests: echo + logprobs + max_tokens 0 gives each prompt token's logprob given the ones
    before; the first has none."""
    r = client.completions.create(model="tiny", prompt="The list of names", max_tokens=0, echo=True, logprobs=1,
                                  temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == "The list of names"
    assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == "The list of names" and lp.text_offset[0] == 0
    # With generation after it, the prompt's part is the same.
    more = client.completions.create(model="tiny", prompt="The list of names", max_tokens=3, echo=True, logprobs=1,
                                     temperature=0)
    n = len(lp.tokens)
    assert more.choices[0].logprobs.token_logprobs[:n] == pytest.approx(lp.token_logprobs, abs=1e-4)
    assert len(more.choices[0].logprobs.tokens) == n + more.usage.completion_tokens


def test_streamed_echo_with_logprobs_is_the_whole_answer_in_pieces(client):
    """A stream opens with the echoed prompt and its logprobs, then one chunk per generated token with its own."""
    kw = dict(model="tiny", prompt="The list of names", max_tokens=4, echo=True, logprobs=1, temperature=0)
    whole = client.completions.create(**kw).choices[0]
    chunks = [c for chunk in client.completions.create(**kw, stream=True) for c in chunk.choices]
    assert chunks[0].text == "The list of names" and chunks[0].finish_reason is None
    assert "".join(c.text for c in chunks) == whole.text
    assert [t for c in chunks for t in c.logprobs.tokens] == whole.logprobs.tokens
    streamed = [x for c in chunks for x in c.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-4)
    assert chunks[-1].finish_reason == whole.finish_reason


def test_token_id_prompts_and_several_prompts(client):
    ids = client.post("/../tokenize", body={"prompt": "The list"}, cast_to=object)["tokens"]
    by_text = client.completions.create(model="tiny", prompt="The list", max_tokens=5, temperature=0)
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    both = client.completions.create(model="tiny", prompt=["The list", "A module"], max_tokens=5, temperature=0)
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == by_text.choices[0].text
    back = client.post("/../detokenize", body={"tokens": ids}, cast_to=object)
    assert back["prompt"] == "The list"


def test_errors_are_the_clients_typed_exceptions_in_openais_shape(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=5, temperature=3)
    assert e.value.body["param"] == "temperature" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="x", max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt="word " * 200, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="not in the vocabulary"):
        client.completions.create(model="tiny", prompt=[10**6], max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other-model", prompt="x", max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])


def test_every_route_but_health_and_the_page_needs_a_key(server):
    for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
                         ("POST", "/v1/embeddings"), ("GET", "/no/such/route")]:
        r = httpx.request(method, server + path, json={})
        assert r.status_code == 401, (method, path)
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    assert "<title>lmforge chat</title>" in httpx.get(server + "/").text
    ok = httpx.get(server + "/v1/models", headers={"Authorization": "Bearer second-key"})
    assert ok.status_code == 200  # any of the keys


def test_malformed_bodies_are_400_in_openais_shape(server):
    h = {"Authorization": f"Bearer {KEY}"}
    for content in [b"{not json", b"[]", b"null", b'{"prompt": 3}', b'{"prompt": "x", "n": 0}',
                    b'{"prompt": "x", "max_tokens": 0}', b'{"prompt": "x", "stop": ["a","b","c","d","e"]}',
                    b'{"messages": []}']:
        r = httpx.post(server + "/v1/completions", content=content, headers={**h, "Content-Type": "application/json"})
        assert r.status_code == 400, content
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.delete(server + "/v1/completions", headers=h)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_body_over_the_cap_is_413_before_it_is_read(chat_checkpoint):
    with running(make_app(chat_checkpoint, max_body_bytes=1000)) as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunked():
            yield b'{"prompt": "'
            yield b"y" * 1500
            yield b'"}'

        r = httpx.post(url + "/v1/completions", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_metrics_count_requests_tokens_and_latencies(client, server):
    client.completions.create(model="tiny", prompt="The", max_tokens=4, temperature=0)
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['lmforge_requests_total{route="/v1/completions",status="200"}'] >= 1
    assert values["lmforge_generated_tokens_total"] >= 4 and values["lmforge_prompt_tokens_total"] >= 1
    assert values["lmforge_time_to_first_token_seconds_count"] >= 1
    assert values["lmforge_inter_token_latency_seconds_count"] >= 3
    assert "lmforge_queue_depth" in values and "lmforge_running_sequences" in values


def test_a_checkpoint_without_a_chat_template_refuses_chat_naming_the_fix(plain_checkpoint):
    with running(make_app(plain_checkpoint)) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="chat_sft") as e:
            c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert e.value.body["code"] == "no_chat_template"
        assert c.completions.create(model="tiny", prompt="The", max_tokens=2).choices[0].text is not None


def test_an_encoder_checkpoint_serves_the_embeddings_of_lmforge_embed(encoder_checkpoint):
    import torch

    from lmforge.checkpoints import load_model
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.eval.retrieval import embed, sentence_ids

    with running(make_app(encoder_checkpoint)) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        r = c.embeddings.create(model="tiny", input=["a list of names", "the module"])
        got = torch.tensor([d.embedding for d in r.data])
        assert r.usage.prompt_tokens > 0
        with pytest.raises(openai.BadRequestError, match="cannot generate"):
            c.completions.create(model="tiny", prompt="x")
    model, cfg = load_model(encoder_checkpoint)
    tok = load_tokenizer(encoder_checkpoint)
    ids = special_token_ids(tok)
    want = embed(model, sentence_ids(tok, ["a list of names", "the module"], ids, cfg.max_seq_len), ids["pad"])
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)
