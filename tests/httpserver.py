"""
A local HTTP origin and a forward proxy for the C{http/request} tests.

Both listen on 127.0.0.1 in the test process, so a test can look at exactly
what a server under test sent (L{Origin.seen}, L{ForwardProxy.seen}) and can
decide when a slow response moves on (L{Origin.release}). Nothing here
sleeps: a "slow" response is one that waits for the test to open its gate.

Origin paths::

    /echo...                 200, JSON of the request as the origin saw it
    /status/<code>           <code> with the body "status body"
    /redirect/<code>?to=L    <code> with Location L (the rest of the target, percent-decoded)
    /chain/<n>?code=C        n redirects (C, default 302), then /echo/final
    /loop                    302 to itself
    /hold/<gate>             the echo once the test releases <gate>
    /slowbody/<gate>         headers and 10 of 20 bytes, the rest on release
    /chunks/<gate>?n=N&size=S  chunked; chunk 1 at once, each further chunk
                             (and the end) on a release of <gate>
    /bytes?n=N               N bytes of a fixed pattern, sent as the client reads
    /truncated               content-length 1000, 10 bytes, then close
    /truncated-chunked       one chunk of a chunked body, then close
    /headers                 repeated, non-ASCII and hop-by-hop response headers
    /trailers                chunked with a trailer and "Connection: close"
    /gzip                    a gzip body with Content-Encoding: gzip
    /until-close             a body delimited by closing the connection
    /continue                "100 Continue" before the real response
    /garbage                 a reply that is not HTTP
    /drop                    closes without replying
"""

from __future__ import annotations

import base64
import datetime
import gzip
import ipaddress
import json
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer, protocol, reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.web import http
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

#: The body of /bytes: every byte value, repeated.
PATTERN = bytes(range(256)) * 256

#: How much /bytes writes per step while the client keeps reading.
BYTES_STEP = len(PATTERN)

#: What /headers sends, in this order (names and raw value bytes).
HEADERS_FIXTURE = [
    (b"X-Mixed-Case", b"One"),
    (b"set-cookie", b"a=1"),
    (b"X-Repeat", b"r1"),
    (b"Set-Cookie", b"b=2"),
    (b"X-Repeat", b"r2"),
    (b"X-Utf8", "caf\u00e9".encode("utf-8")),
    (b"X-Latin1", b"caf\xe9"),
    (b"X-Tab", b"a\tb"),
    (b"X-Empty", b""),
    (b"X-Obs-Text", b"\x80\xff"),
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Content-Length", b"2"),
    (b"X-Last", b"z"),
]

#: The uncompressed body behind /gzip.
GZIP_TEXT = b"hello gzip world " * 10


def self_signed_certificate(names=("localhost", "tls.example"), address="127.0.0.1") -> tuple[bytes, bytes]:
    """
    A certificate (PEM) for C{names} and C{address}, and its key (PEM).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(name) for name in names] + [x509.IPAddress(ipaddress.ip_address(address))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def pattern(n: int) -> bytes:
    """
    The first C{n} bytes of the /bytes body.
    """
    whole, rest = divmod(n, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


class Gate:
    """
    A counting gate: each L{release} lets one L{wait} through, whether the
    wait comes before or after it.
    """

    def __init__(self) -> None:
        self._tokens = 0
        self._waiters: deque[Deferred] = deque()

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().callback(None)
        else:
            self._tokens += 1

    def wait(self) -> Deferred:
        if self._tokens:
            self._tokens -= 1
            return defer.succeed(None)
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter


@dataclass
class SeenRequest:
    """
    One request as it reached the origin: the raw request line parts, the
    raw header lines (bytes decoded as latin-1, so every byte shows) and
    the body.
    """

    method: str
    target: str
    lines: list[str]
    body: bytes
    client_port: int

    @property
    def headers(self) -> list[list[str]]:
        """
        C{[name, value]} pairs in wire order, the value as sent after
        C{"name: "}.
        """
        pairs = []
        for line in self.lines:
            name, _, value = line.partition(":")
            pairs.append([name, value[1:] if value.startswith(" ") else value])
        return pairs

    def view(self) -> dict:
        return {
            "method": self.method,
            "target": self.target,
            "headers": self.headers,
            "body": base64.b64encode(self.body).decode(),
        }


class _OriginRequest(http.Request):
    """
    Dispatches on the path; the origin object lives on the factory.
    """

    def process(self) -> None:
        origin: Origin = self.channel.factory.origin
        seen = SeenRequest(
            method=self.method.decode("latin-1"),
            target=self.uri.decode("latin-1"),
            lines=[line.decode("latin-1") for line in self.channel.raw_lines],
            body=self.content.read(),
            client_port=self.getClientAddress().port,
        )
        self.channel.raw_lines = []
        origin.arrived(seen)
        origin.route(self, seen)


class _RecordingChannel(http.HTTPChannel):
    """
    Keeps each request's header lines exactly as they arrived.
    """

    requestFactory = _OriginRequest

    def connectionMade(self) -> None:
        super().connectionMade()
        self.raw_lines: list[bytes] = []
        self.factory.connections.add(self)

    def headerReceived(self, line: bytes) -> bool:
        self.raw_lines.append(line)
        return super().headerReceived(line)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        self.factory.lost_one()


class _TrackingFactory:
    """
    What both servers need to shut down cleanly: their open connections.
    """

    def track(self) -> None:
        self.connections: set = set()
        self._all_gone: list[Deferred] = []

    def lost_one(self) -> None:
        if not self.connections:
            waiters, self._all_gone = self._all_gone, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred:
        """
        Fires once no connection is open.
        """
        if not self.connections:
            return defer.succeed(None)
        done = Deferred()
        self._all_gone.append(done)
        return done

    def close_all(self) -> Deferred:
        done = self.when_idle()
        for connection in list(self.connections):
            connection.transport.abortConnection()
        return done


class _OriginFactory(http.HTTPFactory, _TrackingFactory):
    protocol = _RecordingChannel

    def __init__(self, origin: "Origin", reactor) -> None:
        super().__init__(timeout=None, reactor=reactor)
        self.origin = origin
        self.track()


def _respond(request: http.Request, code: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    request.setResponseCode(code)
    for name, value in headers:
        request.responseHeaders.addRawHeader(name, value)
    if not request.responseHeaders.hasHeader(b"content-length") and code not in (204, 304):
        request.responseHeaders.addRawHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _raw(request: http.Request, data: bytes, close: bool = True) -> None:
    """
    Write bytes that twisted.web would not write for us, then hang up.
    """
    transport = request.channel.transport
    transport.write(data)
    if close:
        transport.loseConnection()


@implementer(IPushProducer)
class _PatternProducer:
    """
    Writes the /bytes body as fast as the client reads it.
    """

    def __init__(self, origin: "Origin", request: http.Request, size: int) -> None:
        self.origin = origin
        self.request = request
        self.remaining = size
        self.paused = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.remaining and not self.request._disconnected:
            step = min(BYTES_STEP, self.remaining)
            self.remaining -= step
            self.origin.bytes_sent += step
            self.request.write(PATTERN[:step])
        if not self.remaining and not self.request.finished:
            self.request.unregisterProducer()
            if not self.request._disconnected:
                self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True
        self.origin.paused.release()

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.remaining = 0


class Origin:
    """
    The test origin. L{start} it, use L{url}, look at L{seen}, L{stop} it.
    """

    def __init__(self, reactor=default_reactor) -> None:
        self.reactor = reactor
        self.seen: list[SeenRequest] = []
        self.gates: dict[str, Gate] = {}
        #: Released each time /bytes is paused by a full send buffer.
        self.paused = Gate()
        self.bytes_sent = 0
        self.factory = _OriginFactory(self, reactor)
        self.port = None
        self.port_number = 0
        self.scheme = "http"
        self.trust_root = None
        self._arrivals: list[tuple[int, Deferred]] = []

    async def start(self, tls: bool = False) -> "Origin":
        """
        Listen on 127.0.0.1; with C{tls}, over TLS with a certificate that
        L{trust_root} vouches for.
        """
        if tls:
            from twisted.internet import ssl

            certificate, key = self_signed_certificate()
            options = ssl.PrivateCertificate.loadPEM(key + certificate).options()
            self.trust_root = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(certificate)])
            self.scheme = "https"
            self.port = self.reactor.listenSSL(0, self.factory, options, interface="127.0.0.1")
        else:
            self.port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port_number}"

    def url(self, path: str = "/echo", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port_number}{path}"

    def arrived(self, seen: SeenRequest) -> None:
        self.seen.append(seen)
        for entry in [entry for entry in self._arrivals if entry[0] <= len(self.seen)]:
            self._arrivals.remove(entry)
            entry[1].callback(seen)

    def received(self, count: int) -> Deferred:
        """
        Fires once C{count} requests have arrived in all.
        """
        if len(self.seen) >= count:
            return defer.succeed(self.seen[count - 1])
        waiter = Deferred()
        self._arrivals.append((count, waiter))
        return waiter

    def disconnected(self) -> Deferred:
        """
        Fires once no client is connected.
        """
        return self.factory.when_idle()

    def gate(self, name: str) -> Gate:
        return self.gates.setdefault(name, Gate())

    def release(self, name: str) -> None:
        """
        Let the response waiting on gate C{name} move on one step.
        """
        self.gate(name).release()

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.factory.close_all()

    # Routing

    def route(self, request: http.Request, seen: SeenRequest) -> None:
        url = urlsplit(seen.target)
        path = url.path
        query = {key: values[-1] for key, values in parse_qs(url.query, keep_blank_values=True).items()}
        parts = path.split("/")
        head = parts[1] if len(parts) > 1 else ""
        handler = getattr(self, "_" + head.replace("-", "_"), None)
        if path.startswith("/echo") or path == "/":
            self._echo(request, seen)
        elif head and handler is not None:
            try:
                handler(request, seen, parts[2:], query)
            except ValueError:
                _respond(request, 400, [], b"bad request")
        else:
            _respond(request, 404, [], b"not found")

    def _echo(self, request, seen) -> None:
        body = json.dumps(seen.view()).encode()
        _respond(request, 200, [(b"Content-Type", b"application/json")], body)

    def _status(self, request, seen, args, query) -> None:
        code = int(args[0])
        if code in (204, 304):
            _respond(request, code, [])
        else:
            _respond(request, code, [(b"Content-Length", b"11")], b"status body")

    def _redirect(self, request, seen, args, query) -> None:
        # Everything after "?to=", percent-decoded (so "%23" can put a "#"
        # in the Location).
        location = unquote(seen.target.split("?to=", 1)[1]) if "?to=" in seen.target else "/echo"
        _respond(request, int(args[0]), [(b"Location", location.encode("utf-8"))])

    def _chain(self, request, seen, args, query) -> None:
        hops = int(args[0])
        code = int(query.get("code", "302"))
        location = "/echo/final" if hops <= 1 else f"/chain/{hops - 1}?code={code}"
        _respond(request, code, [(b"Location", location.encode())])

    def _loop(self, request, seen, args, query) -> None:
        _respond(request, 302, [(b"Location", b"/loop")])

    def _hold(self, request, seen, args, query) -> None:
        def answer(_):
            if not request._disconnected:
                self._echo(request, seen)

        self.gate(args[0]).wait().addCallback(answer)

    def _slowbody(self, request, seen, args, query) -> None:
        request.setResponseCode(200)
        request.responseHeaders.addRawHeader(b"Content-Length", b"20")
        request.write(b"x" * 10)

        def rest(_):
            if not request._disconnected:
                request.write(b"y" * 10)
                request.finish()

        self.gate(args[0]).wait().addCallback(rest)

    def _chunks(self, request, seen, args, query) -> None:
        gate = self.gate(args[0])
        count = int(query.get("n", "3"))
        size = int(query.get("size", "5"))
        request.setResponseCode(200)
        request.responseHeaders.addRawHeader(b"Content-Type", b"text/plain")

        def send(index):
            if request._disconnected:
                return
            if index == count:
                request.finish()
                return
            request.write(bytes([ord("a") + index % 26]) * size)
            gate.wait().addCallback(lambda _: send(index + 1))

        send(0)

    def _bytes(self, request, seen, args, query) -> None:
        size = int(query.get("n", "0"))
        request.setResponseCode(200)
        request.responseHeaders.addRawHeader(b"Content-Length", b"%d" % size)
        _PatternProducer(self, request, size).start()

    def _truncated(self, request, seen, args, query) -> None:
        _raw(request, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)

    def _truncated_chunked(self, request, seen, args, query) -> None:
        _raw(request, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    def _headers(self, request, seen, args, query) -> None:
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in HEADERS_FIXTURE
        )
        _raw(request, head + b"\r\nok")

    def _trailers(self, request, seen, args, query) -> None:
        _raw(request, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                      b"Trailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: tv\r\n\r\n")

    def _gzip(self, request, seen, args, query) -> None:
        body = gzip.compress(GZIP_TEXT, mtime=0)
        _respond(request, 200, [(b"Content-Encoding", b"gzip")], body)

    def _until_close(self, request, seen, args, query) -> None:
        _raw(request, b"HTTP/1.1 200 OK\r\n\r\nread-until-close body")

    def _continue(self, request, seen, args, query) -> None:
        _raw(request, b"HTTP/1.1 100 Continue\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def _garbage(self, request, seen, args, query) -> None:
        _raw(request, b"NOT HTTP AT ALL\r\n\r\n")

    def _drop(self, request, seen, args, query) -> None:
        request.channel.transport.loseConnection()


# The forward proxy


@dataclass
class ProxySeen:
    """
    The request line and raw header lines one proxy connection began with.
    """

    line: str
    lines: list[str] = field(default_factory=list)


class _Pipe(protocol.Protocol):
    """
    The proxy's upstream side: everything from upstream goes to the client.
    """

    def __init__(self, downstream: "_ProxyProtocol") -> None:
        self.downstream = downstream
        self.factory = downstream.factory

    def connectionMade(self) -> None:
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.transport.write(data)

    def connectionLost(self, reason) -> None:
        self.factory.connections.discard(self)
        self.downstream.transport.loseConnection()
        self.factory.lost_one()


class _ProxyProtocol(protocol.Protocol):
    """
    Reads one request head; then tunnels (CONNECT) or forwards the
    absolute-form request in origin form. Every upstream is on 127.0.0.1,
    whatever host was asked for, so made-up names reach the test origin.
    """

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self.buffer = b""
        self.head_done = False
        self.upstream: _Pipe | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.buffer += data
        if self.head_done or b"\r\n\r\n" not in self.buffer:
            return
        self.head_done = True
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.factory.proxy.seen.append(ProxySeen(lines[0], lines[1:]))
        method, target, _ = lines[0].split(" ", 2)
        if method == "CONNECT":
            self.buffer = rest
            self._connect(int(target.rsplit(":", 1)[1]), b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            path = (url.path or "/") + ("?" + url.query if url.query else "")
            kept = [line for line in lines[1:] if not line.lower().startswith("proxy-")]
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(line + "\r\n" for line in kept) + "\r\n"
            self.buffer = head.encode("latin-1") + rest
            self._connect(url.port or 80, b"")

    def _connect(self, port: int, reply: bytes) -> None:
        creator = protocol.ClientCreator(self.factory.reactor, _Pipe, self)

        def connected(upstream):
            self.upstream = upstream
            self.transport.write(reply)
            upstream.transport.write(self.buffer)
            self.buffer = b""

        def failed(reason):
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

        creator.connectTCP("127.0.0.1", port).addCallbacks(connected, failed)

    def connectionLost(self, reason) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        self.factory.connections.discard(self)
        self.factory.lost_one()


class _ProxyFactory(protocol.ServerFactory, _TrackingFactory):
    protocol = _ProxyProtocol

    def __init__(self, proxy: "ForwardProxy", reactor) -> None:
        self.proxy = proxy
        self.reactor = reactor
        self.track()


class ForwardProxy:
    """
    A small forward proxy (absolute-form requests and CONNECT) that records
    what it was asked.
    """

    def __init__(self, reactor=default_reactor) -> None:
        self.reactor = reactor
        self.seen: list[ProxySeen] = []
        self.factory = _ProxyFactory(self, reactor)
        self.port = None
        self.port_number = 0

    async def start(self) -> "ForwardProxy":
        self.port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.factory.close_all()
