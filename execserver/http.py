"""
C{http/request}: an HTTP request made by the executor for the client, its
response returned whole or streamed as C{http/request/bodyDelta}
notifications.

Checks run in the reference's order, each failure with its text: params
(including the base64 body), the handshake gate, a streaming C{requestId}
already in use on this connection, the method, the URL and its scheme, the
headers one by one (name, C{valueEnvVar}, value), then C{timeoutMs: 0}.
Transport failures are -32603 and never say why, as in the reference.

A streamed response is answered as soon as its head is in; its body
follows as numbered deltas and a final C{done} frame, paced by the
client: while the connection cannot send, the HTTP socket is not read.
"""

from __future__ import annotations

import base64
import os
from weakref import WeakKeyDictionary

import pybase64
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver import params as P
from execserver import rpc, weburl, wirejson
from execserver.httpclient import FetchError, HttpClient, Request, Response, SendError
from execserver.httpwire import BODY_ERROR, HeaderMap, is_header_value, is_token
from execserver.server import Method, ServerConnection
from execserver.weburl import URL

log = Logger()

FAMILY = "http"

#: Decoded bytes per C{bodyDelta}; larger reads are split.
MAX_DELTA_BYTES = 1024 * 1024

#: The longest header name the reference accepts.
MAX_HEADER_NAME_BYTES = 2**16 - 1

#: Server variables a header may never read, whatever their case.
DENIED_ENV_VARS = frozenset((
    "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN",
    "OPENAI_FEDERATION_RULE_ID",
    "OPENAI_IDENTITY_TOKEN_FILE",
    "OPENAI_WORKLOAD_IDENTITY_CONTEXT",
    "OPENAI_API_KEY",
    "CODEX_API_KEY",
    "CODEX_ACCESS_TOKEN",
    "CODEX_CONNECTORS_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_FEDERATED_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
))

HttpHeader = P.Struct("HttpHeader", [
    P.Field("name", P.String()),
    P.Field("value", P.String()),
    P.Field("valueEnvVar", P.Optional(P.String()), default=None),
])

HttpRequestParams = P.Struct("HttpRequestParams", [
    P.Field("method", P.String()),
    P.Field("url", P.String()),
    P.Field("headers", P.Seq(HttpHeader), default=[]),
    P.Field("bodyBase64", P.Optional(P.Base64()), default=None),
    P.Field("timeoutMs", P.Optional(P.Int("u64")), default=None),
    P.Field("redirectPolicy", P.Enum("HttpRedirectPolicy", ["follow", "stop"]), default="follow"),
    P.Field("requestId", P.String()),
    P.Field("streamResponse", P.Bool(), default=False),
])

_clients: WeakKeyDictionary = WeakKeyDictionary()


def client_for(server) -> HttpClient:
    """
    The server's one HTTP client, made on first use from the process
    environment (its proxy settings).
    """
    client = _clients.get(server)
    if client is None:
        client = _clients[server] = HttpClient(server.reactor, dict(os.environ))
    return client


def use_client(server, client: HttpClient) -> None:
    """
    Make C{server} send its requests with C{client} (tests give a client
    with their own proxy settings and clock).
    """
    _clients[server] = client


class _Streams:
    """
    A connection's streamed requests by C{requestId}, from the request until
    the final frame; all are dropped when the connection closes.
    """

    def __init__(self, connection: ServerConnection) -> None:
        self.active: dict[str, "_Call"] = {}
        connection.onClose(self._closed)

    @classmethod
    def of(cls, connection: ServerConnection) -> "_Streams":
        streams = connection.resources.get(FAMILY)
        if streams is None:
            streams = connection.resources[FAMILY] = cls(connection)
        return streams

    def _closed(self) -> None:
        for call in list(self.active.values()):
            call.abandon()
        self.active.clear()


def _basic_credentials(url: URL) -> bytes:
    credentials = weburl.percent_decode(url.username) + b":" + weburl.percent_decode(url.password)
    return b"Basic " + base64.b64encode(credentials)


def _header_value(header: dict) -> bytes:
    value = header["value"]
    variable = header["valueEnvVar"]
    if variable is not None:
        name = header["name"]
        if variable.upper() in DENIED_ENV_VARS:
            raise rpc.invalid_params(f"http/request header {name} cannot use executor environment variable {variable}")
        found = os.environ.get(variable)
        if found is not None and not _utf8(found):
            found = None
        if found is None:
            raise rpc.invalid_params(f"http/request header {name} requires executor environment variable {variable}")
        if not found:
            raise rpc.invalid_params(
                f"http/request header {name} requires a non-empty executor environment variable {variable}")
        value += found
    return value.encode("utf-8")


def _utf8(text: str) -> bool:
    # A variable that is not UTF-8 reads as unset, as Rust's env::var has it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def request_headers(url: URL, headers: list[dict]) -> HeaderMap:
    """
    The client's headers, checked one by one, over the URL's credentials.
    """
    mine = HeaderMap()
    for header in headers:
        name = header["name"].encode("utf-8")
        if not is_token(name) or len(name) > MAX_HEADER_NAME_BYTES:
            raise rpc.invalid_params("http/request header name is invalid: invalid HTTP header name")
        value = _header_value(header)
        if not is_header_value(value):
            raise rpc.invalid_params(
                f"http/request header value is invalid for {header['name']}: failed to parse header value")
        mine.append(name, value)
    result = HeaderMap()
    if url.username or url.password:
        result.append(b"authorization", _basic_credentials(url))
    result.replace_from(mine)
    return result


def _parse_url(text: str) -> URL:
    try:
        url = weburl.parse(text)
    except weburl.URLError as e:
        raise rpc.invalid_params(f"http/request url is invalid: {e}") from None
    if url.scheme not in ("http", "https"):
        raise rpc.invalid_params(f"http/request only supports http and https URLs, got {url.scheme}")
    return url


def _failed(text: str) -> rpc.RpcError:
    return rpc.internal_error(f"http/request failed: {text}")


def response_headers(headers: HeaderMap) -> list[dict]:
    """
    Header names and values as text; values that are not visible ASCII
    (any byte from 0x80 up) are left out, as the reference leaves them.
    """
    return [
        {"name": name.decode("ascii"), "value": value.decode("ascii")}
        for name, value in headers.items()
        if value.isascii()
    ]


def _result(response: Response, body: str) -> dict:
    return {"status": response.status, "headers": response_headers(response.headers), "bodyBase64": body}


_DELTA_START = b'{"method":"http/request/bodyDelta","params":{"requestId":'


@implementer(IPushProducer)
class _Call:
    """
    One C{http/request} in progress: its deadline, its fetch, then its body
    (collected, or streamed as deltas).
    """

    def __init__(self, connection: ServerConnection, client: HttpClient, request: Request,
                 follow: bool, timeout_ms: int | None, request_id: str, stream: bool) -> None:
        self.connection = connection
        self.request_id = request_id
        self.stream = stream
        self.streams = _Streams.of(connection)
        self.fetch = client.fetch(request, follow)
        self.outer: Deferred = Deferred(self._cancelled)
        self.pending: Deferred | None = None
        self.response: Response | None = None
        self.timeout_ms = timeout_ms
        self.timed_out = False
        self.finished = False
        self.timer = None
        self.seq = 0
        self.pieces: list[bytes] = []
        self._id_json = wirejson.dumps(request_id)

    def start(self) -> Deferred:
        if self.stream:
            self.streams.active[self.request_id] = self
        if self.timeout_ms is not None:
            self.timer = self.connection.server.clock.callLater(self.timeout_ms / 1000.0, self._deadline)
        self.pending = self.fetch.start()
        self.pending.addCallbacks(self._got_response, self._fetch_failed)
        return self.outer

    # The head

    def _got_response(self, response: Response) -> None:
        self.pending = None
        self.response = response
        if not self.stream:
            response.exchange.deliver(self)
            return
        self.outer.callback(_result(response, ""))
        # The response is on the wire now; only then may deltas follow.
        if self.finished or not self.connection.connected:
            self.abandon()
            return
        self.connection.addProducer(self)
        response.exchange.deliver(self)

    def _fetch_failed(self, failure: Failure) -> None:
        self.pending = None
        if self.finished:
            # Abandoned: nobody is waiting for an answer.
            return
        if failure.check(FetchError):
            text = str(failure.value)
        else:
            if not self.timed_out:
                log.failure("http/request failed unexpectedly", failure)
            text = str(SendError(self.fetch.url))
        self._finish()
        self.outer.errback(_failed(text))

    # The body (BodyConsumer)

    def body(self, pieces: list[bytes]) -> None:
        if not self.stream:
            self.pieces.extend(pieces)
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        view = memoryview(data)
        for offset in range(0, len(data), MAX_DELTA_BYTES):
            self._delta(view[offset:offset + MAX_DELTA_BYTES], False, None)

    def end(self, error: str | None) -> None:
        if self.finished:
            return
        self._finish()
        if self.stream:
            self._delta(b"", True, error)
        elif error is not None:
            self.outer.errback(rpc.internal_error(f"failed to read http/request response body: {error}"))
        else:
            data = b"".join(self.pieces)
            self.pieces = []
            encoded = pybase64.b64encode_as_string(data)
            self.outer.callback(_result(self.response, encoded))

    def _delta(self, data, done: bool, error: str | None) -> None:
        self.seq += 1
        self.connection.sendMessage(b"".join([
            _DELTA_START, self._id_json,
            b',"seq":%d,"deltaBase64":"' % self.seq,
            pybase64.b64encode(data),
            b'","done":', b"true" if done else b"false",
            b',"error":', b"null" if error is None else wirejson.dumps(error),
            b"}}",
        ]))

    # Ending

    def _deadline(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.response is not None:
            self.response.exchange.abort(BODY_ERROR)

    def _finish(self) -> None:
        """
        Stop the clock and give back the request id and the producer slot.
        """
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.stream:
            if self.streams.active.get(self.request_id) is self:
                del self.streams.active[self.request_id]
            self.connection.removeProducer(self)

    def _cancelled(self, _: Deferred) -> None:
        # The connection went away while we had not answered yet.
        self.abandon()

    def abandon(self) -> None:
        """
        Drop everything without a word: the connection is gone.
        """
        if not self.finished:
            self._finish()
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        if self.response is not None:
            self.response.exchange.abort(BODY_ERROR)

    # IPushProducer: the connection's send buffer paces the body.

    def pauseProducing(self) -> None:
        if self.response is not None:
            self.response.exchange.pause()

    def resumeProducing(self) -> None:
        if self.response is not None:
            self.response.exchange.resume()

    def stopProducing(self) -> None:
        self.abandon()


def http_request(connection: ServerConnection, p: dict) -> Deferred:
    request_id = p["requestId"]
    stream = p["streamResponse"]
    if stream and request_id in _Streams.of(connection).active:
        raise rpc.invalid_params(f"http/request streamResponse requestId `{request_id}` is already active")
    method = p["method"].encode("utf-8")
    if not is_token(method):
        raise rpc.invalid_params("http/request method is invalid: invalid HTTP method")
    url = _parse_url(p["url"])
    headers = request_headers(url, p["headers"])
    if p["timeoutMs"] == 0:
        raise _failed("route-aware request timed out")
    request = Request(method, url.without_credentials(), headers, p["bodyBase64"] or b"")
    call = _Call(connection, client_for(connection.server), request,
                 p["redirectPolicy"] == "follow", p["timeoutMs"], request_id, stream)
    return call.start()


METHODS = {
    "http/request": Method(FAMILY, HttpRequestParams, http_request),
}
