"""Self-contained HTML pages of a text with a score per token (surprise, attribution).

One page style for every per-token view: the text as given, each token a span tinted by its score, its details
in a hover title, a colour legend and a few summary lines on top. Inline CSS only, no scripts, no external
assets, every piece of text HTML-escaped, so a page opens anywhere and is safe whatever the input held.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.explain.inputs import Encoded

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 60em;
       color: #222; line-height: 1.5; padding: 0 1em; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; }
table.summary { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
table.summary td { padding: 0.1em 1.2em 0.1em 0; }
table.summary td:first-child { color: #666; }
.text { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; white-space: pre-wrap;
        word-wrap: break-word; font-size: 1.05em; line-height: 2; border: 1px solid #ddd; border-radius: 6px;
        padding: 0.8em 1em; background: #fff; }
.tok { border-radius: 3px; padding: 0.15em 0; cursor: default; }
.tok:hover { outline: 2px solid #333; }
.added, .piece { color: #888; border: 1px dashed #aaa; font-size: 0.8em; padding: 0 0.2em; margin: 0 0.15em; }
.none { color: #555; }
.legend { display: flex; align-items: center; gap: 0.6em; margin: 1em 0; font-size: 0.85em; color: #444; }
.bar { width: 18em; height: 0.9em; border: 1px solid #ccc; border-radius: 3px; }
.note { font-size: 0.85em; color: #666; }
"""


@dataclass
class Scale:
    """Maps a score to a background colour: sequential (0 -> vmax, white to red) or diverging (blue-white-red)."""

    vmax: float
    diverging: bool = False
    label: str = ""

    def colour(self, value: float) -> str:
        x = max(-1.0, min(1.0, value / self.vmax)) if self.vmax > 0 else 0.0
        if not self.diverging:
            x = max(x, 0.0)
        # Blend white with a saturated red (positive) or blue (negative): readable black text at every level.
        r, g, b = (214, 39, 40) if x >= 0 else (31, 119, 180)
        a = abs(x) * 0.85
        return f"rgb({round(255 + (r - 255) * a)}, {round(255 + (g - 255) * a)}, {round(255 + (b - 255) * a)})"

    def legend(self) -> str:
        lo = -self.vmax if self.diverging else 0.0
        stops = [self.colour(lo + (self.vmax - lo) * k / 8) for k in range(9)]
        return (f'<div class="legend"><span>{html.escape(self.label)}</span><span>{lo:.3g}</span>'
                f'<div class="bar" style="background: linear-gradient(to right, {", ".join(stops)})"></div>'
                f"<span>{self.vmax:.3g}</span></div>")


def render(title: str, enc: Encoded, scores: Sequence[float | None], hovers: Sequence[str], scale: Scale, *,
           summary: Sequence[tuple[str, str]] = (), note: str = "") -> str:
    """The page: `scores[i]` tints token i (None: not scored), `hovers[i]` is its hover title."""
    parts = []
    cursor = 0
    for i in range(len(enc)):
        start, end = enc.spans[i]
        if not enc.added[i] and start > cursor:
            parts.append(html.escape(enc.text[cursor:start]))  # characters no token shows (e.g. spaces)
        shown = enc.shown(i)
        classes = ["tok"]
        style = ""
        if enc.added[i]:
            classes.append("added")
        elif enc.partial(i):
            classes.append("piece")  # a byte-level piece of a character that a later token completes
        if scores[i] is None:
            classes.append("none")
        else:
            style = f' style="background: {scale.colour(scores[i])}"'
        parts.append(f'<span class="{" ".join(classes)}"{style} title="{html.escape(hovers[i], quote=True)}">'
                     f"{html.escape(shown)}</span>")
        if not enc.added[i]:
            cursor = max(cursor, end)
    if cursor < len(enc.text):
        parts.append(html.escape(enc.text[cursor:]))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in summary)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        + (f'<table class="summary">{rows}</table>\n' if rows else "")
        + scale.legend() + "\n"
        + f'<div class="text">{"".join(parts)}</div>\n'
        + (f'<p class="note">{html.escape(note)}</p>\n' if note else "")
        + "</body>\n</html>\n"
    )
