"""
One node of a rendezvous cluster: several rendezvous processes sharing
their state in Redis (L{RedisStore}); see docs/rendezvous-cluster.md.

  - An executor's home is the node its socket reached. That node claims
    the home in the store when the socket opens, refreshes it (and the
    registration) every L{HEARTBEAT_SECONDS} while the socket lasts, and
    releases it when the socket goes. A node that dies stops refreshing:
    its presence expires after L{NODE_SECONDS}, its homes after
    L{HOME_SECONDS}, and its executors, redialling their URL, reach
    another node, which becomes their home.
  - The registry (any node) hands a harness the URL of its executor's home
    node, so that the harness's frames and the executor's meet on one node.
  - A harness socket that reaches another node anyway is forwarded: that
    node opens a relay socket to the home node (C{role=forward}, with a
    single-use ticket from the store) and passes frames both ways, bytes
    unchanged, with back-pressure; either socket ending closes the other,
    and the harness starts a new stream (the relay's reset and resume).
"""

from __future__ import annotations

import secrets
from typing import Hashable
from urllib.parse import quote

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.relay import socket as relay_socket
from execserver.relay.frames import Frame
from execserver.relay.socket import IRelaySocketOwner, RelaySocket
from execserver.rendezvous.limits import HEARTBEAT_SECONDS
from execserver.rendezvous.redisstore import IClusterStore, Node
from execserver.rendezvous.router import Router

log = Logger()

#: The role of a node-to-node socket in C{/ws/environment/{id}?role=...}.
ROLE_FORWARD = "forward"


def new_node_id() -> str:
    return "node-" + secrets.token_hex(6)


class ClusterNode(service.Service):
    """
    This process as a node: its presence, the homes of the executors
    connected to it, and forwards to other nodes.

    @ivar node: this node's id and URLs.
    """

    def __init__(self, reactor, store: IClusterStore, router: Router, node: Node) -> None:
        self.reactor = reactor
        self.store = store
        self.router = router
        self.node = node
        self._beating = LoopingCall(self._beat)
        self._beating.clock = reactor

    @property
    def node_id(self) -> str:
        return self.node.node_id

    def startService(self) -> None:
        super().startService()
        self._beating.start(HEARTBEAT_SECONDS, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._beating.running:
            self._beating.stop()
        return self.store.leave(self.node, self.router.executors()).addErrback(
            lambda failure: log.failure("rendezvous node: leaving the cluster failed", failure))

    def _beat(self) -> Deferred:
        d = self.store.heartbeat(self.node, self.router.executors())

        def moved(environment_ids: list[str]) -> None:
            for environment_id in environment_ids:
                log.info("rendezvous node: executor of {environment} has another home now",
                         environment=environment_id)

        d.addCallbacks(moved, lambda failure: log.failure(
            "rendezvous node: heartbeat failed", failure))
        return d

    def executor_here(self, environment_id: str) -> None:
        self.store.claim_home(environment_id, self.node_id).addErrback(
            lambda failure: log.failure("rendezvous node: claiming a home failed", failure))

    def executor_gone(self, environment_id: str) -> None:
        self.store.release_home(environment_id, self.node_id).addErrback(
            lambda failure: log.failure("rendezvous node: releasing a home failed", failure))

    def home(self, environment_id: str) -> Deferred:
        """Fires with the live L{Node} holding the executor's socket, or C{None}."""
        return self.store.home(environment_id)

    def forward(self, environment_id: str, home: Node) -> Deferred:
        """
        Open a relay socket to C{home} for a harness socket that reached
        this node. Fires with the owner of the harness socket, or fails with
        L{relay_socket.RelayConnectError}.
        """
        return ensureDeferred(self._forward(environment_id, home))

    async def _forward(self, environment_id: str, home: Node) -> "ForwardedHarness":
        ticket = await self.store.forward_ticket(environment_id)
        url = (f"{home.peer_url.rstrip('/')}/ws/environment/{quote(environment_id, safe='')}"
               f"?role={ROLE_FORWARD}&ticket={ticket}")
        upstream = _Upstream()
        await relay_socket.connect(self.reactor, url, upstream)
        log.debug("rendezvous node: forwarding a harness to node {node}", node=home.node_id)
        return ForwardedHarness(upstream)


@implementer(IRelaySocketOwner)
class _Upstream:
    """The socket to the home node: its frames go to the harness."""

    def __init__(self) -> None:
        self.socket: RelaySocket | None = None
        self.harness: RelaySocket | None = None
        self.pending: list[bytes] = []
        self.lost = False

    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        if self.harness is None:
            self.pending.append(raw)
        else:
            self.harness.writeFrame(raw)

    def invalidMessage(self, description: str) -> None:
        log.debug("rendezvous node: dropped a message: {description}", description=description)

    def sendingPaused(self) -> None:
        if self.harness is not None:
            self.harness.pauseReading(self)

    def sendingResumed(self) -> None:
        if self.harness is not None:
            self.harness.resumeReading(self)

    def socketLost(self, reason: Failure) -> None:
        self.lost = True
        if self.harness is not None:
            self.harness.close()


@implementer(IRelaySocketOwner)
class ForwardedHarness:
    """A harness socket whose frames go to the home node, and back."""

    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream

    def socketOpened(self, socket: RelaySocket) -> None:
        upstream = self.upstream
        upstream.harness = socket
        for raw in upstream.pending:
            socket.writeFrame(raw)
        upstream.pending.clear()
        if upstream.lost:
            socket.close()
        elif upstream.socket.sending_paused:
            socket.pauseReading(upstream)

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        self.upstream.socket.writeFrame(raw)

    def invalidMessage(self, description: str) -> None:
        log.debug("rendezvous node: dropped a message: {description}", description=description)

    def _pause(self, reason: Hashable, paused: bool) -> None:
        if paused:
            self.upstream.socket.pauseReading(reason)
        else:
            self.upstream.socket.resumeReading(reason)

    def sendingPaused(self) -> None:
        self._pause(self, True)

    def sendingResumed(self) -> None:
        self._pause(self, False)

    def socketLost(self, reason: Failure) -> None:
        if not self.upstream.lost:
            self.upstream.socket.close()
