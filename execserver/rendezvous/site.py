"""
One rendezvous: the registry API and the relay WebSockets on one HTTP site.

    POST /cloud/environment/{id}/register|validate|connect   (L{registry})
    GET  /ws/environment/{id}?role=...&ticket=...             (L{websocket})
    GET  /readyz                                               200

    rendezvous = Rendezvous(reactor, BearerTokens({"env-1": token}))
    reactor.listenTCP(8080, site(rendezvous))
"""

from __future__ import annotations

from urllib.parse import unquote

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.web import http, resource, server

from execserver.rendezvous.cluster import ClusterNode
from execserver.rendezvous.redisstore import Node
from execserver.rendezvous.registry import ACTIONS, EnvironmentApi
from execserver.rendezvous.router import Router
from execserver.rendezvous.store import BearerTokens, IRendezvousStore, MemoryStore
from execserver.rendezvous.websocket import websocket_factory


class Rendezvous:
    """
    The state of one rendezvous process.

    @param tokens: who may use which environment.
    @param store: registrations and grants (in memory by default).
    @param websocket_base: the C{ws://} or C{wss://} origin put in the
        socket URLs handed out; by default, the one the caller reached.
    @param router: the routes (a new L{Router} by default).
    @ivar node: this process as a node of a cluster (L{set_node}), or
        C{None} when it is the only rendezvous.
    """

    def __init__(self, clock: IReactorTime, tokens: BearerTokens,
                 store: IRendezvousStore | None = None,
                 websocket_base: str | None = None, router: Router | None = None) -> None:
        self.clock = clock
        self.tokens = tokens
        self.store = store if store is not None else MemoryStore(clock)
        self.websocket_base = websocket_base
        self.router = router if router is not None else Router(clock)
        self.node: ClusterNode | None = None

    def join(self, node: Node) -> ClusterNode:
        """
        Make this rendezvous C{node} of a cluster whose state is its store
        (a L{RedisStore}); the returned service keeps its presence.
        """
        self.node = ClusterNode(self.clock, self.store, self.router, node)
        return self.node


class _Ready(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-length", b"0")
        return b""


class _Root(resource.Resource):
    def __init__(self, rendezvous: Rendezvous) -> None:
        super().__init__()
        self.rendezvous = rendezvous
        self.websockets = WebSocketResource(websocket_factory(rendezvous))

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        segments = [path, *request.postpath]
        if len(segments) == 4 and segments[:2] == [b"cloud", b"environment"]:
            action = segments[3].decode("latin-1")
            environment_id = unquote(segments[2].decode("latin-1"))
            if environment_id and action in ACTIONS:
                return EnvironmentApi(self.rendezvous, environment_id, action)
        elif len(segments) == 3 and segments[:2] == [b"ws", b"environment"]:
            return self.websockets
        elif segments == [b"readyz"]:
            return _Ready()
        return resource.NoResource()


class _WithoutQuery:
    """A request as the access log sees it: its URI loses the query."""

    def __init__(self, request: server.Request) -> None:
        self._request = request
        self.uri = request.uri.split(b"?", 1)[0]

    def __getattr__(self, name: str):
        return getattr(self._request, name)


def access_log_line(timestamp: str, request: server.Request) -> str:
    """The combined log format, without the query (socket tickets)."""
    return http.combinedLogFormatter(timestamp, _WithoutQuery(request))


def site(rendezvous: Rendezvous) -> server.Site:
    """The HTTP site of C{rendezvous}."""
    web = server.Site(_Root(rendezvous), logFormatter=access_log_line)
    web.displayTracebacks = False
    web.noisy = False
    return web
