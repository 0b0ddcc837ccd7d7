"""
One large malformed message: how long its answer takes, and how long the
other sessions wait meanwhile.

Issue 11 found `[` + 60 MiB of digits + `x` freezing every session for
6.9 s while the reference answered in under 0.5 s; its kin are messages
with millions of values, refused for the limit of 262 144 values only
once they have been read. For each shape, on each server: a victim on its
own connection (in its own process) reads a small file over and over
while one message of that shape is made, sent on another connection and
answered; the figures are the time from the send to that message's
answer (or the connection's end) and the victim's slowest answer.

    python -m tests.stress.largebad [--mib N] [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.transports import websocket
from tests.stress import common
from tests.stress import victim as victims
from tests.stress.fuzzing import timeout

MIB = 1024 * 1024
FRAGMENT_BYTES = 8 * MIB
_DETAIL = re.compile(r"websocket [0-9.:\[\]a-f]+: ([^\"]*)")


def shapes(size: int) -> dict[str, bytes]:
    """Each shape's message, about C{size} bytes long."""
    request = b'{"id":4,"method":"environment/status","params":'
    return {
        "digits: [000...x": b"[" + b"0" * size + b"x",
        "numbers in params: [1,1,...]": request + b"[" + b"1," * (size // 2) + b"1]}",
        'strings: ["ab",...]': b"[" + b'"ab",' * (size // 5) + b'"x"]',
        'objects: [{"a":1},...]': b"[" + b'{"a":1},' * (size // 8) + b"1]",
        'members in params: {"k0":0,...}': request + b"{" + b",".join(
            b'"k%d":0' % index for index in range(size // 13)) + b"}}",
    }


@implementer(IMessageProtocol)
class _FirstAnswer:
    """Fires C{answered} with the first message back, or None at the end."""

    def __init__(self) -> None:
        self.answered = Deferred()

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        if not self.answered.called:
            self.answered.callback(bytes(data[:300]))

    def connectionLost(self, reason) -> None:
        if not self.answered.called:
            self.answered.callback(None)


async def one(url: str, path: str, message: bytes) -> dict:
    remote = victims.Remote.start(url, path)
    # The victim is asking before the message goes.
    await timeout(remote.asking)
    sender = _FirstAnswer()
    transport = await websocket.connect(reactor, url, sender)
    started = common.now()
    # In frames of 8 MiB: both servers refuse a frame over 16 MiB.
    transport.protocol.sendMessage(message, fragmentSize=FRAGMENT_BYTES)
    answer = await timeout(sender.answered)
    seconds = common.now() - started
    transport.abortConnection()
    victim = (await remote.stop()).figures()
    return {"seconds": seconds, "answer": answer.decode(errors="replace") if answer else None,
            "victim": victim}


async def side(kind: str, size: int) -> dict:
    server = common.Server(kind)
    try:
        client = await common.connect(server.url)
        path = await victims.prepare(client, server.home)
        await client.close()
        results = {name: await one(server.url, path, message)
                   for name, message in shapes(size).items()}
        alive = server.alive()
        problems = common.log_problems(server.log_text())
    finally:
        server.stop()
    return {"shapes": results, "alive": alive, "log_problems": problems[:10]}


async def main(args) -> common.Report:
    command = f"python -m tests.stress.largebad --mib {args.mib}"
    if not args.reference:
        command += " --no-reference"
    report = common.Report(
        f"One large malformed message ({args.mib} MiB) beside a victim session", command,
        ("shape", "server", "answer after (s)", "victim requests", "victim slowest (ms)",
         "victim wrong", "answer"))
    kinds = ["ours"] + (["reference"] if args.reference else [])
    for kind in kinds:
        result = await side(kind, args.mib * MIB)
        report.figures[kind] = result
        for name, shape in result["shapes"].items():
            victim = shape["victim"]
            answer = shape["answer"]
            report.add(name, kind, round(shape["seconds"], 3), victim["requests"],
                       round(victim["max_ms"], 1), victim["wrong"], _detail(answer))
        if result["log_problems"]:
            report.notes.append(f"{kind}: log problems: {result['log_problems'][:3]}")
    return report


def _detail(answer: str | None) -> str:
    """The answer's error text without the peer's address, which differs."""
    if answer is None:
        return "(connection closed)"
    found = _DETAIL.search(answer)
    return found.group(1) if found else answer[:120]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=60, help="size of each message")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="our server only")
    return parser


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(common.ROOT))
    common.program(parser(), main)
