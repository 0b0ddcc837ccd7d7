"""
Declarative decoding of request params, with serde's error texts.

The reference decodes params with serde (derive) from a JSON value. Clients
branch on the error code, people read the message; we give both as the
reference does, e.g. C{missing field `processId`} or
C{invalid type: string "x", expected a boolean}. serde walks an object's
members in input order and reports the first bad one; only then does it
report the first missing required field in declaration order.

A L{Struct} decodes to a plain C{dict} keyed by wire names, with C{None} for
absent optional fields.
"""

from __future__ import annotations

import binascii
from typing import Any, Callable

import pybase64

from execserver import wirejson

U64_MAX = 2**64 - 1


class DecodeError(Exception):
    """
    A serde error text; becomes -32602 with that text.
    """


def rust_debug_str(text: str) -> str:
    """
    Quote a string the way Rust's C{{:?}} does.
    """
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\0":
            out.append("\\0")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def unexpected(value: Any) -> str:
    """
    serde's name for a JSON value that has the wrong type.
    """
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, (int, float, wirejson.BigNumber)):
        return "number"
    if isinstance(value, str):
        return f"string {rust_debug_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


def invalid_type(value: Any, expected: str) -> DecodeError:
    return DecodeError(f"invalid type: {unexpected(value)}, expected {expected}")


class Type:
    expecting = "a value"

    def decode(self, value: Any) -> Any:
        raise NotImplementedError


class AnyValue(Type):
    def decode(self, value: Any) -> Any:
        return value


class String(Type):
    expecting = "a string"

    def decode(self, value: Any) -> str:
        if not isinstance(value, str):
            raise invalid_type(value, self.expecting)
        return value


class Bool(Type):
    expecting = "a boolean"

    def decode(self, value: Any) -> bool:
        if value is not True and value is not False:
            raise invalid_type(value, self.expecting)
        return value


_INT_RANGES = {
    "u8": (0, 2**8 - 1),
    "u16": (0, 2**16 - 1),
    "u32": (0, 2**32 - 1),
    "u64": (0, U64_MAX),
    "usize": (0, U64_MAX),
    "i32": (-(2**31), 2**31 - 1),
    "i64": (-(2**63), 2**63 - 1),
}


class Int(Type):
    """
    An integer of a Rust integer type. The reference keeps numbers as their
    JSON text and parses them on demand: anything that is not an integer in
    range (a fraction, an exponent, a sign where none fits) is just
    C{invalid number}.
    """

    def __init__(self, kind: str = "u64") -> None:
        self.expecting = kind
        self.low, self.high = _INT_RANGES[kind]

    def decode(self, value: Any) -> int:
        if value is True or value is False or not isinstance(
            value, (int, float, wirejson.BigNumber)
        ):
            raise invalid_type(value, self.expecting)
        if type(value) is not int or not self.low <= value <= self.high:
            raise DecodeError("invalid number")
        return value


class Optional(Type):
    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.expecting = inner.expecting

    def decode(self, value: Any) -> Any:
        if value is None:
            return None
        return self.inner.decode(value)


class Seq(Type):
    expecting = "a sequence"

    def __init__(self, item: Type) -> None:
        self.item = item

    def decode(self, value: Any) -> list:
        if not isinstance(value, list):
            raise invalid_type(value, self.expecting)
        return [self.item.decode(element) for element in value]


class Map(Type):
    expecting = "a map"

    def __init__(self, value_type: Type) -> None:
        self.value_type = value_type

    def decode(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise invalid_type(value, self.expecting)
        return {key: self.value_type.decode(item) for key, item in value.items()}


def _one_of(names: list[str]) -> str:
    quoted = [f"`{name}`" for name in names]
    if not quoted:
        return "there are no variants"
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return "one of " + ", ".join(quoted)


class Enum(Type):
    """
    A Rust enum of unit variants, spelled as strings.
    """

    def __init__(self, name: str, variants: list[str], aliases: dict[str, str] | None = None):
        self.expecting = f"enum {name}"
        self.variants = variants
        self.aliases = aliases or {}

    def decode(self, value: Any) -> str:
        if isinstance(value, dict):
            # The map form {"variant": null}: the variant is named first.
            if len(value) != 1:
                raise DecodeError("invalid value: map, expected map with a single key")
            ((name, content),) = value.items()
            variant = self.variant(name)
            if content is not None:
                raise invalid_type(content, "unit")
            return variant
        if not isinstance(value, str):
            raise invalid_type(value, "string or map")
        return self.variant(value)

    def variant(self, name: str) -> str:
        if name in self.variants:
            return name
        if name in self.aliases:
            return self.aliases[name]
        raise DecodeError(f"unknown variant `{name}`, expected {_one_of(self.variants)}")


class Base64(Type):
    """
    Standard base64 with canonical padding, as the Rust base64 crate's
    C{STANDARD} engine accepts it.
    """

    expecting = "a string"

    def decode(self, value: Any) -> bytes:
        if not isinstance(value, str):
            raise invalid_type(value, self.expecting)
        return decode_base64(value)


_B64_ALPHABET = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
)}


def decode_base64(text: str) -> bytes:
    """
    @raise DecodeError: with the base64 crate's text, e.g.
        C{Invalid symbol 33, offset 0.}
    """
    try:
        data = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(_base64_problem(text)) from None
    if len(text) % 4 == 0 and pybase64.b64encode(data) == text.encode("ascii"):
        return data
    raise DecodeError(_base64_problem(text))


def _base64_problem(text: str) -> str:
    raw = text.encode("utf-8")
    # The crate reports a stray last byte (a newline, say) before anything else.
    if len(raw) % 4 == 1 and chr(raw[-1]) not in _B64_ALPHABET and raw[-1] != ord("="):
        return f"Invalid symbol {raw[-1]}, offset {len(raw) - 1}."
    body_end = len(raw)
    while body_end > 0 and raw[body_end - 1] == ord("="):
        body_end -= 1
    padding = len(raw) - body_end
    for offset, byte in enumerate(raw[:body_end]):
        if chr(byte) not in _B64_ALPHABET:
            return f"Invalid symbol {byte}, offset {offset}."
    complete = body_end - body_end % 4
    leftover = body_end % 4
    if padding and (leftover < 2 or padding > 4 - leftover):
        offset = body_end if leftover >= 2 else complete + leftover
        return f"Invalid symbol {ord('=')}, offset {offset}."
    if leftover == 1:
        return f"Invalid input length: {body_end}"
    if (leftover + padding) % 4 != 0:
        return "Invalid padding"
    if leftover:
        last = raw[body_end - 1]
        bits = _B64_ALPHABET[chr(last)]
        unused = {2: 0b1111, 3: 0b11}[leftover]
        if bits & unused:
            return f"Invalid last symbol {last}, offset {body_end - 1}."
    return "Invalid padding"


class Field:
    """
    One struct member.

    A field given a C{default} has a serde default: it may be absent from an
    object and from the end of a positional array. An L{Optional} field
    without one may be absent from an object (it is then C{None}) but not
    from an array. Any other field is required.
    """

    _REQUIRED = object()

    def __init__(self, name: str, type: Type, default: Any = _REQUIRED) -> None:
        self.name = name
        self.type = type
        self.defaulted = default is not Field._REQUIRED
        if not self.defaulted and isinstance(type, Optional):
            default = None
        self.default = default

    @property
    def required(self) -> bool:
        return self.default is Field._REQUIRED


class Struct(Type):
    def __init__(self, name: str, fields: list[Field]) -> None:
        self.name = name
        self.expecting = f"struct {name}"
        self.fields = fields
        self.by_name = {field.name: field for field in fields}
        # What an object's decoding starts from: the defaults that can be
        # shared, and the names that need a fresh one or must be present.
        self._defaults = {field.name: field.default for field in fields
                          if not field.required and not isinstance(field.default, (list, dict))}
        self._fresh = [field for field in fields if isinstance(field.default, (list, dict))]
        self._required = frozenset(field.name for field in fields if field.required)

    def decode(self, value: Any) -> dict:
        if isinstance(value, list):
            return self._decode_sequence(value)
        if not isinstance(value, dict):
            raise invalid_type(value, self.expecting)
        result = self._defaults.copy()
        by_name = self.by_name
        for key, item in value.items():
            field = by_name.get(key)
            if field is not None:
                result[key] = field.type.decode(item)
        for field in self._fresh:
            if field.name not in value:
                result[field.name] = _copy_default(field.default)
        if not self._required <= result.keys():
            missing = next(field for field in self.fields if field.name not in result)
            raise DecodeError(f"missing field `{missing.name}`")
        return result

    def _decode_sequence(self, items: list) -> dict:
        # serde also accepts a struct as the sequence of its fields.
        result = {}
        for index, field in enumerate(self.fields):
            if index < len(items):
                result[field.name] = field.type.decode(items[index])
            elif not field.defaulted:
                raise DecodeError(
                    f"invalid length {index}, expected {self.expecting} "
                    f"with {len(self.fields)} element{'s' if len(self.fields) != 1 else ''}"
                )
            else:
                result[field.name] = _copy_default(field.default)
        if len(items) > len(self.fields):
            raise DecodeError(
                f"invalid length {len(items)}, expected fewer elements in array"
            )
        return result


def _copy_default(default: Any) -> Any:
    if isinstance(default, (list, dict)):
        return type(default)()
    return default


class Unit(Type):
    expecting = "unit"

    def decode(self, value: Any) -> None:
        if value is not None:
            raise invalid_type(value, self.expecting)
        return None


class Custom(Type):
    """
    A string decoded by a function that raises L{DecodeError}.
    """

    expecting = "a string"

    def __init__(self, convert: Callable[[str], Any], expecting: str = "a string") -> None:
        self.convert = convert
        self.expecting = expecting

    def decode(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise invalid_type(value, self.expecting)
        return self.convert(value)


def decode_params(schema: Type, params: Any) -> Any:
    """
    Decode a request's params.

    As in the reference, params that fail to decode but are the empty object
    are tried once more as C{null}, so C{{}} works for methods without params.

    @raise DecodeError: with the text of the first failure.
    """
    try:
        return schema.decode(params)
    except DecodeError:
        if params == {}:
            try:
                return schema.decode(None)
            except DecodeError:
                pass
        raise
