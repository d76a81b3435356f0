"""Serving under load: `lmforge serve` against Hugging Face `generate` per request and llama.cpp's server, behind
the same client harness.

Every server runs the same random-init weights (an lmforge checkpoint of the preset, its `lmforge export` in
transformers' format, its `lmforge export --format gguf --gguf-type f32`) in its own process on loopback, and
speaks the same streaming /v1/completions. The peers:

- hf: what a plain transformers server does: each request runs its own `model.generate(..., streamer=...)` in a
  thread (KV-cached, greedy), so concurrent requests contend for the CPU instead of sharing batched steps;
- llama.cpp: `python -m llama_cpp.server` (llama-cpp-python's OpenAI-compatible server) with `--n_threads` and
  `--n_threads_batch` = --threads, `--n_ctx` = the model's context, its other settings its defaults (one request at
  a time; `interrupt_requests` on, so a waiting request ends the stream in flight: --llamacpp-interrupt false turns
  it off). Left out with a note when `llama_cpp` is not importable.

The harness sends `concurrency` clients at once, each `--requests` streamed greedy completions one after another
(the same body to every server; `repeat_penalty` 1.0 is llama.cpp's own field, so it samples as the OpenAI API
says, and the others ignore it), and measures the same way for every server:

- aggregate tok/s: completion tokens of every request (counted as they stream: one per token in the chunks'
  logprobs, since llama.cpp's server sends no usage) / wall time of the level. llama-cpp-python computes logprobs
  in Python (a sort of the vocabulary per token): --no-logprobs drops them from every request, and counts the
  stream's usage where a server sends one, else a token per chunk (llama.cpp streams one chunk per token);
- TTFT: request sent to the first streamed token; ITL: gaps between a stream's chunks, per token they carry;
- cut off: streams that ended without a finish reason (or with "length" short of max_tokens): ended by the
  server, not by the request.

    PYTHONPATH=src python3 benchmarks/serve_load.py                          # tiny and small, 1 / 8 / 32 clients
    PYTHONPATH=src python3 benchmarks/serve_load.py --presets tiny --levels 1 8 --max-tokens 32
    PYTHONPATH=src python3 benchmarks/serve_load.py --presets small --peers lmforge llama.cpp --llamacpp-interrupt false
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

WORDS = ["The list", "A module", "Return the", "If the file", "Each class", "The value of", "When a", "This method"]


# --- the servers (run as subprocesses) ---------------------------------------------------------------------------

def serve_lmforge(checkpoint: str, max_batch: int) -> None:
    from lmforge.serve.server import ServeConfig, serve

    serve(ServeConfig(checkpoint=checkpoint, port=0, device="cpu", max_batch=max_batch, max_queue=256))


def serve_hf(hf_dir: str) -> None:
    """transformers' `generate` per request, streamed through a BaseStreamer, on the same loopback socket setup."""
    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from lmforge.serve.server import bind

    model = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="sdpa").eval()
    tok = Tokenizer.from_file(str(Path(hf_dir) / "tokenizer.json"))
    eos = tok.token_to_id("<eos>")

    class QueueStreamer(BaseStreamer):
        def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
            self.loop, self.queue, self.first = loop, queue, True

        def put(self, value) -> None:
            if self.first:  # generate() hands the prompt over first
                self.first = False
                return
            for t in value.reshape(-1).tolist():
                self.loop.call_soon_threadsafe(self.queue.put_nowait, t)

        def end(self) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    async def completions(request):
        body = await request.json()
        ids = tok.encode(body["prompt"], add_special_tokens=False).ids
        queue: asyncio.Queue = asyncio.Queue()
        streamer = QueueStreamer(asyncio.get_running_loop(), queue)

        def run() -> None:
            with torch.inference_mode():
                model.generate(torch.tensor([ids]), max_new_tokens=body["max_tokens"], do_sample=False,
                               eos_token_id=eos, pad_token_id=eos, streamer=streamer)

        threading.Thread(target=run, daemon=True).start()

        async def events():
            out: list[int] = []
            sent = ""
            while (t := await queue.get()) is not None:
                out.append(t)
                text = tok.decode(out)
                piece = ""
                if len(text) > len(sent) and not text.endswith("\ufffd"):
                    piece, sent = text[len(sent):], text
                chunk = {"choices": [{"text": piece, "logprobs": {"tokens": [tok.id_to_token(t)]}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            finish = "length" if len(out) >= body["max_tokens"] else "stop"
            yield f"data: {json.dumps({'choices': [{'text': '', 'finish_reason': finish}]})}\n\n"
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(out)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    sock = bind("127.0.0.1", 0)
    print(f"serving on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def start_server(args: list[str], threads: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "LMFORGE_BENCH_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, match.group(1)


def start_llamacpp(gguf: Path, threads: int, n_ctx: int, interrupt: bool) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's own server on a free loopback port, once it answers /v1/models."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
           "--interrupt_requests", str(interrupt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama.cpp server did not answer within 120 s")


# --- the client harness ----------------------------------------------------------------------------------------

async def one_request(client, prompt: str, max_tokens: int, logprobs: bool = True) -> dict:
    import httpx

    # logprobs 0: a chunk per generated token, even while its text is held back (random weights make many byte
    # tokens that are not UTF-8 yet), so arrival times are per token on every server.
    # Without them (--no-logprobs), a chunk's tokens are unknown: the count is the stream's usage where the server
    # sends one (lmforge, hf), else one per chunk (llama.cpp streams a chunk per token), and ITL is per chunk.
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "repeat_penalty": 1.0, **({"logprobs": 0} if logprobs else {})}
    sent = time.perf_counter()
    first, last, gaps, tokens, finish, broken, usage = None, None, [], 0, None, False, None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                finish = next((c["finish_reason"] for c in choices if c.get("finish_reason")), finish)
                usage = (chunk.get("usage") or {}).get("completion_tokens", usage)
                if logprobs:
                    arrived = sum(len((c.get("logprobs") or {}).get("tokens") or []) for c in choices)
                else:
                    arrived = sum(1 for c in choices if c.get("text"))
                tokens += arrived
                if arrived:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    else:
                        gaps += [(now - last) / arrived] * arrived
                    last = now
    except (httpx.RemoteProtocolError, httpx.ReadError):  # the server closed the stream, before or midway
        broken = True
    if not logprobs and usage is not None:
        tokens = usage
    cut = broken or finish is None or (finish == "length" and tokens < max_tokens)
    return {"ttft": None if first is None else first - sent, "gaps": gaps, "tokens": tokens, "cut": cut}


async def level(url: str, concurrency: int, requests: int, max_tokens: int, logprobs: bool = True) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_request(client, "warm up", 4)

        async def user(u: int) -> list[dict]:
            return [await one_request(client, f"{WORDS[(u + k) % len(WORDS)]} {u}", max_tokens, logprobs)
                    for k in range(requests)]

        t = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(user(u) for u in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t
    ttft = sorted(r["ttft"] for r in results if r["ttft"] is not None)  # a stream cut before its first token: none
    per_token = sorted(g for r in results for g in r["gaps"])
    tokens = sum(r["tokens"] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
            "ttft_p99": pct(ttft, 0.99),
            "itl_p50": pct(per_token, 0.5), "itl_p99": pct(per_token, 0.99),
            "cut_off": sum(r["cut"] for r in results)}


# --- set-up: the same weights in both formats ------------------------------------------------------------------

def build(preset: str, work: Path, with_gguf: bool = True) -> tuple[Path, Path, Path]:
    import torch

    from lmforge.data.builtin import python_docs
    from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer
    from lmforge.interop.hf import export_hf
    from lmforge.models import build_model, get_preset
    from lmforge.models.io import save_model

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        tok = train_tokenizer(islice(python_docs(), 800), TokenizerOptions(kind="bpe", vocab_size=4096))
        save_tokenizer(tok, tok_dir)
    ckpt = work / preset
    if not (ckpt / "config.json").is_file():
        torch.manual_seed(0)
        cfg = get_preset(preset)
        cfg.vocab_size = 4096
        save_model(ckpt, build_model(cfg).eval(), cfg, tok_dir)
    hf = work / f"{preset}-hf"
    if not (hf / "config.json").is_file():
        export_hf(ckpt, hf)
    gguf = work / f"{preset}-f32.gguf"
    if with_gguf and not gguf.is_file():
        from lmforge.interop.gguf import export_gguf

        export_gguf(ckpt, gguf, "f32")
    return ckpt, hf, gguf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--levels", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server process (1: on a shared "
                   "2-core box, two OpenMP threads per process spend more time waiting at barriers than computing)")
    p.add_argument("--max-batch", type=int, default=32)
    servers = ["lmforge", "hf", "llama.cpp"]
    p.add_argument("--peers", nargs="+", default=servers, choices=servers)
    p.add_argument("--no-logprobs", dest="logprobs", action="store_false",
                   help="requests without logprobs (llama-cpp-python's server computes them in Python, ~4x its "
                        "per-token time on `tiny`); tokens then from the stream's usage, else one per chunk")
    p.add_argument("--llamacpp-interrupt", choices=["true", "false"], default="true",
                   help="llama.cpp server's --interrupt_requests (its default true: a waiting request ends the "
                        "stream in flight)")
    p.add_argument("--work", default=None, help="directory for the weights (default: a temporary one)")
    p.add_argument("--serve", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import torch

        torch.set_num_threads(int(os.environ.get("LMFORGE_BENCH_THREADS", "1")))
        kind, path = args.serve
        serve_lmforge(path, args.max_batch) if kind == "lmforge" else serve_hf(path)
        return
    import torch
    import transformers

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="serve_load_"))
    peers = list(args.peers)
    llamacpp = "not importable"
    if importlib.util.find_spec("llama_cpp") is not None:
        import llama_cpp

        llamacpp = llama_cpp.__version__
    elif "llama.cpp" in peers:
        peers.remove("llama.cpp")
        print("note: llama_cpp is not importable, so the llama.cpp server peer is left out "
              "(pip install 'llama-cpp-python[server]'; it compiles llama.cpp, ~10 minutes on 2 cores)")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, llama-cpp-python {llamacpp}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads a server, {args.max_tokens} new tokens a request, "
          f"{args.requests} requests per client, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for preset in args.presets:
        ckpt, hf, gguf = build(preset, work, with_gguf="llama.cpp" in peers)
        for peer in peers:
            if peer == "llama.cpp":
                from lmforge.models import ModelConfig

                n_ctx = ModelConfig.load(ckpt / "config.json").max_seq_len
                proc, url = start_llamacpp(gguf, args.threads, n_ctx, args.llamacpp_interrupt == "true")
            else:
                server_args = ["--serve", peer, str(ckpt if peer == "lmforge" else hf), "--max-batch",
                               str(args.max_batch)]
                proc, url = start_server(server_args, args.threads)
            try:
                for c in args.levels:
                    r = {"preset": preset, "server": peer, **asyncio.run(level(url, c, args.requests,
                                                                                 args.max_tokens, args.logprobs))}
                    rows.append(r)
                    print(f"{preset:6} {peer:8} c={c:<3} {r['tok_s']:8.1f} tok/s  TTFT p50 {r['ttft_p50']:.3f} s "
                          f"p99 {r['ttft_p99']:.3f} s  ITL p50 {1000 * r['itl_p50']:.1f} ms p99 "
                          f"{1000 * r['itl_p99']:.1f} ms  cut off {r['cut_off']}/{r['requests']}  "
                          f"({r['tokens']} tokens, {r['wall_s']:.1f} s)", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
