"""`lmforge serve` as a process: it drains the streams in flight on SIGTERM, then exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from serve.conftest import tiny_checkpoint


@pytest.fixture(scope="module")
def long_checkpoint(tiny_data, tmp_path_factory):
    """A context long enough for a stream still running when SIGTERM comes."""
    return tiny_checkpoint(tmp_path_factory.mktemp("long_ckpt"), tiny_data, max_seq_len=512)


def start(checkpoint, *flags: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(checkpoint), "--port", "0", "--device",
                             "cpu", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"no ready line: {line!r} {proc.stderr.read()}")
    url = match.group(1)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def test_sigterm_lets_the_stream_in_flight_finish_then_exits_0(long_checkpoint):
    proc, url = start(long_checkpoint)
    try:
        body = {"prompt": "The list", "max_tokens": 400, "temperature": 1.0, "seed": 1, "stream": True,
                "stop": ["never-in-this-text"]}
        after, ended = 0, False
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    ended = True
                    break
                if after == 0:
                    proc.send_signal(signal.SIGTERM)  # right after the first token
                after += 1
                assert "error" not in json.loads(line[6:])
        assert ended and after > 10  # the stream went on well after SIGTERM, to its end
        assert proc.wait(timeout=60) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/health", timeout=2)
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("host", ["\x80", "h\u00e9te\u0000"])
def test_a_host_the_socket_module_cannot_encode_is_one_line(host):
    from lmforge.errors import UserError
    from lmforge.serve.server import bind

    with pytest.raises(UserError, match="not a host name or address"):
        bind(host, 0)
