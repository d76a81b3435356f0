"""A bounded load test on loopback: many concurrent streams share the engine's steps, each gets its own tokens."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from lmforge.infer.engine import Engine
from serve.conftest import make_app, run_async, running

PROMPTS = [f"{word} {i}" for i, word in enumerate(["The list", "A module", "Return the", "If the file"] * 16)]


async def stream_completion(client: httpx.AsyncClient, prompt: str, max_tokens: int = 12) -> tuple[int, str, set]:
    """(status, text, ids of the chunks) of one streamed greedy completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.headers.get("retry-after", ""), set()
        text, ids = "", set()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                ids.add(chunk["id"])
                text += "".join(c["text"] for c in chunk["choices"])
        return r.status_code, text, ids


def test_64_concurrent_streams_each_get_exactly_what_they_get_alone(chat_checkpoint):
    app = make_app(chat_checkpoint, max_batch=16, max_queue=64)
    with running(app) as url:
        async def alone() -> list[str]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                return [(await stream_completion(c, p))[1] for p in PROMPTS]

        async def together() -> list[tuple[int, str, set]]:
            limits = httpx.Limits(max_connections=len(PROMPTS))
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
                return await asyncio.gather(*(stream_completion(c, p) for p in PROMPTS))

        one_at_a_time = run_async(alone())
        peak = {"running": 0}

        def watch():
            while not done:
                peak["running"] = max(peak["running"], app.state.engine.running)
                time.sleep(0.002)

        import threading

        done = False
        watcher = threading.Thread(target=watch)
        watcher.start()
        results = run_async(together())
        done = True
        watcher.join()
    assert [status for status, _, _ in results] == [200] * len(PROMPTS)
    assert [text for _, text, _ in results] == one_at_a_time  # no token of one stream in another
    assert all(len(ids) == 1 for _, _, ids in results) and len({next(iter(i)) for _, _, i in results}) == 64
    assert peak["running"] > 1  # the streams really shared the engine's steps


class SlowEngine(Engine):
    def step(self) -> None:
        time.sleep(0.02)
        super().step()


def test_a_full_queue_answers_429_with_retry_after_and_the_admitted_streams_finish(chat_checkpoint):
    app = make_app(chat_checkpoint, max_batch=2, max_queue=2, engine_factory=SlowEngine)
    with running(app) as url:
        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                return await asyncio.gather(*(stream_completion(c, p, 8) for p in PROMPTS[:12]))

        results = run_async(burst())
        statuses = [s for s, _, _ in results]
        assert statuses.count(200) >= 4 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}
        assert all(retry == "1" for s, retry, _ in results if s == 429)
        assert all(text for s, text, _ in results if s == 200)
        # Then the server takes requests again.
        r = httpx.post(url + "/v1/completions", json={"prompt": "The", "max_tokens": 2}, timeout=60)
        assert r.status_code == 200
        metrics = httpx.get(url + "/metrics").text
        assert f"lmforge_rejected_requests_total {statuses.count(429)}.0" in metrics


def test_a_request_past_the_timeout_is_stopped_and_a_client_that_leaves_frees_its_slot(chat_checkpoint):
    app = make_app(chat_checkpoint, request_timeout_s=0.3, engine_factory=SlowEngine)
    engine, admission = app.state.engine, app.state.admission

    def settled() -> bool:
        """Nothing left in the server within 1 s: well before the 56 tokens (2.8 s) would have run out."""
        deadline = time.monotonic() + 1.0
        while (admission.active or engine.running or engine.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        return admission.active == 0 and engine.running == 0 and engine.waiting == 0

    body = {"prompt": "The list", "max_tokens": 56, "temperature": 0}
    with running(app) as url:
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
        assert settled()
        events = httpx.post(url + "/v1/completions", json={**body, "stream": True}, timeout=30).text
        assert '"code": "timeout"' in events and events.rstrip().endswith("data: [DONE]")
        assert settled()
    app = make_app(chat_checkpoint, engine_factory=SlowEngine)
    engine, admission = app.state.engine, app.state.admission
    with running(app) as url:
        try:  # the client gives up long before the tokens are done
            httpx.post(url + "/v1/completions", json=body, timeout=0.3)
            raise AssertionError("the request should have outlasted the client")
        except httpx.TimeoutException:
            pass
        assert settled()
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=30) as r:
            next(r.iter_lines())  # the first event, then the client leaves mid-stream
        assert settled()


class FailingEngine(Engine):
    """The real engine whose forward passes fail, as out of memory would."""

    def decode_step(self, tokens, positions):
        raise RuntimeError("out of memory (simulated)")

    def _forward(self, *args, **kwargs):
        raise RuntimeError("out of memory (simulated)")


def test_a_failed_engine_step_is_a_500_in_openais_shape_and_an_error_event(chat_checkpoint):
    with running(make_app(chat_checkpoint, engine_factory=FailingEngine)) as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": "The", "max_tokens": 4}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
        assert "out of memory" in r.json()["error"]["message"]
        events = httpx.post(url + "/v1/completions", json={"prompt": "The", "max_tokens": 4, "stream": True},
                            timeout=30).text
        assert '"code": "engine_error"' in events and events.rstrip().endswith("data: [DONE]")
        assert httpx.get(url + "/health").status_code == 200
