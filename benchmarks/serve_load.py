"""Serving under load: `lmforge serve` against Hugging Face `generate` per request, behind the same client harness.

Both servers run the same random-init weights (an lmforge checkpoint of the preset, and its `lmforge export` in
transformers' format) in their own process on loopback, and speak the same streaming /v1/completions. The peer is
what a plain transformers server does: each request runs its own `model.generate(..., streamer=...)` in a thread
(KV-cached, greedy), so concurrent requests contend for the CPU instead of sharing batched steps. The harness sends
`concurrency` clients at once, each `--requests` streamed greedy completions one after another, and measures:

- aggregate tok/s: completion tokens of every request (from the stream's usage) / wall time of the level;
- TTFT: request sent to the first streamed token; ITL: gaps between a stream's chunks, per token they carry.

    PYTHONPATH=src python3 benchmarks/serve_load.py                          # tiny and small, 1 / 8 / 32 clients
    PYTHONPATH=src python3 benchmarks/serve_load.py --presets tiny --levels 1 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from itertools import islice
from pathlib import Path

WORDS = ["The list", "A module", "Return the", "If the file", "Each class", "The value of", "When a", "This method"]


# --- the two servers (run as subprocesses of this script) ---------------------------------------------------------

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


# --- the client harness ----------------------------------------------------------------------------------------

async def one_request(client, prompt: str, max_tokens: int) -> dict:
    # logprobs 0: a chunk per generated token, even while its text is held back (random weights make many byte
    # tokens that are not UTF-8 yet), so arrival times are per token on both servers.
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "logprobs": 0,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            arrived = sum(len((c.get("logprobs") or {}).get("tokens") or []) for c in chunk.get("choices", []))
            if arrived:
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps += [(now - last) / arrived] * arrived
                last = now
    return {"ttft": (first or time.perf_counter()) - sent, "gaps": gaps, "tokens": tokens}


async def level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await one_request(client, "warm up", 4)

        async def user(u: int) -> list[dict]:
            return [await one_request(client, f"{WORDS[(u + k) % len(WORDS)]} {u}", max_tokens)
                    for k in range(requests)]

        t = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(user(u) for u in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t
    ttft = sorted(r["ttft"] for r in results)
    per_token = sorted(g for r in results for g in r["gaps"])
    tokens = sum(r["tokens"] for r in results)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tok_s": tokens / wall, "ttft_p50": statistics.median(ttft), "ttft_p99": pct(ttft, 0.99),
            "itl_p50": pct(per_token, 0.5), "itl_p99": pct(per_token, 0.99)}


# --- set-up: the same weights in both formats ------------------------------------------------------------------

def build(preset: str, work: Path) -> tuple[Path, Path]:
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
    return ckpt, hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--levels", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server process (1: on a shared "
                   "2-core box, two OpenMP threads per process spend more time waiting at barriers than computing)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--peers", nargs="+", default=["lmforge", "hf"], choices=["lmforge", "hf"])
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
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs, "
          f"{args.max_tokens} new tokens a request, {args.requests} requests per client")
    rows = []
    for preset in args.presets:
        ckpt, hf = build(preset, work)
        for peer in args.peers:
            server_args = ["--serve", peer, str(ckpt if peer == "lmforge" else hf), "--max-batch",
                           str(args.max_batch)]
            proc, url = start_server(server_args, args.threads)
            try:
                for c in args.levels:
                    r = {"preset": preset, "server": peer, **asyncio.run(level(url, c, args.requests,
                                                                                 args.max_tokens))}
                    rows.append(r)
                    print(f"{preset:6} {peer:8} c={c:<3} {r['tok_s']:8.1f} tok/s  TTFT p50 {r['ttft_p50']:.3f} s "
                          f"p99 {r['ttft_p99']:.3f} s  ITL p50 {1000 * r['itl_p50']:.1f} ms p99 "
                          f"{1000 * r['itl_p99']:.1f} ms  ({r['tokens']} tokens, {r['wall_s']:.1f} s)", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
