"""
The harness side of remote mode: L{RelayConnector} opens an encrypted
relay stream to an executor for the JSON-RPC client.

For every physical connection (the first, and each after a drop):

 1. a fresh connect bundle from the registry (L{RegistryClient.connect}),
 2. a relay socket to the bundle's URL (HTTP 401 on the upgrade: one more
    try with another fresh bundle),
 3. a new UUIDv4 stream: C{resume}, then C{handshake} with Noise message 1
    (the bundle's authorization as payload, the executor key pinned from
    the bundle, the prologue binding environment, registration and
    stream),
 4. the executor's C{handshake} (message 2) gives the transport ciphers,
    and the stream becomes a L{NoiseStream} handed to the client.

The harness identity is generated once per connector and kept across
reconnects, so the client's session resume works unchanged. Before the
handshake completes, a C{reset}, a C{data} frame, an invalid frame or a
closed socket fail the attempt; after it, the stream ending closes the
socket, and the socket ending (a protocol error, a Pong timeout, the
rendezvous going away) ends the stream. Nothing ever falls back to
plaintext.
"""

from __future__ import annotations

import uuid
from typing import Mapping

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.client.connectors import RECEIVE_BUFFER_BYTES, IConnector
from execserver.interfaces import IMessageProtocol
from execserver.noise.channel import NoiseStream
from execserver.noise.errors import HandshakeFailed
from execserver.noise.handshake import Initiator, prologue
from execserver.noise.keys import NoiseIdentity, require_mlkem
from execserver.relay import socket as relay_socket
from execserver.relay.frames import Frame, FrameKind, encode_handshake, encode_resume
from execserver.relay.socket import RelayConnectError, RelaySocket, public_url
from execserver.remote.registry import ConnectBundle, RegistryClient

log = Logger()

#: Seconds from sending Noise message 1 to receiving message 2 (the
#: executor asks the registry, which codex bounds to 10 s).
HANDSHAKE_TIMEOUT_SECONDS = 10.0

#: Fresh bundles tried when the rendezvous refuses the upgrade with 401.
UNAUTHORIZED_RETRIES = 1


class HandshakeError(ConnectionError):
    """The relay stream could not be established; C{str()} says why."""


class _HarnessSocket:
    """
    Owns a harness's relay socket: waits for Noise message 2 on its one
    stream, then leaves the stream's frames to the L{NoiseStream}.
    """

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.socket: RelaySocket | None = None
        self.reply: Deferred = Deferred()

    def _fail(self, message: str) -> None:
        if not self.reply.called:
            self.reply.errback(HandshakeError(message))

    # IRelaySocketOwner

    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        if frame.stream_id != self.stream_id or self.reply.called:
            return
        kind = frame.kind
        if kind is FrameKind.HANDSHAKE:
            self.reply.callback(frame.payload)
        elif kind is FrameKind.RESET:
            self._fail("Noise relay stream reset")
        elif kind is FrameKind.DATA:
            self._fail("received data before handshake completion")

    def invalidMessage(self, description: str) -> None:
        # A harness trusts a misbehaving relay with nothing: give up the socket.
        log.info("relay socket: {description}; closing", description=description)
        self._fail(f"invalid relay message: {description}")
        if self.socket is not None:
            self.socket.close()

    def sendingPaused(self) -> None:
        pass

    def sendingResumed(self) -> None:
        pass

    def socketLost(self, reason: Failure) -> None:
        self._fail(f"the relay socket closed during the handshake ({reason.getErrorMessage()})")

    # The stream's end

    def stream_ended(self, reason: Failure) -> None:
        if reason.check(ConnectionAborted):
            self.socket.abort()
        else:
            self.socket.close()


@implementer(IConnector)
class RelayConnector:
    """
    Connects to one environment through its registry and rendezvous.

    @param token: the registry bearer token.
    @param environ: where the registry client reads its proxy settings.
    @param trust_root: certificate authorities for https and wss (the
        platform's when C{None}).
    """

    resumable = True

    def __init__(self, reactor, registry_url: str, environment_id: str, token: str, *,
                 account_id: str | None = None, environ: Mapping[str, str] | None = None,
                 clock: IReactorTime | None = None, trust_root=None,
                 identity: NoiseIdentity | None = None,
                 receive_buffer: int | None = RECEIVE_BUFFER_BYTES) -> None:
        environment_id = environment_id.strip()
        if not environment_id:
            raise ValueError("an environment id is required")
        if identity is None:
            require_mlkem()
            identity = NoiseIdentity.generate()
        self.reactor = reactor
        self.clock = clock or reactor
        self.environment_id = environment_id
        self.identity = identity
        self.trust_root = trust_root
        self.receive_buffer = receive_buffer
        self.registry = RegistryClient(reactor, registry_url, token, account_id=account_id,
                                       environ=environ, clock=self.clock, trust_root=trust_root)
        self.description = f"environment {environment_id} at {self.registry.base_url}"

    def connect(self, message_protocol: IMessageProtocol) -> Deferred:
        return ensureDeferred(self._connect(message_protocol))

    async def _connect(self, message_protocol: IMessageProtocol) -> NoiseStream:
        retries = UNAUTHORIZED_RETRIES
        while True:
            bundle = await self.registry.connect(self.environment_id, self.identity.public_key)
            try:
                return await self._open(bundle, message_protocol)
            except RelayConnectError as e:
                if e.status != 401 or not retries:
                    raise
                retries -= 1
                log.info("rendezvous refused the connection (HTTP 401); fetching a new bundle")

    async def _open(self, bundle: ConnectBundle, message_protocol: IMessageProtocol) -> NoiseStream:
        stream_id = str(uuid.uuid4())
        owner = _HarnessSocket(stream_id)
        socket = await relay_socket.connect(
            self.reactor, bundle.websocket_url, owner, clock=self.clock,
            trust_root=self.trust_root, receive_buffer=self.receive_buffer)
        try:
            initiator = Initiator(
                self.identity, bundle.executor_public_key,
                prologue(bundle.environment_id, bundle.executor_registration_id, stream_id))
            message1 = initiator.write_message1(bundle.harness_key_authorization.encode("utf-8"))
            socket.writeFrame(encode_resume(stream_id), FrameKind.RESUME)
            socket.writeFrame(encode_handshake(stream_id, message1), FrameKind.HANDSHAKE)
            owner.reply.addTimeout(HANDSHAKE_TIMEOUT_SECONDS, self.clock)
            try:
                message2 = await owner.reply
            except TimeoutError:
                raise HandshakeError(
                    f"no Noise handshake answer from {public_url(bundle.websocket_url)} "
                    f"within {HANDSHAKE_TIMEOUT_SECONDS:g} s") from None
            try:
                ciphers = initiator.read_message2(message2)
            except HandshakeFailed as e:
                raise HandshakeError(str(e)) from None
        except BaseException:
            socket.abort()
            raise
        stream = NoiseStream(socket, stream_id, ciphers, shares_socket=False, sends_resets=False,
                             on_end=owner.stream_ended)
        log.info("relay stream open", noise_event="handshake", noise_outcome="ok",
                 noise_side="harness")
        stream.start(message_protocol)
        return stream
