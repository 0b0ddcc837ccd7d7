"""
Prometheus metrics of one server process, served by the admin listener's
C{/metrics} (C{--admin-listen}).

The reference exports the same quantities through OpenTelemetry, not
Prometheus; we use its instrument names, label names and label values
where it has them (its C{exec-server/src/telemetry.rs}):

    exec_server_connections_active{transport}        gauge
    exec_server_connections_total{transport,result}  counter (result="accepted")
    exec_server_requests_total{method,result}        counter (result="success"|"error")
    exec_server_request_duration_seconds{method,result}  histogram
    exec_server_processes_active                     gauge
    exec_server_processes_finished_total{result}     counter (result="success"|"failure")
    exec_server_process_duration_seconds{result}     histogram

C{transport} is C{websocket}, C{stdio} or C{relay}. Relay counters, for an
executor's or a rendezvous's relay streams, are ours (the reference has
none by these names):

    exec_server_relay_streams_total{role}                    counter (handshakes toward the executor)
    exec_server_relay_bytes_total{role,direction}            counter (frame bytes)
    exec_server_relay_resets_total{role,direction}           counter
    exec_server_relay_handshake_failures_total{role,reason}  counter

C{role} is C{executor} or C{rendezvous}; C{direction} is C{to_executor} or
C{to_harness} (for an executor: received or sent). A rendezvous counts
through its router's tap (L{Metrics.rendezvous_tap}); an executor through
its socket's counter (L{Metrics.relay_counter}), and counts each handshake
it does not take by reason: C{invalid_handshake}, C{authorization_failed},
C{second_handshake}, C{data_while_validating}, C{busy} (stream limits) or
C{paused} (after too many failures). Every
service of a process shares one L{Metrics}; a service that has no admin
listener still counts (cheap) so that the core never asks whether
metrics are on.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime

from execserver.relay.frames import Frame, FrameKind

#: Bucket bounds (seconds) of request durations: a request takes from tens
#: of microseconds (process/read of buffered output) to minutes (a long
#: poll, a large file).
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
#: Bucket bounds (seconds) of process lifetimes.
PROCESS_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0)

TRANSPORTS = ("websocket", "stdio", "relay")
EXECUTOR = "executor"
RENDEZVOUS = "rendezvous"
#: Directions of relay frames, as the rendezvous router names them.
TO_EXECUTOR = "to_executor"
TO_HARNESS = "to_harness"
#: The C{method} label of requests for methods the server does not serve:
#: the label set stays bounded whatever clients send.
UNKNOWN_METHOD = "unknown"


class Metrics:
    """
    The instruments of one process, in their own registry (not the global
    one: tests run many servers in one process).
    """

    def __init__(self, known_methods: frozenset[str] = frozenset()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_methods = known_methods
        registry = self.registry
        self.connections_active = Gauge(
            "exec_server_connections_active", "Number of active exec-server connections.",
            ["transport"], registry=registry)
        self.connections_total = Counter(
            "exec_server_connections", "Total number of accepted exec-server connections.",
            ["transport", "result"], registry=registry)
        self.requests_total = Counter(
            "exec_server_requests", "Total number of exec-server requests.",
            ["method", "result"], registry=registry)
        self.request_duration = Histogram(
            "exec_server_request_duration_seconds", "Duration of exec-server requests in seconds.",
            ["method", "result"], buckets=REQUEST_BUCKETS, registry=registry)
        self.processes_active = Gauge(
            "exec_server_processes_active", "Number of active exec-server processes.",
            registry=registry)
        self.processes_finished = Counter(
            "exec_server_processes_finished", "Total number of finished exec-server processes.",
            ["result"], registry=registry)
        self.process_duration = Histogram(
            "exec_server_process_duration_seconds", "Duration of exec-server processes in seconds.",
            ["result"], buckets=PROCESS_BUCKETS, registry=registry)
        self.relay_streams = Counter(
            "exec_server_relay_streams", "Relay stream handshakes toward the executor.",
            ["role"], registry=registry)
        self.relay_bytes = Counter(
            "exec_server_relay_bytes", "Bytes of relay frames carried.",
            ["role", "direction"], registry=registry)
        self.relay_resets = Counter(
            "exec_server_relay_resets", "Relay stream resets carried.",
            ["role", "direction"], registry=registry)
        self.relay_handshake_failures = Counter(
            "exec_server_relay_handshake_failures", "Relay stream handshakes that failed.",
            ["role", "reason"], registry=registry)
        #: Each labelled instrument once made: C{labels()} costs several
        #: microseconds a call, and the label sets are few.
        self._children: dict[tuple, object] = {}
        for transport in TRANSPORTS:
            self._labelled(self.connections_active, transport)

    def _labelled(self, metric, *values: str):
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def connection_opened(self, transport: str) -> Callable[[], None]:
        """
        Count an accepted connection.

        @return: call it once when the connection ends.
        """
        self._labelled(self.connections_total, transport, "accepted").inc()
        active = self._labelled(self.connections_active, transport)
        active.inc()
        return active.dec

    def request_completed(self, method: str, succeeded: bool, seconds: float) -> None:
        if method not in self.known_methods:
            method = UNKNOWN_METHOD
        result = "success" if succeeded else "error"
        self._labelled(self.requests_total, method, result).inc()
        self._labelled(self.request_duration, method, result).observe(seconds)

    def process_started(self, child, clock: IReactorTime) -> None:
        """
        Count a child (L{execserver.spawn}'s) that has started: it ends when
        its C{finished} fires, with its C{exit_code}.
        """
        self.processes_active.inc()
        started = clock.seconds()

        def ended(result):
            self.processes_active.dec()
            if child.exit_code is not None:
                outcome = "success" if child.exit_code == 0 else "failure"
                self._labelled(self.processes_finished, outcome).inc()
                self._labelled(self.process_duration, outcome).observe(clock.seconds() - started)
            return result

        child.finished.addBoth(ended)

    def relay_frame(self, role: str, direction: str, kind: FrameKind, size: int) -> None:
        """
        Count a relay frame of C{size} bytes going C{direction}
        (L{TO_EXECUTOR} or L{TO_HARNESS}).
        """
        self._labelled(self.relay_bytes, role, direction).inc(size)
        if kind is FrameKind.HANDSHAKE and direction == TO_EXECUTOR:
            self._labelled(self.relay_streams, role).inc()
        elif kind is FrameKind.RESET:
            self._labelled(self.relay_resets, role, direction).inc()

    def relay_counter(self, role: str) -> Callable[[bool, FrameKind, int], None]:
        """
        A L{execserver.relay.socket.RelaySocket.counter} for one of C{role}'s
        sockets, whose frames arrive from the harness side (an executor's).
        """
        def count(received: bool, kind: FrameKind, size: int) -> None:
            self.relay_frame(role, TO_EXECUTOR if received else TO_HARNESS, kind, size)

        return count

    def relay_handshake_failed(self, role: str, reason: str) -> None:
        """
        @param reason: one of a few fixed words (never a peer's text).
        """
        self._labelled(self.relay_handshake_failures, role, reason).inc()

    def rendezvous_tap(self) -> Callable[[str, str, Frame, bytes], None]:
        """
        A tap for L{execserver.rendezvous.router.Router}: counts every frame
        it routes or sends.
        """
        def tap(direction: str, environment_id: str, frame: Frame, raw: bytes) -> None:
            self.relay_frame(RENDEZVOUS, direction, frame.kind, len(raw))

        return tap
