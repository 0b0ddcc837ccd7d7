"""
HTTP/1.1, client side, byte for byte as the reference's client (hyper)
writes and reads it.

twisted.web's client cannot be made to do this: it title-cases header
names, puts C{Content-Length} first, and hides C{Content-Length},
C{Connection} and the other framing headers of a response. Here requests go
out exactly as built and every response header comes back in order.

A L{ClientConnection} carries one exchange at a time: a request written in
one go, then a response read as it arrives. A response body goes to a
consumer in pieces, one batch per network read, and the consumer can pause
the socket.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

#: hyper's read buffer limit: a response head larger than this is an error.
MAX_HEAD_BYTES = 8192 + 4096 * 100

#: hyper's limit on the number of headers in a response head.
MAX_HEADERS = 100

#: Hex digits of a chunk size beyond which the size overflows 64 bits.
MAX_CHUNK_SIZE_DIGITS = 16

#: Bytes asked of the socket per read. Twisted's default is 64 KiB; hyper
#: grows its reads to about half a MiB, and larger reads mean fewer,
#: larger body deltas.
READ_BUFFER_BYTES = 512 * 1024

#: Statuses that never have a body.
_NO_BODY_STATUSES = (204, 304)

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: The message every body failure turns into.
BODY_ERROR = "error decoding response body"


def is_token(data: bytes) -> bool:
    """
    An HTTP token (method, header name): non-empty, only tchar.
    """
    return bool(data) and all(byte in _TOKEN for byte in data)


def is_header_value(data: bytes) -> bool:
    """
    What hyper accepts in a header value: TAB and every byte from SP
    up, except DEL.
    """
    return all(byte == 0x09 or (byte >= 0x20 and byte != 0x7F) for byte in data)


class HeaderMap:
    """
    An ordered multimap with the semantics of Rust's C{http::HeaderMap}:
    names are lower-case, all values of a name sit together at the place
    the name first appeared, and removing a name moves the last name into
    its place. The reference sends and reports headers in this order, so
    we keep the same quirks.
    """

    def __init__(self, pairs: list[tuple[bytes, bytes]] = ()) -> None:
        self._entries: list[tuple[bytes, list[bytes]]] = []
        for name, value in pairs:
            self.append(name, value)

    def _find(self, name: bytes) -> int:
        for index, (entry_name, _) in enumerate(self._entries):
            if entry_name == name:
                return index
        return -1

    def __contains__(self, name: bytes) -> bool:
        return self._find(name) >= 0

    def __len__(self) -> int:
        return sum(len(values) for _, values in self._entries)

    def get(self, name: bytes) -> bytes | None:
        index = self._find(name)
        return self._entries[index][1][0] if index >= 0 else None

    def get_all(self, name: bytes) -> list[bytes]:
        index = self._find(name)
        return list(self._entries[index][1]) if index >= 0 else []

    def append(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        index = self._find(name)
        if index >= 0:
            self._entries[index][1].append(value)
        else:
            self._entries.append((name, [value]))

    def insert(self, name: bytes, value: bytes) -> None:
        """
        Replace every value of C{name} with C{value}, in place.
        """
        name = name.lower()
        index = self._find(name)
        if index >= 0:
            self._entries[index] = (name, [value])
        else:
            self._entries.append((name, [value]))

    def replace_from(self, other: "HeaderMap") -> None:
        """
        Give each name of C{other} exactly C{other}'s values: in place
        where the name is already here, else at the end.
        """
        for name, values in other._entries:
            index = self._find(name)
            if index >= 0:
                self._entries[index] = (name, list(values))
            else:
                self._entries.append((name, list(values)))

    def set_all(self, name: bytes, values: list[bytes]) -> None:
        """
        Replace every value of C{name} with C{values}, in place.
        """
        name = name.lower()
        index = self._find(name)
        self._entries[index] = (name, list(values))

    def remove(self, name: bytes) -> None:
        index = self._find(name.lower())
        if index < 0:
            return
        last = self._entries.pop()
        if index < len(self._entries):
            self._entries[index] = last

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for name, values in self._entries:
            for value in values:
                yield name, value

    def copy(self) -> "HeaderMap":
        copied = HeaderMap()
        copied._entries = [(name, list(values)) for name, values in self._entries]
        return copied

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HeaderMap) and list(self.items()) == list(other.items())

    def __repr__(self) -> str:
        return f"HeaderMap({list(self.items())!r})"


def encode_head(start_line: bytes, headers: HeaderMap) -> bytes:
    parts = [start_line, b"\r\n"]
    for name, value in headers.items():
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def content_length(headers: HeaderMap) -> int | None:
    """
    The one length all C{content-length} values agree on, else C{None}.
    """
    lengths = set()
    for value in headers.get_all(b"content-length"):
        for part in value.split(b","):
            part = part.strip(b" \t")
            if not part.isdigit() or len(part) > 20:
                return None
            lengths.add(int(part))
    if len(lengths) != 1:
        return None
    (length,) = lengths
    return length if length < 2**64 else None


def _last_coding_is_chunked(values: list[bytes]) -> bool:
    return bool(values) and values[-1].split(b",")[-1].strip(b" \t").lower() == b"chunked"


def frame_request_body(headers: HeaderMap, body: bytes) -> tuple[bytes, bool]:
    """
    Decide how the body goes out, fixing the framing headers as hyper does;
    the client's own framing headers are respected.

    @return: the bytes to write after the head, and whether the server will
        read exactly those (a declared length longer than the body leaves
        the server waiting, and the connection must not be reused).
    """
    declared = content_length(headers)
    if not body:
        headers.remove(b"transfer-encoding")
        return b"", not declared
    if b"transfer-encoding" in headers:
        codings = headers.get_all(b"transfer-encoding")
        if not _last_coding_is_chunked(codings):
            headers.set_all(b"transfer-encoding", codings[:-1] + [codings[-1] + b", chunked"])
        if declared is not None:
            headers.remove(b"content-length")
        return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body), True
    if declared is not None:
        return body[:declared], declared <= len(body)
    headers.insert(b"content-length", b"%d" % len(body))
    return body, True


class ResponseHead:
    def __init__(self, version: int, status: int, headers: HeaderMap) -> None:
        #: The minor version: 0 or 1.
        self.version = version
        self.status = status
        self.headers = headers

    @property
    def keep_alive(self) -> bool:
        tokens = {token.strip(b" \t").lower()
                  for value in self.headers.get_all(b"connection") for token in value.split(b",")}
        if self.version == 0:
            return b"keep-alive" in tokens
        return b"close" not in tokens


class MalformedResponse(Exception):
    """
    The peer's reply is not an HTTP/1.x response head.
    """


def find_head_end(buffer: bytes) -> int:
    """
    Where the empty line ending a head ends, or -1. Bare LF line ends are
    accepted, as httparse does.
    """
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [end for end in (crlf + 4 if crlf >= 0 else -1, lf + 2 if lf >= 0 else -1) if end >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> ResponseHead:
    """
    Parse a status line and header lines (without the final empty line).
    """
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    status_line = lines[0]
    if (len(status_line) < 12 or not status_line.startswith(b"HTTP/1.")
            or status_line[7:8] not in (b"0", b"1") or status_line[8:9] != b" "
            or not status_line[9:12].isdigit() or status_line[12:13] not in (b"", b" ")):
        raise MalformedResponse("bad status line")
    headers = HeaderMap()
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon or not is_token(name):
            raise MalformedResponse("bad header line")
        value = value.strip(b" \t")
        if not all(byte == 0x09 or 0x20 <= byte != 0x7F for byte in value):
            raise MalformedResponse("bad header value")
        headers.append(name, value)
        if len(headers) > MAX_HEADERS:
            raise MalformedResponse("too many headers")
    return ResponseHead(int(status_line[7:8]), int(status_line[9:12]), headers)


class BodyConsumer(TypingProtocol):
    def body(self, pieces: list[bytes]) -> None:
        """
        Bytes of the body, all that one network read brought.
        """

    def end(self, error: str | None) -> None:
        """
        The body is complete (C{None}) or failed.
        """


class ConnectionGone(Exception):
    """
    The connection failed before a whole response head arrived.
    """


# Body framings
_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class Exchange:
    """
    One request's response on a L{ClientConnection}: the head (L{head}
    fires with a L{ResponseHead}), then the body for one consumer.
    """

    def __init__(self, connection: "ClientConnection", method: bytes, reusable: bool) -> None:
        self.connection = connection
        self.method = method
        self.head: Deferred = Deferred(lambda _: connection.abort())
        self._reusable = reusable
        self._buffer = b""
        self._state: int | None = None
        self._remaining = 0
        self._consumer: BodyConsumer | None = None
        self._pending: list[bytes] = []
        self._ended = False
        self._error: str | None = None

    # From the connection

    def feed(self, data: bytes) -> None:
        if self._state is None:
            data = self._read_head(data)
            if self._state is None:
                return
            head_fired = True
        else:
            head_fired = False
        pieces: list[bytes] = []
        if data and not self._ended:
            self._read_body(data, pieces)
        self._emit(pieces)
        if head_fired:
            # Free the connection before anyone sees the head, so that a
            # redirect can reuse it.
            self._maybe_finish()
            self.head.callback(self._head)
            if not self._ended and self._consumer is None:
                self.connection.pause("unclaimed")
        self._maybe_finish()

    def connection_lost(self) -> None:
        if self._state is None:
            if not self.head.called:
                self.head.errback(ConnectionGone())
            return
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            self._reusable = False
            self._ended = True
        elif not self._ended:
            self._fail(BODY_ERROR)
        self._maybe_finish()

    def _read_head(self, data: bytes) -> bytes:
        self._buffer += data
        while True:
            end = find_head_end(self._buffer)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._malformed()
                return b""
            try:
                head = parse_head(self._buffer[:end].rstrip(b"\r\n"))
            except MalformedResponse:
                self._malformed()
                return b""
            rest, self._buffer = self._buffer[end:], b""
            if 100 <= head.status < 200 and head.status != 101:
                self._buffer = rest
                continue
            self._head = head
            self._choose_framing(head)
            return rest

    def _malformed(self) -> None:
        self._buffer = b""
        self._state = None
        if not self.head.called:
            self.head.errback(ConnectionGone())
        self.connection.abort()

    def _choose_framing(self, head: ResponseHead) -> None:
        self._reusable = self._reusable and head.keep_alive
        status = head.status
        if (self.method == b"HEAD" or status in _NO_BODY_STATUSES or status == 101
                or (self.method == b"CONNECT" and 200 <= status < 300)):
            if status == 101 or self.method == b"CONNECT":
                self._reusable = False
            self._state = _DONE
            self._ended = True
            return
        codings = head.headers.get_all(b"transfer-encoding")
        if codings:
            self._state = _CHUNK_SIZE if _last_coding_is_chunked(codings) else _UNTIL_CLOSE
            return
        if b"content-length" in head.headers:
            length = content_length(head.headers)
            if length is None:
                self._malformed()
                return
            self._state = _LENGTH
            self._remaining = length
            if length == 0:
                self._state = _DONE
                self._ended = True
            return
        self._state = _UNTIL_CLOSE

    def _read_body(self, data: bytes, pieces: list[bytes]) -> None:
        """
        Decode C{data} into C{pieces}; the slices copy only at framing
        boundaries.
        """
        if self._state == _LENGTH:
            if len(data) <= self._remaining:
                pieces.append(data)
                self._remaining -= len(data)
                data = b""
            else:
                pieces.append(data[:self._remaining])
                data = data[self._remaining:]
                self._remaining = 0
            if self._remaining == 0:
                self._state = _DONE
                self._ended = True
                if data:
                    self._reusable = False
            return
        if self._state == _UNTIL_CLOSE:
            pieces.append(data)
            return
        self._read_chunked(data, pieces)

    def _read_chunked(self, data: bytes, pieces: list[bytes]) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        position = 0
        while position < len(buffer) and not self._ended:
            if self._state == _CHUNK_DATA:
                take = min(self._remaining, len(buffer) - position)
                pieces.append(buffer[position:position + take] if take < len(buffer) else buffer)
                position += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _CHUNK_END
                continue
            newline = buffer.find(b"\n", position)
            if self._state == _CHUNK_END:
                if len(buffer) - position < 2:
                    break
                if buffer[position:position + 2] != b"\r\n":
                    self._fail(BODY_ERROR)
                    return
                position += 2
                self._state = _CHUNK_SIZE
                continue
            if newline < 0:
                if len(buffer) - position > MAX_HEAD_BYTES:
                    self._fail(BODY_ERROR)
                    return
                break
            line = buffer[position:newline].rstrip(b"\r")
            position = newline + 1
            if self._state == _TRAILERS:
                if not line:
                    self._state = _DONE
                    self._ended = True
                continue
            size = _chunk_size(line)
            if size is None:
                self._fail(BODY_ERROR)
                return
            if size == 0:
                self._state = _TRAILERS
            else:
                self._state = _CHUNK_DATA
                self._remaining = size
        if self._ended:
            if position < len(buffer):
                self._reusable = False
        else:
            self._buffer = buffer[position:]

    def _fail(self, error: str) -> None:
        self._ended = True
        self._error = error
        self._reusable = False

    def _emit(self, pieces: list[bytes]) -> None:
        if not pieces:
            return
        if self._consumer is not None:
            self._consumer.body(pieces)
        else:
            self._pending.extend(pieces)

    def _maybe_finish(self) -> None:
        if not self._ended or self._state is None:
            return
        if self.connection.exchange is self:
            self.connection.exchange_done(self._reusable)
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.end(self._error)

    # For the response's reader

    def deliver(self, consumer: BodyConsumer) -> None:
        """
        Send the body, from its first byte, to C{consumer}.
        """
        self._consumer = consumer
        pending, self._pending = self._pending, []
        if pending:
            consumer.body(pending)
        if self._ended:
            self._consumer = None
            consumer.end(self._error)
        else:
            self.connection.resume("unclaimed")

    def pause(self) -> None:
        if self.connection.exchange is self:
            self.connection.pause("consumer")

    def resume(self) -> None:
        if self.connection.exchange is self:
            self.connection.resume("consumer")

    def abort(self, error: str = BODY_ERROR) -> None:
        """
        Stop reading: the body ends with C{error} unless it already ended.
        """
        if not self._ended:
            self._fail(error)
            self.connection.abort()
            self._maybe_finish()

    def discard(self) -> None:
        """
        The body is not wanted: keep the connection only if it is already
        read.
        """
        self._consumer = None
        self._pending = []
        if not self._ended:
            self._fail(BODY_ERROR)
            self.connection.abort()


def _chunk_size(line: bytes) -> int | None:
    size_text = line.split(b";", 1)[0].strip(b" \t")
    if (not size_text or len(size_text) > MAX_CHUNK_SIZE_DIGITS
            or not all(c in b"0123456789abcdefABCDEF" for c in size_text)):
        return None
    return int(size_text, 16)


class ClientConnection(Protocol):
    """
    One connection to an origin or a proxy: an optional CONNECT tunnel and
    TLS, then exchanges one after another.

    @ivar ready: fires with this connection once requests can be sent.
    """

    def __init__(self, tunnel_head: bytes | None = None, tls=None) -> None:
        self.ready: Deferred = Deferred(lambda _: self.abort())
        self.exchange: Exchange | None = None
        self.lost = False
        #: Called with this connection when an exchange leaves it reusable.
        self.on_idle: Callable[["ClientConnection"], None] | None = None
        #: Called with this connection when it closes.
        self.on_lost: Callable[["ClientConnection"], None] | None = None
        self._tunnel_head = tunnel_head
        self._tls = tls
        self._tunnel_buffer = b""
        self._pauses: set[str] = set()
        self._closing = False

    def connectionMade(self) -> None:
        self.transport.bufferSize = READ_BUFFER_BYTES
        if self._tunnel_head is not None:
            self.transport.write(self._tunnel_head)
        else:
            self._established()

    def _established(self) -> None:
        self._tunnel_head = None
        if self._tls is not None:
            self.transport.startTLS(self._tls)
        self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel_head is not None:
            self._tunnel_reply(data)
        elif self.exchange is not None:
            self.exchange.feed(data)
        else:
            self.abort()

    def _tunnel_reply(self, data: bytes) -> None:
        self._tunnel_buffer += data
        end = find_head_end(self._tunnel_buffer)
        if end < 0:
            if len(self._tunnel_buffer) > MAX_HEAD_BYTES:
                self.abort()
            return
        try:
            head = parse_head(self._tunnel_buffer[:end].rstrip(b"\r\n"))
        except MalformedResponse:
            self.abort()
            return
        if not 200 <= head.status < 300 or end != len(self._tunnel_buffer):
            self.abort()
            return
        self._tunnel_buffer = b""
        self._established()

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        if not self.ready.called:
            self.ready.errback(ConnectionGone())
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.connection_lost()
        if self.on_lost is not None:
            self.on_lost(self)

    def send(self, head: bytes, payload: bytes, method: bytes, reusable: bool) -> Exchange:
        """
        Write a request; its response arrives on the returned exchange.
        """
        exchange = Exchange(self, method, reusable)
        self.exchange = exchange
        if payload:
            self.transport.writeSequence([head, payload])
        else:
            self.transport.write(head)
        return exchange

    def exchange_done(self, reusable: bool) -> None:
        self.exchange = None
        if self.lost or self._closing:
            return
        if reusable:
            self._pauses.clear()
            self._apply_pauses()
            if self.on_idle is not None:
                self.on_idle(self)
        else:
            self._closing = True
            self.transport.loseConnection()

    def pause(self, reason: str) -> None:
        self._pauses.add(reason)
        self._apply_pauses()

    def resume(self, reason: str) -> None:
        self._pauses.discard(reason)
        self._apply_pauses()

    def _apply_pauses(self) -> None:
        if self.lost or self._closing or self.transport is None:
            return
        if self._pauses:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def abort(self) -> None:
        if not self.lost and self.transport is not None:
            self._closing = True
            self.transport.abortConnection()
