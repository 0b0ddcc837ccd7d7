"""
The C{twistd execserver-rendezvous} command: an environment registry and
rendezvous that executors (ours, or C{codex exec-server --remote}) and
harnesses (our client, or codex) use to meet.

    twistd -n execserver-rendezvous --tokens FILE [--listen ENDPOINT] [--websocket-url URL]
        [--admin-listen http://IP:PORT]

The token file has one environment per line, C{ENVIRONMENT_ID TOKEN}
(blank lines and lines starting with C{#} are skipped): the bearer its
executor registers with and its harnesses connect with. C{--listen} is a
Twisted server endpoint (C{tcp:8080:interface=0.0.0.0}, or
C{ssl:443:privateKey=key.pem:certKey=cert.pem} for HTTPS and C{wss://}).
The registry hands out socket URLs on the origin each caller reached,
unless C{--websocket-url} names another (behind a TLS proxy, say). The
URL it listens on is printed on its own line on stdout. With
C{--admin-listen}, C{/metrics} counts the relay frames it routes (role
C{rendezvous}) and C{/readyz} answers 200 until it is asked to stop (the
admin URL is printed first).
"""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.python import usage

import execserver
from execserver import operations
from execserver.listening import url_of
from execserver.metrics import Metrics
from execserver.operations import PortService
from execserver.rendezvous.router import Router
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from execserver.service import ReadyWhenRunning, StartupError, admin_listener, listen_now

#: Endpoint types served over TLS.
_TLS_ENDPOINTS = ("ssl", "tls")


def read_tokens(path: str) -> BearerTokens:
    """
    @raise StartupError: the file cannot be read, or a line is not
        C{ENVIRONMENT_ID TOKEN}, or an environment appears twice.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise StartupError(f"cannot read the token file {path}: {e.strerror}") from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise StartupError(f"{path} line {number}: expected ENVIRONMENT_ID TOKEN")
        environment_id, token = fields
        if environment_id in tokens:
            raise StartupError(f"{path} line {number}: environment {environment_id} appears twice")
        tokens[environment_id] = token
    if not tokens:
        raise StartupError(f"the token file {path} names no environment")
    return BearerTokens(tokens)


class Options(usage.Options):
    optParameters = [
        ["tokens", None, None, "File of 'ENVIRONMENT_ID TOKEN' lines (required)."],
        ["listen", None, "tcp:8080:interface=127.0.0.1",
         "Twisted server endpoint to serve HTTP (or HTTPS) on."],
        ["websocket-url", None, None,
         "The ws:// or wss:// origin put in socket URLs (default: the one each caller reached)."],
        operations.OPERATING_PARAMETERS[0],
    ]

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"execserver {execserver.__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if not self["tokens"]:
            raise usage.UsageError("--tokens is required")
        base = self["websocket-url"]
        if base is not None and not base.startswith(("ws://", "wss://")):
            raise usage.UsageError("--websocket-url must start with ws:// or wss://")


def makeService(config: Options, reactor=None) -> service.MultiService:
    try:
        return _build(config, reactor)
    except StartupError as e:
        sys.stderr.write(f"execserver-rendezvous: {e}\n")
        sys.exit(1)


def _build(config: Options, reactor) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    metrics = Metrics()
    rendezvous = Rendezvous(reactor, read_tokens(config["tokens"]),
                            websocket_base=config["websocket-url"],
                            router=Router(reactor, tap=metrics.rendezvous_tap()))
    top = operations.StopInOrder()
    readiness = operations.readiness_for(None)
    admin = admin_listener(config, reactor, metrics, readiness)
    if admin is not None:
        admin.setServiceParent(top)
    description = config["listen"]
    port = listen_now(reactor, description, site(rendezvous), description)
    scheme = "https" if description.split(":", 1)[0] in _TLS_ENDPOINTS else "http"
    PortService(reactor, port, url_of(port.getHost(), scheme), "rendezvous",
                out=sys.stdout).setServiceParent(top)
    ReadyWhenRunning(reactor, readiness).setServiceParent(top)
    return top
