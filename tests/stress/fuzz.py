"""
Bad input: fuzzed JSON-RPC messages against our server and the reference
side by side, and fuzzed relay frames and Noise records against our
rendezvous and executor; a victim connection beside the fuzzers.

JSON-RPC: C{--connections} fuzzing connections each send batches of
messages from a seeded generator (L{tests.stress.rpcfuzz}), the same
messages to both servers, until C{--messages} have been sent in all. A
victim connection reads a file over and over, checking its content and
timing each answer, from a process of its own (L{tests.stress.victim}).
Afterwards: is the server alive, does its log hold an
unhandled error, did a connection get stuck, were the victim's answers
right and how fast (p50/p99, next to the same victim without fuzzers).

Relay: see L{tests.stress.relayfuzz}.

    python -m tests.stress.fuzz [--messages N] [--frames N] [--connections N] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random

from twisted.internet import defer, reactor
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.transports import websocket
from tests.stress import common, relayfuzz, rpcfuzz, victim as victims
from tests.stress.fuzzing import FuzzCounts, ScratchBound, Victim, confinement_probe, timeout
#: Victim requests timed without fuzzers, for comparison.
BASELINE_REQUESTS = 300


@implementer(IMessageProtocol)
class _Raw:
    """
    A fuzzing connection's end: watches only for its sentinel's answer.
    """

    def __init__(self) -> None:
        self.transport = None
        self.waiting: tuple[bytes, defer.Deferred] | None = None
        self.lost = defer.Deferred()

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data) -> None:
        if self.waiting is not None and len(data) < 4096:
            marker, waiter = self.waiting
            if (marker if isinstance(data, bytes) else marker.decode()) in data:
                self.waiting = None
                waiter.callback(True)

    def connectionLost(self, reason) -> None:
        if self.waiting is not None:
            waiter, self.waiting = self.waiting[1], None
            waiter.callback(False)
        if not self.lost.called:
            self.lost.callback(None)

    def send(self, payload: bytes, binary: bool) -> None:
        self.transport.protocol.sendMessage(payload, isBinary=binary)

    def sentinel(self, number: int) -> defer.Deferred:
        """
        Fires with True once the sentinel is answered, False if the
        connection is closed first.
        """
        marker = b'"fz-%d"' % number
        waiter = defer.Deferred()
        self.waiting = (marker, waiter)
        self.send(b'{"id":"fz-%d","method":"fuzz/sentinel"}' % number, False)
        return waiter


async def _fuzzer(url: str, generator: rpcfuzz.Generator, quota: int, counts: FuzzCounts,
                  initializes) -> None:
    connection = None
    number = 0
    while counts.messages < quota:
        if connection is None:
            connection = _Raw()
            try:
                await timeout(websocket.connect(reactor, url, connection))
            except Exception as e:
                counts.refuse(e)
                connection = None
                if counts.refused > 100:
                    raise RuntimeError(f"cannot connect: {counts.refusals}") from e
                continue
            counts.connections += 1
            if next(initializes):
                number += 1
                connection.send(b'{"id":"fz-%d","method":"initialize","params":'
                                b'{"clientName":"fuzz"}}' % number, False)
                connection.send(b'{"method":"initialized"}', False)
        batch = generator.batch()
        for payload, binary in batch:
            connection.send(payload, binary)
            counts.bytes += len(payload)
        counts.messages += len(batch)
        counts.batches += 1
        number += 1
        try:
            answered = await timeout(connection.sentinel(number))
        except defer.TimeoutError:
            counts.stuck += 1
            connection.transport.abortConnection()
            connection = None
            continue
        if not answered:
            counts.closed += 1
            connection = None
    if connection is not None:
        connection.transport.loseConnection()
        await connection.lost


def _initializes(seed: int):
    """
    Whether each new connection initializes first (most do: the methods
    behind the handshake are fuzzed too).
    """
    rng = random.Random(seed)
    while True:
        yield rng.random() < 0.85


async def _victim(url: str, scratch: str) -> tuple[Victim, common.Client, str]:
    client = await common.connect(url)
    path = await victims.prepare(client, scratch)
    return Victim(victims.asker(client, path)), client, path


async def rpc_side(kind: str, messages: int, connections: int, seed: int) -> dict:
    # Confined: it may write in its home only, whatever a message names.
    server = common.Server(kind, confine=True)
    # Its home's name is as long for both servers: the generator's draws
    # depend on the lengths of the messages, so both get the same ones.
    scratch = server.home
    os.makedirs(os.path.join(scratch, "fuzz"))
    try:
        alone, client, path = await _victim(server.url, scratch)
        probe = confinement_probe(scratch)
        reply = await client.call("fs/writeFile", {"path": "file://" + probe, "dataBase64": ""})
        if "error" not in reply or os.path.exists(probe):
            raise RuntimeError(f"the {kind} server is not confined: it wrote {probe}")
        baseline = Victim(alone.ask)
        for _ in range(BASELINE_REQUESTS):
            baseline.stopped = True
            started = common.now()
            problem = await baseline.ask()
            baseline.latencies.append(common.now() - started)
            if problem:
                baseline.wrong.append(problem)
        counts = [FuzzCounts() for _ in range(connections)]
        bound = ScratchBound(os.path.join(scratch, "fuzz"))
        started = common.now()
        remote = victims.Remote.start(server.url, path)
        bound.start()
        try:
            await defer.gatherResults([defer.ensureDeferred(
                _fuzzer(server.url, rpcfuzz.Generator(seed + index, bound.scratch),
                        messages // connections, counts[index], _initializes(seed + index)))
                for index in range(connections)], consumeErrors=True)
        finally:
            await bound.stop()
            victim = await remote.stop()
        seconds = common.now() - started
        total = FuzzCounts()
        for count in counts:
            total.add(count)
        # Still serving afterwards?
        final = await alone.ask()
        await client.close()
        resources = common.Resources.of(server.pid)
        alive = server.alive()
        problems = common.log_problems(server.log_text())
    finally:
        status = server.stop()
    return {"counts": vars(total), "seconds": seconds, "victim": victim.figures(),
            "baseline": baseline.figures(), "final_answer_ok": final is None, "alive": alive,
            "exit_status": status, "log_problems": problems[:10],
            "log_problem_count": len(problems), "rss_mib_after": resources.rss_mib,
            "fds_after": resources.fds, "scratch_trims": bound.trims}


async def main(args) -> common.Report:
    command = (f"python -m tests.stress.fuzz --messages {args.messages} --frames {args.frames} "
               f"--connections {args.connections} --seed {args.seed}")
    if not args.reference:
        command += " --no-reference"
    elif args.reference_frames:
        command += f" --reference-frames {args.reference_frames}"
    report = common.Report(
        "Bad input: fuzzed JSON-RPC messages, relay frames and Noise records", command,
        ("target", "messages", "MiB sent", "seconds", "connections closed by the server",
         "stuck", "alive", "log problems", "victim requests", "victim wrong",
         "victim p50 (ms)", "victim p99 (ms)", "victim alone p50/p99 (ms)"))
    sides = [("ours", "ours")] + ([("reference", "reference")] if args.reference else [])
    ok = True
    for label, kind in sides:
        if not args.messages:
            break
        result = await rpc_side(kind, args.messages, args.connections, args.seed)
        report.figures[f"rpc {label}"] = result
        _row(report, f"JSON-RPC, {label}", result)
        if kind == "ours":
            ok = ok and _clean(result)
    if args.frames:
        executors = [("ours", args.frames)]
        if args.reference:
            executors.append(("reference", args.reference_frames or args.frames))
        for executor, frames in executors:
            result = await relayfuzz.run(executor, frames, args.connections, args.seed)
            report.figures[f"relay {executor} executor"] = result
            _row(report, f"relay frames, {executor} executor", result)
            if executor == "ours":
                ok = ok and _clean(result)
    report.figures["ok"] = ok
    return report


def _row(report: common.Report, target: str, result: dict) -> None:
    counts, victim, baseline = result["counts"], result["victim"], result["baseline"]
    report.add(target, counts["messages"], round(counts["bytes"] / 2**20, 1),
               round(result["seconds"], 1), counts["closed"], counts["stuck"], result["alive"],
               result["log_problem_count"], victim["requests"], victim["wrong"],
               round(victim["p50_ms"], 1), round(victim["p99_ms"], 1),
               f"{baseline['p50_ms']:.1f}/{baseline['p99_ms']:.1f}")
    if result["scratch_trims"]:
        report.notes.append(f"{target}: the fuzzers' scratch tree was emptied "
                            f"{result['scratch_trims']} times (tests.stress.fuzzing.ScratchBound)")
    if result["log_problems"]:
        report.notes.append(f"{target}: log problems: {result['log_problems'][:3]}")
    if victim["wrong_examples"]:
        report.notes.append(f"{target}: victim: {victim['wrong_examples']}")


def _clean(result: dict) -> bool:
    return (result["alive"] and result["log_problem_count"] == 0
            and result["counts"]["stuck"] == 0 and result["victim"]["wrong"] == 0
            and not result["victim"]["lost"] and result["final_answer_ok"])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="fuzzed JSON-RPC messages per server")
    parser.add_argument("--frames", type=int, default=1_000_000,
                        help="fuzzed relay frames and Noise records per executor")
    parser.add_argument("--connections", type=int, default=4, help="fuzzing connections")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="fuzz only ours")
    parser.add_argument("--reference-frames", type=int, default=0,
                        help="relay frames for the reference's executor (default: --frames)")
    return parser


if __name__ == "__main__":
    common.program(parser(), main)
