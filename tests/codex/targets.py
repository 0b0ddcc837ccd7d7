"""
Targets: which exec-server codex runs its tools through, and how it
reaches it.

A L{Target} is a server (the reference or ours), a connection (how codex
finds the server) and options (codex configuration, server arguments,
signals the server starts with ignored). A new configuration of the suite
is a new target: a new option value, or a new L{Connection} class whose
C{attach} starts what it needs and tells codex where to go.

Codex learns about an exec-server in three ways:

  - C{CODEX_EXEC_SERVER_URL=ws://...} in its environment (L{WebSocketURL});
  - C{$CODEX_HOME/environments.toml}, whose C{[[environments]]} tables have
    an C{id} and either C{program}/C{args}/C{env} (codex spawns the server and
    speaks to it over stdio, L{StdioProgram}) or C{url} with an optional
    C{auth_bearer_token} (L{WebSocketEnvironment}); top-level C{default} names the one to use and
    C{include_local = false} keeps codex from running tools itself;
  - C{CODEX_EXEC_SERVER_NOISE_REGISTRY_URL}, C{..._ENVIRONMENT_ID} and
    C{..._AUTH_TOKEN}: codex is a Noise harness of a remote environment, and
    reaches the server (C{--remote}) through its registry and rendezvous
    (L{Relay}: our rendezvous; L{TwoNodeRelay}: two nodes of it sharing
    Redis, codex forwarded from one to the other).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol

import jwt
from twisted.internet import protocol
from twisted.internet.defer import Deferred, ensureDeferred

from tests import support

#: The id of the environment codex is told to use.
ENVIRONMENT_ID = "e2e"


@dataclass(frozen=True)
class Server:
    """
    An implementation of the exec-server, as L{tests.support} names it.
    """

    kind: str

    def argv(self, listen: str, args: tuple[str, ...] = ()) -> list[str]:
        return support.server_argv(self.kind, listen, args)

    def remote_argv(self, registry_url: str, environment_id: str,
                    args: tuple[str, ...] = ()) -> list[str]:
        """The server as a remote executor, its bearer read from stdin."""
        remote = ["--remote", registry_url, "--environment-id", environment_id,
                  "--registration-bearer-stdin", *args]
        if self.kind == "reference":
            return [support.reference_binary(), "exec-server", *remote]
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "execserver-remote", *remote]


REFERENCE = Server("reference")
OURS = Server("ours")


@dataclass(frozen=True)
class RunDirectories:
    """
    The directories of one codex run, all below C{scratch}.
    """

    scratch: str
    #: codex's C{CODEX_HOME}
    home: str
    #: where codex runs and the scenario's files are
    workdir: str
    #: the C{CODEX_HOME} of a server that the suite starts itself
    server_home: str
    #: C{HOME} of codex, the server and so every command: empty, so that
    #: login shells read no user's profile
    user_home: str


@dataclass
class Attachment:
    """
    What codex needs to reach a server: variables for its environment and
    C{[[environments]]} tables; C{close} stops what C{attach} started.
    """

    env: dict[str, str] = field(default_factory=dict)
    environments: list[dict[str, Any]] = field(default_factory=list)
    close: Callable[[], Awaitable[None]] | None = None


class Connection(Protocol):
    name: str

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        """
        Start what codex connects to, and say how it connects.
        """


async def _start_websocket_server(target: "Target", directories: RunDirectories,
                                  extra_args: tuple[str, ...] = ()):
    return await support.start_server(
        target.server.kind,
        [*target.server_args, *extra_args],
        env={"HOME": directories.user_home},
        cwd=directories.workdir,
        home=directories.server_home,
        ignored_signals=target.ignored_signals,
    )


class WebSocketURL:
    """
    The suite starts the server on a loopback port and hands codex its URL
    in C{CODEX_EXEC_SERVER_URL}.
    """

    name = "ws"

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        server = await _start_websocket_server(target, directories)
        return Attachment(env={"CODEX_EXEC_SERVER_URL": server.url}, close=server.stop)


class StdioProgram:
    """
    Codex spawns the server from C{environments.toml} and speaks to it over
    its stdin and stdout; the server ends when codex closes its stdin.
    """

    name = "stdio"

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        argv = support.ignoring_signals(
            target.server.argv("stdio", target.server_args), target.ignored_signals
        )
        environment = {
            "id": ENVIRONMENT_ID,
            "program": argv[0],
            "args": argv[1:],
            # Added to codex's own environment, which the server inherits.
            "env": {"PYTHONPATH": str(support.PROJECT_ROOT)},
        }
        return Attachment(environments=[environment])


class WebSocketEnvironment:
    """
    The suite starts the server on a loopback port and names its URL in
    C{environments.toml}, with C{auth_bearer_token} when C{token} is given
    (the server must then be started to require it, through
    C{Target.server_args}).
    """

    name = "ws-environment"

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        server = await _start_websocket_server(target, directories)
        environment = {"id": ENVIRONMENT_ID, "url": server.url}
        if self.token is not None:
            environment["auth_bearer_token"] = self.token
        return Attachment(environments=[environment], close=server.stop)


class AuthenticatedWebSocketEnvironment:
    """
    As L{WebSocketEnvironment}, with the server started with C{--ws-auth
    MODE} and codex given the token as C{auth_bearer_token}: a capability
    token, or an HS256 JWT for C{signed-bearer-token}.
    """

    SECRET = "e2e-shared-secret-of-at-least-32-bytes"
    AUDIENCE = "codex-e2e"

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.name = f"ws-environment-{mode}"

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        secret_file = os.path.join(directories.scratch, "ws-secret")
        if self.mode == "capability-token":
            token = "e2e-capability-token"
            with open(secret_file, "w") as f:
                f.write(token + "\n")
            auth = ("--ws-auth", self.mode, "--ws-token-file", secret_file)
        else:
            with open(secret_file, "w") as f:
                f.write(self.SECRET)
            token = jwt.encode({"exp": int(time.time()) + 3600, "aud": self.AUDIENCE},
                               self.SECRET.encode(), algorithm="HS256")
            auth = ("--ws-auth", self.mode, "--ws-shared-secret-file", secret_file,
                    "--ws-audience", self.AUDIENCE)
        server = await _start_websocket_server(target, directories, auth)
        environment = {"id": ENVIRONMENT_ID, "url": server.url, "auth_bearer_token": token}
        return Attachment(environments=[environment], close=server.stop)


class Relay:
    """
    Our rendezvous on a loopback port, the server registered behind it as a
    remote executor (C{codex exec-server --remote}, C{twistd
    execserver-remote}), and codex a Noise harness of that environment.
    """

    name = "relay"
    token = "e2e-relay-token"

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        from twisted.internet import reactor

        from execserver.rendezvous.site import Rendezvous, site
        from execserver.rendezvous.store import BearerTokens

        rendezvous = Rendezvous(reactor, BearerTokens({ENVIRONMENT_ID: self.token}))
        port = reactor.listenTCP(0, site(rendezvous), interface="127.0.0.1")
        registry_url = f"http://127.0.0.1:{port.getHost().port}"
        executor = _RemoteExecutor(self.token)
        argv = target.server.remote_argv(
            registry_url, ENVIRONMENT_ID, target.server_args)
        process = reactor.spawnProcess(
            executor, argv[0], argv,
            env=support.server_environment({"HOME": directories.user_home,
                                            "CODEX_HOME": directories.server_home}),
            path=directories.workdir)

        async def close() -> None:
            if not executor.ended.called:
                process.signalProcess("TERM")
            await support.with_timeout(executor.ended)
            await port.stopListening()

        try:
            await support.with_timeout(rendezvous.router.when_executor(ENVIRONMENT_ID))
        except BaseException:
            await close()
            raise
        return Attachment(env={
            "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": registry_url,
            "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": ENVIRONMENT_ID,
            "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": self.token,
        }, close=close)


class TwoNodeRelay:
    """
    Two rendezvous nodes sharing a real redis-server, the server registered
    as a remote executor on node A, codex a Noise harness whose registry is
    node B; node A sends harnesses to node B's address, so codex's socket
    reaches B and is forwarded to A (docs/rendezvous-cluster.md).
    """

    name = "relay-two-nodes"
    token = "e2e-relay-token"

    async def attach(self, target: "Target", directories: RunDirectories) -> Attachment:
        from twisted.internet import reactor

        from tests.clusterenv import InProcessNode
        from tests.redisserver import RedisServer

        redis = await RedisServer().start()
        tokens = {ENVIRONMENT_ID: self.token}
        started = []
        executor = _RemoteExecutor(self.token)
        process = None

        async def close() -> None:
            try:
                if process is not None:
                    if not executor.ended.called:
                        process.signalProcess("TERM")
                    await support.with_timeout(executor.ended)
                for node in reversed(started):
                    await node.stop()
            finally:
                await redis.stop()

        try:
            node_b = InProcessNode(redis.url, tokens, "b").start()
            started.append(node_b)
            b_websocket = "ws" + node_b.registry_url[len("http"):]
            node_a = InProcessNode(redis.url, tokens, "a", node_url=b_websocket).start()
            started.append(node_a)
            argv = target.server.remote_argv(node_a.registry_url, ENVIRONMENT_ID,
                                             target.server_args)
            process = reactor.spawnProcess(
                executor, argv[0], argv,
                env=support.server_environment({"HOME": directories.user_home,
                                                "CODEX_HOME": directories.server_home}),
                path=directories.workdir)
            await support.with_timeout(ensureDeferred(node_a.when_home(ENVIRONMENT_ID)))
        except BaseException:
            await close()
            raise
        return Attachment(env={
            "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": node_b.registry_url,
            "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": ENVIRONMENT_ID,
            "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": self.token,
        }, close=close)


class _RemoteExecutor(protocol.ProcessProtocol):
    """Hands the executor its registration bearer on stdin."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.token.encode() + b"\n")
        self.transport.closeStdin()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


WEBSOCKET = WebSocketURL()
STDIO = StdioProgram()
WEBSOCKET_ENVIRONMENT = WebSocketEnvironment()
CAPABILITY_TOKEN_ENVIRONMENT = AuthenticatedWebSocketEnvironment("capability-token")
SIGNED_BEARER_TOKEN_ENVIRONMENT = AuthenticatedWebSocketEnvironment("signed-bearer-token")
RELAY = Relay()
TWO_NODE_RELAY = TwoNodeRelay()


@dataclass(frozen=True)
class Target:
    """
    One way of running codex's tools through an exec-server.

    @ivar codex_config: top-level C{config.toml} settings over the suite's
        defaults (e.g. C{{"sandbox_mode": "workspace-write"}}).
    @ivar server_args: extra command-line arguments of the server.
    @ivar ignored_signals: signals the server starts with ignored.
    @ivar variant: names the options in test output; empty for the defaults.
    """

    server: Server
    connection: Connection
    codex_config: Mapping[str, Any] = field(default_factory=dict)
    server_args: tuple[str, ...] = ()
    ignored_signals: tuple[int, ...] = ()
    variant: str = ""

    @property
    def name(self) -> str:
        return "-".join(filter(None, (self.server.kind, self.connection.name, self.variant)))

    def on(self, server: Server) -> "Target":
        """
        The same configuration with another server.
        """
        return dataclasses.replace(self, server=server)


def pair(connection: Connection, **options: Any) -> tuple[Target, Target]:
    """
    The reference and our server, configured alike: what the suite compares.
    """
    reference = Target(REFERENCE, connection, **options)
    return reference, reference.on(OURS)
