"""
C{file:} URIs on the wire, host paths inside.

Every path in the protocol is an absolute C{file:} URI. This module is the
one place that converts between those URIs and this host's paths (bytes, so
that names which are not UTF-8 survive the round trip).
"""

from __future__ import annotations

import re
import urllib.parse

from execserver.params import DecodeError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")

#: Bytes that stay literal in a path we send (WHATWG's path percent-encode
#: set leaves everything else printable alone).
_PATH_SAFE = b"!$&'()*+,-./0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz|~%\\"


def parse_uri(text: str) -> str:
    """
    Check that C{text} is an absolute C{file:} URI and return its canonical
    spelling.

    @raise DecodeError: with the reference's text.
    """
    match = _SCHEME.match(text)
    if match is None:
        raise DecodeError("invalid URI: relative URL without a base")
    scheme = match.group(1).lower()
    if scheme != "file":
        raise DecodeError(f"unsupported path URI scheme `{scheme}`")
    rest = text[match.end():]
    if rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        if authority.lower() == "localhost":
            authority = ""
        if authority:
            raise DecodeError(f"unsupported path URI host `{authority}`")
        path = "/" + path
    else:
        path = rest
    return "file://" + path


def to_host_path(uri: str) -> bytes:
    """
    The host path a canonical C{file:} URI names.
    """
    return urllib.parse.unquote_to_bytes(uri[len("file://"):])


def from_host_path(path: bytes | str) -> str:
    """
    The C{file:} URI of an absolute host path.
    """
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    return "file://" + urllib.parse.quote_from_bytes(path, safe=_PATH_SAFE)
