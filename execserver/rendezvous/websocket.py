"""
The rendezvous's WebSocket endpoint:

    GET /ws/environment/{environment_id}?role=environment&ticket=T   the executor
    GET /ws/environment/{environment_id}?role=harness&ticket=T       a harness

In a cluster (L{execserver.rendezvous.cluster}) a node also takes

    GET /ws/environment/{environment_id}?role=forward&ticket=T       a forwarded harness

from another node, and forwards a harness whose executor is elsewhere.
The ticket comes from the registry (C{register} or C{connect}); an
unknown, used or expired one is refused with HTTP 401, which tells codex's
executor to register again and a harness to fetch a new bundle. After the
upgrade each socket is a relay socket (L{execserver.relay.socket}) whose
frames go to the L{Router}; text messages and invalid frames are dropped,
as codex's executor drops them.
"""

from __future__ import annotations

from typing import Hashable
from urllib.parse import unquote

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.relay.frames import Frame
from execserver.relay.socket import (
    IRelaySocketOwner,
    RelayConnectError,
    RelayServerProtocol,
    RelaySocket,
    configure_server_factory,
)
from execserver.rendezvous.cluster import ROLE_FORWARD
from execserver.rendezvous.router import IRelayPeer, Router

log = Logger()

ROLE_EXECUTOR = "environment"
ROLE_HARNESS = "harness"


@implementer(IRelaySocketOwner, IRelayPeer)
class _End:
    """One accepted socket: the router's peer, and the socket's owner."""

    def __init__(self, router: Router, environment_id: str) -> None:
        self.router = router
        self.environment_id = environment_id
        self.socket: RelaySocket | None = None

    # IRelayPeer

    def writeFrame(self, raw: bytes) -> None:
        self.socket.writeFrame(raw)

    def close(self) -> None:
        self.socket.close()

    def abort(self) -> None:
        self.socket.abort()

    def pauseReading(self, reason: Hashable) -> None:
        self.socket.pauseReading(reason)

    def resumeReading(self, reason: Hashable) -> None:
        self.socket.resumeReading(reason)

    # IRelaySocketOwner

    def invalidMessage(self, description: str) -> None:
        log.debug("rendezvous: dropped a message: {description}", description=description)


class _ExecutorEnd(_End):
    def __init__(self, router: Router, environment_id: str, node=None) -> None:
        super().__init__(router, environment_id)
        self.node = node

    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket
        self.router.executor_connected(self.environment_id, self)
        if self.node is not None:
            self.node.executor_here(self.environment_id)

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        self.router.from_executor(self, frame, raw)

    def sendingPaused(self) -> None:
        self.router.executor_blocked(self, True)

    def sendingResumed(self) -> None:
        self.router.executor_blocked(self, False)

    def socketLost(self, reason: Failure) -> None:
        self.router.executor_lost(self)
        if self.node is not None and not self.router.has_executor(self.environment_id):
            self.node.executor_gone(self.environment_id)


class _HarnessEnd(_End):
    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket
        if not self.router.harness_connected(self.environment_id, self):
            socket.close()

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        self.router.from_harness(self, frame, raw)

    def sendingPaused(self) -> None:
        self.router.harness_blocked(self, True)

    def sendingResumed(self) -> None:
        self.router.harness_blocked(self, False)

    def socketLost(self, reason: Failure) -> None:
        self.router.harness_lost(self)


class RendezvousSocket(RelayServerProtocol):
    """
    Admits a socket by its ticket, then relays. The factory holds the
    L{execserver.rendezvous.site.Rendezvous}.
    """

    def onConnect(self, request):
        return ensureDeferred(self._admit(request))

    async def _admit(self, request) -> None:
        rendezvous = self.factory.rendezvous
        segments = request.path.strip("/").split("/")
        if len(segments) != 3 or segments[:2] != ["ws", "environment"] or not segments[2]:
            raise ConnectionDeny(404, "Not Found")
        environment_id = unquote(segments[2])
        role = request.params.get("role", [""])[0]
        ticket = request.params.get("ticket", [""])[0]
        if role == ROLE_EXECUTOR:
            registration = await rendezvous.store.executor_ticket(environment_id, ticket)
            if registration is None:
                raise ConnectionDeny(401, "Unauthorized")
            self.owner = _ExecutorEnd(rendezvous.router, environment_id, rendezvous.node)
        elif role == ROLE_HARNESS:
            grant = await rendezvous.store.harness_ticket(environment_id, ticket)
            if grant is None:
                raise ConnectionDeny(401, "Unauthorized")
            self.owner = await self._harness_owner(rendezvous, environment_id)
        elif role == ROLE_FORWARD and rendezvous.node is not None:
            if not await rendezvous.store.use_forward_ticket(environment_id, ticket):
                raise ConnectionDeny(401, "Unauthorized")
            self.owner = _HarnessEnd(rendezvous.router, environment_id)
        else:
            raise ConnectionDeny(400, "Bad Request")
        log.debug("rendezvous: {role} socket admitted", role=role)


    async def _harness_owner(self, rendezvous, environment_id: str):
        """
        The harness's end here, or, when its executor's home is another
        node, a forward to that node (HTTP 503 if it cannot be reached).
        """
        node = rendezvous.node
        if node is not None:
            home = await node.home(environment_id)
            if home is not None and home.node_id != node.node_id:
                try:
                    return await node.forward(environment_id, home)
                except RelayConnectError as e:
                    log.info("rendezvous: cannot forward a harness: {error}", error=str(e))
                    raise ConnectionDeny(503, "Service Unavailable") from None
        return _HarnessEnd(rendezvous.router, environment_id)


def websocket_factory(rendezvous) -> WebSocketServerFactory:
    """The autobahn factory of the rendezvous's sockets."""
    factory = WebSocketServerFactory()
    factory.protocol = RendezvousSocket
    factory.rendezvous = rendezvous
    configure_server_factory(factory, rendezvous.clock)
    return factory
