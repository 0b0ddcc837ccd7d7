"""
TOML documents spelled as the reference's toml crate spells them
(C{toml::to_string} of a C{toml::Value} table), for C{environmentConfig/read}.

The layout: a table's plain values first, then its tables and arrays of
tables in order, depth first; a table header only where the table has
values, or nothing at all, or is an element of an array of tables; a
blank line between tables. Strings take the first spelling that needs no
escapes (basic, literal, multi-line basic, multi-line literal), keys the
first of bare, basic, literal.
"""

from __future__ import annotations

import datetime
import math
import re
from decimal import Decimal

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", "\\": "\\\\"}


def dumps(table: dict) -> str:
    """
    The document of C{table} (as C{tomllib} reads TOML: dicts, lists,
    strings, numbers, booleans and datetimes).
    """
    tables: list[_Table] = []
    _collect(tables, None, table, array=False)
    return "\n".join(str(t) for t in tables if t.required())


class _Table:
    def __init__(self, key: list[str] | None, array: bool) -> None:
        self.key = key
        self.array = array
        self.body: list[str] = []
        self.has_children = False

    def required(self) -> bool:
        if self.key is None:
            return bool(self.body)
        return self.array or bool(self.body) or not self.has_children

    def __str__(self) -> str:
        body = "".join(self.body)
        if self.key is None:
            return body
        name = ".".join(self.key)
        header = f"[[{name}]]" if self.array else f"[{name}]"
        return f"{header}\n{body}"


def _is_array_of_tables(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _collect(tables: list[_Table], key: list[str] | None, table: dict, array: bool) -> None:
    entry = _Table(key, array)
    tables.append(entry)
    for name, value in table.items():
        if not isinstance(value, dict) and not _is_array_of_tables(value):
            entry.body.append(f"{format_key(name)} = {format_value(value)}\n")
    for name, value in table.items():
        path = (key or []) + [format_key(name)]
        if isinstance(value, dict):
            entry.has_children = True
            _collect(tables, path, value, array=False)
        elif _is_array_of_tables(value):
            entry.has_children = True
            for element in value:
                _collect(tables, path, element, array=True)


def format_key(key: str) -> str:
    if _BARE_KEY.fullmatch(key):
        return key
    control = _CONTROL.search(key) is not None
    if not control and "\\" not in key and '"' not in key:
        return _basic(key, multiline=False)
    if not control and "'" not in key:
        return f"'{key}'"
    return _basic(key, multiline=False)


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return format_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, datetime.datetime):
        text = f"{value.date().isoformat()}T{_time(value.time())}"
        return text + _offset(value.utcoffset()) if value.tzinfo is not None else text
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.time):
        return _time(value)
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{format_key(k)} = {format_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"not a TOML value: {type(value).__name__}")


def format_float(value: float) -> str:
    """
    Rust's shortest round-trip digits, never in exponent form.
    """
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text if "." in text else text + ".0"


def _time(value: datetime.time) -> str:
    text = f"{value.hour:02}:{value.minute:02}:{value.second:02}"
    if value.microsecond:
        text += "." + f"{value.microsecond:06}".rstrip("0")
    return text


def _offset(offset: datetime.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02}:{minutes:02}"


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(re.escape(char) + "+", text)
    return max((len(run) for run in runs), default=0)


def format_string(value: str) -> str:
    control = _CONTROL.search(value.replace("\n", "")) is not None
    backslash = "\\" in value
    newline = "\n" in value
    doubles = _longest_run(value, '"')
    singles = _longest_run(value, "'")
    if not control and not backslash and not doubles and not newline:
        return _basic(value, multiline=False)
    if not control and not singles and not newline:
        return f"'{value}'"
    if not control and not backslash and doubles <= 2:
        return _basic(value, multiline=True)
    if not control and singles <= 2:
        return "'''" + ("\n" if newline else "") + value + "'''"
    return _basic(value, multiline=newline)


def _basic(value: str, multiline: bool) -> str:
    """
    A basic string with the toml crate's escapes: named ones where TOML has
    them, C{\\uXXXX} for other control characters, and a double quote
    escaped where it would end the string.
    """
    out = []
    run = 0
    limit = 2 if multiline else 0
    for char in value:
        if char == '"':
            run += 1
            if run > limit:
                out.append('\\"')
                run = 0
                continue
        else:
            run = 0
        if char == "\n" and multiline:
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char <= "\x1f" or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    delimiter = '"""' if multiline else '"'
    return delimiter + ("\n" if multiline and "\n" in value else "") + "".join(out) + delimiter
