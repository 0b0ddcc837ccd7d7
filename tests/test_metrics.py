"""
The metrics registry: what the core and the relay layers count, read back
as Prometheus exposes it.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from execserver.metrics import Metrics
from execserver.relay import frames
from execserver.rendezvous.router import Router
from tests.test_operations import samples
from tests.test_rendezvous_state import Peer


def scraped(metrics: Metrics) -> dict:
    return samples(generate_latest(metrics.registry).decode())


class _Child:
    """
    What L{Metrics.process_started} reads of a spawned child.
    """

    def __init__(self) -> None:
        self.finished = Deferred()
        self.exit_code = None

    def exit(self, code: int) -> None:
        self.exit_code = code
        self.finished.callback(None)


class CoreMetricsTests(unittest.TestCase):
    def test_connections(self):
        metrics = Metrics()
        closes = [metrics.connection_opened("websocket") for _ in range(3)]
        closes[0]()
        found = scraped(metrics)
        self.assertEqual(
            (found[("exec_server_connections_total", (("result", "accepted"), ("transport", "websocket")))],
             found[("exec_server_connections_active", (("transport", "websocket"),))],
             found[("exec_server_connections_active", (("transport", "relay"),))]),
            (3, 2, 0))

    def test_unknown_methods_share_one_label(self):
        metrics = Metrics(frozenset({"process/start"}))
        for method in ("process/start", "x/1", "x/2"):
            metrics.request_completed(method, method == "process/start", 0.002)
        found = scraped(metrics)
        self.assertEqual(
            (found[("exec_server_requests_total", (("method", "process/start"), ("result", "success")))],
             found[("exec_server_requests_total", (("method", "unknown"), ("result", "error")))],
             found[("exec_server_request_duration_seconds_sum",
                    (("method", "unknown"), ("result", "error")))]),
            (1, 2, 0.004))

    def test_processes_by_exit_code_and_lifetime(self):
        clock = task.Clock()
        metrics = Metrics()
        children = [_Child() for _ in range(3)]
        for child in children:
            metrics.process_started(child, clock)
        clock.advance(2)
        children[0].exit(0)
        children[1].exit(137)
        found = scraped(metrics)
        self.assertEqual(
            (found[("exec_server_processes_active", ())],
             found[("exec_server_processes_finished_total", (("result", "success"),))],
             found[("exec_server_processes_finished_total", (("result", "failure"),))],
             found[("exec_server_process_duration_seconds_sum", (("result", "success"),))]),
            (1, 1, 1, 2))


class RelayMetricsTests(unittest.TestCase):
    def test_rendezvous_counts_what_its_router_carries(self):
        metrics = Metrics()
        router = Router(task.Clock(), metrics.rendezvous_tap())
        executor, harness = Peer(), Peer()
        router.executor_connected("env", executor)
        router.harness_connected("env", harness)
        up = [frames.encode_handshake("a", b"m1"), frames.encode_handshake("b", b"m1")]
        down = [frames.encode_data("a", 0, b"reply"), frames.encode_reset("b")]
        for raw in up:
            router.from_harness(harness, frames.parse_frame(raw), raw)
        for raw in down:
            router.from_executor(executor, frames.parse_frame(raw), raw)
        found = scraped(metrics)
        self.assertEqual(
            (found[("exec_server_relay_streams_total", (("role", "rendezvous"),))],
             found[("exec_server_relay_bytes_total", (("direction", "to_executor"), ("role", "rendezvous")))],
             found[("exec_server_relay_bytes_total", (("direction", "to_harness"), ("role", "rendezvous")))],
             found[("exec_server_relay_resets_total", (("direction", "to_harness"), ("role", "rendezvous")))]),
            (2, sum(map(len, up)), sum(map(len, down)), 1))

    def test_handshake_failures_by_reason(self):
        metrics = Metrics()
        metrics.relay_handshake_failed("executor", "authorization_failed")
        self.assertEqual(scraped(metrics)[(
            "exec_server_relay_handshake_failures_total",
            (("reason", "authorization_failed"), ("role", "executor")))], 1)
