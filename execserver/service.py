"""
The C{twistd execserver} command: options and service.

    twistd -n execserver [--interface 127.0.0.1] [--port 8765]
    twistd -n execserver --listen stdio

With a WebSocket listener, the bound C{ws://IP:PORT} URL is printed on its
own line on stdout once the port is open.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from typing import Callable

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

import execserver
from execserver import environment
from execserver.guardian import Guardian
from execserver.interfaces import IMessageProtocol
from execserver.methods import all_methods
from execserver.sandbox import runner
from execserver.server import HANDSHAKE_TIMEOUT_SECONDS, ExecServer
from execserver.transports import stdio, websocket

log = Logger()

#: Threads for blocking filesystem work.
THREADS = 8


#: Options of the server core, shared by every service that runs one
#: (C{execserver}, C{execserver-remote}); L{check_core_options} checks them.
CORE_PARAMETERS = [
    ["concurrent-requests", None, 1,
     "Requests served concurrently per connection (1 = strictly in order).", int],
    ["handshake-timeout", None, HANDSHAKE_TIMEOUT_SECONDS,
     "Close a connection that has not sent initialize after this many "
     "seconds (0 = never).", float],
    ["bwrap", None, None,
     "The bubblewrap program that confines sandboxed children (default: bwrap on PATH)."],
    ["linux-sandbox-pid-namespace", None, "isolate",
     "'isolate' gives sandboxed children a PID namespace of their own; "
     "'inherit' leaves them in ours."],
]


def check_core_options(config: usage.Options) -> None:
    """
    @raise usage.UsageError: a L{CORE_PARAMETERS} value is out of range.
    """
    if config["concurrent-requests"] < 1:
        raise usage.UsageError("--concurrent-requests must be at least 1")
    if config["handshake-timeout"] < 0:
        raise usage.UsageError("--handshake-timeout must not be negative")
    if config["linux-sandbox-pid-namespace"] not in ("isolate", "inherit"):
        raise usage.UsageError(
            "--linux-sandbox-pid-namespace must be 'isolate' or 'inherit'")


class Options(usage.Options):
    optParameters = [
        ["interface", None, "127.0.0.1", "IP address to listen on."],
        ["port", None, 8765, "TCP port to listen on (0 picks a free one).", int],
        ["listen", None, "ws", "Transport: 'ws' (WebSocket) or 'stdio'."],
        *CORE_PARAMETERS,
    ]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"execserver {execserver.__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["listen"] == "stdio://":
            self["listen"] = "stdio"
        if self["listen"] not in ("ws", "stdio"):
            raise usage.UsageError(
                f"unsupported --listen {self['listen']!r}; expected 'ws' or 'stdio'"
            )
        try:
            ipaddress.ip_address(self["interface"])
        except ValueError:
            raise usage.UsageError(
                f"--interface must be an IP address, not {self['interface']!r}"
            ) from None
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        check_core_options(self)


class ExecServerService(service.Service):
    """
    Owns the server core and its thread pool; stopping it kills every
    managed process group.
    """

    def __init__(self, exec_server: ExecServer) -> None:
        self.exec_server = exec_server

    def startService(self) -> None:
        super().startService()
        self.exec_server.threadpool.start()
        self.exec_server.registry.guardian.start()

    def stopService(self):
        super().stopService()
        self.exec_server.threadpool.stop()
        return self.exec_server.shutdown().addBoth(self._release_guardian)

    def _release_guardian(self, result):
        self.exec_server.registry.guardian.stop()
        return result


def ws_url(address) -> str:
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"ws://{host}:{address.port}"


class StartupError(Exception):
    """
    Why the server cannot start, reported as one line on stderr.
    """


def listen_now(endpoint, factory, where: str):
    """
    Listen at once, while C{makeService} runs: twistd daemonizes after
    that, so a failure is still reported on the terminal that started us.

    @raise StartupError: the endpoint cannot listen (the port is taken...).
    """
    outcomes: list = []
    endpoint.listen(factory).addBoth(outcomes.append)
    (outcome,) = outcomes
    if isinstance(outcome, Failure):
        error = outcome.value
        socket_error = getattr(error, "socketError", None)
        reason = getattr(socket_error, "strerror", None) or str(socket_error or error)
        raise StartupError(f"cannot listen on {where}: {reason}")
    return outcome


class WebSocketListener(service.Service):
    """
    Announces the URL of a listening WebSocket port; when stopped, closes
    the port and every open WebSocket (with 1001, going away).
    """

    def __init__(self, reactor, port, websockets: websocket.OpenWebSockets, out=None):
        self.reactor = reactor
        self.port = port
        self.websockets = websockets
        self.out = out if out is not None else sys.stdout

    def startService(self) -> None:
        super().startService()
        url = ws_url(self.port.getHost())
        log.info("exec-server listening on {url}", url=url)
        # Printed once the reactor runs (and handles signals): a program that
        # reads the URL may start using, and stopping, the server at once.
        self.reactor.callWhenRunning(self._announce, url)

    def _announce(self, url: str) -> None:
        self.out.write(url + "\n")
        self.out.flush()

    def stopService(self):
        super().stopService()
        # Stopped before ExecServerService (a MultiService stops its
        # children in reverse order): the Close frames are sent before the
        # processes are killed, so clients never see those deaths.
        return defer.gatherResults([self.port.stopListening(), self.websockets.go_away()])


class OrderlyStop(service.Service):
    """
    Stops the server once, whatever asks first and however many ask: a
    SIGTERM or SIGINT, the end of stdin, or both at once. Twisted's own
    signal handlers stop the reactor unconditionally, which fails loudly
    when it is already stopping.
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.stopping = False

    def startService(self) -> None:
        super().startService()
        self.reactor.addSystemEventTrigger("before", "shutdown", self._stopping)
        self.reactor.callWhenRunning(self._guard_signals)

    def _stopping(self) -> None:
        self.stopping = True

    def _guard_signals(self) -> None:
        for signum, reactor_handler in ((signal.SIGINT, self.reactor.sigInt),
                                        (signal.SIGTERM, self.reactor.sigTerm)):
            handler = signal.getsignal(signum)
            # Twisted leaves an ignored SIGINT (nohup, a shell's &) ignored;
            # the reference stops on it all the same, and so do we. (Our
            # children get it back: spawn restores what we ignore.)
            if getattr(handler, "__self__", None) is self.reactor or handler == signal.SIG_IGN:
                signal.signal(signum, self._signal_handler(reactor_handler))

    def _signal_handler(self, reactor_handler):
        def handle(signum, frame):
            if self.stopping:
                log.info("received signal {signum} while stopping", signum=signum)
                return
            self.stopping = True
            reactor_handler(signum, frame)

        return handle

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.reactor.callFromThread(self.reactor.stop)


class StdioListener(service.Service):
    """
    Serves the one stdio connection; when stdin ends, the server stops.
    """

    def __init__(self, reactor, build_protocol: Callable[[], IMessageProtocol],
                 stop: Callable[[], None], stdin: int = 0, stdout: int = 1):
        self.reactor = reactor
        self.build_protocol = build_protocol
        self.stop = stop
        self.stdin = stdin
        self.stdout = stdout

    def startService(self) -> None:
        from twisted.internet.stdio import StandardIO

        super().startService()
        # The end of stdin stops the server; stopping the services kills
        # every process before the reactor exits.
        line_protocol = stdio.LineMessageProtocol(self.build_protocol(), self.stop)
        StandardIO(line_protocol, self.stdin, self.stdout, self.reactor)
        log.info("exec-server listening on stdio")


def _private_stdout() -> int:
    """
    Keep the real stdout for protocol messages only: anything else that
    writes to file descriptor 1 (logs, stray prints) goes to stderr instead.
    """
    out = os.dup(1)
    os.dup2(2, 1)
    return out


def makeService(config: Options, reactor=None) -> service.MultiService:
    try:
        return _build(config, reactor)
    except StartupError as e:
        sys.stderr.write(f"execserver: {e}\n")
        sys.exit(1)


def build_core(config: usage.Options, reactor, top: service.MultiService) -> ExecServer:
    """
    The server core as the L{CORE_PARAMETERS} of C{config} configure it,
    with its thread pool and guardian, run (and, when stopped, its
    processes killed) by a service added to C{top}.
    """
    runner.configure(runner.SandboxConfig(
        bwrap=config["bwrap"],
        pid_namespace=config["linux-sandbox-pid-namespace"] == "isolate",
    ))
    exec_server = ExecServer(
        reactor,
        all_methods(),
        environment.environment_info,
        concurrency=config["concurrent-requests"],
        threadpool=ThreadPool(minthreads=0, maxthreads=THREADS, name="execserver-io"),
        handshake_timeout=config["handshake-timeout"],
        guardian=Guardian(reactor),
    )
    ExecServerService(exec_server).setServiceParent(top)
    return exec_server


def _build(config: Options, reactor) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    top = service.MultiService()
    stopper = OrderlyStop(reactor)
    stopper.setServiceParent(top)
    exec_server = build_core(config, reactor, top)
    if config["listen"] == "stdio":
        StdioListener(reactor, exec_server.buildConnection, stopper.stop,
                      stdout=_private_stdout()).setServiceParent(top)
    else:
        interface, port_number = config["interface"], config["port"]
        if ":" in interface:
            endpoint = endpoints.TCP6ServerEndpoint(reactor, port_number, interface=interface)
            where = f"[{interface}]:{port_number}"
        else:
            endpoint = endpoints.TCP4ServerEndpoint(reactor, port_number, interface=interface)
            where = f"{interface}:{port_number}"
        site = websocket.site(exec_server.buildConnection)
        port = listen_now(endpoint, site, where)
        WebSocketListener(reactor, port, site.websockets).setServiceParent(top)
    return top
