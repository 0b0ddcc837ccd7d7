"""
Relay sockets: frames go to the stream attached under their id and
everything else to the socket's owner; messages are binary and at most
256 KiB; streams send in turn while the socket has room; a peer that stops
answering Pings is dropped after 60 s; and a refused or silent upgrade
fails the dial with a reason that never shows the URL's query.

In memory (L{tests.relaypair}) unless the behaviour is about real sockets.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer

from execserver.relay import frames
from execserver.relay import socket as relay_socket
from execserver.relay.limits import MAX_WEBSOCKET_MESSAGE_BYTES
from execserver.relay.socket import IRelayStream, RelayConnectError, RelaySocketLost
from tests import support
from tests.relaypair import RecordingOwner, RelayPair


@implementer(IRelayStream)
class QueueStream:
    """A stream that sends what is queued in it and records what it gets."""

    def __init__(self, socket, stream_id: str) -> None:
        self.socket = socket
        self.stream_id = stream_id
        self.outgoing: deque[bytes] = deque()
        self.received = []
        self.lost = []

    def send(self, *payloads: bytes) -> None:
        for payload in payloads:
            self.outgoing.append(frames.encode_data(self.stream_id, len(self.outgoing), payload))
        self.socket.wantsToSend(self)

    def frameReceived(self, frame) -> None:
        self.received.append(frame)

    def pullFrame(self):
        return self.outgoing.popleft() if self.outgoing else None

    def socketLost(self, reason) -> None:
        self.lost.append(reason)


def payloads(owner: RecordingOwner) -> list[bytes]:
    return [frame.payload for frame, _ in owner.frames]


class DispatchTests(unittest.TestCase):
    def setUp(self):
        self.pair = RelayPair()

    def test_the_dial_fires_with_the_open_socket(self):
        self.assertIs(self.successResultOf(self.pair.client_factory.result), self.pair.client)
        self.assertIs(self.pair.server_owner.socket, self.pair.server)

    def test_frames_go_to_the_attached_stream_and_the_rest_to_the_owner(self):
        stream = QueueStream(self.pair.server, "mine")
        self.pair.server.attach("mine", stream)
        mine = frames.encode_data("mine", 0, b"a")
        other = frames.encode_handshake("other", b"b")
        self.pair.client.writeFrame(mine)
        self.pair.client.writeFrame(other)
        self.pair.flush()
        self.assertEqual([f.payload for f in stream.received], [b"a"])
        self.assertEqual(self.pair.server_owner.frames,
                         [(frames.parse_frame(other), other)])

    def test_a_detached_stream_gets_nothing_more(self):
        stream = QueueStream(self.pair.server, "s")
        self.pair.server.attach("s", stream)
        self.pair.server.detach("s")
        self.pair.client.writeFrame(frames.encode_data("s", 0, b"a"))
        self.pair.flush()
        self.assertEqual((stream.received, payloads(self.pair.server_owner)), ([], [b"a"]))

    def test_invalid_frames_and_text_are_reported_and_the_socket_stays(self):
        client = self.pair.client
        client.sendMessage(b"\xff\xff not protobuf", isBinary=True)
        client.sendMessage(b"\x08\x02\x12\x01s\x3a\x00", isBinary=True)  # version 2
        client.sendMessage(b'{"id":1}', isBinary=False)
        client.writeFrame(frames.encode_resume("s"))
        self.pair.flush()
        self.assertEqual(self.pair.server_owner.invalid, [
            "undecodable relay frame", "unsupported relay frame version",
            "text message on a relay socket",
        ])
        self.assertEqual([f.kind for f, _ in self.pair.server_owner.frames], [frames.FrameKind.RESUME])
        self.assertEqual(self.pair.server_owner.lost, [])

    def test_frames_of_every_length_encoding_cross_both_ways_unchanged(self):
        # 7-, 16- and 64-bit lengths; the client masks (or the server would
        # refuse the frame), the server does not (or the client would).
        sizes = (0, 125 - 60, 126, 65535 - 60, 65536, 200 * 1024)
        sent = [frames.encode_data("s", n, b"x" * max(size, 1)) for n, size in enumerate(sizes)]
        for raw in sent:
            self.pair.client.writeFrame(raw)
            self.pair.server.writeFrame(raw)
        self.pair.flush()
        for owner in (self.pair.server_owner, self.pair.client_owner):
            self.assertEqual([raw for _, raw in owner.frames], sent)
            self.assertEqual(owner.lost, [])

    def test_a_message_of_256_kib_passes(self):
        overhead = len(frames.encode_data("s", 1, b"x" * 300000)) - 300000
        self.pair.client.writeFrame(
            frames.encode_data("s", 1, b"x" * (MAX_WEBSOCKET_MESSAGE_BYTES - overhead)))
        self.pair.flush()
        self.assertEqual(len(payloads(self.pair.server_owner)), 1)

    def test_a_larger_message_ends_the_socket(self):
        overhead = len(frames.encode_data("s", 1, b"x" * 300000)) - 300000
        client = self.pair.client
        client.maxMessagePayloadSize = client.maxFramePayloadSize = 0  # a peer without limits
        client.writeFrame(
            frames.encode_data("s", 1, b"x" * (MAX_WEBSOCKET_MESSAGE_BYTES - overhead + 1)))
        self.pair.flush()
        self.assertEqual(payloads(self.pair.server_owner), [])
        self.assertEqual((len(self.pair.server_owner.lost), len(self.pair.client_owner.lost)), (1, 1))

    def test_streams_learn_that_the_socket_is_gone(self):
        stream = QueueStream(self.pair.client, "s")
        self.pair.client.attach("s", stream)
        self.pair.server.close()
        self.pair.flush()
        self.assertEqual(len(stream.lost), 1)
        self.assertIsInstance(stream.lost[0].value, RelaySocketLost)
        self.assertEqual(stream.lost[0].value.reason, relay_socket.PEER_CLOSE)


class SendingTests(unittest.TestCase):
    def setUp(self):
        self.pair = RelayPair()
        self.socket = self.pair.client

    def test_a_stream_sends_at_once_while_there_is_room(self):
        stream = QueueStream(self.socket, "a")
        stream.send(b"1", b"2")
        self.pair.flush()
        self.assertEqual(payloads(self.pair.server_owner), [b"1", b"2"])

    def test_streams_take_turns_once_the_socket_has_room_again(self):
        self.socket.pauseProducing()  # as TCP does when its buffer is full
        first, second = QueueStream(self.socket, "a"), QueueStream(self.socket, "b")
        first.send(b"a1", b"a2", b"a3")
        second.send(b"b1")
        self.pair.flush()
        self.assertEqual(payloads(self.pair.server_owner), [])
        self.socket.resumeProducing()
        self.pair.flush()
        self.assertEqual(payloads(self.pair.server_owner), [b"a1", b"b1", b"a2", b"a3"])

    def test_the_owner_hears_when_sending_stops_and_starts(self):
        self.socket.pauseProducing()
        self.socket.pauseProducing()
        self.socket.resumeProducing()
        self.assertEqual(self.pair.client_owner.sending, ["paused", "resumed"])

    def test_nothing_is_sent_once_the_socket_closes(self):
        stream = QueueStream(self.socket, "a")
        self.socket.close()
        stream.send(b"late")
        self.pair.flush()
        self.assertEqual(payloads(self.pair.server_owner), [])


class ClosingTests(unittest.TestCase):
    def test_close_sends_a_close_frame_and_both_ends_learn_of_it(self):
        pair = RelayPair()
        pair.client.close()
        pair.flush()
        (client_lost,), (server_lost,) = pair.client_owner.lost, pair.server_owner.lost
        self.assertEqual((client_lost.value.reason, client_lost.value.code),
                         (relay_socket.LOCAL_SHUTDOWN, 1000))
        self.assertEqual(server_lost.value.reason, relay_socket.PEER_CLOSE)
        self.assertEqual(pair.clock.getDelayedCalls(), [])

    def test_close_does_not_wait_for_the_peers_close(self):
        pair = RelayPair()
        pair.client.close()
        self.assertTrue(pair.client.transport.disconnecting)


class LivenessTests(unittest.TestCase):
    def test_a_peer_that_answers_pings_keeps_the_socket(self):
        pair = RelayPair()
        for _ in range(10):
            pair.clock.advance(30)
            pair.flush()
        self.assertEqual((pair.client_owner.lost, pair.server_owner.lost), ([], []))

    def test_a_peer_that_stops_answering_is_dropped_60_seconds_after_a_ping(self):
        pair = RelayPair(silent_server=True)
        pair.clock.advance(30)
        pair.flush()
        pair.clock.advance(59)
        pair.flush()
        self.assertEqual(pair.client_owner.lost, [])
        pair.clock.advance(1)
        pair.flush()
        (lost,) = pair.client_owner.lost
        self.assertEqual(lost.value.reason, relay_socket.PONG_TIMEOUT)


class _Refuser(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")


class DialTests(unittest.TestCase):
    def test_a_refused_upgrade_fails_with_its_status_and_no_secret(self):
        clock = task.Clock()
        factory = relay_socket.RelayClientFactory(
            "ws://rendezvous.test/ws?role=harness&ticket=secret", RecordingOwner(), clock)
        client = factory.buildProtocol(None)
        refuser = _Refuser()
        pump = iosim.connect(refuser, iosim.makeFakeServer(refuser),
                             client, iosim.makeFakeClient(client), clock=clock)
        pump.flush()
        error = self.failureResultOf(factory.result, RelayConnectError).value
        self.assertEqual(error.status, 401)
        self.assertNotIn("secret", str(error))

    def test_a_rendezvous_that_never_answers_the_upgrade_times_out(self):
        return ensureDeferred(self._silent_rendezvous())

    async def _silent_rendezvous(self):
        accepted = Deferred()
        gone = Deferred()

        class Silent(protocol.Protocol):
            def connectionMade(self):
                accepted.callback(None)

            def connectionLost(self, reason):
                gone.callback(None)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Silent), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        clock = task.Clock()
        dialing = relay_socket.connect(
            reactor, f"ws://127.0.0.1:{port.getHost().port}/ws?ticket=secret",
            RecordingOwner(), clock=clock)
        await support.with_timeout(accepted)
        clock.advance(relay_socket.CONNECT_TIMEOUT_SECONDS)
        with self.assertRaises(RelayConnectError) as caught:
            await dialing
        self.assertIn("within 10 s", str(caught.exception))
        self.assertNotIn("secret", str(caught.exception))
        await support.with_timeout(gone)

    def test_only_ws_and_wss_urls_are_dialled(self):
        with self.assertRaises(ValueError) as caught:
            relay_socket.connect(reactor, "http://rendezvous.test/ws?ticket=secret", RecordingOwner())
        self.assertNotIn("secret", str(caught.exception))

    def test_public_url_drops_the_query_and_fragment(self):
        self.assertEqual(relay_socket.public_url("wss://r.test/ws/environment/e?sig=abc#x"),
                         "wss://r.test/ws/environment/e")
