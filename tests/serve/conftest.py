"""Servers for the tests: a tiny random-init checkpoint (with the chat template), run by uvicorn on a loopback port
in a thread of the test process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from lmforge.data.tokenizer import load_tokenizer
from lmforge.models import ModelConfig, build_model
from lmforge.models.io import save_model


def tiny_checkpoint(out: Path, tokenizer_dir: Path, family: str = "gpt", chat: bool = True,
                    max_seq_len: int = 64) -> Path:
    """A random-init model of `family` saved with the tokenizer of `tokenizer_dir` (+ the chat tokens and
    template when `chat`)."""
    from lmforge.data.chat import save_chat_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(tokenizer_dir)
    tok_dir = out / "tokenizer"
    if chat:
        save_chat_tokenizer(tok, tok_dir)  # adds the chat tokens to `tok`
    else:
        from lmforge.data.tokenizer import save_tokenizer

        save_tokenizer(tok, tok_dir)
    cfg = ModelConfig(family=family, vocab_size=tok.get_vocab_size(), max_seq_len=max_seq_len, n_layer=2, n_head=2,
                      d_model=32)
    return save_model(out / family, build_model(cfg).eval(), cfg, tok_dir)


@pytest.fixture(scope="session")
def chat_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("chat_ckpt"), tiny_data)


@pytest.fixture(scope="session")
def plain_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("plain_ckpt"), tiny_data, chat=False)


@pytest.fixture(scope="session")
def encoder_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bert_ckpt"), tiny_data, family="bert", chat=False)


@contextmanager
def running(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields the base URL, stops it afterwards."""
    import uvicorn

    from lmforge.serve.server import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def make_app(checkpoint: Path, engine_factory=None, **options):
    from lmforge.infer.engine import Engine
    from lmforge.serve.app import ServedModel, ServeOptions, create_app

    return create_app(ServedModel.load(checkpoint, "cpu"), ServeOptions(model_name="tiny", **options),
                      engine_factory=engine_factory or Engine)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def run_async(coroutine):
    """asyncio.run in a thread of its own: Playwright's sync API keeps an event loop running in the main thread
    while a browser is open, where asyncio.run refuses to start."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Playwright: Debian's `chromium` (`make browser` installs it), else the one
    `playwright install chromium` downloads; skipped with the reason when neither is there."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    executable = next((p for p in map(shutil.which, BROWSERS) if p), None)
    with sync_api.sync_playwright() as pw:
        if executable is None and not Path(pw.chromium.executable_path).is_file():
            pytest.skip("no Chromium to drive: run `make browser` (apt-get install chromium, or playwright install "
                        "chromium)")
        launched = pw.chromium.launch(executable_path=executable, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()
