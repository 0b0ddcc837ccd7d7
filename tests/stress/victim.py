"""
The JSON-RPC fuzz program's victim: a connection that reads a file over
and over, checking its content and timing each answer.

Beside the fuzzers it runs in a process of its own: in the fuzz
program's process its answers waited for that process's event loop,
which spends most of its time making fuzzed messages (a batch blocks it
for tens of milliseconds), and the latencies were largely the program's
own.

    python -m tests.stress.victim URL PATH

prints a line once it is connected and asking, asks until its stdin is
closed, then prints its latencies and wrong answers as one JSON object.
"""

from __future__ import annotations

import base64
import json
import os
import sys

from twisted.internet import defer, reactor, stdio
from twisted.internet.protocol import ProcessProtocol, Protocol

from tests.stress import common
from tests.stress.fuzzing import Victim, timeout

CONTENT = bytes(range(256)) * 16
#: The line the victim prints once it is connected and about to ask.
ASKING = "asking"


async def prepare(client: common.Client, scratch: str) -> str:
    """
    Write the victim's file under C{scratch} (with our client's
    connection); its URI.
    """
    path = "file://" + os.path.join(scratch, "victim", "file")
    await client.call("fs/createDirectory", {"path": "file://" + os.path.join(scratch, "victim"),
                                             "recursive": True})
    written = await client.call("fs/writeFile", {
        "path": path, "dataBase64": base64.b64encode(CONTENT).decode()})
    if "result" not in written:
        raise RuntimeError(f"victim file not written: {written}")
    return path


def asker(client: common.Client, path: str):
    """
    One request of the victim: None, or what was wrong with the answer.
    """

    async def ask():
        reply = await timeout(client.call("fs/readFile", {"path": path}))
        data = reply.get("result", {}).get("dataBase64")
        if data is None or base64.b64decode(data) != CONTENT:
            return f"unexpected answer {json.dumps(reply)[:200]}"
        return None

    return ask


class _StopOnEOF(Protocol):
    def __init__(self, victim: Victim) -> None:
        self.victim = victim

    def connectionLost(self, reason) -> None:
        self.victim.stopped = True


async def _main(url: str, path: str) -> None:
    client = await common.connect(url)
    victim = Victim(asker(client, path))
    stdio.StandardIO(_StopOnEOF(victim))
    sys.stdout.write(ASKING + "\n")
    sys.stdout.flush()
    await victim.run()
    await client.close()
    sys.stdout.write(json.dumps({"latencies": victim.latencies, "wrong": victim.wrong,
                                 "lost": victim.lost}) + "\n")
    sys.stdout.flush()


class Remote(ProcessProtocol):
    """
    The victim's process, seen from the fuzz program.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended = defer.Deferred()
        #: Fires once the victim is connected and asking.
        self.asking = defer.Deferred()

    @classmethod
    def start(cls, url: str, path: str) -> "Remote":
        remote = cls()
        reactor.spawnProcess(
            remote, sys.executable, [sys.executable, "-m", "tests.stress.victim", url, path],
            env=os.environ, path=str(common.ROOT), childFDs={0: "w", 1: "r", 2: 2})
        return remote

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.asking.called and ASKING.encode() + b"\n" in self.output:
            self.asking.callback(None)

    def processEnded(self, reason) -> None:
        self.ended.callback(None)

    async def stop(self) -> Victim:
        """
        Stop asking; the victim's latencies and wrong answers.
        """
        self.transport.closeStdin()
        await timeout(self.ended)
        figures = json.loads(self.output.splitlines()[-1])
        return Victim(None, latencies=figures["latencies"], wrong=figures["wrong"],
                      lost=figures["lost"])


if __name__ == "__main__":
    common.run(lambda: _main(sys.argv[1], sys.argv[2]))
