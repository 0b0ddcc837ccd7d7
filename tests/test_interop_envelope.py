"""
The envelope, the handshake and the HTTP surface, against the reference.
"""

import json
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred

from tests import support
from tests.interop import InteropTestCase, interop

CASES = json.loads((Path(__file__).parent / "data" / "envelope_cases.json").read_text())

FAMILIES = {
    "process/start": {"processId": "p", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False},
    "process/read": {"processId": "p"},
    "process/write": {"processId": "p", "chunk": "", "writeId": "w"},
    "process/signal": {"processId": "p", "signal": "interrupt"},
    "process/terminate": {"processId": "p"},
    "environment/info": None,
    "environment/status": None,
}


async def malformed_corpus(peer):
    """
    Every recorded input, each on a connection of its own.
    """
    for case in CASES:
        if "detail" not in case:
            continue
        conn = await peer.reconnect()
        conn.send_raw(case["input"])
        await conn.next_message(f"reply to {case['input']!r}")
        await conn.call("environment/status", label="still open")
        await conn.close()


def cut_short_values() -> list[str]:
    """
    Values cut short inside containers, answered without the walk level by
    level where their containers could close (L{wirejson._cut_inside_containers}),
    and their near misses, which are walked.
    """
    texts = []
    for depth in (1, 5, 126, 127):
        for opener in ("[", '{"a":', "[ ", '{ "k" : ', "[\n", '{"x":[1,{"y":'):
            for tail in ("", " ", "\n", ",", "]", "}", "]" * (depth // 2), "}" * (depth // 2)):
                text = opener * depth + "1" + tail
                texts += [text, '{"id":1,"method":"fs/readFile","params":' + text]
    start = ('{"id":7,"method":"process/start","params":{"processId":"p",'
             '"argv":["sh","-c","echo [x] {y}"],"env":{"A":"}"},"tty":false}}')
    return texts + [start[:end] for end in range(1, len(start), 3)]


async def values_cut_short(peer):
    await peer.handshake()
    for text in cut_short_values():
        peer.send_raw(text.encode())
        await peer.next_message(f"reply to {text[:60]!r}")


def deep_values() -> list[str]:
    """
    Messages with runs of openers, refused at the limit or parsed.
    """
    texts = []
    for depth in (128, 129, 300):
        for opener, closer in (("[", "]"), ('{"a":', "}"), ("[ ", "]"), ('{"a":[', "]}")):
            for closers in (depth, depth // 2):
                text = opener * depth + "1" + closer * closers
                texts += [text, '{"id":1,"method":"fs/readFile","params":' + text + "}"]
    return texts + ['{"id":2,"method":"environment/status","params":{"s":"' + "[" * 200 + '"}}',
                    '{"id":3,"method":"environment/status","params":' + "[" * 100 + "]" * 100 + "}"]


async def values_nested_deep(peer):
    await peer.handshake()
    for text in deep_values():
        peer.send_raw(text.encode())
        await peer.next_message(f"reply to {text[:60]!r}")


async def dropped_connections(peer):
    for case in CASES:
        if "dropped" not in case:
            continue
        conn = await peer.reconnect()
        conn.send_raw(case["input"])
        await conn.expect_disconnect(f"dropped by {case['input']!r}")


async def accepted_variations(peer):
    await peer.handshake()
    for case in CASES:
        if "reply" in case:
            peer.send_raw(case["input"])
            await peer.next_message(f"reply to {case['input']!r}")


async def binary_frames(peer):
    peer.send_raw(b'{"id":1,"method":"environment/status"}', binary=True)
    await peer.next_message("binary JSON")
    for data in (b"\xff\xfe", b'{"id":1,"method":"x","params":"\xff"}', b'{"\xe9":1}',
                 b'{"id":1,"method":"x"}\xff', b""):
        peer.send_raw(data, binary=True)
        await peer.next_message(f"binary {data!r}")


async def invalid_utf8_text_frame(peer):
    peer.queue.transport.protocol.sendMessage(b'{"id":1,"method":"\xff"}', isBinary=False)
    await peer.expect_disconnect()


async def gating(peer):
    for method, params in FAMILIES.items():
        await peer.call(method, params, label=f"{method} before initialize")
    await peer.call("process/start", None, label="params decoded before the gate")
    await peer.call("no/such", label="unknown method before initialize")
    await peer.call("initialize", {"clientName": "x"}, record=False)
    for method, params in FAMILIES.items():
        await peer.call(method, params, label=f"{method} before initialized")
    await peer.call("initialize", {"clientName": "x"}, label="second initialize")
    peer.send({"method": "initialized", "params": 5})
    peer.send({"method": "initialized"})
    await peer.call("environment/status", label="after initialized")
    await peer.call("initialized", label="initialized as a request")


async def initialize_params(peer):
    for params in (None, {}, {"resumeSessionId": "nope"}, [], ["x", None, 1], "x", 5, True,
                   {"clientName": 5}, {"clientName": "x", "resumeSessionId": 5}, {"clientName": None},
                   ["x", "nope"], {"clientName": "x", "resumeSessionId": ""}):
        await peer.call("initialize", params, label=f"initialize {params!r}")
    await peer.call("initialize", ["x"], label="positional initialize", record=False)
    await peer.call("environment/status", label="status before initialized")


async def failed_initialize_then_initialized(peer):
    await peer.call("initialize", {"clientName": "x", "resumeSessionId": "nope"})
    peer.send({"method": "initialized"})
    await peer.expect_disconnect()


class EnvelopeTests(InteropTestCase):
    test_malformed_corpus = interop(malformed_corpus)
    test_dropped_connections = interop(dropped_connections)
    test_accepted_variations = interop(accepted_variations)
    test_binary_frames = interop(binary_frames)
    test_invalid_utf8_text_frame = interop(invalid_utf8_text_frame)
    test_values_cut_short = interop(values_cut_short)
    test_values_nested_deep = interop(values_nested_deep)


class HandshakeTests(InteropTestCase):
    test_gating = interop(gating)
    test_initialize_params = interop(initialize_params)
    test_failed_initialize_then_initialized = interop(failed_initialize_then_initialized)


class _RawHttp(protocol.Protocol):
    """
    Sends raw bytes and reads one response: its head, then as much body as
    content-length announces (none for HEAD).
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        message = support.complete_http_message(self.data, self.request.startswith(b"HEAD"))
        if message is not None and not self.done.called:
            self.done.callback(message)
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.errback(reason)


async def raw_http(url: str, request: bytes) -> dict:
    """
    Send raw bytes; the parts of the response both servers are meant to
    agree on.
    """
    parts = urlsplit(url)
    client = _RawHttp(request)
    await support.with_timeout(protocol.ClientCreator(reactor, lambda: client).connectTCP(
        parts.hostname, parts.port))
    head, body = await support.with_timeout(client.done)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return {
        "status": lines[0].split(" ", 2)[1] if lines[0] else None,
        "content-length": headers.get("content-length"),
        "content-type": headers.get("content-type"),
        "allow": headers.get("allow"),
        "body": body.decode("latin-1"),
    }


UPGRADE = (b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")

HTTP_REQUESTS = {
    "readyz": b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "readyz with a query": b"GET /readyz?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "readyz HEAD": b"HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "readyz POST": b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "readyz slash": b"GET /readyz/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "readyz with origin": b"GET /readyz HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    "upgrade with origin": b"GET / HTTP/1.1\r\nHost: x\r\nOrigin: null\r\n" + UPGRADE + b"\r\n",
    "404 with origin": b"GET /nope HTTP/1.1\r\nHost: x\r\nOrigin: x\r\nConnection: close\r\n\r\n",
    "not found": b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "root without upgrade": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "root POST": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "no Upgrade header": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "wrong version": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    "no key": b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "HTTP/1.0 upgrade": b"GET / HTTP/1.0\r\nHost: x\r\n" + UPGRADE + b"\r\n",
}


class HttpSurfaceTests(InteropTestCase):
    async def test_http_answers(self):
        async def scenario(peer):
            for name, request in HTTP_REQUESTS.items():
                peer.record(name, await raw_http(peer.server.url, request))

        await self.compare(scenario)


async def oversized_input_spares_other_connections(peer):
    await peer.handshake()
    for size, fragment in ((16 * 1024 * 1024 + 1, 0), (64 * 1024 * 1024 + 1, 1024 * 1024)):
        bad = await peer.reconnect()
        payload = b'"' + b"x" * (size - 2) + b'"'
        sender = bad.queue.transport.protocol
        sender.maxFramePayloadSize = sender.maxMessagePayloadSize = 0
        sender.sendMessage(payload, isBinary=False, fragmentSize=fragment or None)
        await bad.expect_disconnect(f"dropped after {size} bytes")
        await peer.call("environment/status", label="other connection still served")
    ok = await peer.reconnect()
    # The answer quotes the whole string back, in a frame over our own limit.
    ok.queue.transport.protocol.maxFramePayloadSize = 0
    head, tail = '{"id":1,"method":"environment/status","params":"', '"}'
    ok.send_raw(head + "x" * (16 * 1024 * 1024 - len(head) - len(tail)) + tail)
    await ok.next_message("a frame of exactly 16 MiB is still a message")


class LimitTests(InteropTestCase):
    test_oversized_input_spares_other_connections = interop(oversized_input_spares_other_connections)


async def keepalive_ping(peer):
    pinged = Deferred()
    protocol = peer.queue.transport.protocol
    protocol.onPing = lambda payload: pinged.called or pinged.callback(reactor.seconds())
    connected = reactor.seconds()
    arrived = await support.with_timeout(pinged, 45)
    peer.record("a ping within 45 s, none in the first 25 s", arrived - connected >= 25)
    await peer.handshake()


class KeepaliveTests(InteropTestCase):
    timeout = 120
    test_the_server_pings_every_30_seconds = interop(keepalive_ping)


async def duplicate_ids(peer):
    await peer.handshake()
    peer.send({"id": 7, "method": "environment/status"})
    peer.send({"id": 7, "method": "no/such"})
    await peer.next_message("first answer to id 7")
    await peer.next_message("second answer to id 7")


class DuplicateIdTests(InteropTestCase):
    test_duplicate_ids_are_each_answered = interop(duplicate_ids)


BIG = "9" * 5000


async def big_integers(peer):
    """
    Integers of any length are numbers (Python refuses to convert more than
    4300 digits; the reference reads them all).
    """
    peer.send_raw('{"id":3,"method":"no/such","params":{"big":' + BIG + "}}")
    await peer.next_message("an unknown method with a big number in its params")
    peer.send_raw('{"id":' + BIG + ',"method":"environment/status"}')
    await peer.next_message("a big number as the id")
    peer.send_raw('{"id":4,"method":"process/read","params":{"processId":"p","afterSeq":-' + BIG + "}}")
    await peer.next_message("a big number where an integer is expected")
    peer.send_raw("[" + BIG + ",x]")
    await peer.next_message("an error after a big number")
    await peer.call("environment/status", label="still served")


class BigNumberTests(InteropTestCase):
    test_integers_of_any_length = interop(big_integers)
