"""
JSON text in and out, with the reference server's syntax rules and messages.

The reference parses with serde_json. Valid input goes through the C parser of
the standard library; when that refuses the input, or accepts something
serde_json would refuse (non-finite numbers, lone surrogate escapes, deep
nesting), L{_Diagnoser} walks the text the way serde_json does and names the
first error with serde_json's wording and ``line N column M`` position, so
peers see the same text from us as from the reference.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: serde_json refuses to nest arrays/objects this deep.
RECURSION_LIMIT = 128


class JsonSyntaxError(ValueError):
    """
    The text is not JSON that serde_json would accept.

    C{str(error)} is serde_json's message, e.g.
    C{expected value at line 1 column 1}.
    """


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _parse_float(text: str) -> float:
    if not _finite(text):
        raise ValueError(text)
    return float(text)


def _parse_int(text: str) -> int:
    # serde_json reads integers beyond 64 bits as floats, which can overflow.
    if len(text) > 300 and not _finite(text):
        raise ValueError(text)
    return int(text)


_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def loads(data: bytes | str) -> Any:
    """
    Parse one JSON text.

    @raise JsonSyntaxError: with serde_json's message.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonSyntaxError(_Diagnoser(data).diagnose()) from None
    else:
        text = data
    try:
        value = _decoder.decode(text)
    except (ValueError, RecursionError):
        raise JsonSyntaxError(_diagnose(text)) from None
    if ("\\u" in text and _SURROGATE_ESCAPE.search(text)) or _too_deep(value):
        detail = _Diagnoser(text.encode("utf-8")).diagnose()
        if detail is not None:
            raise JsonSyntaxError(detail)
    return value


def _diagnose(text: str) -> str:
    detail = _Diagnoser(text.encode("utf-8", "surrogatepass")).diagnose()
    # Both parsers follow RFC 8259; a disagreement would be a bug here, and
    # the peer still deserves an error rather than silence.
    return detail or "invalid JSON"


def _too_deep(value: Any) -> bool:
    if not isinstance(value, (list, dict)):
        return False
    stack = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth >= RECURSION_LIMIT:
            return True
        children = container.values() if isinstance(container, dict) else container
        for child in children:
            if isinstance(child, (list, dict)) and child:
                stack.append((child, depth + 1))
            elif isinstance(child, (list, dict)) and depth + 1 >= RECURSION_LIMIT:
                return True
    return False


def dumps(value: Any) -> bytes:
    """
    Serialize compactly as UTF-8, as serde_json does.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class _SyntaxFound(Exception):
    pass


_WHITESPACE = b" \t\n\r"
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')


class _Diagnoser:
    """
    Replays serde_json's recursive-descent parser over UTF-8 bytes.

    It builds no values: it only finds the first error serde_json reports and
    the position it reports it at. serde_json counts columns in bytes from
    the last newline; an error "at" the current index and one "peeked" at the
    next byte differ by one column, and each branch below uses the same one
    serde_json does.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.index = 0
        self.depth = RECURSION_LIMIT

    def diagnose(self) -> str | None:
        try:
            self._value()
            if self._skip_whitespace() is not None:
                self._peek_error("trailing characters")
        except _SyntaxFound as found:
            return str(found)
        return None

    def _position(self, index: int) -> str:
        start = self.data.rfind(b"\n", 0, index) + 1
        line = 1 + self.data.count(b"\n", 0, start)
        return f"line {line} column {index - start}"

    def _error(self, message: str):
        raise _SyntaxFound(f"{message} at {self._position(self.index)}")

    def _peek_error(self, message: str):
        index = min(len(self.data), self.index + 1)
        raise _SyntaxFound(f"{message} at {self._position(index)}")

    def _peek(self) -> int | None:
        if self.index < len(self.data):
            return self.data[self.index]
        return None

    def _next(self) -> int | None:
        byte = self._peek()
        if byte is not None:
            self.index += 1
        return byte

    def _skip_whitespace(self) -> int | None:
        data = self.data
        while self.index < len(data) and data[self.index] in _WHITESPACE:
            self.index += 1
        return self._peek()

    def _value(self) -> None:
        byte = self._skip_whitespace()
        if byte is None:
            self._peek_error("EOF while parsing a value")
        if byte == ord("n"):
            self.index += 1
            self._ident(b"ull")
        elif byte == ord("t"):
            self.index += 1
            self._ident(b"rue")
        elif byte == ord("f"):
            self.index += 1
            self._ident(b"alse")
        elif byte == ord("-") or ord("0") <= byte <= ord("9"):
            self._number()
        elif byte == ord('"'):
            self.index += 1
            self._string()
        elif byte == ord("["):
            self._enter()
            self._sequence()
            self.depth += 1
        elif byte == ord("{"):
            self._enter()
            self._object()
            self.depth += 1
        else:
            self._peek_error("expected value")

    def _enter(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self._peek_error("recursion limit exceeded")
        self.index += 1

    def _ident(self, rest: bytes) -> None:
        for expected in rest:
            byte = self._next()
            if byte is None:
                self._error("EOF while parsing a value")
            if byte != expected:
                self._error("expected ident")

    def _digits(self) -> int:
        start = self.index
        data = self.data
        while self.index < len(data) and 0x30 <= data[self.index] <= 0x39:
            self.index += 1
        return self.index - start

    def _number(self) -> None:
        start = self.index
        first = self._next()
        if first == ord("-"):
            first = self._next()
        if first is None:
            self._error("EOF while parsing a value")
        if first == ord("0"):
            byte = self._peek()
            if byte is not None and 0x30 <= byte <= 0x39:
                self._peek_error("invalid number")
        elif 0x31 <= first <= 0x39:
            self._digits()
        else:
            self._error("invalid number")
        byte = self._peek()
        if byte == ord("."):
            self.index += 1
            if self._digits() == 0:
                if self._peek() is None:
                    self._peek_error("EOF while parsing a value")
                self._peek_error("invalid number")
            byte = self._peek()
        if byte in (ord("e"), ord("E")):
            self.index += 1
            if self._peek() in (ord("+"), ord("-")):
                self.index += 1
            digit = self._next()
            if digit is None:
                self._error("EOF while parsing a value")
            if not 0x30 <= digit <= 0x39:
                self._error("invalid number")
            self._digits()
        if not _finite(self.data[start : self.index]):
            self._error("number out of range")

    def _string(self) -> None:
        data = self.data
        start = self.index
        while True:
            self.index = _STRING_RUN.match(data, self.index).end()
            if self.index == len(data):
                self._error("EOF while parsing a string")
            byte = data[self.index]
            self.index += 1
            if byte == ord('"'):
                try:
                    data[start : self.index - 1].decode("utf-8")
                except UnicodeDecodeError:
                    self._error("invalid unicode code point")
                return
            if byte == ord("\\"):
                self._escape()
            else:
                self._error("control character (\\u0000-\\u001F) found while parsing a string")

    def _escape(self) -> None:
        byte = self._next()
        if byte is None:
            self._error("EOF while parsing a string")
        if byte in _SIMPLE_ESCAPES:
            return
        if byte != ord("u"):
            self._error("invalid escape")
        unit = self._hex4()
        if 0xDC00 <= unit <= 0xDFFF:
            self._error("lone leading surrogate in hex escape")
        if 0xD800 <= unit <= 0xDBFF:
            for expected in b"\\u":
                byte = self._peek()
                if byte is None:
                    self._error("EOF while parsing a string")
                self.index += 1
                if byte != expected:
                    self._error("unexpected end of hex escape")
            second = self._hex4()
            if not 0xDC00 <= second <= 0xDFFF:
                self._error("lone leading surrogate in hex escape")

    def _hex4(self) -> int:
        chunk = self.data[self.index : self.index + 4]
        if len(chunk) < 4:
            self.index = len(self.data)
            self._error("EOF while parsing a string")
        self.index += 4
        if not all(byte in _HEX for byte in chunk):
            self._error("invalid escape")
        return int(chunk, 16)

    def _sequence(self) -> None:
        first = True
        while True:
            byte = self._skip_whitespace()
            if byte == ord("]"):
                self.index += 1
                return
            if byte == ord(",") and not first:
                self.index += 1
                byte = self._skip_whitespace()
            elif byte is None:
                self._peek_error("EOF while parsing a list")
            elif not first:
                self._peek_error("expected `,` or `]`")
            first = False
            if byte == ord("]"):
                self._peek_error("trailing comma")
            if byte is None:
                self._peek_error("EOF while parsing a value")
            self._value()

    def _object(self) -> None:
        first = True
        while True:
            byte = self._skip_whitespace()
            if byte == ord("}"):
                self.index += 1
                return
            if byte == ord(",") and not first:
                self.index += 1
                byte = self._skip_whitespace()
            elif byte is None:
                self._peek_error("EOF while parsing an object")
            elif not first:
                self._peek_error("expected `,` or `}`")
            first = False
            if byte == ord('"'):
                self.index += 1
                self._string()
            elif byte == ord("}"):
                self._peek_error("trailing comma")
            elif byte is None:
                self._peek_error("EOF while parsing a value")
            else:
                self._peek_error("key must be a string")
            byte = self._skip_whitespace()
            if byte is None:
                self._peek_error("EOF while parsing an object")
            if byte != ord(":"):
                self._peek_error("expected `:`")
            self.index += 1
            self._value()


def _finite(literal: bytes | str) -> bool:
    return float(literal) not in (float("inf"), float("-inf"))
