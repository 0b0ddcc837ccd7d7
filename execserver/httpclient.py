"""
The HTTP client behind C{http/request}: routes (direct, proxied, tunnelled),
a pool of kept-alive connections, and redirects, all as the reference's
client (reqwest over hyper) behaves.

One client serves a whole server, so connections are reused across
requests and across client connections, as the reference reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from execserver import weburl
from execserver.httpproxy import SPEAKABLE, Proxy, ProxySettings
from execserver.httpwire import (
    ClientConnection,
    Exchange,
    HeaderMap,
    encode_head,
    frame_request_body,
)
from execserver.weburl import URL

log = Logger()

#: Redirects followed in a row; one more is an error (reqwest's default).
MAX_REDIRECTS = 10

#: Seconds an unused connection stays in the pool (hyper's default).
IDLE_TIMEOUT = 90.0

#: Unused connections kept per route; more are closed.
MAX_IDLE_PER_ROUTE = 32

#: Seconds one attempt to open a TCP connection may take.
CONNECT_TIMEOUT = 30.0

_REDIRECT_STATUSES = (301, 302, 303, 307, 308)

#: Dropped when a redirect leaves the origin, in this order (reqwest's).
_SENSITIVE = (b"authorization", b"cookie", b"cookie2", b"proxy-authorization", b"www-authenticate")

#: Dropped when a redirect turns the request into a GET without a body.
_PAYLOAD = (b"content-type", b"content-length", b"content-encoding", b"transfer-encoding")


class UnsupportedProxy(Exception):
    """
    The proxy for this URL speaks something we do not (SOCKS, or TLS
    inside a TLS proxy).
    """


class FetchError(Exception):
    """
    The request got no response; C{str()} is the reference's reason.
    """


class SendError(FetchError):
    def __init__(self, url: URL) -> None:
        super().__init__(f"error sending request for url ({url})")


class TooManyRedirects(FetchError):
    def __init__(self) -> None:
        super().__init__("too many redirects")


class UnsupportedRedirect(FetchError):
    def __init__(self, scheme: str) -> None:
        super().__init__(f"redirect target uses unsupported URL scheme: {scheme}")


@dataclass(frozen=True)
class Request:
    """
    What the client asked for. C{headers} are the client's own (and the
    URL's credentials); the defaults are added to each request sent.
    """

    method: bytes
    url: URL
    headers: HeaderMap
    body: bytes


@dataclass(frozen=True)
class Route:
    """
    Where a connection goes; connections are pooled per route.
    """

    scheme: str
    host: str
    port: int
    proxy: Proxy | None

    @property
    def tunnel(self) -> bool:
        """
        An https origin behind a proxy is reached through CONNECT.
        """
        return self.proxy is not None and self.scheme == "https"

    @property
    def hostname(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


@dataclass
class Response:
    status: int
    headers: HeaderMap
    url: URL
    exchange: Exchange


class ConnectionPool:
    """
    Kept-alive connections per route, most recently used first.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self._idle: dict[Route, list[ClientConnection]] = {}
        self._timers: dict[ClientConnection, object] = {}
        self._open: set[ClientConnection] = set()
        self._all_closed: list[Deferred] = []

    def take(self, route: Route) -> ClientConnection | None:
        idle = self._idle.get(route, [])
        while idle:
            connection = idle.pop()
            self._timers.pop(connection).cancel()
            if not connection.lost:
                return connection
        return None

    def adopt(self, route: Route, connection: ClientConnection) -> None:
        """
        Look after a new connection: keep it when it is idle, forget it
        when it closes.
        """
        self._open.add(connection)
        connection.on_idle = lambda c: self._idle_again(route, c)
        connection.on_lost = lambda c: self._lost(route, c)

    def _idle_again(self, route: Route, connection: ClientConnection) -> None:
        idle = self._idle.setdefault(route, [])
        if len(idle) >= MAX_IDLE_PER_ROUTE:
            connection.abort()
            return
        idle.append(connection)
        self._timers[connection] = self.reactor.callLater(IDLE_TIMEOUT, connection.abort)

    def _lost(self, route: Route, connection: ClientConnection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(route, [])
        if connection in idle:
            idle.remove(connection)
            self._timers.pop(connection).cancel()
        if not self._open:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def close(self) -> Deferred:
        """
        Close every connection; fires when all are gone.
        """
        if not self._open:
            return defer.succeed(None)
        done = Deferred()
        self._all_closed.append(done)
        for connection in list(self._open):
            connection.abort()
        return done


class HttpClient:
    """
    Sends requests; one per server.

    @param environ: where the proxy settings come from.
    @param trust_root: the certificate authorities for https (the
        platform's when C{None}).
    """

    def __init__(self, reactor, environ: Mapping[str, str], trust_root=None) -> None:
        self.reactor = reactor
        self.proxies = ProxySettings(environ)
        self.trust_root = trust_root
        self.pool = ConnectionPool(reactor)

    def fetch(self, request: Request, follow_redirects: bool) -> "Fetch":
        return Fetch(self, request, follow_redirects)

    def close(self) -> Deferred:
        return self.pool.close()

    def route(self, url: URL) -> Route:
        return Route(url.scheme, url.host, url.effective_port, self.proxies.proxy_for(url))

    def _tls(self, hostname: str):
        return optionsForClientTLS(hostname, trustRoot=self.trust_root)

    async def connection(self, route: Route) -> ClientConnection:
        """
        An idle connection for C{route}, or a new one.

        Like the reference, we do not send a request again when a kept-alive
        connection fails: the server may have acted on it.
        """
        connection = self.pool.take(route)
        if connection is not None:
            return connection
        proxy = route.proxy
        if proxy is None:
            endpoint = HostnameEndpoint(self.reactor, route.hostname, route.port, timeout=CONNECT_TIMEOUT)
        elif proxy.scheme not in SPEAKABLE or (proxy.scheme == "https" and route.tunnel):
            raise UnsupportedProxy(proxy.scheme)
        else:
            endpoint = HostnameEndpoint(self.reactor, proxy.hostname, proxy.port, timeout=CONNECT_TIMEOUT)
            if proxy.scheme == "https":
                endpoint = wrapClientTLS(self._tls(proxy.hostname), endpoint)
        tunnel_head = _connect_head(route) if route.tunnel else None
        tls = self._tls(route.hostname) if route.scheme == "https" else None
        connection = ClientConnection(tunnel_head, tls)
        await connectProtocol(endpoint, connection)
        self.pool.adopt(route, connection)
        await connection.ready
        return connection


def _connect_head(route: Route) -> bytes:
    authority = f"{route.host}:{route.port}".encode("ascii")
    lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
    if route.proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: " + route.proxy.authorization)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def wire_request(request: Request, route: Route) -> tuple[bytes, bytes, bool]:
    """
    The head and body bytes of one request as hyper sends them, and
    whether the connection can carry another request afterwards.
    """
    url = request.url
    headers = request.headers.copy()
    if b"accept" not in headers:
        headers.append(b"accept", b"*/*")
    proxy = route.proxy
    if (proxy is not None and not route.tunnel and proxy.authorization is not None
            and b"proxy-authorization" not in headers):
        headers.append(b"proxy-authorization", proxy.authorization)
    if b"host" not in headers:
        headers.append(b"host", url.authority.encode("ascii"))
    payload, in_sync = frame_request_body(headers, request.body)
    if request.method == b"CONNECT":
        target = f"{url.host}:{url.effective_port}"
    elif proxy is not None and not route.tunnel:
        target = str(url.without_fragment())
    else:
        target = url.request_target
    start = b"%s %s HTTP/1.1" % (request.method, target.encode("ascii"))
    closing = any(token.strip(b" \t").lower() == b"close"
                  for value in headers.get_all(b"connection") for token in value.split(b","))
    return encode_head(start, headers), payload, in_sync and not closing


def redirect_target(response: Response) -> URL | None:
    """
    Where a redirect points, or C{None} when it cannot be followed (then it
    is the final response).
    """
    if response.status not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get(b"location")
    if location is None or not all(0x20 <= byte < 0x7F or byte == 0x09 for byte in location):
        return None
    try:
        return weburl.parse(location.decode("ascii"), base=response.url).without_credentials()
    except weburl.URLError:
        return None


def redirected(request: Request, status: int, target: URL) -> Request:
    """
    The request to send to C{target}: method, body and headers changed as
    reqwest changes them.
    """
    method, body, headers = request.method, request.body, request.headers.copy()
    if status == 303 or (status in (301, 302) and method == b"POST"):
        if status != 303 or method != b"HEAD":
            method = b"GET"
        body = b""
        for name in _PAYLOAD:
            headers.remove(name)
    if not target.same_origin(request.url):
        for name in _SENSITIVE:
            headers.remove(name)
    headers.remove(b"referer")
    referer = _referer(target, request.url)
    if referer is not None:
        headers.append(b"referer", referer.encode("ascii"))
    return Request(method, target, headers, body)


def _referer(target: URL, previous: URL) -> str | None:
    if target.scheme == "http" and previous.scheme == "https":
        return None
    if target.same_origin(previous):
        return str(previous.without_credentials().without_fragment())
    return previous.origin() + "/"


class Fetch:
    """
    One C{http/request}: every hop of its redirects.

    @ivar url: the URL being requested now; an error names it.
    """

    def __init__(self, client: HttpClient, request: Request, follow_redirects: bool) -> None:
        self.client = client
        self.request = request
        self.follow_redirects = follow_redirects
        self.url = request.url

    def start(self) -> Deferred:
        """
        Fires with the final L{Response} (its body not yet read), or fails
        with a L{FetchError}. Cancelling it closes what it opened.
        """
        return ensureDeferred(self._run())

    async def _run(self) -> Response:
        request = self.request
        followed = 0
        while True:
            self.url = request.url
            response = await self._send(request)
            target = redirect_target(response) if self.follow_redirects else None
            if target is None:
                return response
            response.exchange.discard()
            if followed == MAX_REDIRECTS:
                raise TooManyRedirects()
            if target.scheme not in ("http", "https"):
                raise UnsupportedRedirect(target.scheme)
            request = redirected(request, response.status, target)
            followed += 1

    async def _send(self, request: Request) -> Response:
        route = self.client.route(request.url)
        head, payload, reusable = wire_request(request, route)
        try:
            connection = await self.client.connection(route)
            exchange = connection.send(head, payload, request.method, reusable)
            response_head = await exchange.head
        except CancelledError:
            raise
        except Exception as e:
            # The reference never says why; neither do we, but we log the kind.
            log.debug("http/request send failed: {kind}", kind=type(e).__name__)
            raise SendError(request.url) from None
        return Response(response_head.status, response_head.headers, request.url, exchange)
