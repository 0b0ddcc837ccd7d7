"""
What the client library raises.

Every failure a caller can see is a L{ClientError}. The ones that matter for
recovery say exactly what is known about the request or process involved,
because after a dropped connection "failed" and "unknown" are different
answers.
"""

from __future__ import annotations

import os

from twisted.internet import error as internet_error
from twisted.python.failure import Failure


class ClientError(Exception):
    """
    Base of every error the client library raises.
    """

    def __str__(self) -> str:
        return self.args[0] if self.args else type(self).__name__


class RemoteError(ClientError):
    """
    The server answered a request with a JSON-RPC error.

    C{code} is the server's code (e.g. -32004 for a missing file) and
    C{message} its text, which is what C{str()} gives.
    """

    def __init__(self, code: int, message: str, method: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.method = method

    def __repr__(self) -> str:
        return f"RemoteError({self.code}, {self.message!r}, method={self.method!r})"


class ConnectFailed(ClientError):
    """
    The first connection (or its handshake) could not be established.
    """


class ConnectionDropped(ClientError):
    """
    The transport of one connection went away. Used inside the library: a
    caller sees it only for requests that cannot survive a reconnect (see
    L{OutcomeUnknown}, L{HandleLost}).
    """


class OutcomeUnknown(ClientError):
    """
    The connection dropped while a mutating request (other than
    C{process/write}) was in flight. The server may or may not have carried
    it out; the client does not send it again.
    """

    def __init__(self, method: str) -> None:
        super().__init__(
            f"the connection was lost while {method} was in flight; the server may or "
            "may not have carried it out, and it is not sent again"
        )
        self.method = method


class StartNotApplied(ClientError):
    """
    The connection dropped while C{process/start} was in flight, and the
    resumed session shows that the server never started the process.
    """


class HandleLost(ClientError):
    """
    A per-connection resource (an open file or a streamed HTTP body) was lost
    with its connection: the server closes those when a connection ends, and
    a resumed session does not bring them back.
    """


class RecoveryFailed(ClientError):
    """
    The connection dropped and the session could not be resumed in time (or
    at all). Every pending call and process handle fails with this error.
    """


class ServerGoingAway(RecoveryFailed):
    """
    The server closed the connection because it is shutting down: the
    session ends with it, so the client does not try to resume it.
    """


class OutputLost(ClientError):
    """
    Output of one process that this client never received has fallen out of
    the server's replay window. Only that process's handle fails.
    """

    def __init__(self, process_id: str, first_missing: int, missing: int) -> None:
        super().__init__(
            f"output of process {process_id} fell out of the server's replay window: "
            f"{missing} event(s) from sequence number {first_missing} on were never "
            "received and can no longer be read"
        )
        self.process_id = process_id
        self.first_missing = first_missing
        self.missing = missing


class ProcessLost(ClientError):
    """
    The server no longer knows a process this client was following (it was
    evicted, or the session was replaced).
    """


class ProtocolViolation(ClientError):
    """
    The server sent something that contradicts the protocol.
    """


class ClientClosed(ClientError):
    """
    The client was closed while the request or process was pending.
    """


def describe(reason: Failure) -> str:
    """
    Why something failed, in a few words for an error message: the server's
    message, the OS error of a failed connect, the WebSocket close reason.
    """
    value = reason.value
    if isinstance(value, RemoteError):
        return value.message
    if isinstance(value, internet_error.ConnectError) and value.osError:
        # The OS error as an errno, or as "111: Connection refused".
        if isinstance(value.osError, int):
            return os.strerror(value.osError)
        return str(value.osError).split(": ", 1)[-1]
    if (isinstance(value, ConnectionError) and len(value.args) == 2
            and isinstance(value.args[1], str)):
        # autobahn's (close code, close reason)
        return value.args[1]
    return str(value) or type(value).__name__
