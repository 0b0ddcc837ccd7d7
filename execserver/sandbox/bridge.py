"""
The host's end of managed networking for one sandboxed child.

Inside the child's network namespace, L{execserver.sandbox.netlaunch} opens
one listening socket per proxy on the sandbox's loopback and sends it here
over a Unix socket pair before it runs the command. A socket stays in the
namespace it was made in wherever its descriptor goes, so this process
accepts the child's connections on it, in the reactor, and relays each to
the proxy's port on this host's loopback. Nothing else leaves the
namespace. When the child is gone, L{ProxyBridge.stop} closes the listening
sockets and every relayed connection.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import protocol
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.logger import Logger
from twisted.protocols import portforward
from zope.interface import implementer

from execserver.sandbox.proxyroute import LOOPBACK_ADDRESS

log = Logger()


class _Relay(portforward.ProxyServer):
    """
    One connection of the child, relayed to the proxy once connected.
    """

    def connectionMade(self) -> None:
        self.factory.relays.add(self)
        super().connectionMade()

    def connectionLost(self, reason) -> None:
        self.factory.relays.discard(self)
        super().connectionLost(reason)


class _RelayFactory(portforward.ProxyFactory):
    protocol = _Relay

    def __init__(self, reactor, port: int) -> None:
        super().__init__(LOOPBACK_ADDRESS, port)
        self.reactor = reactor
        self.relays: set[_Relay] = set()

    def buildProtocol(self, addr):
        relay = super().buildProtocol(addr)
        relay.reactor = self.reactor
        return relay


@implementer(IFileDescriptorReceiver)
class _Control(protocol.Protocol):
    """
    Receives the listening sockets, one per proxy, in the order of the
    bridge's endpoints; the launcher sends nothing else.
    """

    def __init__(self, bridge: "ProxyBridge") -> None:
        self.bridge = bridge

    def fileDescriptorReceived(self, descriptor: int) -> None:
        try:
            self.bridge._listening(descriptor)
        finally:
            os.close(descriptor)

    def dataReceived(self, data: bytes) -> None:
        pass


class ProxyBridge:
    """
    Relays a sandboxed child's connections to the proxies on C{endpoints}
    (ports of this host's loopback), through the listening sockets that
    arrive on C{control}.
    """

    def __init__(self, control: socket.socket, endpoints: tuple[int, ...]) -> None:
        self._control_socket: socket.socket | None = control
        self.endpoints = endpoints
        self._factories: list[_RelayFactory] = []
        self._ports: list = []
        self._control = None
        self._reactor = None
        self._stopped = False

    def start(self, reactor) -> None:
        """
        Begin receiving the child's listening sockets (once it has started).
        """
        self._reactor = reactor
        control, self._control_socket = self._control_socket, None
        control.setblocking(False)
        try:
            self._control = reactor.adoptStreamConnection(
                control.fileno(), socket.AF_UNIX, protocol.Factory.forProtocol(lambda: _Control(self))
            )
        finally:
            control.close()

    def _listening(self, descriptor: int) -> None:
        index = len(self._factories)
        if self._stopped or index >= len(self.endpoints):
            return
        # The launcher made it blocking; the reactor must not wait in accept.
        os.set_blocking(descriptor, False)
        factory = _RelayFactory(self._reactor, self.endpoints[index])
        self._factories.append(factory)
        self._ports.append(self._reactor.adoptStreamPort(descriptor, socket.AF_INET, factory))
        log.debug("bridging a sandbox's loopback to proxy port {port}", port=self.endpoints[index])

    def stop(self) -> None:
        """
        Close everything: the child is gone, or never started.
        """
        self._stopped = True
        if self._control_socket is not None:
            self._control_socket.close()
            self._control_socket = None
        if self._control is not None:
            self._control.loseConnection()
            self._control = None
        for port in self._ports:
            port.stopListening()
        self._ports = []
        for factory in self._factories:
            for relay in list(factory.relays):
                relay.transport.abortConnection()
