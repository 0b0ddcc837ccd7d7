"""
The C{twistd execserver} command: options and service.

    twistd -n execserver [--interface 127.0.0.1] [--port 8765]
    twistd -n execserver --listen ws://IP:PORT | stdio | unix:PATH | systemd:domain=INET:index=0
    twistd -n execserver ... [--ws-auth MODE ...] [--admin-listen http://IP:PORT]

With a WebSocket listener, its URL (C{ws://IP:PORT}, or C{unix:PATH}) is
printed on its own line on stdout once the reactor runs; then the admin
listener's (C{http://IP:PORT}), if there is one. Startup errors are one
line on stderr, C{Error: ...} as the reference says it, and exit status 1.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import endpoints
from twisted.python.failure import Failure
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

import execserver
from execserver import audit, environment, listening, memory, operations, turns, wsauth
from execserver.guardian import Guardian
from execserver.interfaces import IMessageProtocol
from execserver.methods import all_methods
from execserver.metrics import Metrics
from execserver.operations import OPERATING_PARAMETERS, check_operating_options
from execserver.readiness import Readiness, SystemdNotifier
from execserver.sandbox import runner
from execserver.server import HANDSHAKE_TIMEOUT_SECONDS, ExecServer, ServerConnection
from execserver.transports import stdio, websocket

log = Logger()

#: Threads for blocking filesystem work.
THREADS = 8
#: Where the server listens without --listen, --interface or --port.
DEFAULT_INTERFACE = "127.0.0.1"
DEFAULT_PORT = 8765


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
        ["listen", None, None,
         "Where to listen: ws://IP:PORT (IPv6 in brackets), stdio, or a Twisted endpoint "
         "(unix:PATH, systemd:domain=INET:index=0, tcp:PORT:interface=IP). "
         "Default: --interface and --port."],
        ["interface", None, None, "IP address to listen on (default 127.0.0.1)."],
        ["port", None, None, "TCP port to listen on (default 8765; 0 picks a free one).", int],
        ["ws-auth", None, None,
         "Authenticate WebSocket clients: capability-token or signed-bearer-token."],
        ["ws-token-file", None, None, "File holding the capability token."],
        ["ws-token-sha256", None, None, "Hex SHA-256 digest of the capability token."],
        ["ws-shared-secret-file", None, None,
         "File holding the HS256 secret of signed JWT bearer tokens (at least 32 bytes)."],
        ["ws-issuer", None, None, "Expected issuer (iss) of signed JWT bearer tokens."],
        ["ws-audience", None, None, "Expected audience (aud) of signed JWT bearer tokens."],
        ["ws-max-clock-skew-seconds", None, None,
         f"Clock skew allowed for exp and nbf of signed JWT bearer tokens "
         f"(default {wsauth.DEFAULT_CLOCK_SKEW_SECONDS}).", int],
        *CORE_PARAMETERS,
        *OPERATING_PARAMETERS,
    ]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"execserver {execserver.__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["interface"] is not None:
            try:
                ipaddress.ip_address(self["interface"])
            except ValueError:
                raise usage.UsageError(
                    f"--interface must be an IP address, not {self['interface']!r}"
                ) from None
        if self["port"] is not None and not 0 <= self["port"] <= 65535:
            raise usage.UsageError("--port must be between 0 and 65535")
        if self["listen"] is not None and (self["interface"], self["port"]) != (None, None):
            raise usage.UsageError("give --listen or --interface/--port, not both")
        if self["ws-auth"] is not None and self["ws-auth"] not in wsauth.MODES:
            raise usage.UsageError(
                f"--ws-auth must be one of {', '.join(wsauth.MODES)}, not {self['ws-auth']!r}")
        skew = self["ws-max-clock-skew-seconds"]
        if skew is not None and skew < 0:
            raise usage.UsageError("--ws-max-clock-skew-seconds must not be negative")
        check_core_options(self)
        check_operating_options(self)

    def listen_target(self) -> listening.ListenTarget:
        """
        @raise listening.ListenError: C{--listen} is not a form we know.
        """
        if self["listen"] is not None:
            return listening.parse_listen(self["listen"])
        interface = self["interface"] if self["interface"] is not None else DEFAULT_INTERFACE
        port = self["port"] if self["port"] is not None else DEFAULT_PORT
        return listening.tcp_target(interface, port)

    def auth_settings(self) -> wsauth.AuthSettings:
        return wsauth.AuthSettings(
            mode=self["ws-auth"],
            token_file=self["ws-token-file"],
            token_sha256=self["ws-token-sha256"],
            shared_secret_file=self["ws-shared-secret-file"],
            issuer=self["ws-issuer"],
            audience=self["ws-audience"],
            max_clock_skew_seconds=self["ws-max-clock-skew-seconds"],
        )


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


class StartupError(Exception):
    """
    Why the server cannot start, reported as one line on stderr.
    """


def listen_now(reactor, description: str, factory, where: str):
    """
    Listen at once, while C{makeService} runs: twistd daemonizes after
    that, so a failure is still reported on the terminal that started us.

    @param description: for C{serverFromString}.
    @raise StartupError: the endpoint cannot listen (the port is taken...).
    """
    try:
        endpoint = endpoints.serverFromString(reactor, listening.with_backlog(description))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise StartupError(f"cannot listen on {where}: {_endpoint_problem(e)}") from None
    outcomes: list = []
    endpoint.listen(factory).addBoth(outcomes.append)
    (outcome,) = outcomes
    if isinstance(outcome, Failure):
        error = outcome.value
        socket_error = getattr(error, "socketError", None)
        reason = getattr(socket_error, "strerror", None) or str(socket_error or error)
        raise StartupError(f"cannot listen on {where}: {reason}")
    return outcome


def _endpoint_problem(error: Exception) -> str:
    if isinstance(error, IndexError):
        # systemd: asked for a descriptor that was not passed.
        return "no such inherited socket (LISTEN_FDS)"
    return str(error) or type(error).__name__


class OrderlyStop(service.Service):
    """
    Stops the server once, whatever asks first and however many ask: a
    SIGTERM or SIGINT, the end of stdin, or both at once. Twisted's own
    signal handlers stop the reactor unconditionally, which fails loudly
    when it is already stopping, and make twistd end by the same signal
    once stopped; the reference exits with status 0, and so do we.
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
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            # Twisted leaves an ignored SIGINT (nohup, a shell's &) ignored;
            # the reference stops on it all the same, and so do we. (Our
            # children get it back: spawn restores what we ignore.)
            if getattr(handler, "__self__", None) is self.reactor or handler == signal.SIG_IGN:
                signal.signal(signum, self._handle_signal)

    def _handle_signal(self, signum, frame) -> None:
        if self.stopping:
            log.info("received signal {signum} while stopping", signum=signum)
            return
        log.info("received {name}, shutting down", name=signal.Signals(signum).name)
        self.stop()

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


def reporting_startup_errors(prefix: str, build: Callable[[usage.Options, Any], service.Service]):
    """
    A twistd plugin's C{makeService} from C{build(config, reactor)}: a
    L{StartupError} is one line on stderr, C{prefix} first, and exit 1.
    """
    def makeService(config: usage.Options, reactor=None) -> service.Service:
        try:
            return build(config, reactor)
        except StartupError as e:
            sys.stderr.write(f"{prefix}{e}\n")
            sys.exit(1)

    return makeService


def server_base(config: usage.Options, reactor) -> tuple[
        operations.StopInOrder, OrderlyStop, Readiness, Metrics]:
    """
    What every command that runs a server core starts with: the services'
    parent (they stop one after the other, the last added first), the
    audit trail logged in batches (stopped last, so that it logs what
    stopping records), the allocator tuned and trimmed when idle, an
    orderly stop on signals, the readiness reported to systemd, the
    metrics, and the admin listener of the
    L{operations.OPERATING_PARAMETERS} (added early, so stopped late:
    /readyz and /metrics answer while the server drains).
    """
    top = operations.StopInOrder()
    audit.AuditBatches(reactor).setServiceParent(top)
    memory.tune_allocator()
    reactor.callWhenRunning(memory.freeze_startup_heap)
    memory.IdleTrimmer(reactor).setServiceParent(top)
    stopper = OrderlyStop(reactor)
    stopper.setServiceParent(top)
    readiness = operations.readiness_for(SystemdNotifier.from_environment())
    metrics = Metrics(frozenset(all_methods()) | {"initialize"})
    admin = admin_listener(config, reactor, metrics, readiness)
    if admin is not None:
        admin.setServiceParent(top)
    return top, stopper, readiness, metrics


def build_core(config: usage.Options, reactor, top: service.MultiService,
               metrics: Metrics | None = None,
               turn_seconds: float = turns.TURN_SECONDS) -> ExecServer:
    """
    The server core as the L{CORE_PARAMETERS} of C{config} configure it,
    with its thread pool and guardian, run (and, when stopped, its
    processes killed) by a service added to C{top}; it counts into
    C{metrics} (its own by default); its connections take turns of
    C{turn_seconds} (L{execserver.turns}).
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
        metrics=metrics,
        turn_seconds=turn_seconds,
    )
    ExecServerService(exec_server).setServiceParent(top)
    return exec_server


def _build(config: Options, reactor) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    # The reference's order: the auth flags, then where to listen, then the
    # secret files.
    auth = config.auth_settings()
    try:
        auth.check_flags()
        target = config.listen_target()
        if target.stdio and auth.mode is not None:
            raise StartupError("WebSocket auth requires a WebSocket listener, not stdio")
        authenticator = auth.authenticator(reactor)
    except (wsauth.AuthConfigError, listening.ListenError) as e:
        raise StartupError(str(e)) from None
    top, stopper, readiness, metrics = server_base(config, reactor)
    exec_server = build_core(config, reactor, top, metrics, turns.SOCKETS_TURN_SECONDS)
    websockets = []
    if target.stdio:
        build = counted(exec_server.buildConnection, metrics, "stdio")
        StdioListener(reactor, build, stopper.stop,
                      stdout=_private_stdout()).setServiceParent(top)
    else:
        build = counted(exec_server.buildConnection, metrics, "websocket")
        site = websocket.site(build, authenticator, readiness)
        port = listen_now(reactor, target.description, site, target.where)
        address = port.getHost()
        if authenticator is None and not listening.is_local(address):
            port.stopListening()
            where = target.where if target.address is not None else listening.url_of(address)
            raise StartupError(
                f"refusing to start non-loopback websocket listener {where} without auth; "
                "configure `--ws-auth capability-token` or `--ws-auth signed-bearer-token`")
        _forget_inherited_sockets()
        operations.PortService(reactor, port, listening.url_of(address), "exec-server",
                               out=sys.stdout).setServiceParent(top)
        websockets.append(site.websockets)
    operations.Drain(reactor, readiness, exec_server, websockets,
                     config["shutdown-grace-period"]).setServiceParent(top)
    ReadyWhenRunning(reactor, readiness).setServiceParent(top)
    return top


# As the reference reports its startup errors.
makeService = reporting_startup_errors("Error: ", _build)


def _forget_inherited_sockets(environ=os.environ) -> None:
    """
    As C{sd_listen_fds(1)} does: the sockets systemd passed are ours, and
    our children must not take them for theirs.
    """
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)


def admin_listener(config: Options, reactor, metrics: Metrics,
                    readiness: Readiness) -> operations.PortService | None:
    listen = config["admin-listen"]
    if listen is None:
        return None
    try:
        target = listening.parse_admin_listen(listen)
    except listening.ListenError as e:
        raise StartupError(str(e)) from None
    port = listen_now(reactor, target.description, operations.admin_site(metrics, readiness),
                      target.where)
    url = listening.url_of(port.getHost(), scheme="http")
    return operations.PortService(reactor, port, url, "admin", out=sys.stdout)


def counted(build: Callable[[], ServerConnection], metrics: Metrics,
             transport: str) -> Callable[[], ServerConnection]:
    """
    C{build}, with each connection it builds counted as one of C{transport}.
    """
    def build_counted() -> ServerConnection:
        connection = build()
        connection.onClose(metrics.connection_opened(transport))
        return connection

    return build_counted


class ReadyWhenRunning(service.Service):
    """
    A server with a listener (a local server, a rendezvous) is ready once
    the reactor runs, its listener open, and no longer once it stops.
    """

    CONDITION = "started"

    def __init__(self, reactor, readiness: Readiness) -> None:
        self.reactor = reactor
        self.readiness = readiness
        readiness.require(self.CONDITION)

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self.readiness.met, self.CONDITION)

    def stopService(self) -> None:
        super().stopService()
        self.readiness.drain()
