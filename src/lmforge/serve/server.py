"""`lmforge serve`: load a checkpoint and run the OpenAI-compatible app on uvicorn.

Safe by default: binds 127.0.0.1 (another host only when `--host` says so), caps request bodies, bounds the
queue, times requests out. SIGTERM (or Ctrl-C) drains: uvicorn stops accepting connections, lets the streams in
flight finish (up to `--request-timeout`), then the engine stops and the process exits 0.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.config import Config, field
from lmforge.device import DEVICES
from lmforge.errors import UserError

LOOPBACK = "127.0.0.1"


@dataclass
class ServeConfig(Config):
    checkpoint: str = field("runs/quickstart/train", "checkpoint directory, or a run directory (uses its best)")
    host: str = field(LOOPBACK, "address to bind (default: this machine only; 0.0.0.0 opens it to the network: "
                                "set an --api-key then)")
    port: int = field(8000, "port to listen on", min=0, max=65535)
    model_name: str | None = field(None, "the model's id in the API (default: the checkpoint directory's name)")
    api_key: list[str] = field(default_factory=list, repeat=True,
                               help="API key a client must send as `Authorization: Bearer KEY` (repeat for several)")
    api_key_file: str | None = field(None, "file of API keys, one a line (blank lines and # comments skipped)")
    max_batch: int = field(16, "sequences the engine runs per step", min=1)
    max_queue: int = field(64, "sequences that may wait for a slot; more are answered 429 with Retry-After", min=0)
    max_body_bytes: int = field(1 << 20, "largest request body accepted (413 beyond)", min=1)
    request_timeout: float = field(600.0, "seconds a request may take before it is stopped (408)", gt=0)
    device: str = field("auto", "device to run on", choices=DEVICES)

    def __post_init__(self) -> None:
        if self.api_key_file is not None and not Path(self.api_key_file).is_file():
            raise UserError("API key file not found", where=self.api_key_file,
                            fix="pass a file with one key a line, or --api-key KEY")
        if any(not k.strip() for k in self.api_key):
            raise UserError("an --api-key is empty", fix="give each --api-key a non-empty value")


def api_keys(cfg: ServeConfig) -> tuple[str, ...]:
    keys = [k.strip() for k in cfg.api_key]
    if cfg.api_key_file is not None:
        path = Path(cfg.api_key_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the API key file ({e})", where=path) from None
        keys += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not keys:
            raise UserError("the API key file holds no key", where=path, fix="put one key a line in it")
    return tuple(dict.fromkeys(keys))


def build_app(cfg: ServeConfig, verify: bool = True):
    """The app for `cfg` (checkpoint loaded), and the options it enforces."""
    from lmforge.serve.app import ServedModel, ServeOptions, create_app

    keys = api_keys(cfg)  # before the model: a bad key file is refused at once
    served = ServedModel.load(cfg.checkpoint, cfg.device, verify=verify)
    options = ServeOptions(model_name=cfg.model_name or Path(served.source).name, api_keys=keys,
                           max_batch=cfg.max_batch, max_queue=cfg.max_queue, max_body_bytes=cfg.max_body_bytes,
                           request_timeout_s=cfg.request_timeout)
    return create_app(served, options), options, served


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, exiting 0 after a SIGTERM / Ctrl-C it drained (uvicorn re-raises the signal once
        drained, which makes the exit status -15 / 130, as if killed in the middle). A second Ctrl-C still forces
        the exit."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (uvicorn would exit with a log line instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:  # the port is taken, or the address is not this machine's
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                        fix="choose another --port, or stop what holds it, or a --host of this machine") from None
    except (TypeError, UnicodeError):  # the socket module cannot even encode it (e.g. a non-ASCII byte)
        sock.close()
        raise UserError(f"cannot listen on {host!r}: not a host name or address",
                        fix="give --host an IP address (127.0.0.1, 0.0.0.0, ::1) or a host name") from None
    sock.set_inheritable(True)
    return sock


def _say(line: str) -> None:
    print(line, flush=True)


def serve(cfg: ServeConfig, verify: bool = True, on_ready: Callable[[str], None] = _say) -> None:
    """Run the server until SIGTERM / Ctrl-C, then drain and return."""
    import uvicorn

    sock = bind(cfg.host, cfg.port)  # before loading the model: a taken port is refused at once
    try:
        app, options, served = build_app(cfg, verify)
        port = sock.getsockname()[1]
        keys = (f"{len(options.api_keys)} API key(s) required" if options.api_keys
                else "no API key: open to anyone who can reach the port")
        on_ready(f"serving {served.source} as {options.model_name!r} on http://{cfg.host}:{port} ({keys}); "
                 f"chat page at /, OpenAI API under /v1")
        if cfg.host not in (LOOPBACK, "localhost", "::1") and not options.api_keys:
            logging.getLogger("lmforge.serve").warning("listening on %s without an API key", cfg.host)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(cfg.request_timeout) + 1)
        _draining_server_class()(config).run(sockets=[sock])
    finally:
        sock.close()
