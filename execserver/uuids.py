"""
UUID strings as the reference reads them (the Rust uuid crate's
C{Uuid::parse_str}): simple, hyphenated, braced or C{urn:uuid:} forms, and
the crate's error texts for everything else.
"""

from __future__ import annotations

from execserver.params import DecodeError

_URN_PREFIX = "urn:uuid:"
#: Where each group of a hyphenated UUID starts.
_GROUP_STARTS = (0, 9, 14, 19, 24)
_GROUP_LENGTHS = (8, 4, 4, 4, 12)
_HEX = frozenset("0123456789abcdefABCDEF")


def parse(text: str) -> str:
    """
    The canonical (lowercase, hyphenated) spelling of a UUID.

    @raise DecodeError: with the uuid crate's text, e.g.
        C{invalid group count: expected 5, found 2}.
    """
    size = len(text.encode("utf-8"))
    if size == 32:
        digits = _simple(text)
    elif size == 36:
        digits = _hyphenated(text)
    elif size == 38 and text.startswith("{") and text.endswith("}"):
        digits = _hyphenated(text[1:-1])
    elif size == 45 and text.startswith(_URN_PREFIX):
        digits = _hyphenated(text[len(_URN_PREFIX):])
    else:
        digits = None
    if digits is None:
        raise DecodeError(_problem(text))
    return "-".join(digits[start:start + length] for start, length in
                    zip((0, 8, 12, 16, 20), _GROUP_LENGTHS)).lower()


def _simple(text: str) -> str | None:
    return text if all(char in _HEX for char in text) else None


def _hyphenated(text: str) -> str | None:
    if len(text) != 36 or any(text[start - 1] != "-" for start in _GROUP_STARTS[1:]):
        return None
    return _simple(text.replace("-", ""))


def _problem(text: str) -> str:
    raw = text.encode("utf-8")
    if text.startswith("{") and text.endswith("}") and len(text) >= 2:
        body, offset, simple = text[1:-1], 1, False
    elif text.startswith(_URN_PREFIX):
        body, offset, simple = text[len(_URN_PREFIX):], len(_URN_PREFIX), False
    else:
        body, offset, simple = text, 0, True
    hyphens = []
    index = 0
    for char in body:
        if char == "-":
            hyphens.append(index)
        elif char not in _HEX:
            return ("invalid character: expected an optional prefix of `urn:uuid:` "
                    f"followed by [0-9a-fA-F-], found `{char}` at {index + offset + 1}")
        index += len(char.encode("utf-8"))
    if not hyphens and simple:
        return f"invalid length: expected length 32 for simple format, found {len(raw)}"
    if len(hyphens) != 4:
        return f"invalid group count: expected 5, found {len(hyphens) + 1}"
    for group in range(4):
        if hyphens[group] != _GROUP_STARTS[group + 1] - 1:
            found = hyphens[group] - _GROUP_STARTS[group]
            return (f"invalid group length in group {group}: "
                    f"expected {_GROUP_LENGTHS[group]}, found {found}")
    return f"invalid group length in group 4: expected 12, found {len(raw) - _GROUP_STARTS[4]}"
