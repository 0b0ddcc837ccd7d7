"""
A TCP proxy that breaks connections on purpose, for fault injection.

The proxy sits between a client and a server and forwards bytes both ways
with flow control and small socket buffers, so little is in flight. Each
new connection takes the next L{Cut} from the plan (if any): after a given
number of bytes in one direction it forwards exactly up to that point and
then aborts both sides (a TCP reset, as a failing network would), possibly
in the middle of a WebSocket frame. After a cut the proxy can also refuse
the next few connection attempts, which makes the outage last a while.

A cut can also play a relay with deep buffers (C{hold}): from the cut point
on it stops forwarding to the client but goes on reading from the server,
and breaks the connection once it holds that many bytes, which are lost,
as they would be in a relay that fails.

The plan is in bytes and in connection attempts, so a seed reproduces the
same faults. The one timer is optional (C{hold_idle_seconds}): a holding
relay also fails once the server has sent nothing more for that long, since
a server that waits for acknowledgements may never send as much as the cut
would hold, and a relay that holds forever is a hang, not a fault.
"""

from __future__ import annotations

import copy
import random
import socket
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.internet.defer import Deferred

#: Kernel buffers of the proxy's sockets (Linux doubles them): small, so
#: what a cut loses in flight stays well below the server's replay window.
#: At 32 KiB loopback streams stall to a crawl.
SOCKET_BUFFER_BYTES = 64 * 1024

DOWN = "down"  # server to client
UP = "up"  # client to server


@dataclass
class Cut:
    """
    Break one connection after C{after} bytes in C{direction}.

    With C{mid_frame}, the break is moved forward to the first point that
    is strictly inside a WebSocket frame's payload (server to client only).
    """

    direction: str
    after: int
    mid_frame: bool = False
    #: How many connection attempts to refuse after this cut.
    refuse_after: int = 0
    #: Server-to-client only: hold back what follows the cut point, and
    #: break once this many bytes are held (0: break at the cut point).
    hold: int = 0


@dataclass
class CutRecord:
    """
    What a cut did: where it broke the stream, and for a mid-frame cut the
    frame it broke (payload start and end offsets on the connection).
    """

    cut: Cut
    at: int
    frame: tuple[int, int] | None = None
    #: Bytes that the server sent and the client never got: held back by a
    #: C{hold} cut (the proxy's own socket buffers come on top).
    held: int = 0


class FrameTracker:
    """
    Follows the WebSocket frames of a server-to-client byte stream (after
    the HTTP upgrade response): where each frame's payload starts and ends.
    """

    def __init__(self) -> None:
        self.offset = 0
        self._in_http = True
        self._http_tail = b""
        self._header = b""
        #: Payload (start, end) of the frame being received, if any.
        self.payload: tuple[int, int] | None = None

    def feed(self, data: bytes) -> None:
        position = 0
        while position < len(data):
            here = self.offset + position
            if self._in_http:
                text = self._http_tail + data[position:]
                end = text.find(b"\r\n\r\n")
                if end < 0:
                    self._http_tail = text[-3:]
                    position = len(data)
                    continue
                consumed = end + 4 - len(self._http_tail)
                position += consumed
                self._in_http = False
                continue
            if self.payload is not None and here < self.payload[1]:
                position += min(len(data) - position, self.payload[1] - here)
                continue
            self.payload = None
            self._header += data[position:position + 1]
            position += 1
            length = self._header_length()
            if length is not None and len(self._header) == length:
                size = self._payload_size()
                start = self.offset + position
                self.payload = (start, start + size)
                self._header = b""
        self.offset += len(data)

    def _header_length(self) -> int | None:
        if len(self._header) < 2:
            return None
        short = self._header[1] & 0x7F
        masked = 4 if self._header[1] & 0x80 else 0
        return 2 + {126: 2, 127: 8}.get(short, 0) + masked

    def _payload_size(self) -> int:
        short = self._header[1] & 0x7F
        if short == 126:
            return int.from_bytes(self._header[2:4], "big")
        if short == 127:
            return int.from_bytes(self._header[2:10], "big")
        return short

    def cut_point(self, data: bytes, wanted: int) -> int | None:
        """
        How many bytes of C{data} (the next bytes of the stream) to forward
        so that the stream stops at or after offset C{wanted}, strictly
        inside a frame's payload; None if that point is not in C{data}.
        """
        if self.offset + len(data) < wanted:
            return None
        probe = copy.copy(self)
        count = max(wanted - self.offset, 0)
        probe.feed(data[:count])
        while True:
            payload = probe.payload
            if payload is not None and payload[0] < probe.offset < payload[1]:
                return count
            if count >= len(data):
                return None
            probe.feed(data[count:count + 1])
            count += 1


class _Side(protocol.Protocol):
    peer: "_Side | None" = None
    direction: str = ""

    def __init__(self, connection: "_ProxiedConnection") -> None:
        self.connection = connection

    def connectionMade(self) -> None:
        handle = self.transport.getHandle()
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            handle.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        # With buffers this small, Nagle's algorithm and delayed ACKs
        # would stall the stream for 40 ms at a time.
        self.transport.setTcpNoDelay(True)
        if self.direction == UP:
            self.connection.start_upstream()
        else:
            self.connection.server_connected()

    def dataReceived(self, data: bytes) -> None:
        self.connection.forward(self, data)

    def connectionLost(self, reason) -> None:
        self.connection.side_lost(self)


class _ProxiedConnection:
    """
    One client connection and its upstream connection.
    """

    def __init__(self, proxy: "FaultProxy", cut: Cut | None) -> None:
        self.proxy = proxy
        self.cut = cut
        self.counts = {DOWN: 0, UP: 0}
        self.frames = FrameTracker()
        self.client = _Side(self)
        self.client.direction = UP
        self.server: _Side | None = None
        self.done = False
        #: Set while a C{hold} cut holds back server-to-client bytes.
        self.holding: CutRecord | None = None
        self._idle_timer = None

    def start_upstream(self) -> None:
        # Read nothing from the client until it can go somewhere.
        self.client.transport.pauseProducing()
        self.proxy.reactor.connectTCP(self.proxy.upstream[0], self.proxy.upstream[1],
                                      _ServerSide(self))

    def server_side(self) -> _Side:
        self.server = _Side(self)
        self.server.direction = DOWN
        self.server.peer, self.client.peer = self.client, self.server
        return self.server

    def server_connected(self) -> None:
        client, server = self.client.transport, self.server.transport
        client.registerProducer(server, True)
        server.registerProducer(client, True)
        client.resumeProducing()

    def forward(self, side: _Side, data: bytes) -> None:
        if self.done:
            return
        direction = side.direction
        if self.holding is not None:
            if direction == DOWN:
                self._hold(data)
            else:
                self._deliver(side, data)
            return
        cut = self.cut
        if cut is not None and cut.direction == direction:
            sent = self.counts[direction]
            if cut.mid_frame:
                count = self.frames.cut_point(data, cut.after)
            elif sent + len(data) >= cut.after:
                count = max(cut.after - sent, 0)
            else:
                count = None
            if count is not None:
                self._deliver(side, data[:count])
                if cut.hold and direction == DOWN:
                    frame = self.frames.payload if cut.mid_frame else None
                    self.holding = CutRecord(cut, sent + count, frame)
                    self._hold(data[count:])
                else:
                    self._break(cut, sent + count)
                return
        self._deliver(side, data)

    def _hold(self, data: bytes) -> None:
        record = self.holding
        record.held += len(data)
        if record.held >= record.cut.hold:
            self._fail_holding()
            return
        idle = self.proxy.hold_idle_seconds
        if idle is not None:
            if self._idle_timer is not None and self._idle_timer.active():
                self._idle_timer.reset(idle)
            else:
                self._idle_timer = self.proxy.reactor.callLater(idle, self._fail_holding)

    def _fail_holding(self) -> None:
        if self.done:
            return
        record = self.holding
        self.proxy.cuts.append(record)
        self.proxy.refusing += record.cut.refuse_after
        self.abort()

    def _deliver(self, side: _Side, data: bytes) -> None:
        if not data:
            return
        self.counts[side.direction] += len(data)
        if side.direction == DOWN:
            self.frames.feed(data)
        side.peer.transport.write(data)

    def _break(self, cut: Cut, at: int) -> None:
        frame = self.frames.payload if cut.mid_frame else None
        self.proxy.cuts.append(CutRecord(cut, at, frame))
        self.proxy.refusing += cut.refuse_after
        self.abort()

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()

    def side_lost(self, side: _Side) -> None:
        self.abort()
        if side is self.client:
            self.proxy.connections.discard(self)


class _ServerSide(protocol.ClientFactory):
    def __init__(self, connection: _ProxiedConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr):
        return self.connection.server_side()

    def clientConnectionFailed(self, connector, reason) -> None:
        self.connection.abort()


class _ClientSide(protocol.Factory):
    def __init__(self, proxy: "FaultProxy") -> None:
        self.proxy = proxy

    def buildProtocol(self, addr):
        return self.proxy.accept()


class FaultProxy:
    """
    Listens on 127.0.0.1 and forwards to C{upstream}, breaking connections
    as L{plan} says.

    @param hold_idle_seconds: if given, a holding cut also breaks once the
        server has sent nothing for that long.
    """

    def __init__(self, reactor, upstream: tuple[str, int], plan: list[Cut] = (),
                 hold_idle_seconds: float | None = None) -> None:
        self.reactor = reactor
        self.hold_idle_seconds = hold_idle_seconds
        self.upstream = upstream
        self.plan = list(plan)
        self.cuts: list[CutRecord] = []
        #: Connection attempts still to refuse, and refused so far.
        self.refusing = 0
        self.refused = 0
        self.connections: set[_ProxiedConnection] = set()
        self.port = None

    def start(self) -> "FaultProxy":
        self.port = self.reactor.listenTCP(0, _ClientSide(self), interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}"

    def accept(self) -> protocol.Protocol:
        if self.refusing:
            self.refusing -= 1
            self.refused += 1
            return _Refused()
        connection = _ProxiedConnection(self, self.plan.pop(0) if self.plan else None)
        self.connections.add(connection)
        return connection.client

    def cut_all(self) -> None:
        """
        Break every live connection now.
        """
        for connection in list(self.connections):
            connection.abort()

    def stop(self) -> Deferred:
        self.cut_all()
        return self.port.stopListening()


class _Refused(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


def random_plan(rng: random.Random, cuts: int, down_range: tuple[int, int],
                mid_frame: int = 1, max_refused: int = 2) -> list[Cut]:
    """
    A seeded plan: C{cuts} breaks of server-to-client traffic at offsets in
    C{down_range}, C{mid_frame} of them inside a WebSocket frame, in random
    order, each followed by 0 to C{max_refused} refused attempts.
    """
    plan = [Cut(DOWN, rng.randint(*down_range), mid_frame=index < mid_frame,
                refuse_after=rng.randint(0, max_refused)) for index in range(cuts)]
    rng.shuffle(plan)
    return plan
