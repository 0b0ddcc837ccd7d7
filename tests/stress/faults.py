"""
Faults: connections cut while a process streams and another is written
to, counting every byte and every write.

Each run starts one session with our client, streams C{--mib} MiB of
seeded random output from one process while writing numbered pieces to
another (one per 32 KiB received), and cuts the connection as a seeded plan
says: after some bytes towards the client, inside a WebSocket frame, after
some bytes towards the server (writes in flight), and once as a relay with
deep buffers that fails holding more than 1 MiB (the server's replay
window); after a cut the next attempts may be refused. The stream is
compared with what the seed makes, byte for byte; the echo of the writes
says which landed how often.

Paths, side by side:

* our server over a WebSocket, our client acknowledging output (the goal:
  nothing lost, nothing twice);
* the same without acknowledgement, and the reference: what the 1 MiB
  window loses (reported by the client as OutputLost, never silent);
* through a relay: our client, our rendezvous and an executor (the
  reference's by default, ours with C{--executor ours}), the relay socket
  cut by the rendezvous, plainly or after holding more than 1 MiB.

    python -m tests.stress.faults [--runs N] [--comparison-runs N] [--relay-runs N] [--mib N]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet import defer, reactor

from execserver.client import ExecServerClient, OutputLost, WebSocketConnector
from execserver.client.process import OutputCollector
from execserver.relay.frames import FrameKind, parse_frame
from execserver.rendezvous.router import TO_HARNESS, Router
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens
from tests.faultproxy import DOWN, UP, Cut, FaultProxy
from tests.stress import common

MIB = 1024 * 1024
BLOCK = 64 * 1024
#: One write per this much stream received.
WRITE_EVERY = 32 * 1024
#: What a failing deep relay holds when it breaks: more than the 1 MiB
#: window of output (1.3 MiB of it as base64), and less than a server that
#: takes acknowledgements sends unacknowledged (about 2 MiB as base64).
HOLD_BYTES = 7 * MIB // 4
#: A holding relay fails once the server has sent nothing for this long: a
#: server waiting for acknowledgements may never fill the hold.
HOLD_IDLE_SECONDS = 1.0
RUN_TIMEOUT = 180.0
ENV = {"PATH": "/usr/bin:/bin"}

#: The child printing argv[2] blocks of 64 KiB from a generator seeded
#: with argv[1].
GENERATOR = (
    "import random, sys\n"
    "r = random.Random(int(sys.argv[1]))\n"
    "w = sys.stdout.buffer.write\n"
    f"for _ in range(int(sys.argv[2])): w(r.randbytes({BLOCK}))\n"
)

ENVIRONMENT_ID = "stress"
TOKEN = "stress-relay-token"


class PrefixChecker(OutputCollector):
    """
    Compares the stream as it arrives with what the seed makes: how much
    matched, and where it first did not.
    """

    def __init__(self, seed: int, progress) -> None:
        super().__init__()
        self._generator = random.Random(seed)
        self._expected = b""
        self.matched = 0
        self.mismatch_at: int | None = None
        self.received = 0
        self.progress = progress

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.received += len(data)
        if self.mismatch_at is None:
            while len(self._expected) < len(data):
                self._expected += self._generator.randbytes(BLOCK)
            if self._expected[:len(data)] == data:
                self._expected = self._expected[len(data):]
                self.matched += len(data)
            else:
                self.mismatch_at = self.matched
        self.progress(self.received)


def pieces(count: int) -> list[bytes]:
    return [b"%06d|" % n for n in range(count)]


@dataclass
class RunResult:
    cuts: int = 0
    held_cuts: int = 0
    largest_hold: int = 0
    expected: int = 0
    delivered_exactly: int = 0
    lost: int = 0
    corrupted: int = 0
    stream_error: str | None = None
    detail: str | None = None
    writes: int = 0
    missing_writes: int = 0
    duplicated_writes: int = 0
    session_failed: bool = False
    stuck: bool = False


async def run_once(connector, seed: int, blocks: int, acknowledge_output: bool) -> RunResult:
    result = RunResult(expected=blocks * BLOCK)
    client = ExecServerClient(connector, reactor, acknowledge_output=acknowledge_output)
    try:
        await client.connect()
        total_writes = blocks * BLOCK // WRITE_EVERY
        to_write = pieces(total_writes)
        echo = await client.start_process(["head", "-c", str(sum(map(len, to_write)))], env=ENV,
                                          pipe_stdin=True)
        writes = []

        def progress(received: int) -> None:
            while len(writes) < total_writes and received >= len(writes) * WRITE_EVERY:
                writes.append(echo.write(to_write[len(writes)]))

        checker = PrefixChecker(seed, progress)
        stream = await client.start_process(
            [sys.executable, "-c", GENERATOR, str(seed), str(blocks)], env=ENV, receiver=checker)
        try:
            await stream.when_closed().addTimeout(RUN_TIMEOUT, reactor)
        except defer.TimeoutError:
            result.stuck = True
        except OutputLost:
            result.stream_error = "OutputLost"
            result.lost = result.expected - checker.received
        except Exception as e:
            result.stream_error = type(e).__name__
            result.detail = str(e)
            result.lost = result.expected - checker.received
        result.delivered_exactly = checker.matched
        if checker.mismatch_at is not None:
            result.corrupted = checker.received - checker.mismatch_at
        # Whatever happened to the stream, every write made must land once.
        while len(writes) < total_writes:
            writes.append(echo.write(to_write[len(writes)]))
        result.writes = total_writes
        try:
            await defer.gatherResults(writes, consumeErrors=True).addTimeout(RUN_TIMEOUT, reactor)
            await echo.when_closed().addTimeout(RUN_TIMEOUT, reactor)
        except defer.TimeoutError:
            result.stuck = True
        except Exception:
            result.session_failed = client.state == "failed"
        landed = Counter(re.findall(rb"(\d{6})\|", echo.receiver.output()))
        result.missing_writes = sum(1 for piece in range(total_writes) if b"%06d" % piece
                                    not in landed)
        result.duplicated_writes = sum(count - 1 for count in landed.values() if count > 1)
    except Exception as e:
        print(f"run {seed} failed: {e!r}")
        result.session_failed = True
    finally:
        client.close()
    return result


def websocket_plan(rng: random.Random) -> list[Cut]:
    """
    Five cuts: two plain and one inside a frame towards the client, one
    towards the server, one deep relay failing with more than 1 MiB held;
    each followed by up to two refused attempts. Offsets are per
    connection and small enough that every cut happens before the stream
    ends.
    """
    plan = [
        Cut(DOWN, rng.randint(64 * 1024, 2 * MIB), refuse_after=rng.randint(0, 2)),
        Cut(DOWN, rng.randint(64 * 1024, 2 * MIB), refuse_after=rng.randint(0, 2)),
        Cut(DOWN, rng.randint(64 * 1024, 2 * MIB), mid_frame=True,
            refuse_after=rng.randint(0, 2)),
        Cut(UP, rng.randint(2000, 6000), refuse_after=rng.randint(0, 2)),
        Cut(DOWN, rng.randint(64 * 1024, 2 * MIB), hold=HOLD_BYTES,
            refuse_after=rng.randint(0, 2)),
    ]
    rng.shuffle(plan)
    return plan


@dataclass
class Path:
    """
    How one path's runs add up.
    """

    name: str
    results: list[RunResult] = field(default_factory=list)

    def total(self, attribute: str) -> int:
        return sum(getattr(result, attribute) for result in self.results)

    def row(self) -> tuple:
        errors = Counter(result.stream_error for result in self.results if result.stream_error)
        return (self.name, len(self.results), self.total("cuts"), self.total("held_cuts"),
                f"{self.total('expected') / MIB:.0f}", f"{self.total('lost') / MIB:.2f}",
                self.total("corrupted"), ", ".join(f"{k} ×{v}" for k, v in errors.items()) or "-",
                self.total("writes"), self.total("missing_writes"),
                self.total("duplicated_writes"),
                sum(result.session_failed for result in self.results),
                sum(result.stuck for result in self.results))

    def figures(self) -> dict:
        return {name: self.total(name) for name in (
            "cuts", "held_cuts", "expected", "delivered_exactly", "lost", "corrupted", "writes",
            "missing_writes", "duplicated_writes")} | {
            "runs": len(self.results),
            "session_failed": sum(result.session_failed for result in self.results),
            "stuck": sum(result.stuck for result in self.results),
            "largest_hold": max((result.largest_hold for result in self.results), default=0)}


async def websocket_runs(name: str, kind: str, runs: int, blocks: int, first_seed: int,
                         acknowledge_output: bool) -> tuple[Path, list[str]]:
    server = common.Server(kind)
    path = Path(name)
    try:
        address = urlsplit(server.url)
        for seed in range(first_seed, first_seed + runs):
            plan = websocket_plan(random.Random(seed))
            proxy = FaultProxy(reactor, (address.hostname, address.port), plan,
                               hold_idle_seconds=HOLD_IDLE_SECONDS).start()
            try:
                result = await run_once(WebSocketConnector(reactor, proxy.url), seed, blocks,
                                        acknowledge_output)
            finally:
                await proxy.stop()
            result.cuts = len(proxy.cuts)
            held = [record.held for record in proxy.cuts if record.cut.hold]
            result.held_cuts = sum(1 for value in held if value > MIB)
            result.largest_hold = max(held, default=0)
            path.results.append(result)
        problems = common.log_problems(server.log_text())
    finally:
        server.stop()
    return path, problems


class CuttingRouter(Router):
    """
    Cuts harness relay sockets as a plan says: after some bytes of frames
    towards the harness, either at once, or after holding back (not
    delivering) that many more bytes, as a failing relay with deep buffers,
    or once the executor has sent nothing for L{HOLD_IDLE_SECONDS} while
    holding.
    """

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.clock = clock
        self.plan: list[tuple[int, int]] = []
        self.cuts: list[int] = []
        self._sockets: dict[object, list] = {}
        self._idle: dict[object, object] = {}

    def harness_connected(self, environment_id, peer) -> bool:
        after, hold = self.plan.pop(0) if self.plan else (None, 0)
        self._sockets[peer] = [after, hold, 0, 0]
        return super().harness_connected(environment_id, peer)

    def harness_lost(self, peer) -> None:
        self._sockets.pop(peer, None)
        self._stop_idle_timer(peer)
        super().harness_lost(peer)

    def _stop_idle_timer(self, peer) -> None:
        timer = self._idle.pop(peer, None)
        if timer is not None and timer.active():
            timer.cancel()

    def deliver(self, peer, direction, environment_id, raw, frame=None):
        state = self._sockets.get(peer) if direction == TO_HARNESS else None
        if state is None or state[0] is None:
            super().deliver(peer, direction, environment_id, raw, frame)
            return
        after, hold, sent, held = state
        if sent >= after and (frame or parse_frame(raw)).kind is FrameKind.DATA:
            # Holding: the data never reaches the harness.
            state[3] = held + len(raw)
            self._stop_idle_timer(peer)
            if state[3] >= hold:
                self._cut(peer, state[3])
            else:
                self._idle[peer] = self.clock.callLater(
                    HOLD_IDLE_SECONDS, lambda: self._cut(peer, state[3]))
            return
        super().deliver(peer, direction, environment_id, raw, frame)
        state[2] = sent + len(raw)
        if state[2] >= after and not hold:
            self._cut(peer, 0)

    def _cut(self, peer, held: int) -> None:
        self._stop_idle_timer(peer)
        self.cuts.append(held)
        self._sockets[peer][0] = None
        peer.abort()


class Executor(common.Child):
    """
    An executor registered with a rendezvous: C{command} is run with
    C{{registry}} and C{{environment}} filled in, the token on its stdin;
    with C{confine}, it may write only in its home directory.
    """

    def __init__(self, command: str, registry_url: str, confine: bool = False) -> None:
        self.confined = confine
        self.home = tempfile.mkdtemp(prefix="execserver-stress-executor-", dir="/var/tmp")
        argv = [part.format(registry=registry_url, environment=ENVIRONMENT_ID,
                            reference=common.reference_binary(), python=sys.executable)
                for part in shlex.split(command)]
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "CODEX_HOME": self.home, "PYTHONPATH": str(common.ROOT), "LANG": "C.UTF-8"}
        self.log_path = os.path.join(self.home, "executor.log")
        if confine:
            argv = common.confined(argv, self.home)
        log = open(self.log_path, "wb")
        # Ours logs to stdout (twistd -n), the reference to stderr.
        self.popen = subprocess.Popen(argv, cwd=self.home, env=env, stdin=subprocess.PIPE,
                                      stdout=log, stderr=log)
        log.close()
        self.popen.stdin.write(TOKEN.encode() + b"\n")
        self.popen.stdin.close()

    def stop(self) -> None:
        self.terminate()


EXECUTORS = {
    "reference": "{reference} exec-server --remote {registry} --environment-id {environment} "
                 "--registration-bearer-stdin",
    "ours": "{python} -c 'from twisted.scripts.twistd import run; run()' -n --pidfile= "
            "execserver-remote --remote {registry} --environment-id {environment} "
            "--registration-bearer-stdin",
}


async def relay_runs(name: str, command: str, runs: int, blocks: int, first_seed: int
                     ) -> tuple[Path, list[str]]:
    from execserver.remote.harness import RelayConnector

    router = CuttingRouter(reactor)
    rendezvous = Rendezvous(reactor, BearerTokens({ENVIRONMENT_ID: TOKEN}), router=router)
    port = reactor.listenTCP(0, site(rendezvous), interface="127.0.0.1")
    registry_url = f"http://127.0.0.1:{port.getHost().port}"
    executor = Executor(command, registry_url)
    path = Path(name)
    try:
        await router.when_executor(ENVIRONMENT_ID).addTimeout(30, reactor)
        for seed in range(first_seed, first_seed + runs):
            rng = random.Random(seed)
            router.plan = [(rng.randint(64 * 1024, 2 * MIB), 0),
                           (rng.randint(64 * 1024, 2 * MIB), 0),
                           (rng.randint(64 * 1024, 2 * MIB), HOLD_BYTES)]
            rng.shuffle(router.plan)
            before = len(router.cuts)
            connector = RelayConnector(reactor, registry_url, ENVIRONMENT_ID, TOKEN)
            result = await run_once(connector, seed, blocks, True)
            cuts = router.cuts[before:]
            result.cuts = len(cuts)
            result.held_cuts = sum(1 for held in cuts if held > MIB)
            result.largest_hold = max(cuts, default=0)
            path.results.append(result)
    finally:
        executor.stop()
        await port.stopListening()
    with open(executor.log_path, errors="replace") as f:
        problems = common.log_problems(f.read())
    shutil.rmtree(executor.home, ignore_errors=True)
    return path, problems


async def main(args) -> common.Report:
    blocks = args.mib * MIB // BLOCK
    command = (f"python -m tests.stress.faults --runs {args.runs} --comparison-runs "
               f"{args.comparison_runs} --relay-runs {args.relay_runs} --mib {args.mib}")
    if args.executor != "reference":
        command += f" --executor {shlex.quote(args.executor)}"
    report = common.Report(
        "Faults: cuts during streams and writes", command,
        ("path", "runs", "cuts", "cuts with > 1 MiB held", "stream (MiB)", "lost (MiB)",
         "corrupted or duplicated bytes", "stream errors", "writes", "missing writes",
         "duplicated writes", "failed sessions", "stuck runs"))
    paths = [await websocket_runs("ours, WebSocket, output acknowledged", "ours", args.runs,
                                  blocks, 1, True)]
    if args.comparison_runs:
        paths.append(await websocket_runs("ours, WebSocket, without acknowledgement", "ours",
                                          args.comparison_runs, blocks, 1, False))
        paths.append(await websocket_runs("reference, WebSocket", "reference",
                                          args.comparison_runs, blocks, 1, True))
    if args.relay_runs:
        executor = EXECUTORS.get(args.executor, args.executor)
        label = args.executor if args.executor in EXECUTORS else "given"
        paths.append(await relay_runs(f"relay, {label} executor", executor, args.relay_runs,
                                      blocks, 1))
    for path, problems in paths:
        report.add(*path.row())
        report.figures[path.name] = path.figures() | {"log_problems": problems}
        if problems:
            report.notes.append(f"{path.name}: log problems: {problems[:5]}")
    ours = paths[0][0].figures()
    report.figures["ok"] = (ours["lost"] == 0 and ours["corrupted"] == 0
                            and ours["missing_writes"] == 0 and ours["duplicated_writes"] == 0
                            and ours["session_failed"] == 0 and ours["stuck"] == 0
                            and not paths[0][1])
    report.notes.append(
        "Largest hold at a cut (bytes the relay never delivered): "
        + ", ".join(f"{path.name}: {path.figures()['largest_hold'] / MIB:.2f} MiB"
                    for path, _ in paths))
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200,
                        help="runs against our server with acknowledgement (5 cuts each)")
    parser.add_argument("--comparison-runs", type=int, default=20,
                        help="runs without acknowledgement and against the reference")
    parser.add_argument("--relay-runs", type=int, default=20, help="runs through the relay")
    parser.add_argument("--mib", type=int, default=16, help="stream per run, MiB")
    parser.add_argument("--executor", default="reference",
                        help="the relay's executor: reference, ours, or a command with "
                             "{registry} and {environment}")
    return parser


if __name__ == "__main__":
    common.program(parser(), main)
