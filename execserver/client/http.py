"""
HTTP helpers: C{http/request}, buffered or with a streamed body.

A streamed body arrives as C{http/request/bodyDelta} notifications numbered
from 1 after the response; they are registered under the request id before
the request is sent, so nothing is missed. The server cancels body streams
when their connection ends, and C{http/request} is not repeatable, so a
stream in progress when the connection drops fails with L{HandleLost}.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import pybase64
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from execserver.client.encoding import decode_base64
from execserver.client.errors import ClientError, HandleLost, ProtocolViolation
from execserver.client.process import Observer

if TYPE_CHECKING:
    from execserver.client.core import ExecServerClient


class BodyFailed(ClientError):
    """
    The server could not read the rest of a streamed response body.
    """


class IBodyReceiver(Interface):
    def dataReceived(data: bytes) -> None:
        """
        The next piece of the body.
        """

    def bodyEnded() -> None:
        """
        The whole body has been delivered.
        """

    def bodyFailed(reason: Failure) -> None:
        """
        The body could not be delivered completely.
        """


@dataclass
class HttpResponse:
    status: int
    #: (name, value) pairs as the server reported them (lower-case names).
    headers: list[tuple[str, str]]
    #: The body of a buffered request; None when it is streamed.
    body: bytes | None
    #: The body of a streamed request.
    stream: "BodyStream | None" = field(default=None)

    def header(self, name: str) -> str | None:
        """
        The first value of a header, if present.
        """
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@implementer(IPushProducer)
class BodyStream:
    """
    A streamed response body. Pieces that arrive before a receiver is given
    to L{deliver} are kept until then.
    """

    def __init__(self, client: "ExecServerClient", request_id: str) -> None:
        self._client = client
        self.request_id = request_id
        self._next_seq = 1
        self._early: list[bytes] | None = []
        self._receiver = None
        self._ended = Observer()
        self._paused = False

    def deliver(self, receiver) -> None:
        """
        Hand the body to an L{IBodyReceiver}; it may pause this stream.
        """
        self._receiver = receiver
        early, self._early = self._early, None
        for data in early or ():
            receiver.dataReceived(data)
        if self._ended.done:
            self._ended.wait().addCallbacks(lambda _: receiver.bodyEnded(), receiver.bodyFailed)

    def content(self) -> Deferred:
        """
        @return: fires with the whole body.
        """
        collector = _Collector()
        self.deliver(collector)
        return self._ended.wait().addCallback(lambda _: b"".join(collector.pieces))

    def pauseProducing(self) -> None:
        if not self._paused and not self._ended.done:
            self._paused = True
            self._client._pause_reading(self)

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._client._resume_reading(self)

    def stopProducing(self) -> None:
        self.resumeProducing()

    # Driven by the client

    def _delta(self, params: dict[str, Any]) -> None:
        if self._ended.done:
            return
        if params["seq"] != self._next_seq:
            self._fail(ProtocolViolation(
                f"body delta {params['seq']} of request {self.request_id} arrived when "
                f"{self._next_seq} was expected"
            ))
            return
        self._next_seq += 1
        data = decode_base64(params["deltaBase64"])
        if data:
            if self._receiver is None:
                self._early.append(data)
            else:
                self._receiver.dataReceived(data)
        if params["done"]:
            if params.get("error"):
                self._fail(BodyFailed(params["error"]))
            else:
                self._end(None)

    def _connection_lost(self) -> None:
        self._fail(HandleLost(
            f"the connection was lost while the body of HTTP request {self.request_id} "
            "was streaming; the server cancels body streams with their connection"
        ))

    def _fail(self, error: Exception) -> None:
        self._end(Failure(error))

    def _end(self, result) -> None:
        if self._ended.done:
            return
        self.resumeProducing()
        self._client._streams.pop(self.request_id, None)
        self._ended.fire(result)
        receiver = self._receiver
        if receiver is not None and not isinstance(receiver, _Collector):
            if isinstance(result, Failure):
                receiver.bodyFailed(result)
            else:
                receiver.bodyEnded()


@implementer(IBodyReceiver)
class _Collector:
    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def bodyEnded(self) -> None:
        pass

    def bodyFailed(self, reason: Failure) -> None:
        pass


class Http:
    """
    C{http/request} of one client (C{client.http}).
    """

    def __init__(self, client: "ExecServerClient") -> None:
        self._client = client

    def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str] | dict] = (),
        body: bytes | None = None,
        timeout_ms: int | None = None,
        redirect: str = "follow",
        stream: bool = False,
    ) -> Deferred:
        """
        Have the server make an HTTP request.

        @param headers: C{(name, value)} pairs, or wire objects such as
            C{{"name": ..., "value": ..., "valueEnvVar": ...}}.
        @param redirect: C{follow} or C{stop}.
        @param stream: deliver the body through L{HttpResponse.stream}.
        @return: fires with an L{HttpResponse}.
        """
        request_id = uuid.uuid4().hex
        params: dict[str, Any] = {
            "method": method,
            "url": url,
            "headers": [
                header if isinstance(header, dict) else {"name": header[0], "value": header[1]}
                for header in headers
            ],
            "timeoutMs": timeout_ms,
            "redirectPolicy": redirect,
            "requestId": request_id,
            "streamResponse": stream,
        }
        if body is not None:
            params["bodyBase64"] = pybase64.b64encode_as_string(body)
        body_stream = None
        if stream:
            body_stream = BodyStream(self._client, request_id)
            self._client._streams[request_id] = body_stream

        def answered(result: dict) -> HttpResponse:
            pairs = [(header["name"], header["value"]) for header in result["headers"]]
            if body_stream is not None:
                return HttpResponse(result["status"], pairs, None, body_stream)
            return HttpResponse(result["status"], pairs, decode_base64(result["bodyBase64"]))

        def failed(reason: Failure) -> Failure:
            if body_stream is not None:
                self._client._streams.pop(request_id, None)
            return reason

        return self._client.call("http/request", params).addCallbacks(answered, failed)
