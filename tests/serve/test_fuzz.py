"""Hypothesis-generated request bodies, near the schema and far from it: never a 5xx, the server alive after."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.conftest import make_app, running

ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/detokenize"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
prompts = st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3),
                    st.lists(st.integers(min_value=-5, max_value=10**6), max_size=6),
                    st.lists(st.lists(st.integers(min_value=0, max_value=600), max_size=4), max_size=3), json_values)
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "robot", ""]),
                                    "content": st.one_of(st.text(max_size=30), json_values)}), max_size=3),
    json_values)
# Bodies that use the routes' real field names with values in and out of range.
near_schema = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.just("tiny"), st.text(max_size=8)),
    "prompt": prompts, "messages": messages, "input": prompts, "tokens": prompts,
    "max_tokens": st.one_of(st.integers(min_value=-3, max_value=100), json_values),
    "max_completion_tokens": st.integers(min_value=-3, max_value=100),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3), json_values),
    "top_p": st.floats(min_value=-0.5, max_value=1.5), "n": st.integers(min_value=-1, max_value=20),
    "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=6), json_values),
    "seed": st.one_of(st.integers(min_value=-(2**65), max_value=2**65), json_values),
    "logprobs": st.one_of(st.booleans(), st.integers(min_value=-2, max_value=30)),
    "top_logprobs": st.integers(min_value=-2, max_value=30), "echo": st.booleans(),
    "presence_penalty": st.floats(min_value=-3, max_value=3), "frequency_penalty": st.floats(min_value=-3, max_value=3),
    "stream": st.booleans(), "stream_options": json_values,
    "encoding_format": st.sampled_from(["float", "base64", "x"]),
    "dimensions": st.integers(min_value=-1, max_value=64), "logit_bias": json_values, "best_of": st.integers(0, 20),
})
bodies = st.one_of(near_schema.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=60))

# Valid requests of each route, to be sent as they are or with one field replaced by anything.
small = st.integers(min_value=1, max_value=8)
valid = {
    "/v1/completions": st.fixed_dictionaries({"prompt": st.text(max_size=20)}, optional={
        "max_tokens": small, "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "n": st.integers(1, 3),
        "stream": st.booleans(), "logprobs": st.integers(0, 5), "echo": st.booleans(), "seed": st.integers(0, 99),
        "stop": st.lists(st.text(min_size=1, max_size=3), max_size=2), "presence_penalty": st.floats(-2, 2)}),
    "/v1/chat/completions": st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({
        "role": st.sampled_from(["user", "system", "assistant"]), "content": st.text(max_size=20)}),
        min_size=1, max_size=3)}, optional={
        "max_tokens": small, "max_completion_tokens": small, "temperature": st.floats(0, 2), "n": st.integers(1, 3),
        "stream": st.booleans(), "logprobs": st.booleans(), "seed": st.integers(0, 99),
        "frequency_penalty": st.floats(-2, 2)}),
    "/tokenize": st.fixed_dictionaries({"prompt": st.text(max_size=30)}),
    "/detokenize": st.fixed_dictionaries({"tokens": st.lists(st.integers(0, 500), max_size=8)}),
}
field_names = st.sampled_from(["prompt", "messages", "max_tokens", "temperature", "n", "stream", "logprobs", "echo",
                               "seed", "stop", "top_p", "stream_options", "tokens", "model", "top_logprobs"])


@st.composite
def route_and_body(draw) -> tuple[str, bytes | str]:
    route = draw(st.sampled_from(sorted(valid)))
    body = draw(valid[route])
    if draw(st.booleans()):
        body[draw(field_names)] = draw(json_values)
    return route, json.dumps(body)


@pytest.fixture(scope="module")
def server(chat_checkpoint):
    with running(make_app(chat_checkpoint, max_batch=4, max_queue=64)) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def check_answer(r: httpx.Response, route: str, body: bytes | str) -> None:
    assert r.status_code < 500, (route, body, r.text)
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


@FUZZ
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_no_body_far_from_the_schema_makes_a_5xx(server, route, body):
    check_answer(server.post(route, content=body, headers={"Content-Type": "application/json"}), route, body)


@FUZZ
@given(case=route_and_body())
def test_no_valid_or_nearly_valid_body_makes_a_5xx(server, case):
    route, body = case
    r = server.post(route, content=body, headers={"Content-Type": "application/json"})
    check_answer(r, route, body)
    if r.status_code == 200 and json.loads(body).get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")


def test_the_server_still_answers_after_the_fuzzing(server):
    r = server.post("/v1/completions", json={"prompt": "The list", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
