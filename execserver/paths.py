"""
C{file:} URIs on the wire, host paths inside.

Every path in the protocol is an absolute C{file:} URI. This module is the
one place that converts between those URIs and this host's paths (bytes, so
that names which are not UTF-8 survive the round trip).

The reference parses URIs with the Rust C{url} crate (the WHATWG URL
standard) and then applies its own C{PathUri} rules, so we do the same, step
by step, and give its error texts:

    parse_uri("file://localhost/tmp/a%20b/../c")  ->  "file:///tmp/c"
    to_host_path("file:///tmp/a%2Fb")             ->  b"/tmp/a/b"
    from_host_path(b"/tmp/a b")                   ->  "file:///tmp/a%20b"

Parsing accepts a URI that names no path on this host (a Windows drive, a
UNC host, the fallback form C{file:///%00/bad/path/<base64>}); only the
conversion to a host path refuses it, with L{ForeignPathError}.
"""

from __future__ import annotations

import base64
import re
import sys
import urllib.parse


from execserver import weburl
from execserver.params import DecodeError

#: How the reference names this host's operating system in its errors.
HOST_OS = "linux" if sys.platform.startswith("linux") else sys.platform

#: The prefix of a URI for a path that has no URI spelling.
FALLBACK_PREFIX = "file:///%00/bad/path/"

_SPECIAL_SCHEMES = frozenset(("http", "https", "ws", "wss", "ftp"))
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")

#: What the URL parser percent-encodes in a path: controls, non-ASCII and
#: these (WHATWG's path percent-encode set).
_PATH_ENCODED = frozenset(' "#<>`?{}')

#: What stays literal when a name becomes one path segment of a URI we
#: produce (the url crate's special-path-segment set encodes the rest of
#: the printable ASCII: space " # % / < > ? ` { } \).
_SEGMENT_SAFE = "!$&'()*+,;=:@[]^|"

_DOUBLE_DOT = frozenset(("..", ".%2e", ".%2E", "%2e.", "%2E.", "%2e%2e", "%2e%2E", "%2E%2e", "%2E%2E"))
_SINGLE_DOT = frozenset((".", "%2e", "%2E"))

_LITERAL_SEGMENT = re.compile(rb"[A-Za-z0-9!$&'()*+,;=:@\[\]^|~._-]+")
#: Names joined by slashes (which no name contains), each of them literal.
_LITERAL_SEGMENTS = re.compile(rb"[A-Za-z0-9!$&'()*+,;=:@\[\]^|~._/-]*")

_DRIVE = re.compile(r"/([A-Za-z])(:|%3[aA])(/|$)")

#: A URI that is its own canonical spelling, as nearly every one a client
#: sends is: C{file:///}, then segments of plain characters, none empty
#: (but after a final slash), none a dot segment, no drive letter (no colon
#: or bar at all), nothing encoded. Parsing it step by step (about 17 us
#: for a path of 40 characters) would give it back unchanged.
_CANONICAL_PLAIN = re.compile(
    r"file:///(?:(?!\.\.?(?:/|\Z))[A-Za-z0-9_.~+,=@-]+/)*(?:(?!\.\.?\Z)[A-Za-z0-9_.~+,=@-]+)?")
_FALLBACK_PAYLOAD = re.compile(r"[A-Za-z0-9_-]+")


class ForeignPathError(ValueError):
    """
    A valid C{file:} URI that names no path on this host: it has a host
    (UNC), starts with a Windows drive, or is the fallback form.

    C{str(error)} is the reference's text, C{'file:///C:/x' is invalid on 'linux'}.
    """

    def __init__(self, uri: str) -> None:
        super().__init__(f"'{uri}' is invalid on '{HOST_OS}'")
        self.uri = uri


class _UrlError(Exception):
    """
    The url crate's parse error; its text follows C{invalid URI: }.
    """


# Parsing


def parse_uri(text: str) -> str:
    """
    Check that C{text} is an absolute C{file:} URI and return its canonical
    spelling, as the reference's C{PathUri} does when it decodes params.

    @raise DecodeError: with the reference's text, e.g.
        C{invalid URI: relative URL without a base} or
        C{unsupported path URI scheme `http`}.
    """
    if _CANONICAL_PLAIN.fullmatch(text):
        return text
    return _parse_uri_in_full(text)


def _parse_uri_in_full(text: str) -> str:
    """L{parse_uri} step by step, for any text."""
    text = text.strip(_C0_AND_SPACE)
    try:
        scheme, position = _scheme(text)
        if scheme != "file":
            _check_other_scheme(scheme, text[position:].translate(_TAB_OR_NEWLINE))
            raise DecodeError(f"unsupported path URI scheme `{scheme}`")
        serialized, position = _parse_file(text, position)
    except _UrlError as e:
        raise DecodeError(f"invalid URI: {e}") from None
    tail, _ = _next(text, position)
    if tail == "?":
        raise DecodeError("query parameters are not allowed in path URIs")
    if tail == "#":
        raise DecodeError("fragments are not allowed in path URIs")
    if b"\0" in urllib.parse.unquote_to_bytes(_path_of(serialized)) and not _is_fallback(serialized):
        raise DecodeError(str(ForeignPathError(serialized)))
    return _uppercase_drive(serialized)


def _next(text: str, position: int) -> tuple[str | None, int]:
    """
    The next character at or after C{position} and the position after it;
    the URL parser skips TAB, LF and CR wherever it reads one at a time.
    """
    while position < len(text):
        char = text[position]
        position += 1
        if char not in "\t\n\r":
            return char, position
    return None, position


def _scheme(text: str) -> tuple[str, int]:
    match = _SCHEME.match(text.translate(_TAB_OR_NEWLINE))
    if match is None:
        raise _UrlError("relative URL without a base")
    scheme = match.group()[:-1].lower()
    position = 0
    for _ in range(len(scheme) + 1):
        _, position = _next(text, position)
    return scheme, position


def _path_of(serialized: str) -> str:
    # Canonical file URIs are "file://" + host + path, the path starting at
    # the first slash after the host.
    return serialized[serialized.index("/", 7):]


def _uppercase_drive(serialized: str) -> str:
    if not serialized.startswith("file:///"):
        return serialized
    match = _DRIVE.match(serialized, 7)
    if match is None:
        return serialized
    return serialized[:8] + match.group(1).upper() + serialized[9:]


def _is_fallback(serialized: str) -> bool:
    if not serialized.startswith(FALLBACK_PREFIX):
        return False
    payload = serialized[len(FALLBACK_PREFIX):]
    if not _FALLBACK_PAYLOAD.fullmatch(payload) or len(payload) % 4 == 1:
        return False
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == payload


# The file scheme, ported from the url crate's parser so that every quirk of
# the reference (which slashes make a drive letter, how dot segments meet
# drive letters, where the host ends, where TAB/LF/CR split a segment) is the
# same here. Positions index the trimmed input text.


def _parse_file(text: str, position: int) -> tuple[str, int]:
    """
    The serialization of a C{file:} URL up to its query or fragment, and
    the position where the rest (if any) starts.
    """
    first, after_first = _next(text, position)
    if first in ("/", "\\"):
        second, after_second = _next(text, after_first)
        if second in ("/", "\\"):
            return _parse_file_host(text, after_second)
        return _parse_path("file://", 7, text, position)[:2]
    return _parse_path("file:///", 7, text, position)[:2]


def _parse_file_host(text: str, position: int) -> tuple[str, int]:
    host_chars = []
    remaining = position
    scan = position
    while scan < len(text):
        char = text[scan]
        if char in "/\\?#":
            break
        scan += 1
        if char not in "\t\n\r":
            host_chars.append(char)
            remaining = scan
    host_text = "".join(host_chars)
    if _is_windows_drive_letter(host_text):
        host, remaining = "", position
    else:
        host = _parse_host(host_text) if host_text else ""
        if host == "localhost":
            host = ""
    serialization = "file://" + host
    if host:
        serialization, remaining, has_host = _parse_path_start(serialization, text, remaining)
    else:
        serialization, remaining, has_host = _parse_path(serialization + "/", 7, text, remaining)
    if not has_host and host:
        # A drive letter after a host: the url crate drops the host.
        serialization = "file://" + serialization[7 + len(host):]
    return serialization, remaining


def _parse_path_start(serialization: str, text: str, position: int) -> tuple[str, int, bool]:
    path_start = len(serialization)
    first, after_first = _next(text, position)
    if not serialization.endswith("/"):
        serialization += "/"
        if first in ("/", "\\"):
            return _parse_path(serialization, path_start, text, after_first, has_host=True)
    return _parse_path(serialization, path_start, text, position, has_host=True)


def _parse_path(serialization: str, path_start: int, text: str, position: int,
                has_host: bool = False) -> tuple[str, int, bool]:
    """
    The url crate's path state. It copies runs of characters in bulk and
    looks at what it has copied so far, so a TAB, LF or CR (which ends a
    run) can change the outcome: C{file:C:\\tx} is a drive, C{file:C:x} is
    not.
    """
    s = serialization
    while True:
        segment_start = len(s)
        ends_with_slash = False
        pending = position
        while True:
            before = position
            if position >= len(text):
                s += _encode_path(text[pending:position])
                break
            char = text[position]
            position += 1
            if char in "\t\n\r":
                s += _encode_path(text[pending:before])
                pending = position
            elif char == "/" or char == "\\":
                s += _encode_path(text[pending:before]) + "/"
                ends_with_slash = True
                break
            elif char == "?" or char == "#":
                s += _encode_path(text[pending:before])
                position = before
                break
            elif len(s) > path_start and _is_normalized_drive_letter(s[path_start + 1:]):
                s += _encode_path(text[pending:before]) + "/"
                pending = before
                segment_start += 1
        segment = s[segment_start:len(s) - 1] if ends_with_slash else s[segment_start:]
        if segment in _DOUBLE_DOT:
            s = s[:segment_start]
            if s.endswith("/") and _last_slash_can_be_removed(s, path_start):
                s = s[:-1]
            s = _shorten_path(s, path_start)
            if ends_with_slash and not s.endswith("/"):
                s += "/"
        elif segment in _SINGLE_DOT:
            s = s[:segment_start]
            if not s.endswith("/"):
                s += "/"
        elif segment_start == path_start + 1 and _is_windows_drive_letter(segment):
            s = s[:segment_start] + segment[0] + ":" + ("/" if ends_with_slash else "")
            has_host = False
        if not ends_with_slash:
            break
    # A file URL's path never starts with an empty segment.
    s = s[:path_start] + "/" + s[path_start:].lstrip("/")
    return s, position, has_host


def _encode_path(text: str) -> str:
    if text.isascii() and not any(char in _PATH_ENCODED or char < " " or char == "\x7f"
                                  for char in text):
        return text
    return "".join(map(_encode_path_char, text))


def _encode_path_char(char: str) -> str:
    if char in _PATH_ENCODED or char < " " or char == "\x7f":
        return f"%{ord(char):02X}"
    if char > "\x7f":
        return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return char


def _starts_with_drive_letter(text: str) -> bool:
    return (
        len(text) >= 2
        and text[0].isascii() and text[0].isalpha()
        and text[1] in ":|"
        and (len(text) == 2 or text[2] in "/\\?#")
    )


def _is_windows_drive_letter(text: str) -> bool:
    return len(text.encode("utf-8")) == 2 and _starts_with_drive_letter(text)


def _is_normalized_drive_letter(text: str) -> bool:
    return _is_windows_drive_letter(text) and text[1] == ":"


def _last_slash_can_be_removed(s: str, path_start: int) -> bool:
    before = s[:-1].rfind("/")
    return (
        before >= path_start
        and not (s[before] in "/\\?#" and _starts_with_drive_letter(s[before + 1:]))
    )


def _shorten_path(s: str, path_start: int) -> str:
    if len(s) == path_start or _is_normalized_drive_letter(s[path_start:]):
        return s
    segment_start = path_start + s[path_start:].rfind("/") + 1
    if _is_normalized_drive_letter(s[segment_start:]):
        return s
    return s[:segment_start]


# Hosts


def _parse_host(text: str) -> str:
    """
    A special URL's host, serialized; the one WHATWG host parser is the
    HTTP client's.
    """
    try:
        host = weburl.parse_host(text)
    except weburl.URLError as e:
        raise _UrlError(str(e)) from None
    if not host:
        raise _UrlError("empty host")
    return host


def _check_other_scheme(scheme: str, rest: str) -> None:
    """
    Raise the url crate's error, if any, for a URL of another scheme: the
    reference reports it before it looks at the scheme.
    """
    special = scheme in _SPECIAL_SCHEMES
    if special:
        rest = rest.lstrip("/\\")
    elif rest.startswith("//"):
        rest = rest[2:]
    else:
        return
    terminators = "/?#\\" if special else "/?#"
    end = len(rest)
    for index, char in enumerate(rest):
        if char in terminators:
            end = index
            break
    at = rest.rfind("@", 0, end)
    has_userinfo = False
    if at >= 0:
        if at == 0 and rest[1:2] and rest[1] in terminators:
            raise _UrlError("empty host")
        username, _, password = rest[:at].partition(":")
        has_userinfo = bool(username or password)
        rest = rest[at + 1:]
    end = len(rest)
    in_brackets = False
    for index, char in enumerate(rest):
        if char == ":" and not in_brackets or char in terminators:
            end = index
            break
        if char == "[":
            in_brackets = True
        elif char == "]":
            in_brackets = False
    host, rest = rest[:end], rest[end:]
    if special:
        if not host:
            raise _UrlError("empty host")
        _parse_host(host)
    else:
        _parse_opaque_host(host)
        if not host and (rest.startswith(":") or has_userinfo):
            raise _UrlError("empty host")
    if rest.startswith(":"):
        digits = ""
        for char in rest[1:]:
            if char.isascii() and char.isdigit():
                digits += char
                if int(digits) > 65535:
                    raise _UrlError("invalid port number")
            elif char in "/\\?#":
                break
            else:
                raise _UrlError("invalid port number")


def _parse_opaque_host(text: str) -> None:
    try:
        weburl.parse_host(text, special=False)
    except weburl.URLError as e:
        raise _UrlError(str(e)) from None


# Conversions


def to_host_path(uri: str) -> bytes:
    """
    The host path a canonical C{file:} URI (from L{parse_uri}) names:
    percent-decoded (C{%2F} is a separator too) and lexically normalized.

    @raise ForeignPathError: if the URI names no path on this host.
    """
    if not uri.startswith("file:///") or uri.startswith(FALLBACK_PREFIX) or _DRIVE.match(uri, 7):
        raise ForeignPathError(uri)
    return normalize(urllib.parse.unquote_to_bytes(uri[7:]))


def normalize(path: bytes) -> bytes:
    """
    An absolute path without empty, C{.} and C{..} components.
    """
    parts: list[bytes] = []
    for part in path.split(b"/"):
        if part == b"" or part == b".":
            continue
        if part == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return b"/" + b"/".join(parts)


def from_host_path(path: bytes | str) -> str:
    """
    The C{file:} URI of an absolute host path, spelled as the reference
    spells the URIs it produces.
    """
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    parts = [part for part in path.split(b"/") if part and part != b"."]
    if not parts:
        return "file:///"
    return "file://" + "".join(
        "/" + urllib.parse.quote_from_bytes(part, _SEGMENT_SAFE) for part in parts
    )


def child_uri(parent: str, name: bytes) -> str:
    """
    The URI of entry C{name} of the directory C{parent}, built as the
    reference builds walk entries: the parent's own spelling (one trailing
    slash absorbed) plus the name pushed as a URL path segment.

    The name goes through a lossy UTF-8 conversion and the URL parser, which
    drops TAB, LF and CR. For such names the URI does not name the entry;
    the reference does the same.
    """
    if name.isascii() and b"\t" not in name and b"\n" not in name and b"\r" not in name:
        segment = name
    else:
        segment = name.decode("utf-8", "replace").translate(_TAB_OR_NEWLINE).encode("utf-8")
    base = parent[:-1] if parent.endswith("/") else parent
    if base == "file://":
        # Directly under the root a name can look like a drive letter; let
        # the parser decide, as the url crate does.
        text = segment.decode("utf-8")
        text = (text.replace("%", "%25").replace("\\", "%5C").replace("/", "%2F")
                .replace("?", "%3F").replace("#", "%23"))
        return _parse_path("file:///", 7, text, 0)[0]
    return base + "/" + urllib.parse.quote_from_bytes(segment, _SEGMENT_SAFE)


def literal_segment(name: bytes) -> str | None:
    """
    C{name} as a URI path segment if it needs no encoding at all (the
    common case, which L{child_uri} would spell the same way).
    """
    if _LITERAL_SEGMENT.fullmatch(name) is None:
        return None
    return name.decode("ascii")


def literal_segments(names: list[bytes]) -> list[str] | None:
    """
    L{literal_segment} of a directory's names (none empty, none with a
    slash) in one pass, or None if any of them needs encoding.
    """
    joined = b"/".join(names)
    if _LITERAL_SEGMENTS.fullmatch(joined) is None:
        return None
    return joined.decode("ascii").split("/")


def names_host_path(name: bytes) -> bool:
    """
    Whether L{child_uri} of C{name} names that very entry.
    """
    if b"\t" in name or b"\n" in name or b"\r" in name:
        return False
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def display(path: bytes) -> str:
    """
    A host path in an error message, lossy as Rust's C{Path::display}.
    """
    return path.decode("utf-8", "replace")
