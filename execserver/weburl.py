"""
URLs as the reference's client parses them: the WHATWG URL standard, as
implemented by the Rust C{url} crate, with that crate's error texts.

The reference answers C{http/request} with these texts (C{relative URL
without a base}, C{empty host}, C{invalid port number}, ...), serializes
URLs this way in its error messages, and sends the path and query encoded
this way, so we parse exactly as it does rather than with L{urllib.parse}.
Only what an HTTP client needs is here: absolute URLs of any scheme (so the
scheme check can name the scheme) and references relative to an http(s)
base (C{Location} headers).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, replace

import idna
from idna.core import check_bidi, valid_contextj

#: Schemes with an authority, a hierarchical path and (but file) a default port.
SPECIAL_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:")
_TAB_OR_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))


class URLError(ValueError):
    """
    The URL cannot be parsed; C{str()} is the C{url} crate's text.
    """


def _encode_set(extra: str) -> frozenset[int]:
    # Controls and everything beyond ASCII are always encoded.
    return frozenset(list(range(0x20)) + list(range(0x7F, 0x100)) + [ord(c) for c in extra])


_CONTROLS = _encode_set("")
_FRAGMENT = _encode_set(' "<>`')
_QUERY = _encode_set(' "#<>')
_SPECIAL_QUERY = _encode_set(" \"#<>'")
_PATH = _encode_set(' "#<>?`{}')
_USERINFO = _encode_set(' "#<>?`{}/:;=@[\\]^|')

#: Code points a host may never contain.
_FORBIDDEN_HOST = frozenset("\0\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = _FORBIDDEN_HOST | frozenset(chr(c) for c in range(0x20)) | {"%", "\x7f"}


def percent_encode(text: str, encode_set: frozenset[int]) -> str:
    if text.isascii() and not any(ord(c) in encode_set for c in text):
        return text
    return "".join(
        chr(byte) if byte not in encode_set else f"%{byte:02X}"
        for byte in text.encode("utf-8", "surrogatepass")
    )


def percent_decode(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    if b"%" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25 and _is_hex(data[i + 1:i + 3]):
            out.append(int(data[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


@dataclass(frozen=True)
class URL:
    """
    A parsed URL. Every component is already serialized (percent-encoded,
    host in ASCII); C{port} is C{None} when absent or the scheme's default.
    """

    scheme: str
    username: str = ""
    password: str = ""
    host: str | None = None
    port: int | None = None
    path: str = ""
    query: str | None = None
    fragment: str | None = None

    @property
    def special(self) -> bool:
        return self.scheme in SPECIAL_PORTS

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else SPECIAL_PORTS.get(self.scheme)

    @property
    def hostname(self) -> str:
        """
        The host to connect to: brackets removed from an IPv6 address.
        """
        host = self.host or ""
        return host[1:-1] if host.startswith("[") else host

    @property
    def authority(self) -> str:
        """
        C{host[:port]}, the port only when it is not the default.
        """
        return self.host + (f":{self.port}" if self.port is not None else "")

    @property
    def request_target(self) -> str:
        """
        What goes on the request line: path and query, never the fragment.
        """
        return self.path + ("?" + self.query if self.query is not None else "")

    def same_origin(self, other: "URL") -> bool:
        return (self.scheme, self.host, self.effective_port) == (
            other.scheme, other.host, other.effective_port)

    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"

    def without_credentials(self) -> "URL":
        return replace(self, username="", password="")

    def without_fragment(self) -> "URL":
        return replace(self, fragment=None)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.host is not None:
            out.append("//")
            if self.username or self.password:
                out.append(self.username)
                if self.password:
                    out += [":", self.password]
                out.append("@")
            out.append(self.authority)
        out.append(self.path)
        if self.query is not None:
            out += ["?", self.query]
        if self.fragment is not None:
            out += ["#", self.fragment]
        return "".join(out)


def parse(text: str, base: URL | None = None) -> URL:
    """
    Parse C{text}, resolving it against C{base} when it is relative.

    @raise URLError: with the C{url} crate's text.
    """
    text = text.strip(_C0_OR_SPACE).translate(_TAB_OR_NEWLINE)
    match = _SCHEME.match(text)
    if match is None:
        if base is None:
            raise URLError("relative URL without a base")
        return _relative(text, base)
    scheme = match.group()[:-1].lower()
    rest = text[match.end():]
    if scheme == "file":
        return _file(rest)
    if scheme in SPECIAL_PORTS:
        if base is not None and base.scheme == scheme and not rest.startswith("//"):
            return _relative(rest, base)
        return _authority(scheme, rest.lstrip("/\\"))
    if rest.startswith("//"):
        return _authority(scheme, rest[2:])
    if rest.startswith("/"):
        return _path_query_fragment(URL(scheme), rest, [])
    return _opaque(scheme, rest)


def _relative(rest: str, base: URL) -> URL:
    if rest[:1] in ("/", "\\"):
        if rest[1:2] in ("/", "\\"):
            return _authority(base.scheme, rest.lstrip("/\\"))
        return _path_query_fragment(_base_authority(base), rest, [])
    start = _base_authority(base)
    if rest == "" or rest[0] in "?#":
        kept = replace(start, path=base.path, query=base.query)
        if rest == "":
            return kept
        if rest[0] == "#":
            return replace(kept, fragment=percent_encode(rest[1:], _FRAGMENT))
        return _query_fragment(replace(kept, query=None), rest)
    segments = base.path.split("/")[1:-1]
    return _path_query_fragment(start, "/" + rest, segments)


def _base_authority(base: URL) -> URL:
    return URL(base.scheme, base.username, base.password, base.host, base.port)


def _authority(scheme: str, rest: str) -> URL:
    special = scheme in SPECIAL_PORTS
    end = _find_any(rest, "/\\?#" if special else "/?#")
    authority, remainder = rest[:end], rest[end:]
    username = password = ""
    at = authority.rfind("@")
    if at >= 0:
        userinfo, authority = authority[:at], authority[at + 1:]
        user, colon, secret = userinfo.partition(":")
        username = percent_encode(user, _USERINFO)
        password = percent_encode(secret, _USERINFO) if colon else ""
    host_text, port_text = _split_port(authority)
    if host_text == "" and (special or at >= 0 or port_text is not None):
        raise URLError("empty host")
    host = parse_host(host_text, special)
    port = _port(port_text, scheme)
    url = URL(scheme, username, password, host, port)
    return _path_query_fragment(url, remainder, [])


def _split_port(authority: str) -> tuple[str, str | None]:
    in_brackets = False
    for i, ch in enumerate(authority):
        if ch == "[":
            in_brackets = True
        elif ch == "]":
            in_brackets = False
        elif ch == ":" and not in_brackets:
            return authority[:i], authority[i + 1:]
    return authority, None


def _port(text: str | None, scheme: str) -> int | None:
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise URLError("invalid port number")
    port = int(text)
    if port > 65535:
        raise URLError("invalid port number")
    return None if port == SPECIAL_PORTS.get(scheme, -1) else port


def _find_any(text: str, stops: str) -> int:
    for i, ch in enumerate(text):
        if ch in stops:
            return i
    return len(text)


def _path_query_fragment(url: URL, rest: str, segments: list[str]) -> URL:
    """
    Parse the path (starting at C{rest}, which begins with a separator or
    is empty) onto C{segments}, then the query and fragment.
    """
    special = url.special
    end = _find_any(rest, "?#")
    path_text = rest[:end]
    if special:
        path_text = path_text.replace("\\", "/")
    if path_text.startswith("/"):
        path_text = path_text[1:]
    elif not special and url.host is not None and path_text == "":
        return _query_fragment(replace(url, path=""), rest[end:])
    pieces = path_text.split("/")
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        lowered = piece.lower()
        if lowered in ("..", ".%2e", "%2e.", "%2e%2e"):
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif lowered in (".", "%2e"):
            if last:
                segments.append("")
        else:
            segments.append(percent_encode(piece, _PATH))
    return _query_fragment(replace(url, path="/" + "/".join(segments)), rest[end:])


def _query_fragment(url: URL, rest: str) -> URL:
    query = fragment = None
    if rest.startswith("?"):
        hash_at = rest.find("#")
        query_text = rest[1:] if hash_at < 0 else rest[1:hash_at]
        query = percent_encode(query_text, _SPECIAL_QUERY if url.special else _QUERY)
        rest = "" if hash_at < 0 else rest[hash_at:]
    if rest.startswith("#"):
        fragment = percent_encode(rest[1:], _FRAGMENT)
    return replace(url, query=query, fragment=fragment)


def _opaque(scheme: str, rest: str) -> URL:
    end = _find_any(rest, "?#")
    url = URL(scheme, path=percent_encode(rest[:end], _CONTROLS))
    return _query_fragment(url, rest[end:])


def _file(rest: str) -> URL:
    rest = rest.replace("\\", "/")
    if rest.startswith("//"):
        end = _find_any(rest[2:], "/?#") + 2
        host_text = rest[2:end]
        host = "" if host_text in ("", "localhost") else parse_host(host_text, True)
        return _path_query_fragment(URL("file", host=host), rest[end:], [])
    return _path_query_fragment(URL("file", host=""), rest if rest.startswith("/") else "/" + rest, [])


# Hosts


def parse_host(text: str, special: bool = True) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise URLError("invalid IPv6 address")
        return f"[{_ipv6(text[1:-1])}]"
    if not special:
        if any(ch in _FORBIDDEN_HOST for ch in text):
            raise URLError("invalid domain character")
        return percent_encode(text, _CONTROLS)
    domain = percent_decode(text).decode("utf-8", "replace")
    ascii_domain = domain_to_ascii(domain)
    if _ends_in_number(ascii_domain):
        return _ipv4(ascii_domain)
    return ascii_domain


def _ipv6(text: str) -> str:
    if not text or "%" in text or not all(ch in "0123456789abcdefABCDEF:." for ch in text):
        raise URLError("invalid IPv6 address")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise URLError("invalid IPv6 address") from None


def _ends_in_number(domain: str) -> bool:
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return _ipv4_number(last) is not None and last[:2].lower() == "0x"


def _ipv4_number(text: str) -> int | None:
    if text == "":
        return None
    radix = 10
    if text[:2].lower() == "0x":
        radix, text = 16, text[2:]
    elif len(text) >= 2 and text[0] == "0":
        radix, text = 8, text[1:]
    if text == "":
        return 0
    digits = "0123456789abcdef"[:radix]
    if not all(ch in digits for ch in text.lower()):
        return None
    return int(text, radix)


def _ipv4(domain: str) -> str:
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        raise URLError("invalid IPv4 address")
    numbers = [_ipv4_number(part) for part in parts]
    if None in numbers or any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise URLError("invalid IPv4 address")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number * 256 ** (3 - index)
    return str(ipaddress.IPv4Address(value))


def domain_to_ascii(domain: str) -> str:
    """
    UTS #46 ToASCII as URLs use it: non-transitional, no STD3 rules, no
    hyphen or length checks; then no forbidden code point may remain.
    """
    problem = URLError("invalid international domain name")
    try:
        if domain.isascii():
            mapped = domain.lower()
        else:
            mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        labels = mapped.split(".")
        unicode_labels = [_to_unicode_label(label) for label in labels]
        if any(_is_rtl(label) for label in unicode_labels):
            for label in unicode_labels:
                if label:
                    check_bidi(label)
        result = ".".join(_to_ascii_label(label, original)
                          for label, original in zip(unicode_labels, labels))
    except (idna.IDNAError, UnicodeError, IndexError):
        raise problem from None
    if any(ch in _FORBIDDEN_DOMAIN for ch in result) or result == "":
        raise problem
    return result


def _to_unicode_label(label: str) -> str:
    if label.startswith("xn--"):
        decoded = label[4:].encode("ascii").decode("punycode")
        if not decoded or decoded.isascii():
            raise idna.IDNAError("empty or ASCII punycode label")
        if idna.uts46_remap(decoded, std3_rules=False, transitional=False) != decoded:
            raise idna.IDNAError("punycode label is not valid")
        _check_label(decoded)
        return decoded
    if not label.isascii():
        _check_label(label)
    return label


def _check_label(label: str) -> None:
    if unicodedata.normalize("NFC", label) != label:
        raise idna.IDNAError("not NFC")
    if label.startswith("xn--") or unicodedata.category(label[0]).startswith("M"):
        raise idna.IDNAError("bad label start")
    for pos, ch in enumerate(label):
        if ch in "\u200c\u200d" and not valid_contextj(label, pos):
            raise idna.IDNAError("joiner out of context")


def _to_ascii_label(label: str, original: str) -> str:
    if original.startswith("xn--") or label.isascii():
        return original
    return "xn--" + label.encode("punycode").decode("ascii")


def _is_rtl(label: str) -> bool:
    return any(unicodedata.bidirectional(ch) in ("R", "AL", "AN") for ch in label)
