"""
Running a server as a service: the admin listener (C{/metrics} for
Prometheus, C{/readyz}), systemd notification, and the graceful drain on
SIGTERM. Shared by every twistd plugin that runs a server core.

Draining, when the server is asked to stop:

  1. C{/readyz} answers 503 and new WebSocket upgrades get 503; systemd
     hears C{STOPPING=1};
  2. every open WebSocket gets a Close frame with 1001 (going away);
  3. processes still running get C{--shutdown-grace-period} seconds to end
     on their own;
  4. then the listeners close and every remaining process group is killed
     (by the services that stop after this one: L{StopInOrder}).
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client.twisted import MetricsResource
from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import resource, server

from execserver.metrics import Metrics
from execserver.readiness import Readiness
from execserver.server import ExecServer
from execserver.transports import websocket

log = Logger()

#: Options of every service that runs a server core; L{check_operating_options}
#: checks them.
OPERATING_PARAMETERS = [
    ["admin-listen", None, None,
     "Serve /metrics (Prometheus) and /readyz here: http://IP:PORT or a Twisted "
     "endpoint (tcp:9100:interface=127.0.0.1, unix:PATH, systemd:...). Off by default."],
    ["shutdown-grace-period", None, 0.0,
     "When stopped, give running processes this many seconds to end "
     "before killing them (0 = kill at once).", float],
]


def check_operating_options(config: usage.Options) -> None:
    """
    @raise usage.UsageError: an L{OPERATING_PARAMETERS} value is out of range.
    """
    if config["shutdown-grace-period"] < 0:
        raise usage.UsageError("--shutdown-grace-period must not be negative")


class StopInOrder(service.MultiService):
    """
    A MultiService that stops its services one after the other, the last
    added first, each once the one before has stopped (Twisted's stops them
    all at once): the drain must end before listeners close and processes
    are killed.
    """

    def stopService(self) -> Deferred:
        service.Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_each())

    async def _stop_each(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=child)


class _Admin(resource.Resource):
    def __init__(self, metrics: Metrics, readiness: Readiness) -> None:
        super().__init__()
        self._metrics = MetricsResource(metrics.registry)
        self._readiness = readiness

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        if not request.postpath:
            if path == b"metrics":
                return self._metrics
            if path == b"readyz":
                return websocket.readyz(request, self._readiness)
        return resource.NoResource()


def admin_site(metrics: Metrics, readiness: Readiness) -> server.Site:
    """
    The admin listener's site: C{GET /metrics} and C{GET /readyz}.
    """
    site = server.Site(_Admin(metrics, readiness))
    site.displayTracebacks = False
    site.noisy = False
    return site


class PortService(service.Service):
    """
    Keeps a port that is already listening, announces its URL once the
    reactor runs, and closes it when stopped.
    """

    def __init__(self, reactor, port, url: str, name: str, out=None) -> None:
        self.reactor = reactor
        self.port = port
        self.url = url
        self.label = name
        self.out = out

    def startService(self) -> None:
        super().startService()
        log.info("{label} listening on {url}", label=self.label, url=self.url)
        if self.out is not None:
            # Printed once the reactor runs (and handles signals): a program
            # that reads the URL may start using, and stopping, the server
            # at once.
            self.reactor.callWhenRunning(self._announce)

    def _announce(self) -> None:
        self.out.write(self.url + "\n")
        self.out.flush()

    def stopService(self):
        super().stopService()
        return self.port.stopListening()


class Drain(service.Service):
    """
    Stops first (it is added last): steps 1 to 3 of the module's drain.

    @param exec_server: the core whose processes get the grace period
        (C{None} for a forwarder, which runs none).
    @param websockets: the open WebSockets of each WebSocket listener.
    """

    def __init__(self, clock, readiness: Readiness, exec_server: ExecServer | None,
                 websockets: Iterable[websocket.OpenWebSockets], grace: float) -> None:
        self.clock = clock
        self.readiness = readiness
        self.exec_server = exec_server
        self.websockets = list(websockets)
        self.grace = grace

    def stopService(self):
        super().stopService()
        self.readiness.drain()
        # The Close frames go out before any process is killed, so no
        # client sees those deaths as exits.
        closed = gatherResults([ws.go_away() for ws in self.websockets])
        return closed.addCallback(lambda _: self._grace())

    def _grace(self) -> Deferred | None:
        if self.exec_server is None:
            return None
        running = self.exec_server.running_processes()
        if not running or self.grace <= 0:
            return None
        log.info("waiting up to {grace} s for {count} running processes to end",
                 grace=self.grace, count=len(running))
        ended = gatherResults([_observe(process.child.finished) for process in running])
        return ended.addTimeout(self.grace, self.clock, onTimeoutCancel=_grace_over)


def _observe(d: Deferred) -> Deferred:
    """
    A Deferred that fires when C{d} does, leaving C{d}'s result alone.
    """
    observer = Deferred()

    def fire(result):
        if not observer.called:
            observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


def _grace_over(result, timeout: float) -> None:
    log.info("grace period of {grace} s is over; killing what still runs", grace=timeout)


def readiness_for(notifier: Callable[[Readiness], None] | None) -> Readiness:
    """
    A L{Readiness}, reported to systemd through C{notifier} if there is one.
    """
    readiness = Readiness()
    if notifier is not None:
        readiness.subscribe(notifier)
    return readiness
