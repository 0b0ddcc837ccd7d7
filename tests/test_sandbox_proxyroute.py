"""
Managed networking's route planning (which proxy variables are routed, and
what they say inside the sandbox) and the host's bridge, on their own. The
expected values are what 0.169.0 did with the same variables
(docs/reference/sandbox.md §9).
"""

from __future__ import annotations

import socket

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from execserver.sandbox import proxyroute
from execserver.sandbox.bridge import ProxyBridge
from execserver.sandbox.proxyroute import Route, RouteError, Routes
from tests import support

#: The bridge's port in the expectations below.
PORT = 45678


def inside(env: dict[str, str], loopback_ports=()) -> dict[str, str]:
    """
    The routed variables as the child sees them, had every bridge port
    been L{PORT}.
    """
    routes = proxyroute.plan_routes(env, loopback_ports)
    return {route.key: f"{route.before_port}{PORT}{route.after_port}" for route in routes.routes}


class RewriteTests(unittest.TestCase):
    def test_the_host_becomes_the_bridge_and_the_rest_is_kept(self):
        cases = {
            "http://127.0.0.1:3128": "http://127.0.0.1:45678",
            "http://localhost:3128/": "http://127.0.0.1:45678/",
            "LOCALHOST:3128": "127.0.0.1:45678",
            "127.0.0.1:3128/": "127.0.0.1:45678/",
            "socks5h://127.0.0.1:3128": "socks5h://127.0.0.1:45678",
            "HTTP://127.0.0.1:3128": "http://127.0.0.1:45678",
            "http://user:pw@127.0.0.1:3128/path?q=1": "http://user:pw@127.0.0.1:45678/path?q=1",
            "http://u%40x:p%20w@127.0.0.1:3128/p%20q": "http://u%40x:p%20w@127.0.0.1:45678/p%20q",
            "http://127.0.0.1:3128?x": "http://127.0.0.1:45678/?x",
            "http://127.0.0.1:3128#f": "http://127.0.0.1:45678/#f",
            "http://127.0.0.1:3128/a b": "http://127.0.0.1:45678/a%20b",
            "  http://127.0.0.1:3128  ": "http://127.0.0.1:45678",
            "http://127.0.0.1:3128/ ": "http://127.0.0.1:45678",
            "ws://127.0.0.1:3128": "ws://127.0.0.1:45678",
        }
        for value, expected in cases.items():
            self.assertEqual(inside({"HTTP_PROXY": value}), {"HTTP_PROXY": expected}, value)

    def test_only_the_reference_spellings_are_routed(self):
        env = {key: "http://127.0.0.1:3128" for key in (
            "HTTP_PROXY", "https_proxy", "ALL_PROXY", "npm_config_proxy", "WSS_PROXY",
            "pip_proxy", "Http_Proxy", "NO_PROXY", "SOCKS_PROXY", "docker_http_proxy",
        )}
        self.assertEqual(sorted(inside(env)), ["ALL_PROXY", "HTTP_PROXY", "WSS_PROXY", "https_proxy",
                                               "npm_config_proxy"])

    def test_other_hosts_are_left_alone(self):
        env = {"HTTP_PROXY": "http://127.0.0.1:3128", "HTTPS_PROXY": "http://127.0.0.2:3128",
               "ALL_PROXY": "http://[::1]:3128", "FTP_PROXY": "http://example.com:3128",
               "WS_PROXY": "socks5://127.1:3128"}
        self.assertEqual(inside(env), {"HTTP_PROXY": "http://127.0.0.1:45678"})

    def test_each_proxy_is_bridged_once(self):
        routes = proxyroute.plan_routes({
            "https_proxy": "http://127.0.0.1:3129", "HTTP_PROXY": "http://127.0.0.1:3128",
            "all_proxy": "localhost:3128",
        })
        self.assertEqual(routes.endpoints, (3128, 3129))
        self.assertEqual([(route.key, route.endpoint) for route in routes.routes],
                         [("HTTP_PROXY", 0), ("all_proxy", 0), ("https_proxy", 1)])

    def test_a_missing_or_default_port_is_the_schemes_proxy_port(self):
        cases = {
            "http://127.0.0.1": 80, "http://127.0.0.1:80/": 80, "https://127.0.0.1": 443,
            "socks5://localhost": 1080, "ftp://127.0.0.1:21": 80, "wss://127.0.0.1:443": 80,
            "127.0.0.1:3128": 3128, "http://127.0.0.1:": 80, "http://127.1:3128": 3128,
            "http://0x7f.0.0.1:3128": 3128,
        }
        for value, port in cases.items():
            self.assertEqual(proxyroute.plan_routes({"HTTP_PROXY": value}).endpoints, (port,), value)

    def test_the_loopback_ports_bound_the_proxies(self):
        self.assertEqual(inside({"HTTP_PROXY": "http://127.0.0.1:3128"}, [3128]),
                         {"HTTP_PROXY": "http://127.0.0.1:45678"})
        for env, ports in (({"HTTP_PROXY": "http://127.0.0.1:3128"}, [3129]),
                           ({"HTTP_PROXY": "http://127.0.0.1:3128", "HTTPS_PROXY": "http://127.0.0.1:3129"},
                            [3128]),
                           ({"HTTP_PROXY": "ftp://127.0.0.1:21"}, [21])):
            with self.assertRaises(RouteError) as raised:
                proxyroute.plan_routes(env, ports)
            self.assertEqual(str(raised.exception), proxyroute.OUTSIDE_CONTEXT)

    def test_no_routable_proxy_is_an_error(self):
        cases = [
            ({}, proxyroute.NO_PROXY_VARIABLES),
            ({"HTTP_PROXY": "  ", "OTHER_PROXY": "http://127.0.0.1:3128"}, proxyroute.NO_PROXY_VARIABLES),
            ({"HTTP_PROXY": "http://example.com:3128"}, proxyroute.NO_LOOPBACK_ENDPOINT),
            ({"HTTP_PROXY": "::::"}, proxyroute.NO_LOOPBACK_ENDPOINT),
            ({"HTTP_PROXY": "http://127.0.0.1:0"}, proxyroute.NO_LOOPBACK_ENDPOINT),
            ({"HTTP_PROXY": "http://:3128"}, proxyroute.NO_LOOPBACK_ENDPOINT),
            ({"HTTP_PROXY": "http://[::ffff:127.0.0.1]:3128"}, proxyroute.NO_LOOPBACK_ENDPOINT),
        ]
        for env, reason in cases:
            with self.assertRaises(RouteError) as raised:
                proxyroute.plan_routes(env)
            self.assertEqual(str(raised.exception), reason, env)

    def test_an_empty_value_is_skipped(self):
        routes = proxyroute.plan_routes({"HTTP_PROXY": "", "HTTPS_PROXY": "http://127.0.0.1:3128"})
        self.assertEqual(routes, Routes((3128,), (Route("HTTPS_PROXY", 0, "http://127.0.0.1:", ""),)))


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.got = defer.Deferred()
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.got.called:
            self.got.callback(self.received)

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class BridgeTests(unittest.TestCase):
    """
    The bridge accepts on listening sockets that arrive on its control
    socket (here made by the test, as the launcher would in the sandbox)
    and relays to the proxy's port.
    """

    async def bridged(self) -> tuple[ProxyBridge, int]:
        proxy = reactor.listenTCP(0, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(proxy.stopListening)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(theirs.close)
        bridge = ProxyBridge(ours, (proxy.getHost().port,))
        self.addCleanup(bridge.stop)
        bridge.start(reactor)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            socket.send_fds(theirs, [b"L"], [listener.fileno()])
            return bridge, listener.getsockname()[1]

    async def connect(self, port: int) -> _Client:
        client = _Client()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
        return client

    async def test_connections_reach_the_proxy(self):
        _, port = await self.bridged()
        client = await self.connect(port)
        client.transport.write(b"hello")
        self.assertEqual(await support.with_timeout(client.got), b"echo:hello")
        client.transport.loseConnection()
        await support.with_timeout(client.lost)

    async def test_stopping_closes_every_relay(self):
        bridge, port = await self.bridged()
        client = await self.connect(port)
        client.transport.write(b"x")
        await support.with_timeout(client.got)
        bridge.stop()
        await support.with_timeout(client.lost)
