"""
JSON text in and out, with the reference server's rules and messages.

The reference reads the first JSON value of a message with serde_json (with
arbitrary-precision numbers, so no number is ever out of range), rejecting
nesting deeper than 127 containers, more than L{MAX_VALUES} values and
duplicate object keys, each with serde_json's C{at line L column C}
position. Trailing characters are only reported after the envelope decoded.

Valid input goes through the standard library's C parser. When that refuses
the input, or the result breaks one of the rules above, L{_Diagnoser} walks
the bytes the way serde_json does and names the first problem with the
reference's wording and position. Its cost is bounded: long runs of digits,
whitespace and string characters are skipped by regular expressions, so are
runs of plain list elements and object members (a thousand at a time), and
a container the C parser accepts within a window of the text (up to 1 MiB)
is skipped whole, so only the path to the error is walked in Python (and
at most L{MAX_VALUES} values on it). A long message with the commas of many
values is walked before the C parser builds it: building millions of values
only to find more than L{MAX_VALUES} took seconds (60 MiB of C{1,}: 3.3 s,
now 0.12).

Integers longer than Python's integer-string limit become L{BigNumber}s
rather than errors: the reference reads numbers of any length.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

#: serde_json refuses to nest arrays/objects this deep.
RECURSION_LIMIT = 128

#: At most this many JSON values (scalars, arrays and objects; not keys).
MAX_VALUES = 256 * 1024
#: A long message with more commas than this is walked for the limits
#: before it is built (each comma may separate containers up to 127 deep).
_MANY_COMMAS = MAX_VALUES // RECURSION_LIMIT

_WHITESPACE = " \t\n\r"


class JsonSyntaxError(ValueError):
    """
    The first JSON value is not one the reference would accept.

    C{str(error)} is the reference's text, e.g.
    C{expected value at line 1 column 1}.
    """


class _DuplicateKey(Exception):
    pass


class BigNumber:
    """
    An integer too long to convert (Python refuses integer strings over
    C{sys.get_int_max_str_digits()} digits, and converting one costs
    quadratic time). No field takes one: wherever a number is expected it
    is out of range.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"BigNumber({len(self.text)} digits)"


#: Python's limit on the digits of an integer converted from a string.
_INT_DIGITS_LIMIT = sys.get_int_max_str_digits()


def _parse_int(text: str) -> int | BigNumber:
    if len(text.lstrip("-")) > _INT_DIGITS_LIMIT:
        return BigNumber(text)
    return int(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _pairs(pairs: list) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKey()
    return result


_decoder = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_pairs)
#: For the rare text with an integer over the limit: the hook costs a call
#: per integer, so it is only used once the plain decoder has refused.
_big_number_decoder = json.JSONDecoder(
    parse_constant=_reject_constant, object_pairs_hook=_pairs, parse_int=_parse_int,
)


def _raw_decode(text: str, start: int) -> tuple[Any, int]:
    try:
        return _decoder.raw_decode(text, start)
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise
    return _big_number_decoder.raw_decode(text, start)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class Document:
    """
    The first JSON value of a message, and what follows it.
    """

    def __init__(self, value: Any, text: str, end: int) -> None:
        self.value = value
        self._text = text
        self._end = end

    def trailing_error(self) -> str | None:
        """
        serde_json's error for anything but whitespace after the value.
        """
        rest = self._text[self._end:]
        stripped = rest.lstrip(_WHITESPACE)
        if not stripped:
            return None
        prefix = self._text[: len(self._text) - len(stripped)]
        index = len(prefix.encode("utf-8", "surrogateescape"))
        data = self._text.encode("utf-8", "surrogateescape")
        return f"trailing characters at {position(data, index + 1)}"


class NeedsDiagnosis(JsonSyntaxError):
    """
    The fast parser refused the first value; L{diagnose} finds the
    reference's text, which may take a while for a large message.
    """


def parse_document(data: bytes | str, diagnose_now: bool = True) -> Document:
    """
    Parse the first JSON value of a message.

    @param diagnose_now: when false, a value the fast parser refuses raises
        L{NeedsDiagnosis} instead of being diagnosed here.
    @raise JsonSyntaxError: with the reference's text.
    """
    if _may_break_the_value_limit(data):
        # Built by the C parser first, a message of millions of values
        # would cost seconds and its size in memory again and again before
        # the limit is found: the walk stops at the limit.
        if not diagnose_now:
            raise NeedsDiagnosis()
        detail = _Diagnoser(_as_bytes(data)).diagnose()
        if detail is not None:
            raise JsonSyntaxError(detail)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # serde_json checks UTF-8 only inside strings: bytes that are not
            # UTF-8 either break the first value or trail it.
            if not diagnose_now:
                raise NeedsDiagnosis() from None
            detail = _Diagnoser(data).diagnose()
            if detail is not None:
                raise JsonSyntaxError(detail) from None
            text = data.decode("utf-8", "surrogateescape")
    else:
        text = data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _raw_decode(text, start)
    except (ValueError, RecursionError, _DuplicateKey) as e:
        if not diagnose_now:
            raise NeedsDiagnosis() from None
        raise JsonSyntaxError(diagnose(text, getattr(e, "pos", None))) from None
    # A number at the top level may have been cut short where serde_json
    # reads on ("01", "1.").
    if (
        type(value) in (int, float, BigNumber)
        or ("\\u" in text and _SURROGATE_ESCAPE.search(text))
        or _exceeds_limits(text, value)
    ):
        if not diagnose_now:
            raise NeedsDiagnosis()
        detail = _Diagnoser(_as_bytes(text)).diagnose()
        if detail is not None:
            raise JsonSyntaxError(detail)
    return Document(value, text, end)


def _may_break_the_value_limit(data: bytes | str) -> bool:
    """
    Whether C{data} is long enough to hold more than L{MAX_VALUES} values
    and has the commas of many values. Few values of many bytes (a file's
    base64) do not.
    """
    if _too_short_for_the_value_limit(data):
        return False
    # Found one at a time (memchr) rather than all counted: a long string
    # has few, and the search stops at the first that makes many.
    comma = b"," if isinstance(data, bytes) else ","
    index = -1
    for _ in range(_MANY_COMMAS + 1):
        index = data.find(comma, index + 1)
        if index < 0:
            return False
    return True


def _too_short_for_the_value_limit(data: bytes | str) -> bool:
    """
    Whether C{data} is too short to hold more than L{MAX_VALUES} values:
    each takes two characters at the least, a digit and a comma.
    """
    return len(data) <= 2 * MAX_VALUES


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    return data


def loads(data: bytes | str) -> Any:
    """
    Parse a whole JSON text (the first value and nothing but whitespace).
    """
    document = parse_document(data)
    trailing = document.trailing_error()
    if trailing is not None:
        raise JsonSyntaxError(trailing)
    return document.value


def diagnose(data: bytes | str, refused_at: int | None = None) -> str:
    """
    The reference's text for the first problem of a message whose first
    value the fast parser refused (see L{NeedsDiagnosis}).

    @param refused_at: where the fast parser stopped, when it said.
    """
    if isinstance(data, str) and refused_at == len(data):
        # Refused at its end, it may be cut short inside containers.
        cut = _cut_inside_containers(data)
        if cut is not None:
            return cut
    # Both parsers follow RFC 8259; a disagreement would be a bug here, and
    # the peer still deserves an error rather than silence.
    return _Diagnoser(_as_bytes(data)).diagnose() or "invalid JSON"


#: A JSON string, its escapes included; one cut short runs to the end of
#: the text (so that no search starts again inside it, at a quote it
#: escapes: that would cost the square of its length).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")
_CLOSERS = {"[": "]", "{": "}"}
#: The longest text, and the most openers, looked at for a cut inside
#: containers: the brackets are matched one by one in Python (well under
#: 0.1 ms for this many). A text this short cannot break the limit of
#: values either.
_CUT_CHECK_CHARACTERS = 64 * 1024
_CUT_CHECK_OPENERS = 4 * RECURSION_LIMIT


def _cut_inside_containers(text: str) -> str | None:
    """
    serde_json's error for a value cut short where its open containers
    could have been closed (after an element, or inside a run of openers
    short of the recursion limit): "EOF while parsing" the innermost one,
    at the end. None for any other text, left to L{_Diagnoser}: the answer
    only holds once the C parser accepts the text with its closers added.
    The walk would go level by level in Python, about 5 us each.
    """
    if (len(text) > _CUT_CHECK_CHARACTERS or "\\u" in text
            or text.count("[") + text.count("{") > _CUT_CHECK_OPENERS):
        return None
    still_open = []
    for bracket in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if bracket in "[{":
            still_open.append(bracket)
            if len(still_open) == RECURSION_LIMIT:
                return None
        elif not still_open or _CLOSERS[still_open.pop()] != bracket:
            return None
    if not still_open:
        return None
    completed = text + "".join(_CLOSERS[bracket] for bracket in reversed(still_open))
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        _, end = _raw_decode(completed, start)
    except (ValueError, RecursionError, _DuplicateKey):
        return None
    if end != len(completed):
        return None
    container = "a list" if still_open[-1] == "[" else "an object"
    data = _as_bytes(text)
    return f"EOF while parsing {container} at {position(data, len(data))}"


def _exceeds_limits(text: str, value: Any) -> bool:
    """
    Whether C{value}, parsed from C{text}, nests too deep or has too many
    values. Either takes a long text: nesting too deep, a bracket (or a
    brace) per level; too many values, two characters each. A text too
    short for both (most messages) is not walked.
    """
    if (_too_short_for_the_value_limit(text)
            and text.count("[") + text.count("{") < RECURSION_LIMIT):
        return False
    return _count_values(value, 1, MAX_VALUES) is None


def _count_values(value: Any, depth: int, budget: int) -> int | None:
    """
    How many values C{value} is (itself included), when it nests at most
    to C{RECURSION_LIMIT - 1} from C{depth} and has at most C{budget}
    values; None otherwise.
    """
    count = 1
    if not isinstance(value, (list, dict)):
        return count
    if depth >= RECURSION_LIMIT:
        return None
    stack = [(value, depth)]
    while stack:
        container, level = stack.pop()
        children = container.values() if isinstance(container, dict) else container
        count += len(children)
        if count > budget:
            return None
        for child in children:
            if isinstance(child, (list, dict)):
                if level + 1 >= RECURSION_LIMIT:
                    return None
                stack.append((child, level + 1))
    return count


def dumps(value: Any) -> bytes:
    """
    Serialize compactly as UTF-8, as serde_json does.
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def position(data: bytes, index: int) -> str:
    """
    serde_json's C{line L column C} for a byte index: lines start at 1,
    columns count bytes since the last newline.
    """
    start = data.rfind(b"\n", 0, index) + 1
    line = 1 + data.count(b"\n", 0, start)
    return f"line {line} column {index - start}"


class _Found(Exception):
    pass


_WHITESPACE_RUN = re.compile(rb"[ \t\n\r]*")
_DIGIT_RUN = re.compile(rb"[0-9]*")
_STRING_RUN = re.compile(rb'[^"\\\x00-\x1f]*')
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_CLOSED = -1
#: One opener of a container as the parser steps into it: "[", or "{" with
#: a key of plain printable ASCII and its colon; and the whitespace after.
_OPENER = re.compile(rb'\[[ \t\n\r]*|\{[ \t\n\r]*"[ !#-\[\]-~]*"[ \t\n\r]*:[ \t\n\r]*')
#: The windows of text in which the diagnosis lets the C parser vouch for
#: a container, smallest first (each window costs a copy of itself).
_SKIP_WINDOWS = (4 * 1024, 64 * 1024, 1024 * 1024)
#: Up to L{_SCALAR_RUN_ITEMS} elements of a list that are numbers,
#: literals or strings of plain printable ASCII without a comma, each
#: followed by its comma: serde_json finds nothing in them but one value
#: each (none holds a comma of its own, so the commas count them).
_SCALAR_RUN_ITEMS = 1024
_PLAIN_CHARS = rb"[ !#-+\--\[\]-~]*"
_PLAIN_SCALAR = (rb"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null"
                 rb'|"' + _PLAIN_CHARS + rb'")')
_SEPARATOR = rb"[ \t\n\r]*,[ \t\n\r]*"
_SCALAR_RUN = re.compile(rb"(?:%s%s){1,%d}" % (_PLAIN_SCALAR, _SEPARATOR, _SCALAR_RUN_ITEMS))
#: The same for the members of an object, with plain keys; L{_MEMBER}
#: finds each member's key in such a run.
_MEMBER_TEMPLATE = rb'"%s"[ \t\n\r]*:[ \t\n\r]*' + _PLAIN_SCALAR + _SEPARATOR
_MEMBER = re.compile(_MEMBER_TEMPLATE % (b"(" + _PLAIN_CHARS + b")"))
_MEMBER_RUN = re.compile(rb"(?:%s){1,%d}" % (_MEMBER_TEMPLATE % _PLAIN_CHARS, _SCALAR_RUN_ITEMS))


class _Diagnoser:
    """
    Replays serde_json's parser over the first value of a message.

    It builds no values: it finds the first error the reference reports and
    the position it reports it at. An error "at" the current index and one
    "peeked" at the next byte differ by one column, and each branch below
    uses the same one serde_json does.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.index = 0
        self.depth = RECURSION_LIMIT
        self.values = 0
        #: The same text, when its byte and character indexes agree: then
        #: the C parser can vouch for whole containers.
        self.text = data.decode("ascii") if data.isascii() else None
        #: Bytes the C parser may still read in vain (containers it
        #: refuses): with this bound, the whole diagnosis costs a few
        #: passes of C over the message, plus the walk to the error.
        self.skip_budget = 2 * len(data)
        #: Where the last run of openers looked at ends (L{_refuse_deep_run}).
        self.run_end = 0

    def diagnose(self) -> str | None:
        try:
            self._value()
        except _Found as found:
            return str(found)
        return None

    def _error(self, message: str):
        raise _Found(f"{message} at {position(self.data, self.index)}")

    def _peek_error(self, message: str):
        raise _Found(f"{message} at {position(self.data, min(len(self.data), self.index + 1))}")

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
        if self.index < len(data) and data[self.index] in b" \t\n\r":
            self.index = _WHITESPACE_RUN.match(data, self.index).end()
        return self._peek()

    def _skip_valid_container(self) -> bool:
        """
        Step over the nested container starting here if the C parser accepts
        it and it keeps within the limits: serde_json would find nothing in
        it. (The outermost one is what the C parser refused to begin with.)
        """
        if self.text is None or self.depth == RECURSION_LIMIT or self.skip_budget <= 0:
            return False
        for window in _SKIP_WINDOWS:
            # The C parser reads a container to its end, however far: a
            # window of the text bounds what one that is too large costs.
            text = self.text[self.index:self.index + window]
            try:
                value, end = _raw_decode(text, 0)
                break
            except (ValueError, RecursionError, _DuplicateKey) as e:
                # Charge what it read (up to where it stopped, when it says).
                self.skip_budget -= getattr(e, "pos", len(text))
                if len(text) < window or self.skip_budget <= 0:
                    # The error is the container's own.
                    return False
        else:
            # Larger than the largest window (or cut short there): walked.
            return False
        end += self.index
        count = None
        if not ("\\u" in text[:end - self.index]
                and _SURROGATE_ESCAPE.search(self.text, self.index, end)):
            count = _count_values(value, RECURSION_LIMIT - self.depth + 1,
                                  MAX_VALUES - self.values + 1)
        if count is None:
            # Read in vain too: a container nested too deep is read again
            # at each level it is entered otherwise.
            self.skip_budget -= end - self.index
            return False
        self.values += count - 1
        self.index = end
        return True

    def _value(self) -> None:
        byte = self._skip_whitespace()
        if byte is None:
            self._peek_error("EOF while parsing a value")
        self.values += 1
        if self.values > MAX_VALUES:
            self._error(f"JSON-RPC message exceeds the limit of {MAX_VALUES} JSON values")
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
        elif byte in (ord("["), ord("{")):
            self._refuse_deep_run()
            if not self._skip_valid_container():
                self._enter()
                if byte == ord("["):
                    self._sequence()
                else:
                    self._object()
                self.depth += 1
        else:
            self._peek_error("expected value")

    def _refuse_deep_run(self) -> None:
        """
        Refuse a run of openers (from here) that reaches the recursion
        limit at the opener that reaches it, as the walk level by level
        would, without that walk: in Python it costs microseconds a level,
        and fuzzed messages nest hundreds of thousands deep. A run that
        ends first (or a message that reaches the limit of values first) is
        left to the walk; so is the rest of a run already looked at.
        """
        if self.index < self.run_end:
            return
        data = self.data
        depth, values, index = self.depth, self.values, self.index
        while (opener := _OPENER.match(data, index)) is not None:
            depth -= 1
            if depth == 0:
                self.index = index
                self._peek_error("recursion limit exceeded")
            index = opener.end()
            # The value the next opener would start.
            values += 1
            if values > MAX_VALUES:
                break
        self.run_end = index

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
        self.index = _DIGIT_RUN.match(self.data, start).end()
        return self.index - start

    def _number(self) -> None:
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

    def _string(self) -> bytes:
        """
        Check a string whose opening quote was consumed; return its raw
        bytes including both quotes.
        """
        data = self.data
        start = self.index - 1
        while True:
            self.index = _STRING_RUN.match(data, self.index).end()
            if self.index == len(data):
                self._error("EOF while parsing a string")
            byte = data[self.index]
            self.index += 1
            if byte == ord('"'):
                try:
                    data[start + 1 : self.index - 1].decode("utf-8")
                except UnicodeDecodeError:
                    self._error("invalid unicode code point")
                return data[start : self.index]
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

    def _item_start(self, first: bool, close: int, what: str) -> int | None:
        """
        Move to the next element or member of a container: the byte it
        starts with (None at the end of the input), or L{_CLOSED} once the
        container's closing bracket has been consumed.
        """
        byte = self._skip_whitespace()
        if byte == close:
            self.index += 1
            return _CLOSED
        if byte == ord(",") and not first:
            self.index += 1
            return self._skip_whitespace()
        if byte is None:
            self._peek_error(f"EOF while parsing {what}")
        if not first:
            self._peek_error(f"expected `,` or `{chr(close)}`")
        return byte

    def _sequence(self) -> None:
        first = True
        while (byte := self._item_start(first, ord("]"), "a list")) != _CLOSED:
            first = False
            if byte != ord("]") and byte is not None:
                byte = self._skip_scalar_run(byte)
            if byte == ord("]"):
                self._peek_error("trailing comma")
            if byte is None:
                self._peek_error("EOF while parsing a value")
            self._value()

    def _skip_scalar_run(self, byte: int) -> int | None:
        """
        Step over the run of plain elements (L{_SCALAR_RUN}) starting here,
        each with the comma after it, as long as their values keep within
        the limit; the byte the walk goes on from. A list of a million
        numbers is read a thousand at a time by a regular expression
        instead of one by one in Python (about 2.5 us each).
        """
        data = self.data
        # A run never passes the limit; the last values before it are
        # walked.
        while (MAX_VALUES - self.values >= _SCALAR_RUN_ITEMS
               and (run := _SCALAR_RUN.match(data, self.index)) is not None):
            self.values += data.count(b",", self.index, run.end())
            self.index = run.end()
            byte = self._peek()
        return byte

    def _skip_member_run(self, keys: set) -> int | None:
        """
        L{_skip_scalar_run} for the members of an object (L{_MEMBER_RUN}),
        up to a key that repeats one before it: the walk names it.
        """
        data = self.data
        while (MAX_VALUES - self.values >= _SCALAR_RUN_ITEMS
               and (run := _MEMBER_RUN.match(data, self.index)) is not None):
            for member in _MEMBER.finditer(data, self.index, run.end()):
                key = member.group(1).decode("ascii")
                if key in keys:
                    # The walk names it, from its start.
                    return self._peek()
                keys.add(key)
                self.values += 1
                self.index = member.end()
        return self._peek()

    def _object(self) -> None:
        first = True
        keys = set()
        while (byte := self._item_start(first, ord("}"), "an object")) != _CLOSED:
            first = False
            if byte == ord('"'):
                byte = self._skip_member_run(keys)
            if byte == ord('"'):
                self.index += 1
                key = json.loads(self._string())
                if key in keys:
                    self._error(f"duplicate JSON object key `{key}`")
                keys.add(key)
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
