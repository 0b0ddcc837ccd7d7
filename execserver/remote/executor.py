"""
The executor's relay loop: one socket to the rendezvous, many encrypted
streams on it, each served by its own JSON-RPC connection.

For each stream id the harness side opens:

    handshake (Noise message 1) ─▶ Responder.read_message1 ─▶ registry validate
        ─▶ handshake (message 2) ─▶ NoiseStream ─▶ a new message protocol

with codex exec-server 0.169.0's bounds (L{execserver.remote.limits}):

  - at most 128 active streams and 32 handshakes awaiting C{validate}; a
    handshake beyond either is reset;
  - the harness authorization in message 1 is UTF-8 of at most 4096 bytes
    (else reset; C{validate} is not called);
  - C{validate} (10 s at most) runs beside everything else: no stream waits
    for another's;
  - a handshake that fails (message 1 refused, authorization refused or not
    checked in time, a second handshake or data while validating) is reset
    and counts; after 8, handshakes are refused for 10 s (those refused do
    not extend it) while open streams go on.

Frames of active streams go to their L{NoiseStream}; frames of other stream
ids come here: C{data} is answered with a reset, a C{reset} forgets a
pending handshake, C{resume}, C{ack_frame} and C{heartbeat} are ignored.
Invalid frames and text messages are dropped (the stream survives). Every
reset says C{noise_relay_protocol_error}. Nothing here logs keys,
authorizations or stream contents; stream ids only at debug level.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.metrics import EXECUTOR, Metrics
from execserver.noise.channel import NoiseStream
from execserver.noise.errors import HandshakeFailed
from execserver.noise.handshake import Responder, prologue
from execserver.noise.keys import NoiseIdentity, NoisePublicKey
from execserver.relay.frames import Frame, FrameKind, encode_handshake, encode_reset
from execserver.relay.socket import IRelaySocketOwner, RelaySocket
from execserver.remote.limits import (
    HANDSHAKE_PAUSE_SECONDS,
    MAX_ACTIVE_STREAMS,
    MAX_HANDSHAKE_FAILURES,
    MAX_PENDING_VALIDATIONS,
    VALIDATION_TIMEOUT_SECONDS,
)
from execserver.remote.registry import Registration

log = Logger()

#: Asks the registry about a harness: C{(harness_key, authorization,
#: stream_id)}, fires with whether it may connect.
Validator = Callable[[NoisePublicKey, str, str], Deferred]


class HandshakeBudget:
    """
    Counts failed handshakes; at L{MAX_HANDSHAKE_FAILURES} it refuses
    handshakes for L{HANDSHAKE_PAUSE_SECONDS}, then starts counting afresh.
    Failures during the pause are not counted.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.failures = 0
        self._pause: IDelayedCall | None = None

    @property
    def paused(self) -> bool:
        return self._pause is not None

    def charge(self) -> None:
        if self.paused:
            return
        self.failures += 1
        if self.failures >= MAX_HANDSHAKE_FAILURES:
            self.failures = 0
            log.warn("pausing Noise relay handshakes after repeated failures",
                     noise_event="handshake", noise_outcome="error", noise_side="executor",
                     seconds=HANDSHAKE_PAUSE_SECONDS)
            self._pause = self.clock.callLater(HANDSHAKE_PAUSE_SECONDS, self._resume)

    def _resume(self) -> None:
        self._pause = None
        log.info("accepting Noise relay handshakes again", noise_event="handshake",
                 noise_side="executor")

    def stop(self) -> None:
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None


class _Pending:
    """A handshake waiting for the registry."""

    __slots__ = ("responder", "validation")

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.validation: Deferred | None = None


@implementer(IRelaySocketOwner)
class ExecutorRelay:
    """
    The owner of one executor socket (see the module's description).

    @param registration: the ids every handshake's prologue binds.
    @param validate: asks the registry about a harness.
    @param build_protocol: the message protocol of each new stream (a
        server connection, or a forwarder's bridge).
    @param metrics: counts the socket's frames and failed handshakes.
    @ivar streams: the active streams by id.
    """

    def __init__(self, clock: IReactorTime, identity: NoiseIdentity, registration: Registration,
                 validate: Validator, build_protocol: Callable[[], IMessageProtocol],
                 metrics: Metrics | None = None) -> None:
        self.clock = clock
        self.identity = identity
        self.registration = registration
        self.validate = validate
        self.build_protocol = build_protocol
        self.metrics = metrics
        self.budget = HandshakeBudget(clock)
        self.socket: RelaySocket | None = None
        self.streams: dict[str, NoiseStream] = {}
        self._pending: dict[str, _Pending] = {}

    @property
    def pending(self) -> int:
        """Handshakes waiting for the registry."""
        return len(self._pending)

    # IRelaySocketOwner

    def socketOpened(self, socket: RelaySocket) -> None:
        self.socket = socket
        if self.metrics is not None:
            socket.counter = self.metrics.relay_counter(EXECUTOR)

    def frameReceived(self, frame: Frame, raw: bytes) -> None:
        kind = frame.kind
        stream_id = frame.stream_id
        if kind is FrameKind.HANDSHAKE:
            self._handshake(stream_id, frame.payload)
        elif kind is FrameKind.DATA:
            if self._cancel(stream_id):
                self._refuse(stream_id, "data_while_validating")
            else:
                self._reset(stream_id)
        elif kind is FrameKind.RESET:
            self._cancel(stream_id)

    def invalidMessage(self, description: str) -> None:
        log.debug("executor relay: dropped a message: {description}", description=description)

    def sendingPaused(self) -> None:
        pass

    def sendingResumed(self) -> None:
        pass

    def socketLost(self, reason: Failure) -> None:
        self.socket = None
        self.budget.stop()
        for stream_id in list(self._pending):
            self._cancel(stream_id)

    # Handshakes

    def _handshake(self, stream_id: str, message1: bytes) -> None:
        if self._cancel(stream_id):
            log.debug("executor relay: second handshake on stream {stream_id}", stream_id=stream_id)
            self._refuse(stream_id, "second_handshake")
            return
        if self.budget.paused:
            self._refused(stream_id, "paused")
            return
        if len(self.streams) >= MAX_ACTIVE_STREAMS or len(self._pending) >= MAX_PENDING_VALIDATIONS:
            log.info("executor relay: refusing a stream: {active} active, {pending} validating",
                     active=len(self.streams), pending=len(self._pending))
            self._refused(stream_id, "busy")
            return
        registration = self.registration
        responder = Responder(self.identity, prologue(
            registration.environment_id, registration.executor_registration_id, stream_id))
        try:
            request = responder.read_message1(message1)
        except HandshakeFailed:
            self._refuse(stream_id, "invalid_handshake")
            return
        pending = self._pending[stream_id] = _Pending(responder)
        validation = self.validate(request.harness_key, request.authorization, stream_id)
        pending.validation = validation
        validation.addTimeout(VALIDATION_TIMEOUT_SECONDS, self.clock)
        validation.addBoth(self._validated, stream_id, pending)

    def _validated(self, result: bool | Failure, stream_id: str, pending: _Pending) -> None:
        if self._pending.get(stream_id) is not pending:
            return  # cancelled: a reset, a second handshake, data, the socket's end
        del self._pending[stream_id]
        if result is not True:
            log.info("Noise harness authorization failed", noise_event="authorization",
                     noise_outcome="error", noise_reason="authorization_failed",
                     noise_side="executor")
            if isinstance(result, Failure):
                log.debug("executor relay: validate failed: {error}",
                          error=result.getErrorMessage())
            self._refuse(stream_id, "authorization_failed")
            return
        if len(self.streams) >= MAX_ACTIVE_STREAMS:
            self._refused(stream_id, "busy")
            return
        try:
            message2, ciphers = pending.responder.write_message2()
        except HandshakeFailed:
            self._refuse(stream_id, "invalid_handshake")
            return
        self.socket.writeFrame(encode_handshake(stream_id, message2), FrameKind.HANDSHAKE)
        stream = NoiseStream(self.socket, stream_id, ciphers, shares_socket=True,
                             sends_resets=True,
                             on_end=lambda reason: self._ended(stream_id, stream))
        self.streams[stream_id] = stream
        log.debug("executor relay: stream {stream_id} open", stream_id=stream_id)
        stream.start(self.build_protocol())

    def _ended(self, stream_id: str, stream: NoiseStream) -> None:
        if self.streams.get(stream_id) is stream:
            del self.streams[stream_id]

    def _cancel(self, stream_id: str) -> bool:
        """Forget a pending handshake; whether there was one."""
        pending = self._pending.pop(stream_id, None)
        if pending is None:
            return False
        pending.validation.cancel()
        return True

    def _refuse(self, stream_id: str, reason: str) -> None:
        """A failed handshake: reset, and charge it to the budget."""
        self._refused(stream_id, reason)
        self.budget.charge()

    def _refused(self, stream_id: str, reason: str) -> None:
        """
        A handshake not taken: reset, and count it by C{reason} (a fixed
        word, never the peer's text).
        """
        self._reset(stream_id)
        if self.metrics is not None:
            self.metrics.relay_handshake_failed(EXECUTOR, reason)

    def _reset(self, stream_id: str) -> None:
        if self.socket is not None:
            self.socket.writeFrame(encode_reset(stream_id), FrameKind.RESET)
