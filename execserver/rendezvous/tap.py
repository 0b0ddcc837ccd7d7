"""
The C{twistd execserver-rendezvous} command: an environment registry and
rendezvous that executors (ours, or C{codex exec-server --remote}) and
harnesses (our client, or codex) use to meet.

    twistd -n execserver-rendezvous --tokens FILE [--listen ENDPOINT] [--websocket-url URL]
        [--admin-listen http://IP:PORT]
        [--store redis://HOST:PORT/DB [--node-id ID] [--node-url URL] [--peer-url URL]]

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

With C{--store redis://...} the process is one node of a cluster sharing
that Redis (docs/rendezvous-cluster.md): C{--node-url} is the C{ws://} or
C{wss://} origin harnesses reach this node at (by default, the one it
listens on), C{--peer-url} the one other nodes reach it at (by default
the node URL), C{--node-id} its name (random by default).
"""

from __future__ import annotations

import sys

from twisted.application import service
from twisted.python import usage

import execserver
from execserver import operations
from execserver.listening import url_of
from execserver.metrics import Metrics
from execserver.operations import PortService, StopInOrder
from execserver.rendezvous.cluster import new_node_id
from execserver.rendezvous.redisstore import Node, RedisStore, parse_redis_url
from execserver.rendezvous.router import Router
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from execserver.service import (
    ReadyWhenRunning,
    StartupError,
    admin_listener,
    listen_now,
    reporting_startup_errors,
)

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
        ["store", None, None,
         "redis://HOST[:PORT][/DB]: share state with other nodes there (default: in memory)."],
        ["node-id", None, None, "This node's id in the cluster (default: random)."],
        ["node-url", None, None,
         "The ws:// or wss:// origin harnesses reach this node at (default: where it listens)."],
        ["peer-url", None, None,
         "The ws:// or wss:// origin other nodes reach this node at (default: --node-url)."],
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
        for name in ("websocket-url", "node-url", "peer-url"):
            base = self[name]
            if base is not None and not base.startswith(("ws://", "wss://")):
                raise usage.UsageError(f"--{name} must start with ws:// or wss://")
        if self["store"] is None:
            for name in ("node-id", "node-url", "peer-url"):
                if self[name] is not None:
                    raise usage.UsageError(f"--{name} needs --store")
        else:
            try:
                parse_redis_url(self["store"])
            except ValueError as e:
                raise usage.UsageError(f"--store: {e}") from None


def _build(config: Options, reactor) -> StopInOrder:
    if reactor is None:
        from twisted.internet import reactor
    metrics = Metrics()
    tokens = read_tokens(config["tokens"])
    store = None if config["store"] is None else RedisStore.from_url(reactor, config["store"])
    rendezvous = Rendezvous(reactor, tokens, store=store, websocket_base=config["websocket-url"],
                            router=Router(reactor, tap=metrics.rendezvous_tap()))
    top = StopInOrder()
    readiness = operations.readiness_for(None)
    admin = admin_listener(config, reactor, metrics, readiness)
    if admin is not None:
        admin.setServiceParent(top)
    description = config["listen"]
    port = listen_now(reactor, description, site(rendezvous), description)
    scheme = "https" if description.split(":", 1)[0] in _TLS_ENDPOINTS else "http"
    url = url_of(port.getHost(), scheme)
    if store is not None:
        node_url = (config["node-url"] or "ws" + url[len("http"):]).rstrip("/")
        node = Node(config["node-id"] or new_node_id(), node_url,
                    (config["peer-url"] or node_url).rstrip("/"))
        _StoreService(store).setServiceParent(top)
        rendezvous.join(node).setServiceParent(top)
    PortService(reactor, port, url, "rendezvous", out=sys.stdout).setServiceParent(top)
    ReadyWhenRunning(reactor, readiness).setServiceParent(top)
    return top


makeService = reporting_startup_errors("execserver-rendezvous: ", _build)


class _StoreService(service.Service):
    """Closes the store's connection last (services stop in reverse order)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def stopService(self):
        super().stopService()
        return self.store.close()
