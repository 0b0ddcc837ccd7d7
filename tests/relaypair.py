"""
Two relay sockets joined in memory (L{twisted.test.iosim}): the dialling
side from L{RelayClientFactory}, the accepting side a
L{RelayServerProtocol}, each with an owner that records what it is told
(or, dialling, the owner given: an executor's relay).
Time is a L{task.Clock}; L{RelayPair.flush} moves every byte.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet import task
from twisted.test import iosim
from zope.interface import implementer

from execserver.relay import socket as relay_socket
from execserver.relay.socket import IRelaySocketOwner


@implementer(IRelaySocketOwner)
class RecordingOwner:
    def __init__(self) -> None:
        self.socket = None
        self.frames = []
        self.invalid: list[str] = []
        self.sending: list[str] = []
        self.lost = []

    def socketOpened(self, socket) -> None:
        self.socket = socket

    def frameReceived(self, frame, raw: bytes) -> None:
        self.frames.append((frame, raw))

    def invalidMessage(self, description: str) -> None:
        self.invalid.append(description)

    def sendingPaused(self) -> None:
        self.sending.append("paused")

    def sendingResumed(self) -> None:
        self.sending.append("resumed")

    def socketLost(self, reason) -> None:
        self.lost.append(reason)


class _Accepting(relay_socket.RelayServerProtocol):
    def onConnect(self, request):
        self.owner = self.factory.owner


class _SilentAccepting(_Accepting):
    """A peer that never answers Pings."""

    def onPing(self, payload: bytes) -> None:
        pass


class RelayPair:
    def __init__(self, silent_server: bool = False, client_owner=None, clock=None) -> None:
        self.clock = clock or task.Clock()
        self.server_owner = RecordingOwner()
        self.client_owner = client_owner or RecordingOwner()
        factory = WebSocketServerFactory()
        factory.protocol = _SilentAccepting if silent_server else _Accepting
        factory.owner = self.server_owner
        relay_socket.configure_server_factory(factory, self.clock)
        self.client_factory = relay_socket.RelayClientFactory(
            "ws://rendezvous.test/ws/environment/e?role=harness&ticket=secret",
            self.client_owner, self.clock)
        self.server = factory.buildProtocol(None)
        self.client = self.client_factory.buildProtocol(None)
        self.pump = iosim.connect(
            self.server, iosim.makeFakeServer(self.server),
            self.client, iosim.makeFakeClient(self.client), clock=self.clock)

    def flush(self) -> None:
        """Move every byte, running what the sockets left for the end of the turn."""
        self.pump.flush(advanceClock=True)
