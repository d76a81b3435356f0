"""The chat page in real headless Chromium: streamed replies, the API key prompt, safe text, the stop button."""

from __future__ import annotations

import time

import httpx
import pytest

from lmforge.infer.engine import Engine
from serve.conftest import make_app, running

# Records every text the assistant bubble shows: a streamed reply shows partial texts before the whole one.
WATCH = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const bubble = document.querySelector('.msg.assistant');
    if (bubble && bubble.firstChild) window.seen.push(bubble.firstChild.data || '');
  }).observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});
}"""


class PacedEngine(Engine):
    """The real engine at a reader's pace (30 ms a step): a tiny model on an idle machine writes a whole reply
    within one of the browser's network reads, and the page could then not be seen streaming it."""

    def step(self) -> None:
        super().step()
        time.sleep(0.03)


@pytest.fixture(scope="module")
def keyed_server(chat_checkpoint):
    with running(make_app(chat_checkpoint, engine_factory=PacedEngine, api_keys=("page-key",))) as url:
        yield url


def test_the_page_asks_for_the_key_then_streams_the_reply_token_by_token(browser, keyed_server, tmp_path):
    page = browser.new_page(bypass_csp=True)  # for the test's own scripts (wait_for_function)
    page.goto(keyed_server + "/")
    page.wait_for_selector("#keybox.shown")  # /v1/models answered 401
    page.fill("#key", "page-key")
    page.click("#keybox button")
    page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny')")
    page.evaluate(WATCH)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.fill("#input", "What is a list?")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .meta")  # the reply finished
    reply = page.inner_text(".msg.assistant")
    assert page.inner_text(".msg.user") == "What is a list?"
    assert len(reply.strip()) > 0
    # Text arrived in pieces, not in one: the bubble showed a part of the reply before the whole of it. (How many
    # pieces depends on how the browser's reads group the server's events, which a loaded machine changes.)
    final = page.evaluate("document.querySelector('.msg.assistant').firstChild.data")
    assert any(0 < len(text) < len(final) for text in page.evaluate("window.seen")), page.evaluate("window.seen")
    # The same request through the API gives the same (greedy) text.
    answer = httpx.post(keyed_server + "/v1/chat/completions", headers={"Authorization": "Bearer page-key"},
                        json={"messages": [{"role": "user", "content": "What is a list?"}], "max_tokens": 12,
                              "temperature": 0}, timeout=60).json()["choices"][0]["message"]["content"]
    assert page.evaluate("document.querySelector('.msg.assistant').firstChild.data") == answer
    # The conversation is kept: a second turn sends both.
    page.fill("#input", "And a tuple?")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .meta').length == 2")
    assert page.locator(".msg.user").count() == 2
    page.screenshot(path=str(tmp_path / "chat.png"))
    page.close()


def test_text_is_shown_as_text_never_as_html(browser, keyed_server):
    page = browser.new_page(bypass_csp=True)  # for the test's own scripts (wait_for_function)
    page.goto(keyed_server + "/")
    page.wait_for_selector("#keybox.shown")
    page.fill("#key", "page-key")
    page.click("#keybox button")
    page.fill("#max-tokens", "2")
    html = '<img src=x onerror="window.pwned=1"><b>bold</b>'
    page.fill("#input", html)
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .meta")
    assert page.inner_text(".msg.user") == html
    assert page.locator(".msg img, .msg b").count() == 0
    assert page.evaluate("window.pwned === undefined")
    page.close()


class SlowEngine(Engine):
    """The real engine, a step every 50 ms: a tiny model on loopback would finish before a click lands."""

    def step(self) -> None:
        time.sleep(0.05)
        super().step()


def test_stop_ends_the_reply_and_frees_the_servers_slot(browser, chat_checkpoint):
    app = make_app(chat_checkpoint, engine_factory=SlowEngine)
    with running(app) as url:
        page = browser.new_page(bypass_csp=True)  # for the test's own scripts (wait_for_function)
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny')")
        page.fill("#max-tokens", "40")
        page.fill("#input", "Tell me everything.")
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelector('.msg.assistant') && "
                               "document.querySelector('.msg.assistant').textContent.length > 0")
        page.click("#stop")
        page.wait_for_selector(".msg.assistant .meta")
        assert page.inner_text(".msg.assistant .meta").startswith("stopped")
        deadline = time.monotonic() + 10
        while (app.state.admission.active or app.state.engine.running) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.admission.active == 0 and app.state.engine.running == 0
        page.close()
