"""
The executor's link to its rendezvous, as codex exec-server 0.169.0 keeps
it:

 1. register once (C{POST .../register} with the executor's key): the
    socket URL and the registration id; failing here is fatal;
 2. dial the URL and serve (L{ExecutorRelay}) until the socket ends;
 3. dial the same URL again after 1 s, doubling to 30 s while it fails,
    each wait multiplied by a random factor in [0.5, 1);
 4. when the rendezvous refuses the URL with an HTTP 4xx status (codex
    0.169.0 does so for 400, 401, 403, 404 and 429 alike; 5xx statuses
    keep the URL), register again (same keys) at once, and dial the new
    URL after the wait.

Twisted's L{ClientService} runs steps 2 and 3 through
L{RendezvousEndpoint}, an endpoint whose "connection" is a relay socket and
whose protocol is an L{ExecutorRelay}.
"""

from __future__ import annotations

import functools
import random
from typing import Callable
from urllib.parse import urlsplit

from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.metrics import Metrics
from execserver.noise.keys import NoiseIdentity
from execserver.readiness import Readiness
from execserver.relay import socket as relay_socket
from execserver.relay.frames import Frame
from execserver.relay.socket import IRelaySocketOwner, RelayConnectError, RelaySocket
from execserver.remote.executor import ExecutorRelay
from execserver.remote.limits import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_JITTER_MIN,
    BACKOFF_MAX_SECONDS,
)
from execserver.remote.registry import Registration, RegistryClient, RegistryError

log = Logger()

#: The readiness conditions of an executor (L{execserver.readiness}).
REGISTERED = "registered"
CONNECTED = "connected"


def backoff(attempt: int, random: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before connection attempt C{attempt + 1} after
    C{attempt} failures in a row (L{ClientService}'s retry policy).
    """
    doublings = min(attempt - 1, 16)
    delay = min(BACKOFF_INITIAL_SECONDS * 2 ** doublings, BACKOFF_MAX_SECONDS)
    return delay * (BACKOFF_JITTER_MIN + (1 - BACKOFF_JITTER_MIN) * random())


class LinkRelay(ExecutorRelay):
    """
    An L{ExecutorRelay} as L{ClientService} sees a connection's protocol.

    @ivar disconnected: fires when its socket is gone.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.disconnected: Deferred = Deferred()

    def makeConnection(self, transport) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.socketLost(reason)
        self.disconnected.callback(None)


@implementer(IRelaySocketOwner)
class _Owner:
    """
    Hands a socket's events to the protocol L{ClientService} built (a proxy
    of a L{LinkRelay}, which must see C{makeConnection} and
    C{connectionLost}), and is that protocol's transport.

    @param readiness: told when the socket opens and when it is lost.
    """

    def __init__(self, protocol, readiness: Readiness | None) -> None:
        self.protocol = protocol
        self.readiness = readiness
        self.socket: RelaySocket | None = None

    def loseConnection(self) -> None:
        self.socket.close()

    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket
        self.protocol.makeConnection(self)
        self.protocol.socketOpened(socket)
        if self.readiness is not None:
            self.readiness.met(CONNECTED)

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        self.protocol.frameReceived(frame, raw)

    def invalidMessage(self, description: str) -> None:
        self.protocol.invalidMessage(description)

    def sendingPaused(self) -> None:
        self.protocol.sendingPaused()

    def sendingResumed(self) -> None:
        self.protocol.sendingResumed()

    def socketLost(self, reason: Failure) -> None:
        log.info("rendezvous socket closed ({reason})", noise_event="rendezvous_connection",
                 noise_outcome="disconnected", noise_side="executor",
                 reason=getattr(reason.value, "reason", reason.getErrorMessage()))
        if self.readiness is not None:
            self.readiness.lost(CONNECTED)
        self.protocol.connectionLost(reason)


class _RelayFactory:
    """Builds the relay of each socket, bound to the current registration."""

    def __init__(self, endpoint: "RendezvousEndpoint",
                 build_protocol: Callable[[], IMessageProtocol]) -> None:
        self.endpoint = endpoint
        self.build_protocol = build_protocol

    def buildProtocol(self, addr) -> LinkRelay:
        endpoint = self.endpoint
        registration = endpoint.registration
        # Harnesses are validated against the registration of this socket's
        # URL, which their prologues bind.
        validate = functools.partial(endpoint.registry.validate, endpoint.environment_id,
                                     registration.executor_registration_id)
        return LinkRelay(endpoint.clock, endpoint.identity, registration, validate,
                         self.build_protocol, endpoint.metrics)


@implementer(IStreamClientEndpoint)
class RendezvousEndpoint:
    """
    Registers (when it has no current registration) and opens the
    registration's socket.

    @param readiness: requires L{REGISTERED} and L{CONNECTED}, met while
        the executor is registered and its socket open.
    @param metrics: counts the relay frames of every socket.
    @ivar registration: the current registration, or C{None}.
    """

    def __init__(self, reactor, registry: RegistryClient, environment_id: str,
                 identity: NoiseIdentity, clock: IReactorTime | None = None,
                 trust_root=None, readiness: Readiness | None = None,
                 metrics: Metrics | None = None) -> None:
        self.reactor = reactor
        self.clock = clock or reactor
        self.registry = registry
        self.environment_id = environment_id
        self.identity = identity
        self.trust_root = trust_root
        self.readiness = readiness
        self.metrics = metrics
        self.registration: Registration | None = None
        if readiness is not None:
            readiness.require(REGISTERED)
            readiness.require(CONNECTED)

    def __repr__(self) -> str:
        return f"<rendezvous of environment {self.environment_id} at {self.registry.base_url}>"

    async def register(self) -> Registration:
        """
        @raise RegistryError: the registry refused, or answered a socket URL
            that is not C{ws://} or C{wss://}.
        """
        self.registration = None
        if self.readiness is not None:
            self.readiness.lost(REGISTERED)
        registration = await self.registry.register(self.environment_id, self.identity.public_key)
        parts = urlsplit(registration.websocket_url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise RegistryError("the environment registry's socket URL is not ws:// or wss://")
        log.info("registered with the environment registry", noise_event="registration",
                 noise_outcome="ok", noise_side="executor")
        self.registration = registration
        if self.readiness is not None:
            self.readiness.met(REGISTERED)
        return registration

    def connect(self, protocolFactory) -> Deferred:
        return ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, protocolFactory):
        if self.registration is None:
            await self.register()
        protocol = protocolFactory.buildProtocol(None)
        try:
            await relay_socket.connect(self.reactor, self.registration.websocket_url,
                                       _Owner(protocol, self.readiness), clock=self.clock,
                                       trust_root=self.trust_root)
        except RelayConnectError as e:
            log.info("could not open the rendezvous socket: {error}", error=str(e),
                     noise_event="rendezvous_connection", noise_outcome="error",
                     noise_side="executor")
            if e.status is not None and 400 <= e.status < 500:
                # The URL is refused (its ticket expired, say): a new
                # registration gives a new one (the same keys stay
                # registered).
                try:
                    await self.register()
                except RegistryError as registering:
                    log.info("registering again failed: {error}", error=str(registering))
            raise
        log.info("rendezvous socket open", noise_event="rendezvous_connection",
                 noise_outcome="ok", noise_side="executor")
        return protocol


class ExecutorLink(service.Service):
    """
    Registers, then keeps a socket to the rendezvous open, serving each
    stream on it with a protocol from C{build_protocol}.

    @param on_fatal: called with the error when the first registration
        fails (later failures are retried).
    @param random: the source of the backoff's jitter.
    @ivar client: the L{ClientService} that keeps the socket, once
        registered.
    """

    def __init__(self, endpoint: RendezvousEndpoint, build_protocol: Callable[[], IMessageProtocol],
                 on_fatal: Callable[[Exception], None],
                 random: Callable[[], float] = random.random) -> None:
        self.endpoint = endpoint
        self.build_protocol = build_protocol
        self.on_fatal = on_fatal
        self.random = random
        self.client: ClientService | None = None
        self._starting: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._starting = ensureDeferred(self._start())
        self._starting.addErrback(lambda failure: failure.trap(CancelledError))

    async def _start(self) -> None:
        try:
            await self.endpoint.register()
        except RegistryError as e:
            log.critical("registration failed: {error}", error=str(e), noise_event="registration",
                         noise_outcome="error", noise_side="executor")
            self.on_fatal(e)
            return
        self.client = ClientService(
            self.endpoint, _RelayFactory(self.endpoint, self.build_protocol),
            retryPolicy=lambda attempt: backoff(attempt, self.random), clock=self.endpoint.clock)
        self.client.startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.client is not None:
            return self.client.stopService()
        if self._starting is not None:
            self._starting.cancel()
        return None
