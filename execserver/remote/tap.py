"""
The C{twistd execserver-remote} command: an executor that registers with
an environment registry and serves harnesses through its rendezvous, over
end-to-end encrypted relay streams.

    twistd -n execserver-remote --remote URL --environment-id ID
        [--registration-bearer-stdin | --bearer-file FILE] [--exit-on-stdin-close]
        [--connect ws://HOST:PORT] [--admin-listen http://IP:PORT]
        [--shutdown-grace-period SECONDS] [server core options]

Without a flag, the registry URL, environment id and bearer come from
C{CODEX_EXEC_SERVER_NOISE_REGISTRY_URL}, C{CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID}
and C{CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN} (the variables a codex harness of
the environment reads; the token is then removed from our environment, so
that children and C{http/request} cannot see it), and
C{--exit-on-stdin-close} from C{CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE}
(C{true} or C{false}, as the reference takes it). With C{--connect} the
streams are forwarded to that WebSocket exec-server instead of served here.
A first registration that fails ends the process with status 1.

The admin listener's C{/readyz} answers 200 while the executor is
registered and its rendezvous socket is open (systemd hears C{READY=1} the
first time); C{/metrics} counts each relay stream as a connection of
transport C{relay} (unless forwarded: the server forwarded to counts
them) and the socket's frames with role C{executor}.
"""

from __future__ import annotations

import os
import sys
from typing import Callable
from urllib.parse import urlsplit

from twisted.application import service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

import execserver
from execserver.noise.errors import NoiseUnavailable
from execserver.noise.keys import NoiseIdentity, require_mlkem
from execserver import operations
from execserver.remote.forwarder import WebSocketBridge
from execserver.remote.link import ExecutorLink, RendezvousEndpoint
from execserver.remote.registry import RegistryClient
from execserver.service import (
    CORE_PARAMETERS,
    OrderlyStop,
    StartupError,
    build_core,
    check_core_options,
    counted,
    reporting_startup_errors,
    server_base,
)

log = Logger()

REGISTRY_VARIABLE = "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL"
ENVIRONMENT_VARIABLE = "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID"
TOKEN_VARIABLE = "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN"
EXIT_ON_STDIN_CLOSE_VARIABLE = "CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE"

#: Longest bearer line read from stdin.
MAX_BEARER_BYTES = 64 * 1024


class Options(usage.Options):
    optParameters = [
        ["remote", None, None,
         f"Base URL of the environment registry (default: ${REGISTRY_VARIABLE})."],
        ["environment-id", None, None,
         f"The environment to register as (default: ${ENVIRONMENT_VARIABLE})."],
        ["name", None, None, "Human-readable environment name (accepted; not sent, as by codex)."],
        ["bearer-file", None, None,
         f"File holding the registration bearer token (default: ${TOKEN_VARIABLE})."],
        ["chatgpt-account-id", None, None, "Sent as ChatGPT-Account-ID to the registry."],
        ["connect", None, None,
         "Forward every stream to this WebSocket exec-server (ws://HOST:PORT) "
         "instead of serving it here."],
        *CORE_PARAMETERS,
        *operations.OPERATING_PARAMETERS,
    ]
    optFlags = [
        ["registration-bearer-stdin", None, "Read the registration bearer from the first line of stdin."],
        ["exit-on-stdin-close", None,
         f"Stop when stdin closes (default: ${EXIT_ON_STDIN_CLOSE_VARIABLE}=true)."],
    ]

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self.environ = os.environ if environ is None else environ

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"execserver {execserver.__version__}")
        sys.exit(0)

    def _variable(self, name: str) -> str | None:
        return self.environ.get(name, "").strip() or None

    def postOptions(self) -> None:
        self["remote"] = self["remote"] or self._variable(REGISTRY_VARIABLE)
        self["environment-id"] = (self["environment-id"] or "").strip() or self._variable(
            ENVIRONMENT_VARIABLE)
        if not self["remote"]:
            raise usage.UsageError(f"--remote (or ${REGISTRY_VARIABLE}) is required")
        if not self["environment-id"]:
            raise usage.UsageError(f"--environment-id (or ${ENVIRONMENT_VARIABLE}) is required")
        if self["remote"].split("://", 1)[0] not in ("http", "https"):
            raise usage.UsageError("--remote must be an http:// or https:// URL")
        if self["registration-bearer-stdin"] and self["bearer-file"]:
            raise usage.UsageError(
                "--registration-bearer-stdin and --bearer-file are mutually exclusive")
        if not self["exit-on-stdin-close"]:
            value = self.environ.get(EXIT_ON_STDIN_CLOSE_VARIABLE)
            if value not in (None, "true", "false"):
                raise usage.UsageError(
                    f"invalid ${EXIT_ON_STDIN_CLOSE_VARIABLE} {value!r}; expected true or false")
            self["exit-on-stdin-close"] = value == "true"
        if self["connect"] is not None:
            parts = urlsplit(self["connect"])
            if parts.scheme != "ws" or not parts.hostname or not parts.port:
                raise usage.UsageError("--connect must be a ws://HOST:PORT URL")
        check_core_options(self)
        operations.check_operating_options(self)


def read_bearer(config: Options, stdin: int = 0) -> str:
    """
    The registration bearer: the first line of stdin, a file, or the
    variable (which is then removed from our environment).

    @raise StartupError: none is given, or it is empty or unreadable.
    """
    if config["registration-bearer-stdin"]:
        line = bytearray()
        while len(line) < MAX_BEARER_BYTES:
            # One byte at a time: what follows the line is not ours to read.
            byte = os.read(stdin, 1)
            if byte in (b"", b"\n"):
                break
            line += byte
        token = line.decode("utf-8", "replace").strip()
        where = "stdin"
    elif config["bearer-file"]:
        try:
            with open(config["bearer-file"], encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise StartupError(f"cannot read the bearer file {config['bearer-file']}: "
                               f"{e.strerror}") from None
        where = config["bearer-file"]
    else:
        token = config.environ.pop(TOKEN_VARIABLE, "").strip()
        where = f"${TOKEN_VARIABLE}"
        if not token:
            raise StartupError(f"a registration bearer is required: --registration-bearer-stdin, "
                               f"--bearer-file or ${TOKEN_VARIABLE}")
    if not token:
        raise StartupError(f"the registration bearer from {where} is empty")
    return token


@implementer(IReadDescriptor)
class StdinWatcher(service.Service):
    """Stops the server when stdin reaches its end (C{--exit-on-stdin-close})."""

    def __init__(self, reactor, ended: Callable[[], None], fileno: int = 0) -> None:
        self.reactor = reactor
        self.ended = ended
        self._fileno = fileno

    def startService(self) -> None:
        super().startService()
        self.reactor.addReader(self)

    def stopService(self) -> None:
        super().stopService()
        self.reactor.removeReader(self)

    def fileno(self) -> int:
        return self._fileno

    def doRead(self) -> None:
        try:
            data = os.read(self._fileno, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            self.connectionLost(None)

    def connectionLost(self, reason) -> None:
        # Also how the reactor reports a pipe whose writer closed.
        if self.running:
            log.info("stdin closed; stopping")
            self.ended()

    def logPrefix(self) -> str:
        return "stdin"


def _fatal(reactor, stopper: OrderlyStop) -> Callable[[Exception], None]:
    """What a failed first registration does: say why, stop, exit 1."""

    def fatal(error: Exception) -> None:
        # The real stderr: under twistd -n, sys.stderr is the log.
        os.write(2, f"execserver-remote: {error}\n".encode("utf-8", "replace"))
        # twistd has no exit status of its own: leave with 1 once the
        # services have stopped.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        stopper.stop()

    return fatal


def _build(config: Options, reactor) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    try:
        require_mlkem()
    except NoiseUnavailable as e:
        raise StartupError(str(e)) from None
    token = read_bearer(config)
    # Stopped one after the other, the last added first: readiness is lost,
    # then the socket closes (harnesses learn the executor is gone), then
    # the processes are killed.
    top, stopper, readiness, metrics = server_base(config, reactor)
    exec_server = None
    if config["connect"] is not None:
        url = config["connect"]
        build_protocol = lambda: WebSocketBridge(reactor, url)  # noqa: E731
    else:
        exec_server = build_core(config, reactor, top, metrics)
        build_protocol = counted(exec_server.buildConnection, metrics, "relay")
    try:
        registry = RegistryClient(reactor, config["remote"], token,
                                  account_id=config["chatgpt-account-id"])
    except ValueError as e:
        raise StartupError(str(e)) from None
    endpoint = RendezvousEndpoint(reactor, registry, config["environment-id"],
                                  NoiseIdentity.generate(), readiness=readiness, metrics=metrics)
    ExecutorLink(endpoint, build_protocol, _fatal(reactor, stopper)).setServiceParent(top)
    if config["exit-on-stdin-close"]:
        StdinWatcher(reactor, stopper.stop).setServiceParent(top)
    operations.Drain(reactor, readiness, exec_server, (),
                     config["shutdown-grace-period"]).setServiceParent(top)
    return top


makeService = reporting_startup_errors("execserver-remote: ", _build)
