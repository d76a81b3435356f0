"""The one chat template: how a conversation becomes text, for chat fine-tuning and for serving alike.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}` (the common
`messages` format of OpenAI's API and of chat JSONL files). Each turn is rendered as

    <|user|>\\nWhat is a list?<|end|>\\n<|assistant|>\\nA mutable sequence.<|end|>\\n

The role markers and the end-of-turn token `<|end|>` are special tokens added to the tokenizer (`add_chat_tokens`)
and saved with it; a model stops generating an answer at `<|end|>`. The template is a Jinja string written into
the tokenizer's `tokenizer_config.json` (`chat_template`, beside the tokenizer in every checkpoint and in the
Hugging Face export), so `transformers.AutoTokenizer.from_pretrained(dir).apply_chat_template(messages)` renders
exactly what `render_chat` renders. Rendering goes through jinja2's immutable sandbox with the settings
transformers uses (trim_blocks, lstrip_blocks, `raise_exception`), because a checkpoint's template is code from
wherever the checkpoint came from.

The template marks assistant answers with `{% generation %}` blocks, as transformers'
`return_assistant_tokens_mask` expects: `encode_chat` trains exactly those characters, each answer with its
end-of-turn token, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Tokenizer

from lmforge.atomic import write_json, write_text
from lmforge.data.tokenizer import encode_with_offsets
from lmforge.errors import UserError

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
END_OF_TURN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)
TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"  # where transformers >= 4.43 saves a template; read too, never written

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + ': use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class ChatFormatError(UserError):
    """A conversation that is not a list of {role, content} messages the template can render."""


# --- rendering -----------------------------------------------------------------------------------------------

class _GenerationSpans(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged and, while `track` is active, records
    the body's character span in the rendered text (transformers' AssistantTracker does the same)."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self._tracking: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar(
            "lmforge_generation_spans", default=None)
        environment.extend(track_generation=self.track)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_span", []), [], [], body).set_lineno(lineno)

    def _span(self, caller: Any) -> str:
        text = caller()
        tracking = self._tracking.get()
        if tracking is not None:
            blocks, spans = tracking
            start = sum(map(len, blocks))
            spans.append((start, start + len(text)))
        return text

    @contextmanager
    def track(self, blocks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
        token = self._tracking.set((blocks, spans))
        try:
            yield
        finally:
            self._tracking.reset(token)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationSpans, jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"the chat template is not valid Jinja ({e.message}, line {e.lineno})",
                        fix="fix chat_template in tokenizer_config.json, or leave it out to use lmforge's") from None


def _render(template: str, messages: Sequence[dict[str, Any]], add_generation_prompt: bool,
            ) -> tuple[str, list[tuple[int, int]]]:
    compiled = _compile(template)
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with compiled.environment.track_generation(blocks, spans):  # type: ignore[attr-defined]
            for block in compiled.generate(messages=list(messages), add_generation_prompt=add_generation_prompt):
                blocks.append(block)
    except jinja2.exceptions.TemplateError as e:
        raise ChatFormatError(f"the chat template refused the conversation: {e}") from None
    return "".join(blocks), spans


def render_chat(template: str, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The text of a conversation under `template` (a Jinja chat template, e.g. CHAT_TEMPLATE), as
    transformers' `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` renders it.
    `add_generation_prompt`: end with the opening of an assistant turn, for the model to write the answer."""
    return _render(template, messages, add_generation_prompt)[0]


# --- conversations -------------------------------------------------------------------------------------------

def check_messages(messages: Any, where: str | Path | None = None) -> list[dict[str, str]]:
    """`messages` as a list of {"role", "content"} dicts, or one line naming the first malformed turn."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError('"messages" must be a non-empty list of {"role", "content"} objects', where=where)
    out = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatFormatError(f'turn {i} is malformed: each message needs a string "role" and a string '
                                  f'"content"', where=where)
        if m["role"] not in ROLES:
            raise ChatFormatError(f"turn {i} has the unknown role {m['role']!r}", where=where,
                                  fix=f"use one of {', '.join(ROLES)}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatFormatError(f"turn {i} is an empty assistant turn (nothing to learn to say)", where=where,
                                  fix="drop the turn or give it its answer")
        out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass
class EncodedChat:
    """A conversation as token ids and, per token, whether it is trained (inside an assistant answer)."""

    ids: list[int]
    trained: list[bool]
    text: str


def encode_chat(tok: Tokenizer, template: str, messages: Sequence[dict[str, Any]]) -> EncodedChat:
    """Render and tokenize a conversation; a token is trained when it lies inside a `{% generation %}` span of
    the template (an assistant's answer and its end-of-turn token). The whole rendered text is tokenized at once,
    so the ids are those a server sends the model for the same conversation."""
    text, spans = _render(template, messages, add_generation_prompt=False)
    ids, _, offsets = encode_with_offsets(tok, text)
    trained = [any(a <= start and end <= b for a, b in spans) for start, end in offsets]
    return EncodedChat(ids=ids, trained=trained, text=text)


# --- the tokenizer and its files -----------------------------------------------------------------------------

def add_chat_tokens(tok: Tokenizer) -> int:
    """Add the role markers and `<|end|>` to `tok` as special tokens (after its vocabulary, in CHAT_TOKENS
    order), those it lacks; returns how many were added."""
    missing = [t for t in CHAT_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return len(missing)


def missing_chat_tokens(tok: Tokenizer) -> int:
    return sum(tok.token_to_id(t) is None for t in CHAT_TOKENS)


def chat_token_ids(tok: Tokenizer) -> dict[str, int]:
    """{"<|user|>": id, ..., "<|end|>": id} for a tokenizer that has the chat tokens; one line when it lacks them."""
    ids = {t: tok.token_to_id(t) for t in CHAT_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise UserError(f"the tokenizer lacks the chat token(s) {' '.join(missing)}",
                        fix="use a checkpoint trained with --objective chat_sft, whose tokenizer has them")
    return ids  # type: ignore[return-value]


def write_chat_template(directory: str | Path, template: str = CHAT_TEMPLATE) -> None:
    """Put `template` into DIR/tokenizer_config.json (created when missing, other keys kept) as `chat_template`."""
    path = Path(directory) / TOKENIZER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["chat_template"] = template
    write_json(path, config)


def save_chat_tokenizer(tok: Tokenizer, directory: str | Path, template: str = CHAT_TEMPLATE) -> Path:
    """Write DIR/tokenizer.json with the chat tokens added, and its configs with the chat template; returns
    the tokenizer.json. `tok` itself is changed (its chat tokens added)."""
    from lmforge.data.tokenizer import TOKENIZER_FILE, write_hf_configs

    add_chat_tokens(tok)
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    write_text(path, tok.to_str(pretty=True))
    write_hf_configs(tok, directory)
    write_chat_template(directory, template)
    return path


def load_chat_template(path: str | Path) -> str | None:
    """The chat template of a checkpoint or tokenizer directory: DIR/chat_template.jinja (transformers' own file),
    else `chat_template` in DIR/tokenizer_config.json (a string, or the named list whose "default" is used);
    None when it has none."""
    directory = Path(path)
    if (directory / TEMPLATE_FILE).is_file():
        return (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
    config_path = directory / TOKENIZER_CONFIG
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the tokenizer config ({e})", where=config_path) from None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


__all__ = ["CHAT_TEMPLATE", "CHAT_TOKENS", "END_OF_TURN", "ROLES", "ROLE_TOKENS", "ChatFormatError", "EncodedChat",
           "add_chat_tokens", "chat_token_ids", "check_messages", "encode_chat", "load_chat_template",
           "missing_chat_tokens", "render_chat", "save_chat_tokenizer", "write_chat_template"]
