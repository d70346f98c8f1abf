"""Requests as routers receive them: a plain prompt string or an OpenAI chat-completions body.

``parse_request(obj) -> Request`` accepts

- a plain string: one user turn (what tierwise always took);
- an unmodified OpenAI chat-completions request body (a dict): ``messages`` (roles ``system``,
  ``developer``, ``user``, ``assistant``, ``tool`` and the legacy ``function``; ``content`` a
  string, a list of content parts, or null where the API allows it: an assistant turn with
  ``tool_calls``), optional ``tools`` (and the legacy ``functions``). Every other body field
  (``model``, ``temperature``, ``stream``, ``tool_choice``, ``response_format`` ...) is ignored.

Text content parts (``{"type": "text", "text": ...}``, and an assistant's ``refusal`` parts) are
read; image, audio and file parts (``image_url``, ``input_audio``, ``file``) are skipped and the
request is flagged ``non_text_skipped``. Assistant ``tool_calls`` (function name and argument
string) and tool schemas are text that will be sent to the model, so they are part of
``full_text``.

A ``Request`` gives each head of the model its text (see ``docs/design.md``, "Model view"):

- ``full_text``: everything that will be sent to the model, in the order a chat template puts
  it: tool schemas first (providers render them into the system prompt), then every message;
  sensitivity reads all of it;
- ``request_span``: the character span of the request inside ``full_text``: the last user turn
  (else the last message with text); tier and task read it.

Bad requests raise ``RequestError`` (an ``InputError``: HTTP 400) whose ``path`` names the field
(``messages[2].content[0].text``); ``Router.route`` turns it into the safe decision flagged
``invalid_input``. Parsing never raises anything else, whatever it is given.

What this module leaves out: tokenising and the windows the model reads (``runtime.py``), and
every field of the body that does not reach the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from classifier.errors import InputError

FLAG_NON_TEXT_SKIPPED = "non_text_skipped"

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TEXT_PART_TYPES = {"text": "text", "refusal": "refusal"}  # part type -> the key holding its text
SKIPPED_PART_TYPES = ("image_url", "input_audio", "file", "image", "audio", "input_image", "input_file")
# separator between the pieces of full_text: a paragraph break, so no two pieces share a word
SEPARATOR = "\n\n"


class RequestError(InputError):
    """A malformed request body. ``path`` names the field at fault (``messages[1].role``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class Message:
    """One message's role and the text of it that the model will receive."""

    role: str
    text: str


@dataclass(frozen=True)
class Request:
    """A parsed request: its messages, the tool-schema text, and where the request lies.

    ``spans[i]`` is the (start, end) of ``messages[i]`` in ``full_text``; ``tools_span`` that of
    the tool schemas ((0, 0) without tools). ``is_plain``: the request was a bare string.
    """

    messages: tuple[Message, ...]
    full_text: str
    spans: tuple[tuple[int, int], ...]
    request_index: int
    tools_span: tuple[int, int] = (0, 0)
    flags: tuple[str, ...] = ()
    is_plain: bool = False
    roles: tuple[str, ...] = field(default=(), repr=False)

    @property
    def request_span(self) -> tuple[int, int]:
        """Character span of the request (the last user turn) in ``full_text``."""
        return self.spans[self.request_index] if self.spans else (0, len(self.full_text))

    @property
    def pieces(self) -> tuple[tuple[int, int], ...]:
        """Spans of the pieces of ``full_text`` in order: the tool schemas (``(0, 0)`` without
        them), then each message. A blank line (``SEPARATOR``) lies between two pieces."""
        return (self.tools_span, *self.spans)

    @property
    def request_text(self) -> str:
        """The text tier and task read: the last user turn (else the last message with text)."""
        start, end = self.request_span
        return self.full_text[start:end]

    @property
    def system_text(self) -> str:
        """The system and developer messages, joined (empty without them)."""
        return SEPARATOR.join(m.text for m in self.messages if m.role in ("system", "developer") and m.text)


def plain(text: str) -> Request:
    """The request of a bare prompt string (one user turn). ``text`` is not checked here."""
    return Request(messages=(Message("user", text),), full_text=text, spans=((0, len(text)),),
                   request_index=0, is_plain=True, roles=("user",))


def parse_request(obj: Any) -> Request:
    """A ``Request`` from a prompt string or an OpenAI chat-completions body (see the module doc).

    Raises ``RequestError`` naming the field path for anything malformed.
    """
    if isinstance(obj, str):
        return plain(obj)
    if not isinstance(obj, Mapping):
        raise RequestError("request", f"expected a prompt string or a chat-completions body (a JSON object "
                                      f"with 'messages'), got {type(obj).__name__}")
    if "messages" not in obj:
        raise RequestError("messages", "is required: a chat-completions body has a non-empty 'messages' list")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise RequestError("messages", f"must be a list of messages, got {type(raw_messages).__name__}")
    if not raw_messages:
        raise RequestError("messages", "is empty: send at least one message")
    flags: list[str] = []
    messages = [_message(m, f"messages[{i}]", flags) for i, m in enumerate(raw_messages)]
    tools_text = _tools(obj)

    pieces: list[str] = []
    pos = 0
    tools_span = (0, 0)
    if tools_text:
        pieces.append(tools_text)
        tools_span = (0, len(tools_text))
        pos = len(tools_text)
    spans: list[tuple[int, int]] = []
    for m in messages:
        if pieces:
            pieces.append(SEPARATOR)
            pos += len(SEPARATOR)
        pieces.append(m.text)
        spans.append((pos, pos + len(m.text)))
        pos += len(m.text)
    request_index = _request_index(messages)
    return Request(messages=tuple(messages), full_text="".join(pieces), spans=tuple(spans),
                   request_index=request_index, tools_span=tools_span, flags=tuple(dict.fromkeys(flags)),
                   roles=tuple(m.role for m in messages))


def _request_index(messages: list[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and messages[i].text.strip():
            return i
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].text.strip():
            return i
    return len(messages) - 1


def _message(raw: Any, path: str, flags: list[str]) -> Message:
    if not isinstance(raw, Mapping):
        raise RequestError(path, f"must be an object with 'role' and 'content', got {type(raw).__name__}")
    role = raw.get("role")
    if not isinstance(role, str):
        raise RequestError(f"{path}.role", f"is required: one of {list(ROLES)}")
    if role not in ROLES:
        raise RequestError(f"{path}.role", f"unknown role {role!r}; expected one of {list(ROLES)}")
    texts: list[str] = []
    has_content = "content" in raw and raw["content"] is not None
    if has_content:
        texts.extend(_content(raw["content"], f"{path}.content", flags))
    if role == "assistant":
        refusal = raw.get("refusal")
        if refusal is not None:
            if not isinstance(refusal, str):
                raise RequestError(f"{path}.refusal", f"must be a string, got {type(refusal).__name__}")
            texts.append(refusal)
        calls = raw.get("tool_calls")
        if calls is not None:
            texts.extend(_tool_calls(calls, f"{path}.tool_calls"))
        legacy = raw.get("function_call")
        if legacy is not None:
            texts.extend(_tool_calls([{"type": "function", "function": legacy}], f"{path}.function_call"))
        if not has_content and calls is None and legacy is None and refusal is None:
            raise RequestError(f"{path}.content", "is required (an assistant message without content needs "
                                                  "'tool_calls')")
    elif not has_content:
        raise RequestError(f"{path}.content", f"is required for a {role!r} message (a string or a list of "
                                              "content parts)")
    return Message(role, "\n".join(t for t in texts if t))


def _content(content: Any, path: str, flags: list[str]) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise RequestError(path, f"must be a string or a list of content parts, got {type(content).__name__}")
    out: list[str] = []
    for j, part in enumerate(content):
        p = f"{path}[{j}]"
        if isinstance(part, str):
            raise RequestError(p, "must be a content part object such as {\"type\": \"text\", \"text\": \"...\"}, "
                                  "not a bare string")
        if not isinstance(part, Mapping):
            raise RequestError(p, f"must be a content part object, got {type(part).__name__}")
        kind = part.get("type")
        if not isinstance(kind, str):
            raise RequestError(f"{p}.type", "is required: 'text' (or an image/audio/file part type)")
        if kind in TEXT_PART_TYPES:
            key = TEXT_PART_TYPES[kind]
            text = part.get(key)
            if not isinstance(text, str):
                got = "missing" if key not in part else type(text).__name__
                raise RequestError(f"{p}.{key}", f"a {kind!r} part needs a string {key!r}, got {got}")
            out.append(text)
        elif kind in SKIPPED_PART_TYPES:
            flags.append(FLAG_NON_TEXT_SKIPPED)
        else:
            raise RequestError(f"{p}.type", f"unknown content part type {kind!r}; expected 'text' or one of "
                                            f"{list(SKIPPED_PART_TYPES)} (skipped)")
    return out


def _tool_calls(calls: Any, path: str) -> list[str]:
    if not isinstance(calls, list):
        raise RequestError(path, f"must be a list of tool calls, got {type(calls).__name__}")
    out: list[str] = []
    for k, call in enumerate(calls):
        p = f"{path}[{k}]"
        if not isinstance(call, Mapping):
            raise RequestError(p, f"must be an object, got {type(call).__name__}")
        fn = call.get("function")
        if not isinstance(fn, Mapping):
            raise RequestError(f"{p}.function", "is required: an object with 'name' and 'arguments'")
        name, args = fn.get("name"), fn.get("arguments", "")
        if not isinstance(name, str):
            raise RequestError(f"{p}.function.name", "must be a string")
        if not isinstance(args, str):
            raise RequestError(f"{p}.function.arguments", f"must be a JSON string, got {type(args).__name__}")
        out.append(f"{name}({args})")
    return out


def _tools(obj: Mapping[str, Any]) -> str:
    """The tool schemas as compact JSON text ('' without tools): they are sent to the model."""
    out: list[str] = []
    for key in ("tools", "functions"):
        tools = obj.get(key)
        if tools is None:
            continue
        if not isinstance(tools, list):
            raise RequestError(key, f"must be a list of tool definitions, got {type(tools).__name__}")
        for k, tool in enumerate(tools):
            if not isinstance(tool, Mapping):
                raise RequestError(f"{key}[{k}]", f"must be an object, got {type(tool).__name__}")
            try:
                out.append(json.dumps(tool, ensure_ascii=False, separators=(",", ":")))
            except (TypeError, ValueError) as exc:
                raise RequestError(f"{key}[{k}]", f"is not JSON data ({exc})") from None
    return "\n".join(out)
