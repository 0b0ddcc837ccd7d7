"""
The client side of one JSON-RPC connection: request ids, pending calls and
notification dispatch over any L{IMessageTransport}.

This layer knows nothing about sessions or reconnecting. When its transport
goes away it tells its owner first and then fails every pending call with
L{ConnectionDropped}, so the owner can decide what each call becomes.

Messages from the server are trusted to be well-formed JSON (the standard
library's C parser); the server-side limits and serde error texts of
L{execserver.rpc.parse} are not needed to read them. The chunk of a
process/output notification is handed on decoded, as bytes.
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, Callable

import pybase64
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver import rpc
from execserver.client.encoding import decode_base64
from execserver.client.errors import ConnectionDropped, RemoteError, describe
from execserver.interfaces import IMessageProtocol, IMessageTransport, PeerGoingAway

log = Logger()

NotificationHandler = Callable[["RpcConnection", str, Any], None]
LostHandler = Callable[["RpcConnection", Failure], None]


@implementer(IMessageProtocol)
class RpcConnection:
    """
    One connection's JSON-RPC client.

    @ivar connected: a transport is attached and has not gone away.
    @ivar lost: the transport went away (or was never attached and the
        connection was abandoned); nothing more will be sent or received.
    @ivar going_away: the server closed the connection because it is
        shutting down.
    """

    #: Messages may come as views of the transport's buffer: each is read
    #: (or copied) before messageReceived returns.
    takes_views = True

    def __init__(self, on_notification: NotificationHandler, on_lost: LostHandler) -> None:
        self._on_notification = on_notification
        self._on_lost = on_lost
        self.transport: IMessageTransport | None = None
        self.connected = False
        self.lost = False
        self.going_away = False
        self._next_id = 0
        self._pending: dict[int, tuple[str, Deferred]] = {}
        self._reading_paused = False

    # IMessageProtocol

    def makeConnection(self, transport: IMessageTransport) -> None:
        self.transport = transport
        if self.lost:
            # Abandoned while connecting: the connection arrived too late.
            transport.abortConnection()
            return
        self.connected = True
        if self._reading_paused:
            self._set_reading(False)

    def messageReceived(self, data: bytes | str | memoryview) -> None:
        if self.lost:
            return
        output = _output_params(data)
        if output is not None:
            self._on_notification(self, "process/output", output)
            return
        if isinstance(data, memoryview):
            data = bytes(data)
        try:
            message = rpc.classify(json.loads(data))
        except (ValueError, rpc.MalformedMessage) as e:
            log.warn("ignoring a malformed message from the server: {error}", error=str(e))
            return
        if isinstance(message, rpc.Notification):
            params = message.params
            if (message.method == "process/output" and isinstance(params, dict)
                    and isinstance(params.get("chunk"), str)):
                params["chunk"] = decode_base64(params["chunk"])
            self._on_notification(self, message.method, params)
        elif isinstance(message, rpc.Response):
            entry = self._pending.pop(message.id, None)
            if entry is not None:
                entry[1].callback(message.result)
        elif isinstance(message, rpc.ErrorResponse):
            entry = self._pending.pop(message.id, None)
            if entry is not None:
                entry[1].errback(RemoteError(message.code, message.message, entry[0]))
            else:
                log.warn("the server reported an error for no pending request: "
                         "{code} {message}", code=message.code, message=message.message)
        else:
            # Server-to-client requests (network/policyRequest) only follow a
            # networkProxy launch, which this client never asks for.
            self.transport.sendMessage(rpc.encode_error(
                message.id, rpc.METHOD_NOT_FOUND,
                f"execserver client does not implement `{message.method}`",
            ))

    def connectionLost(self, reason: Failure) -> None:
        if self.lost:
            return
        self.lost = True
        self.connected = False
        self.going_away = reason.check(PeerGoingAway) is not None
        pending, self._pending = self._pending, {}
        self._on_lost(self, reason)
        error = ConnectionDropped(f"the connection was lost: {describe(reason)}")
        for _method, waiter in pending.values():
            waiter.errback(error)

    # Requests

    def request(self, method: str, params: Any) -> Deferred:
        """
        Send a request; the Deferred fires with its result, or fails with
        L{RemoteError} or L{ConnectionDropped}.
        """
        if not self.connected:
            return fail(ConnectionDropped("not connected"))
        self._next_id += 1
        waiter = Deferred()
        self._pending[self._next_id] = (method, waiter)
        self.transport.sendMessage(rpc.encode_request(self._next_id, method, params))
        return waiter

    def notify(self, method: str, params: Any) -> None:
        if self.connected:
            self.transport.sendMessage(rpc.encode_notification(method, params))

    def abandon(self) -> None:
        """
        Drop this connection (or the attempt to make it) without reporting
        the loss to the owner, which has already moved on.
        """
        self._on_lost = lambda connection, reason: None
        if self.connected:
            self.transport.abortConnection()
        self.connectionLost(Failure(ConnectionDropped("abandoned")))

    def close(self) -> None:
        """
        Close cleanly after what was already sent.
        """
        if self.connected:
            self.transport.loseConnection()

    # Back-pressure

    def pause_reading(self) -> None:
        self._reading_paused = True
        self._set_reading(False)

    def resume_reading(self) -> None:
        self._reading_paused = False
        self._set_reading(True)

    def _set_reading(self, reading: bool) -> None:
        if self.connected:
            if reading:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()


#: How every server we know sends process/output, up to the chunk. A message
#: of exactly this shape is read without parsing its chunk (nearly all of
#: it) as JSON; anything else takes the full parse.
_OUTPUT_HEAD = re.compile(
    rb'\{"method":"process/output","params":\{"processId":"([^"\\\x00-\x1f]*)",'
    rb'"seq":(0|[1-9][0-9]{0,18}),"stream":"(stdout|stderr|pty)","chunk":"')
_OUTPUT_TAIL = b'"}}'


def _output_params(data: bytes | str | memoryview) -> dict[str, Any] | None:
    """
    The params of a process/output notification of the usual shape, its
    chunk decoded; None for any other message.
    """
    if isinstance(data, str):
        # The stdio transport hands over text.
        return None
    match = _OUTPUT_HEAD.match(data)
    if match is None or data[-len(_OUTPUT_TAIL):] != _OUTPUT_TAIL:
        return None
    try:
        process_id = match.group(1).decode()
        # Strict base64 has neither the quote that would end the string
        # early nor the backslash of an escape: a chunk it refuses takes
        # the full parse.
        chunk = pybase64.b64decode(memoryview(data)[match.end():-len(_OUTPUT_TAIL)],
                                   validate=True)
    except (UnicodeDecodeError, binascii.Error):
        return None
    return {"processId": process_id, "seq": int(match.group(2)),
            "stream": match.group(3).decode(), "chunk": chunk}
