"""The OpenAI-compatible ASGI app: routes, on one checkpoint, over the continuous-batching engine.

    app = create_app(ServedModel.load("runs/train"), ServeOptions(api_keys=("secret",)))

Every generation request goes through the one engine (`lmforge.infer.engine`), so concurrent streams share each
decode step; an encoder checkpoint serves /v1/embeddings through `lmforge.eval.retrieval` (the one embedding of
`lmforge embed` and contrastive training). Chat requests are rendered with the checkpoint's own chat template
(`lmforge.data.chat`, the one of chat fine-tuning). Routes:

    GET  /health                 liveness, open without a key
    GET  /                       the chat page (static), open without a key
    GET  /metrics                Prometheus text
    GET  /v1/models              the one model served
    POST /v1/completions         text completion (echo + prompt logprobs, n, seed, stop, logprobs, streaming)
    POST /v1/chat/completions    chat (the checkpoint's template), streaming or not
    POST /v1/embeddings          encoder checkpoints
    POST /tokenize, /detokenize  the checkpoint's tokenizer
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from tokenizers import Tokenizer
from torch import nn

from lmforge.infer.engine import Engine, SamplingParams, TokenEvent
from lmforge.models.config import ModelConfig
from lmforge.models.registry import EMBED, GENERATE, can, describe
from lmforge.serve.admission import Admission
from lmforge.serve.errors import APIError, install_error_handlers
from lmforge.serve.guards import CountRequests, LimitBody, RequireAPIKey
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
)

CHAT_PAGE = "chat.html"  # package data beside this module
# The page runs its own inline script and talks to this server only: nothing else may load or run.
PAGE_POLICY = ("default-src 'none'; connect-src 'self'; img-src data:; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class ServeOptions:
    """What the server enforces; `lmforge serve`'s flags (`lmforge.serve.server.ServeConfig`) fill it."""

    model_name: str = "lmforge"
    api_keys: tuple[str, ...] = ()
    max_batch: int = 16  # sequences per engine step
    max_queue: int = 64  # sequences that may wait for a slot; one more is answered 429
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 600.0
    retry_after_s: int = 1


@dataclass
class ServedModel:
    """A loaded checkpoint: the model, its config and tokenizer, and its chat template (None when it has none)."""

    model: nn.Module
    cfg: ModelConfig
    tokenizer: Tokenizer
    chat_template: str | None = None
    source: str = ""
    special_ids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, checkpoint: str | Path, device: str = "auto", verify: bool = True) -> ServedModel:
        from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
        from lmforge.data.chat import load_chat_template
        from lmforge.data.tokenizer import special_token_ids
        from lmforge.device import pick_device

        path = resolve_checkpoint(checkpoint)
        model, cfg = load_model(path, pick_device(device), verify=verify)
        tokenizer = load_checkpoint_tokenizer(path, cfg)
        return cls(model, cfg, tokenizer, load_chat_template(path), str(path), special_token_ids(tokenizer))


def create_app(served: ServedModel, options: ServeOptions = ServeOptions(), *,
               engine_factory: Callable[..., Engine] = Engine) -> FastAPI:
    """The ASGI app serving `served` under `options`; the engine starts and stops with the app's lifespan."""
    generates, embeds = can(served.cfg, GENERATE), can(served.cfg, EMBED)
    engine = engine_factory(served.model, served.tokenizer, max_batch=options.max_batch) if generates else None
    metrics = ServerMetrics(running=lambda: engine.running if engine else 0,
                            waiting=lambda: engine.waiting if engine else 0)
    admission = Admission(options.max_batch, options.max_queue, options.retry_after_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if engine is not None:
            await engine.start()
        try:
            yield
        finally:  # uvicorn has drained the in-flight requests by now (SIGTERM: graceful shutdown)
            if engine is not None:
                await engine.stop(drain=True)

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    api = _API(served, options, engine, metrics, admission, embeds=embeds)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        page = resources.files("lmforge.serve").joinpath(CHAT_PAGE).read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        api.check_model(name)
        return api.model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await api.completions(body, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await api.chat_completions(body, request)

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        return await api.embeddings(body)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        return api.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        return api.detokenize(body)

    routes = {getattr(r, "path", "") for r in app.routes}
    # Outermost first: count every answer (401 and 413 too), then the key, then the body cap.
    app.add_middleware(LimitBody, max_bytes=options.max_body_bytes)
    app.add_middleware(RequireAPIKey, keys=options.api_keys)
    app.add_middleware(CountRequests, counter=metrics.requests, routes=lambda: routes)
    app.state.engine, app.state.metrics, app.state.admission = engine, metrics, admission
    return app


@dataclass
class _Choice:
    """One choice of a generation request, as its events arrive."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, ev: TokenEvent) -> None:
        self.text += ev.text
        self.token_ids += ev.token_ids
        logprobs, top = _aligned(ev)
        self.logprobs += logprobs
        self.top_logprobs += top
        self.finish_reason = ev.finish_reason or self.finish_reason
        self.prompt_tokens, self.completion_tokens = ev.prompt_tokens, ev.completion_tokens


def _aligned(ev: TokenEvent) -> tuple[list[float], list[dict[str, float]]]:
    """The event's logprobs and alternatives, one per token it carries (a last event that ends on EOS or a stop
    token carries no token, but may carry that token's logprob)."""
    n = len(ev.token_ids)
    if not n:
        return [], []
    return list(ev.logprobs or [])[-n:], list(ev.top_logprobs or [])[-n:]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict[str, Any] | str) -> bytes:
    import json

    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class _EventStream(StreamingResponse):
    """Server-sent events that end, however they end (done, client gone, server draining), by running `release`.

    The client's disconnect is watched here (the ASGI receive channel), so a client that leaves cancels its
    generation at once, even while no token is due to be sent.
    """

    def __init__(self, events: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events, self._release = events, release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        stream = asyncio.ensure_future(super().__call__(scope, receive, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({stream, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, watcher):
                task.cancel()
            await asyncio.gather(stream, watcher, return_exceptions=True)
            await self._events.aclose()  # type: ignore[attr-defined]
            self._release()


class _API:
    """The route bodies: requests to engine submissions, events to OpenAI's response shapes."""

    def __init__(self, served: ServedModel, options: ServeOptions, engine: Engine | None, metrics: ServerMetrics,
                 admission: Admission, *, embeds: bool) -> None:
        self.served, self.options, self.engine = served, options, engine
        self.metrics, self.admission, self.embeds = metrics, admission, embeds
        self.tok = served.tokenizer
        self.created = int(time.time())
        self.embed_lock = asyncio.Lock()

    # --- what is served ------------------------------------------------------------------------------------

    def model_card(self) -> dict[str, Any]:
        return {"id": self.options.model_name, "object": "model", "created": self.created, "owned_by": "lmforge",
                "max_model_len": self.served.cfg.max_seq_len, "description": describe(self.served.cfg)}

    def check_model(self, name: str | None) -> None:
        if name and name != self.options.model_name:
            raise APIError(404, f"the model {name!r} is not served here; this server serves "
                                f"{self.options.model_name!r} (see GET /v1/models)", param="model",
                           code="model_not_found")

    def _need_engine(self) -> Engine:
        if self.engine is None:
            raise APIError(400, f"this checkpoint is {describe(self.served.cfg)}, which cannot generate text (serve "
                                f"a gpt or llama checkpoint for completions; this one answers /v1/embeddings)"
                           if self.embeds else f"this checkpoint is {describe(self.served.cfg)}, which cannot "
                                               f"generate text", code="model_cannot_generate")
        return self.engine

    # --- tokens ----------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        from lmforge.data.tokenizer import encode_ids

        ids = encode_ids(self.tok, text)
        eos = self.served.special_ids.get("eos")
        # Documents start right after an EOS in training, so an empty prompt starts a new one (as `generate`).
        return ids or ([eos] if eos is not None else [])

    def _check_ids(self, ids: list[int], param: str) -> list[int]:
        vocab = self.tok.get_vocab_size()
        bad = next((i for i in ids if i >= vocab), None)
        if bad is not None:
            raise APIError(400, f"token id {bad} is not in the vocabulary (ids are 0..{vocab - 1})", param=param)
        return ids

    def _piece(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def _chat_prompt(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        from lmforge.data.chat import render_chat
        from lmforge.data.tokenizer import encode_ids

        if self.served.chat_template is None:
            raise APIError(400, "this checkpoint has no chat template, so it cannot take chat messages (fix: "
                                "fine-tune it with `lmforge train --objective chat_sft`, which saves the template in "
                                "tokenizer_config.json, or send a plain prompt to /v1/completions)",
                           param="messages", code="no_chat_template")
        text = render_chat(self.served.chat_template, messages, add_generation_prompt=add_generation_prompt)
        return encode_ids(self.tok, text)

    def _stop_token_ids(self) -> tuple[int, ...]:
        from lmforge.data.chat import END_OF_TURN

        end = self.tok.token_to_id(END_OF_TURN)
        return (end,) if end is not None else ()

    def _budget(self, prompt_len: int, asked: int | None, param: str) -> int:
        """max_tokens checked against the context window: what is asked, or all the room left when unset."""
        window = self.served.cfg.max_seq_len
        room = window - prompt_len
        if room < 1:
            raise APIError(400, f"this model's context is {window} tokens, and the prompt alone takes {prompt_len} "
                                f"(shorten the prompt)", param="prompt" if param == "max_tokens" else "messages",
                           code="context_length_exceeded")
        if asked is None:
            return room
        if asked > room:
            raise APIError(400, f"this model's context is {window} tokens; the prompt takes {prompt_len} and "
                                f"{param} asks for {asked} more (lower {param} to at most {room})", param=param,
                           code="context_length_exceeded")
        return asked

    # --- generation ------------------------------------------------------------------------------------------

    def _submit(self, jobs: list[tuple[list[int], SamplingParams]]) -> list[Any]:
        """Submit every job to the engine (which validates each: EngineError is a 400), or none of them."""
        engine = self._need_engine()
        streams: list[Any] = []
        try:
            for ids, params in jobs:
                streams.append(engine.submit(ids, params))
        except BaseException:
            for s in streams:
                s.cancel()
            raise
        return streams

    async def _events(self, streams: list[Any], started: float) -> AsyncIterator[tuple[int, TokenEvent]]:
        """The events of every stream as they come, tagged with its index; cancels all of them when left early.

        Times out after the request timeout (TimeoutError); records time to first token and inter-token latency.
        """
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for ev in streams[i]:
                    queue.put_nowait((i, ev))
            except BaseException as e:  # the consumer re-raises it
                queue.put_nowait((i, e))
                raise
            finally:
                queue.put_nowait((i, None))

        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(streams))]
        deadline = started + self.options.request_timeout_s
        last: dict[int, float] = {}
        first = True
        try:
            open_streams = len(streams)
            while open_streams:
                i, ev = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.0))
                if ev is None:
                    open_streams -= 1
                    continue
                if isinstance(ev, BaseException):
                    if isinstance(ev, asyncio.CancelledError):
                        continue
                    raise ev
                if ev.finish_reason == "error":  # the engine's step failed (a bug, or out of memory)
                    raise APIError(500, f"generation failed in the engine ({getattr(ev, 'error', None) or 'unknown'})",
                                   code="engine_error")
                now = time.monotonic()
                if ev.token_ids:
                    if first:
                        self.metrics.ttft.observe(now - started)
                        first = False
                    if i in last:
                        self.metrics.itl.observe((now - last[i]) / len(ev.token_ids))
                    last[i] = now
                    self.metrics.generated_tokens.inc(len(ev.token_ids))
                yield i, ev
        finally:
            for s in streams:
                s.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _collect(self, streams: list[Any], request: Request, started: float) -> list[_Choice]:
        """Run every stream to its end; a client that disconnects cancels them all."""
        choices = [_Choice(i) for i in range(len(streams))]

        async def run() -> None:
            async for i, ev in self._events(streams, started):
                choices[i].add(ev)

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        work, watcher = asyncio.ensure_future(run()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
        if work.cancelled():
            raise APIError(400, "the client disconnected", code="client_disconnected")
        if isinstance(work.exception(), TimeoutError):
            raise APIError(408, f"the request took longer than the server's {self.options.request_timeout_s:g} s "
                                f"limit (--request-timeout); ask for fewer tokens", code="timeout")
        work.result()  # re-raises an engine refusal (400) or a bug
        return choices

    def _params(self, body: CompletionRequest | ChatCompletionRequest, max_tokens: int, index: int,
                logprobs: int | None, extra_stop_ids: tuple[int, ...] = ()) -> SamplingParams:
        seed = None if body.seed is None else body.seed + index  # n choices of one seed differ, reproducibly
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=seed,
                              stop=body.stop_strings(), stop_token_ids=extra_stop_ids,
                              presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                              logprobs=logprobs)

    def _stream_or_collect(self, jobs: list[tuple[list[int], SamplingParams]], request: Request, started: float,
                           stream: bool, respond: Callable[[list[_Choice]], dict[str, Any]],
                           chunks: Callable[[AsyncIterator[tuple[int, TokenEvent]]], AsyncIterator[bytes]]):
        """Admit the request's sequences (429 when full), then answer in one body or as events."""
        release = self._hold(len(jobs))
        try:
            streams = self._submit(jobs)
        except BaseException:
            release()
            raise
        if stream:
            return _EventStream(chunks(self._events(streams, started)), release)

        async def collected() -> JSONResponse:
            try:
                return JSONResponse(respond(await self._collect(streams, request, started)))
            finally:
                release()

        return collected()

    def _hold(self, sequences: int) -> Callable[[], None]:
        cm = self.admission.admit(sequences)
        try:
            cm.__enter__()
        except APIError as e:
            if e.status == 429:
                self.metrics.rejected.inc()
            raise
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                cm.__exit__(None, None, None)

        return release

    # --- /v1/completions -------------------------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        self.check_model(body.model)
        self._need_engine()
        prompts = [self._check_ids(p, "prompt") if isinstance(p, list) else self._encode(p) for p in body.prompts()]
        texts = [p if isinstance(p, str) else self.tok.decode(p, skip_special_tokens=False) for p in body.prompts()]
        self.metrics.prompt_tokens.inc(sum(map(len, prompts)))
        want = body.logprobs
        jobs, owner = [], []
        for p_index, ids in enumerate(prompts):
            budget = self._budget(len(ids), body.max_tokens, "max_tokens")
            for k in range(body.n):
                if budget > 0:
                    jobs.append((ids, self._params(body, budget, k, want)))
                owner.append(p_index)
        echo = [await self._prompt_logprobs(ids, want) if body.echo and want is not None else None for ids in prompts]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": self.options.model_name}
        prompt_tokens = sum(map(len, prompts))

        if not jobs:  # max_tokens 0 with echo: score the prompts, generate nothing
            choices = [_Choice(i, finish_reason="length") for i in range(len(owner))]
            return JSONResponse(self._completion_body(head, choices, owner, prompts, texts, echo, body, prompt_tokens))

        def respond(choices: list[_Choice]) -> dict[str, Any]:
            return self._completion_body(head, choices, owner, prompts, texts, echo, body, prompt_tokens)

        def choice(i: int, ev: TokenEvent) -> dict[str, Any]:
            lp = self._completion_logprobs(ev.token_ids, list(zip(*_aligned(ev))), 0) if want is not None else None
            return {"index": i, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason}

        def chunks(events: AsyncIterator[tuple[int, TokenEvent]]) -> AsyncIterator[bytes]:
            # a generator: the echoed prompts' logprobs are worked out as the stream starts sending
            echoed = ({"index": i, "text": texts[p_index],
                       "logprobs": self._completion_logprobs(prompts[p_index], echo[p_index], 0)
                       if want is not None else None, "finish_reason": None}
                      for i, p_index in enumerate(owner)) if body.echo else ()
            return self._sse_stream(events, head, echoed, choice, want is not None, body.include_usage(),
                                    prompt_tokens)

        return await self._answer(jobs, request, started, body.stream, respond, chunks)

    async def _sse_stream(self, events: AsyncIterator[tuple[int, TokenEvent]], head: dict[str, Any],
                          opening: Iterable[dict[str, Any]], choice: Callable[[int, TokenEvent], dict[str, Any]],
                          with_logprobs: bool, include_usage: bool, prompt_tokens: int) -> AsyncIterator[bytes]:
        """The one streaming tail of completions and chat: the `opening` choices (echoed prompts, chat's role
        deltas), a chunk per event that carries text, a finish reason or (when asked) logprobs, an error event for
        a timeout or an API error, the usage chunk when asked, then [DONE]."""
        completion_tokens: dict[int, int] = {}
        for c in opening:
            yield _sse({**head, "choices": [c]})
        try:
            async for i, ev in events:
                completion_tokens[i] = ev.completion_tokens
                if not ev.text and not ev.finish_reason and not with_logprobs:
                    continue
                yield _sse({**head, "choices": [choice(i, ev)]})
        except TimeoutError:
            yield _sse({"error": {"message": f"the request took longer than the server's "
                                             f"{self.options.request_timeout_s:g} s limit", "type": "timeout_error",
                                  "param": None, "code": "timeout"}})
        except APIError as e:
            yield _sse(e.body())
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, sum(completion_tokens.values()))})
        yield _sse("[DONE]")

    async def _answer(self, jobs, request, started, stream, respond, chunks) -> Response:
        answer = self._stream_or_collect(jobs, request, started, stream, respond, chunks)
        return answer if isinstance(answer, Response) else await answer

    async def _prompt_logprobs(self, ids: list[int], top: int) -> list[tuple[float | None, dict[str, float]]]:
        # One forward without the cache, in a worker thread: the event loop keeps serving the other streams.
        return await asyncio.to_thread(self._need_engine().prompt_logprobs, ids, top)

    def _completion_logprobs(self, ids: list[int], pairs: list[tuple[float | None, dict[str, float]]] | None,
                             offset: int) -> dict[str, Any]:
        """The legacy completions' logprobs object for tokens `ids` with their (logprob, top alternatives)."""
        tokens = [self._piece(i) for i in ids]
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        pairs = pairs or [(None, {})] * len(ids)
        return {"tokens": tokens, "token_logprobs": [lp for lp, _ in pairs],
                "top_logprobs": [top if top else None for _, top in pairs], "text_offset": offsets}

    def _completion_body(self, head: dict[str, Any], choices: list[_Choice], owner: list[int],
                         prompts: list[list[int]], texts: list[str], echo: list[Any], body: CompletionRequest,
                         prompt_tokens: int) -> dict[str, Any]:
        out = []
        for i, (choice, p_index) in enumerate(zip(choices, owner)):
            text = (texts[p_index] if body.echo else "") + choice.text
            lp = None
            if body.logprobs is not None:
                generated = self._completion_logprobs(choice.token_ids, list(zip(choice.logprobs,
                                                                                 choice.top_logprobs)), 0)
                if body.echo:
                    scored = self._completion_logprobs(prompts[p_index], echo[p_index], 0)
                    shift = len(texts[p_index])
                    lp = {k: scored[k] + (generated[k] if k != "text_offset" else
                                          [o + shift for o in generated[k]]) for k in scored}
                else:
                    lp = generated
            out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": choice.finish_reason})
        return {**head, "choices": out, "usage": _usage(prompt_tokens, sum(c.completion_tokens for c in choices))}

    # --- /v1/chat/completions --------------------------------------------------------------------------------

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        self.check_model(body.model)
        self._need_engine()
        ids = self._chat_prompt(body.messages_as_dicts())
        budget = self._budget(len(ids), body.token_budget(),
                              "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
        self.metrics.prompt_tokens.inc(len(ids))
        want = (body.top_logprobs or 0) if body.logprobs else None
        stop_ids = self._stop_token_ids()
        jobs = [(ids, self._params(body, budget, k, want, stop_ids)) for k in range(body.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "chat.completion", "created": created, "model": self.options.model_name}

        def respond(choices: list[_Choice]) -> dict[str, Any]:
            return {**head, "choices": [
                {"index": c.index, "message": {"role": "assistant", "content": c.text},
                 "logprobs": self._chat_logprobs(c.token_ids, c.logprobs, c.top_logprobs) if want is not None else None,
                 "finish_reason": c.finish_reason} for c in choices],
                "usage": _usage(len(ids), sum(c.completion_tokens for c in choices))}

        chunk_head = {**head, "object": "chat.completion.chunk"}

        def choice(i: int, ev: TokenEvent) -> dict[str, Any]:
            lp = self._chat_logprobs(ev.token_ids, *_aligned(ev)) if want is not None else None
            delta = {"content": ev.text} if ev.text or not ev.finish_reason else {}
            return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": ev.finish_reason}

        roles = [{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                 for k in range(body.n)]

        def chunks(events: AsyncIterator[tuple[int, TokenEvent]]) -> AsyncIterator[bytes]:
            return self._sse_stream(events, chunk_head, roles, choice, want is not None, body.include_usage(),
                                    len(ids))

        return await self._answer(jobs, request, started, body.stream, respond, chunks)

    def _chat_logprobs(self, ids: list[int], logprobs: list[float],
                       top: list[dict[str, float]]) -> dict[str, Any]:
        def entry(token: str, lp: float) -> dict[str, Any]:
            return {"token": token, "logprob": lp, "bytes": list(token.encode("utf-8"))}

        content = []
        for k, (tid, lp) in enumerate(zip(ids, logprobs)):
            alts = top[k] if k < len(top) else {}
            content.append({**entry(self._piece(tid), lp), "top_logprobs": [entry(t, v) for t, v in alts.items()]})
        return {"content": content}

    # --- /v1/embeddings --------------------------------------------------------------------------------------

    async def embeddings(self, body: EmbeddingRequest) -> dict[str, Any]:
        from lmforge.eval.retrieval import embed, frame, sentence_ids

        self.check_model(body.model)
        if not self.embeds:
            raise APIError(400, f"this checkpoint is {describe(self.served.cfg)}, which does not embed (serve a bert "
                                f"encoder checkpoint for /v1/embeddings, e.g. one trained with --objective "
                                f"contrastive)", code="model_cannot_embed")
        cfg, special = self.served.cfg, self.served.special_ids
        inputs = body.inputs()
        if body.dimensions is not None and body.dimensions != cfg.d_model:
            raise APIError(400, f"this model's embeddings have {cfg.d_model} dimensions; dimensions "
                                f"{body.dimensions} cannot be given", param="dimensions")
        seqs: list[list[int]] = []
        for k, x in enumerate(inputs):
            if isinstance(x, str):
                seqs += sentence_ids(self.tok, [x], special, cfg.max_seq_len, what=f"input {k}, a text of",
                                     fix="shorten it")
            else:
                framed = frame(self._check_ids(x, "input"), special)
                if len(framed) > cfg.max_seq_len:
                    raise APIError(400, f"input {k} has {len(framed)} tokens with <cls>/<sep>, more than the model's "
                                        f"{cfg.max_seq_len}", param="input")
                seqs.append(framed)
        async with self.embed_lock:  # one forward at a time on the model; the event loop stays free meanwhile
            vectors = await asyncio.to_thread(embed, self.served.model, seqs, special.get("pad", 0))
        data = []
        for k, v in enumerate(vectors):
            value: Any = (base64.b64encode(v.to(torch.float32).numpy().astype(np.float32).tobytes()).decode()
                          if body.encoding_format == "base64" else v.tolist())
            data.append({"object": "embedding", "index": k, "embedding": value})
        tokens = sum(map(len, seqs))
        return {"object": "list", "data": data, "model": self.options.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    # --- /tokenize, /detokenize ------------------------------------------------------------------------------

    def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        from lmforge.data.tokenizer import encode_ids

        self.check_model(body.model)
        if body.messages is not None:
            ids = self._chat_prompt([{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                                     for m in body.messages], body.add_generation_prompt)
        else:
            ids = encode_ids(self.tok, body.prompt or "")
        return {"tokens": ids, "count": len(ids), "max_model_len": self.served.cfg.max_seq_len}

    def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        self.check_model(body.model)
        return {"prompt": self.tok.decode(self._check_ids(body.tokens, "tokens"), skip_special_tokens=False)}
