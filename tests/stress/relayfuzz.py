"""
Fuzzed relay frames and Noise records against our rendezvous and an
executor behind it (ours, or the reference's for comparison).

Each fuzzing harness socket opens one proper Noise stream (the sentinel
stream) and then sends batches of frames: protobuf frames of every kind
with odd fields (versions, empty or blank stream ids, segments, sequence
numbers, payloads; handshakes of garbage or of mangled Noise message 1s)
on a few other stream ids, undecodable messages, and, on the sentinel
stream, proper Noise records carrying fuzzed JSON-RPC requests. A batch may
end with a record that breaks the stream (a forged or replayed record, a
bad length prefix, a malformed message), after which a new socket and
stream are opened. After each batch a request on the sentinel stream must
be answered. A victim client reads a file through the relay all along.

The rendezvous runs in this process, so its unhandled errors would be
logged here: they are counted from this process's log.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import uuid

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from execserver.client import ExecServerClient, RemoteError
from execserver.interfaces import IMessageProtocol
from execserver.noise.handshake import Initiator, prologue
from execserver.noise.keys import NoiseIdentity, require_mlkem
from execserver.noise.channel import NoiseStream
from execserver.noise.limits import RECORD_PLAINTEXT_LEN
from execserver.relay import socket as relay_socket
from execserver.relay.frames import FrameKind, encode_data, encode_handshake, encode_resume
from execserver.relay.relay_pb2 import RelayMessageFrame
from execserver.relay.socket import IRelaySocketOwner
from execserver.remote.harness import RelayConnector
from execserver.remote.registry import RegistryClient
from execserver.rendezvous.router import Router
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from tests.stress import common, rpcfuzz
from tests.stress.faults import ENVIRONMENT_ID, EXECUTORS, TOKEN, Executor
from tests.stress.fuzzing import (FuzzCounts, ScratchBound, Victim, alongside,
                                  confinement_probe, timeout)

BATCH = 100
#: Rare: a broken stream is opened again, and opening waits while the
#: executor refuses handshakes (10 s after 8 failed ones, which the fuzzed
#: handshakes keep causing: the reference's rule).
TAIL_CHANCE = 0.005
#: How long a fuzzer keeps trying to open a stream before it gives up, and
#: how long it waits between attempts.
OPEN_PATIENCE_SECONDS = 60.0
OPEN_RETRY_SECONDS = 1.0
#: Other stream ids a fuzzing socket uses: with the sentinel stream, fewer
#: than the rendezvous's 8 per harness socket, so that they reach the
#: executor.
FUZZ_STREAMS = ("f0", "f1", "f2", "f3", "\u00e9")
VICTIM_CONTENT = bytes(range(256)) * 16


class FrameGenerator:
    """
    Fuzzed relay frames from C{seed}.
    """

    def __init__(self, seed: int, bundle, opening: list) -> None:
        self.rng = random.Random(seed)
        self.bundle = bundle
        self.identity = NoiseIdentity.generate()
        #: Non-empty while a fuzzer opens a stream: handshakes wait, or the
        #: executor would go on refusing them all.
        self.opening = opening

    def frame(self) -> bytes:
        rng = self.rng
        roll = rng.random()
        if roll < 0.06:
            return rng.randbytes(rng.randrange(1, 300))
        if roll < 0.08:
            return self.message1() if not self.opening else encode_resume(FUZZ_STREAMS[0])
        frame = RelayMessageFrame()
        frame.version = rng.choices((1, 0, 2, 2**32 - 1), (20, 1, 1, 1))[0]
        frame.stream_id = rng.choices(
            (rng.choice(FUZZ_STREAMS), "", " \t", str(uuid.UUID(int=rng.getrandbits(128))),
             "x" * 5000), (30, 1, 1, 2, 1))[0]
        if rng.random() < 0.1:
            frame.ack = rng.getrandbits(32)
            frame.ack_bits = rng.getrandbits(32)
        kind = rng.choice(list(FrameKind))
        if kind is FrameKind.HANDSHAKE and self.opening:
            kind = FrameKind.DATA
        if kind is FrameKind.DATA:
            frame.data.seq = rng.choice((0, 1, rng.getrandbits(32), rng.randrange(100)))
            frame.data.segment_index = rng.choices((0, 1, 7), (10, 1, 1))[0]
            frame.data.segment_count = rng.choices((1, 0, 2), (10, 1, 1))[0]
            frame.data.payload = rng.randbytes(rng.choice((0, 1, 16, 17, 100, 4000)))
        elif kind is FrameKind.HANDSHAKE:
            frame.handshake.payload = rng.randbytes(rng.choice((0, 1, 32, 1200, 5000)))
        elif kind is FrameKind.RESUME:
            frame.resume.next_seq = rng.getrandbits(32)
        elif kind is FrameKind.RESET:
            frame.reset.reason = rng.choice(("", "noise_relay_protocol_error", "x" * 300))
        elif kind is FrameKind.ACK:
            frame.ack_frame.SetInParent()
        else:
            frame.heartbeat.SetInParent()
        data = frame.SerializeToString()
        if rng.random() < 0.05 and data:
            data = bytearray(data)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            data = bytes(data)
        return data

    def message1(self) -> bytes:
        """
        A Noise message 1 for a fuzz stream: proper, with a wrong
        authorization, or mangled.
        """
        rng = self.rng
        bundle = self.bundle
        stream_id = rng.choice(FUZZ_STREAMS)
        initiator = Initiator(self.identity, bundle.executor_public_key,
                              prologue(bundle.environment_id, bundle.executor_registration_id,
                                       stream_id))
        message = initiator.write_message1(rng.choice(
            (b"not an authorization", b"", bundle.harness_key_authorization.encode())))
        if rng.random() < 0.5:
            message = bytearray(message)
            message[rng.randrange(len(message))] ^= 0xFF
            message = bytes(message)
        return encode_handshake(stream_id, message)


@implementer(IRelaySocketOwner)
class _Owner:
    """
    The fuzzing socket's owner: waits for the sentinel stream's handshake
    answer and otherwise ignores what comes back (resets, answers).
    """

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        self.socket = None
        self.reply: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def socketOpened(self, socket) -> None:
        self.socket = socket

    def frameReceived(self, frame, raw: bytes) -> None:
        if frame.stream_id == self.stream_id and not self.reply.called:
            if frame.kind is FrameKind.HANDSHAKE:
                self.reply.callback(frame.payload)
            else:
                self.reply.errback(ConnectionError(f"sentinel stream got {frame.kind.value}"))

    def invalidMessage(self, description: str) -> None:
        pass

    def sendingPaused(self) -> None:
        pass

    def sendingResumed(self) -> None:
        pass

    def socketLost(self, reason) -> None:
        if not self.reply.called:
            self.reply.errback(reason)
        if not self.lost.called:
            self.lost.callback(None)


@implementer(IMessageProtocol)
class _Sentinel:
    """
    The JSON-RPC end of the sentinel stream: watches for its answers.
    """

    def __init__(self) -> None:
        self.transport = None
        self.waiting: tuple[bytes, defer.Deferred] | None = None
        self.ended = False

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data) -> None:
        if self.waiting is not None and len(data) < 4096:
            marker, waiter = self.waiting
            if marker in (data if isinstance(data, bytes) else data.encode()):
                self.waiting = None
                waiter.callback(True)

    def connectionLost(self, reason) -> None:
        self.ended = True
        if self.waiting is not None:
            waiter, self.waiting = self.waiting[1], None
            waiter.callback(False)

    def ask(self, request_id: str, method: str, params=None) -> defer.Deferred:
        waiter = defer.Deferred()
        if self.ended:
            waiter.callback(False)
            return waiter
        marker = b'"%s"' % request_id.encode()
        self.waiting = (marker, waiter)
        body = b'{"id":"%s","method":"%s"' % (request_id.encode(), method.encode())
        if params is not None:
            body += b',"params":' + params
        self.transport.sendMessage(body + b"}")
        return waiter


class _FuzzSocket:
    """
    One fuzzing harness socket with its sentinel stream.
    """

    def __init__(self, registry: RegistryClient, identity: NoiseIdentity) -> None:
        self.registry = registry
        self.identity = identity
        self.stream_id = str(uuid.uuid4())
        self.owner = _Owner(self.stream_id)
        self.sentinel = _Sentinel()
        self.bundle = None
        self.ciphers = None
        self.socket = None
        self.sent_records: list[bytes] = []

    async def open(self, number: int) -> None:
        self.bundle = bundle = await self.registry.connect(ENVIRONMENT_ID,
                                                           self.identity.public_key)
        self.socket = await relay_socket.connect(reactor, bundle.websocket_url, self.owner)
        initiator = Initiator(self.identity, bundle.executor_public_key,
                              prologue(bundle.environment_id, bundle.executor_registration_id,
                                       self.stream_id))
        message1 = initiator.write_message1(bundle.harness_key_authorization.encode())
        self.socket.writeFrame(encode_resume(self.stream_id))
        self.socket.writeFrame(encode_handshake(self.stream_id, message1))
        self.ciphers = initiator.read_message2(await timeout(self.owner.reply))
        stream = NoiseStream(self.socket, self.stream_id, self.ciphers, shares_socket=True,
                             sends_resets=False)
        stream.start(self.sentinel)
        if not await timeout(self.sentinel.ask(f"fz-{number}", "initialize",
                                               b'{"clientName":"fuzz"}')):
            raise ConnectionError("the sentinel stream did not initialize")
        self.sentinel.transport.sendMessage(b'{"method":"initialized"}')

    def bad_record(self, rng: random.Random) -> bytes:
        """
        A data frame on the sentinel stream that breaks it: forged,
        replayed, out of order, or a well-sealed record whose plaintext
        is not a message (an impossible length prefix).
        """
        send = self.ciphers.send
        roll = rng.random()
        if roll < 0.3:
            return encode_data(self.stream_id, send.nonce, rng.randbytes(rng.randrange(17, 400)))
        if roll < 0.5:
            return encode_data(self.stream_id, send.nonce + rng.randrange(1, 1000),
                               rng.randbytes(64))
        if roll < 0.8:
            plaintext = rng.choice((b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
                                    b"\x04\x00\x00\x01" + b"x" * 100,
                                    rng.randbytes(rng.randrange(1, RECORD_PLAINTEXT_LEN))))
            seq = send.nonce
            return encode_data(self.stream_id, seq, send.encrypt(plaintext))
        return encode_data(self.stream_id, max(send.nonce - 1, 0), rng.randbytes(100))

    def close(self) -> None:
        if self.socket is not None:
            self.socket.abort()


async def _fuzzer(registry: RegistryClient, identity: NoiseIdentity, seed: int, quota: int,
                  counts: FuzzCounts, scratch: str, opening: list) -> None:
    rng = random.Random(seed)
    messages = rpcfuzz.Generator(seed, scratch)
    fuzz = None
    frames = None
    number = 0
    failing_since = None
    while counts.messages < quota:
        if fuzz is None:
            fuzz = _FuzzSocket(registry, identity)
            number += 1
            opening.append(fuzz)
            try:
                await fuzz.open(number)
            except Exception as e:
                counts.refuse(e)
                fuzz.close()
                fuzz = None
                failing_since = failing_since or common.now()
                if common.now() - failing_since > OPEN_PATIENCE_SECONDS:
                    raise RuntimeError(f"cannot open a stream: {counts.refusals}") from e
                await common.sleep(OPEN_RETRY_SECONDS)
                continue
            finally:
                opening.pop()
            failing_since = None
            counts.connections += 1
            frames = FrameGenerator(seed * 1000 + number, fuzz.bundle, opening)
        socket = fuzz.socket
        for _ in range(BATCH):
            if rng.random() < 0.25:
                message = messages.encode(_well_formed(messages.request(), rng))
                while not messages.safe(message):
                    message = messages.encode(_well_formed(messages.request(), rng))
                fuzz.sentinel.transport.sendMessage(message)
                counts.bytes += len(message)
            else:
                frame = frames.frame()
                socket.writeFrame(frame)
                counts.bytes += len(frame)
        counts.messages += BATCH
        if rng.random() < TAIL_CHANCE:
            socket.writeFrame(fuzz.bad_record(rng))
            counts.messages += 1
        counts.batches += 1
        number += 1
        try:
            answered = await timeout(fuzz.sentinel.ask(f"fz-{number}", "fuzz/sentinel"))
        except defer.TimeoutError:
            counts.stuck += 1
            answered = False
        if not answered:
            counts.closed += 1
            fuzz.close()
            fuzz = None
    if fuzz is not None:
        fuzz.close()


def _well_formed(request: dict, rng: random.Random) -> dict:
    """
    A fuzzed request that is still JSON-RPC: over the relay, a message that
    is not (an id of another type, say) ends the stream, as it does with
    the reference.
    """
    if type(request["id"]) is not int or not 0 <= request["id"] < 2**63:
        request["id"] = rng.randrange(1 << 31)
    if request.get("jsonrpc", "2.0") != "2.0":
        del request["jsonrpc"]
    return request


class _LogProblems:
    """
    Collects this process's log events that report an unhandled error.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, event: dict) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.problems.append(str(event.get("log_format") or event.get("why"))[:200])


async def run(executor_kind: str, frames: int, connections: int, seed: int) -> dict:
    require_mlkem()
    router = Router(reactor)
    rendezvous = Rendezvous(reactor, BearerTokens({ENVIRONMENT_ID: TOKEN}), router=router)
    port = reactor.listenTCP(0, site(rendezvous), interface="127.0.0.1")
    registry_url = f"http://127.0.0.1:{port.getHost().port}"
    problems = _LogProblems()
    globalLogPublisher.addObserver(problems)
    # Confined: it may write in its home only, whatever a message names.
    executor = Executor(EXECUTORS[executor_kind], registry_url, confine=True)
    victim_path = os.path.join(executor.home, "victim")
    with open(victim_path, "wb") as f:
        f.write(VICTIM_CONTENT)
    scratch = os.path.join(executor.home, "fuzz")
    os.mkdir(scratch)
    try:
        await timeout(router.when_executor(ENVIRONMENT_ID), 30)
        client = ExecServerClient(RelayConnector(reactor, registry_url, ENVIRONMENT_ID, TOKEN),
                                  reactor)
        await client.connect()

        async def ask():
            reply = await timeout(client.call("fs/readFile", {"path": "file://" + victim_path}))
            if base64.b64decode(reply.get("dataBase64", "")) != VICTIM_CONTENT:
                return f"unexpected answer {str(reply)[:200]}"
            return None

        probe = confinement_probe(executor.home)
        try:
            await client.call("fs/writeFile", {"path": "file://" + probe, "dataBase64": ""})
        except RemoteError:
            pass
        if os.path.exists(probe):
            raise RuntimeError(f"the {executor_kind} executor is not confined: it wrote {probe}")
        victim = Victim(ask)
        baseline = Victim(ask)
        for _ in range(300):
            started = common.now()
            problem = await ask()
            baseline.latencies.append(common.now() - started)
            if problem:
                baseline.wrong.append(problem)
        identity = NoiseIdentity.generate()
        registry = RegistryClient(reactor, registry_url, TOKEN)
        counts = [FuzzCounts() for _ in range(connections)]
        opening: list = []
        bound = ScratchBound(scratch)
        started = common.now()
        bound.start()
        try:
            await alongside(victim, [
                _fuzzer(registry, identity, seed + index, frames // connections, counts[index],
                        scratch, opening)
                for index in range(connections)])
        finally:
            await bound.stop()
        seconds = common.now() - started
        final = await ask()
        client.close()
        total = FuzzCounts()
        for count in counts:
            total.add(count)
        alive = executor.alive()
        resources = common.Resources.of(executor.pid)
    finally:
        globalLogPublisher.removeObserver(problems)
        executor.stop()
        await port.stopListening()
    with open(executor.log_path, errors="replace") as f:
        executor_problems = common.log_problems(f.read())
    shutil.rmtree(executor.home, ignore_errors=True)
    found = problems.problems + executor_problems
    return {"counts": vars(total), "seconds": seconds, "victim": victim.figures(),
            "baseline": baseline.figures(), "final_answer_ok": final is None, "alive": alive,
            "log_problems": found[:10], "log_problem_count": len(found),
            "rendezvous_log_problems": len(problems.problems),
            "rss_mib_after": resources.rss_mib, "fds_after": resources.fds,
            "scratch_trims": bound.trims}
