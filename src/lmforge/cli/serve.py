"""`lmforge serve`: an OpenAI-compatible HTTP server for a checkpoint (the library is `lmforge.serve`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_no_verify, add_verb
from lmforge.config import resolve
from lmforge.serve.server import ServeConfig

ORDER = 50

DESCRIPTION = """\
Serve a checkpoint over HTTP with the OpenAI API (completions, chat completions, embeddings for encoders),
streaming or not, every request batched by the inference engine; a chat page at http://HOST:PORT/.

Safe by default: listens on 127.0.0.1 only; --api-key (repeat it) or --api-key-file makes every route but
/health and the page itself ask for `Authorization: Bearer KEY`. Request bodies, the queue (429 with Retry-After
when full) and the time a request may take are capped. SIGTERM or Ctrl-C lets the streams in flight finish.

examples:
  lmforge serve runs/chat                                     # then open http://127.0.0.1:8000/
  lmforge serve runs/chat --port 8080 --api-key "$KEY" --host 0.0.0.0
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The list", "max_tokens": 20, "temperature": 0}'
  OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=$KEY python my_openai_app.py
"""


def _main(args: argparse.Namespace) -> int:
    from lmforge.cli.common import verify_wanted
    from lmforge.serve.server import serve

    verify = verify_wanted(args)
    positional = vars(args).pop("checkpoint_arg", None)
    cfg = resolve(ServeConfig, args, **({"checkpoint": positional} if positional else {}))
    serve(cfg, verify=verify)
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "serve", ServeConfig, _main, help="serve a checkpoint with the OpenAI API and a chat page",
                      description=DESCRIPTION)
    parser.add_argument("checkpoint_arg", nargs="?", metavar="CHECKPOINT",
                        help="checkpoint or run directory (same as --checkpoint)")
    add_no_verify(parser)
