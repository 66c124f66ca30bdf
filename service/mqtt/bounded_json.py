"""JSON from untrusted MQTT clients, parsed within bounds that are checked before the parser runs.

``json.loads`` alone lets a hostile request cost the daemon: a deep nesting recurses until
RecursionError, a 5000-digit integer raises ValueError (3.11's digit limit) or, at 400 digits,
OverflowError later in ``float()``; ``NaN``/``Infinity`` are not JSON at all but Python accepts them;
a 16 MB string is echoed into errors and logs. Every refusal here is a :class:`InputError` whose
message names the problem and quotes at most :data:`QUOTE_CHARS` characters of the input.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_PAYLOAD_BYTES = 16 * 1024  # the largest request in the table (reload_model's 4096-char dir) fits
MAX_DEPTH = 8  # nesting of arrays/objects; the table's requests are flat objects
MAX_NUMBER_CHARS = 32  # a number literal longer than this is refused before conversion
QUOTE_CHARS = 40


class InputError(ValueError):
    """Untrusted input refused; the message is safe to send back and to log (bounded)."""


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how long the whole was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text``, ignoring brackets inside strings (linear scan)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _number(literal: str, convert: Any) -> Any:
    if len(literal) > MAX_NUMBER_CHARS:
        raise InputError(f"number {quote(literal, 20)} is too long: at most {MAX_NUMBER_CHARS} characters")
    value = convert(literal)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"number {literal} is out of range (not finite)")
    return value


def _constant(name: str) -> Any:
    raise InputError(f"{name} is not a JSON number: send a finite number")


def loads_bounded(payload: bytes) -> Any:
    """Parse an untrusted UTF-8 JSON payload; :class:`InputError` naming the problem otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InputError(f"payload of {len(payload)} bytes is too large: at most {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"payload is not UTF-8 JSON: {e.reason} at byte {e.start}") from None
    depth = nesting_depth(text)
    if depth > MAX_DEPTH:
        raise InputError(f"payload nests {depth} levels deep: at most {MAX_DEPTH}")
    try:
        return json.loads(
            text,
            parse_int=lambda s: _number(s, int),
            parse_float=lambda s: _number(s, float),
            parse_constant=_constant,
        )
    except json.JSONDecodeError as e:  # its message quotes no input, only the position
        raise InputError(f"payload is not UTF-8 JSON: {e}") from None
