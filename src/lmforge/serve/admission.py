"""The bounded queue in front of the engine: how many sequences may be in the server at once.

The engine runs up to `max_batch` sequences per step and queues the rest; the server admits at most
`max_batch + max_queue` sequences (a request with n choices counts n). One more is answered 429 with
Retry-After at once instead of waiting without bound, so a client backs off and a burst never grows the queue
(and every waiting client's time to first token) past what was configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lmforge.serve.errors import APIError


class Admission:
    def __init__(self, max_batch: int, max_queue: int, retry_after_s: int = 1) -> None:
        self.capacity = max_batch + max_queue
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.active = 0

    @contextmanager
    def admit(self, sequences: int) -> Iterator[None]:
        """Hold `sequences` places for the body of the `with`; 429 when they are not free."""
        if sequences > self.capacity:
            raise APIError(400, f"the request asks for {sequences} sequences, more than this server holds at once "
                                f"({self.capacity}: --max-batch + --max-queue)", param="n")
        if self.active + sequences > self.capacity:
            raise APIError(429, f"the server is full ({self.active} sequences running or queued, "
                                f"{self.max_queue} may wait); retry in {self.retry_after_s} s",
                           code="queue_full", headers={"Retry-After": str(self.retry_after_s)})
        self.active += sequences
        try:
            yield
        finally:
            self.active -= sequences
