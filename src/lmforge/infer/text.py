"""Token ids in, final text out, for streaming: incremental detokenisation with stop strings."""

from __future__ import annotations

from tokenizers import Tokenizer


class TextStream:
    """Token ids in, final text out: incremental detokenisation with stop strings.

    Decodes a short window of the latest tokens, not the whole output (as vLLM's `detokenize_incrementally`):
    text is added only once the window decodes to more than it did without the newest tokens and does not end
    in U+FFFD (a multi-byte character still incomplete). Of that text, the end that could begin a stop string is
    held back until it is known not to; a completed stop string ends the stream, its text excluded.
    """

    def __init__(self, tokenizer: Tokenizer | None, stop: tuple[str, ...]) -> None:
        self.tok, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.text = ""  # all decoded text so far
        self.sent = 0  # characters of `text` already handed out
        self.prefix = self.read = 0  # the window: ids[prefix:read] decoded last time, ids[read:] new
        self.stopped = False
        self.longest = max((len(s) for s in stop), default=0)

    def add(self, token_id: int) -> str:
        """Append one token; the text that became final."""
        self.ids.append(token_id)
        if self.tok is None:
            return ""
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest of the text, at the end of the request (incomplete characters decoded as U+FFFD)."""
        if self.tok is not None and self.read < len(self.ids) and not self.stopped:
            before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
            after = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
            self.text += after[len(before):]
            self.prefix = self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self.text)
        if self.stop:
            start = max(0, self.sent - self.longest + 1)
            cuts = [c for c in (self.text.find(s, start) for s in self.stop) if c >= 0]
            if cuts:
                self.stopped, end = True, min(cuts)
            elif not final:
                end -= self._partial_stop()
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece

    def _partial_stop(self) -> int:
        """Characters at the end of the text that are the start of some stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
