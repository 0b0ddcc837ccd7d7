"""
Shared benchmark plumbing: start both servers, a lean JSON-RPC client over
the project's WebSocket transport, CPU accounting and the report table.

Benchmarks measure; they never assert. Each prints one table with the
reference's number, ours, the ratio and the target.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from zope.interface import implementer

from execserver import rpc
from execserver.interfaces import IMessageProtocol
from execserver.transports import websocket

ROOT = Path(__file__).resolve().parent.parent

#: Round trips run before a round trip benchmark measures, on every server
#: alike: our server's first hundred or so execs after it starts take
#: longer (0.5 to 0.75 ms p50 over the first 50, then about 0.43 on the
#: development machine; more CPU per exec, not page faults), and the
#: benchmarks measure a server in service.
WARM_UP_ROUNDS = 200


def reference_binary() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "install-reference")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


class Server:
    """
    A server in a child process, with its CPU time readable from /proc.
    """

    def __init__(self, kind: str, extra_args=()):
        self.kind = kind
        # Not under /tmp, where the reference cannot make the helper
        # aliases its sandboxed children need.
        home = self.home = tempfile.mkdtemp(prefix=f"execserver-bench-{kind}-", dir="/var/tmp")
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}
        if kind == "reference":
            env["CODEX_HOME"] = home
            argv = [reference_binary(), "exec-server", "--listen", "ws://127.0.0.1:0", *extra_args]
        else:
            # A log file of its own, never /dev/null: twistd rotates its log
            # file once it has written 1 MB to it, by renaming it.
            argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                    "-n", "--pidfile=", f"--logfile={os.path.join(home, 'server.log')}",
                    "execserver", "--port", "0", *extra_args]
        self.popen = subprocess.Popen(argv, cwd=home, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        for line in self.popen.stdout:
            if line.startswith(b"ws://"):
                self.url = line.decode().strip()
                break
        else:
            raise RuntimeError(f"{kind} server did not start")

    def cpu_seconds(self) -> float:
        """
        CPU time of all the server's threads (not its children), in
        nanosecond resolution from the scheduler's statistics.
        """
        total = 0
        for thread in os.listdir(f"/proc/{self.popen.pid}/task"):
            with open(f"/proc/{self.popen.pid}/task/{thread}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.popen.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/{self.popen.pid}/status")

    def rss_bytes(self) -> int:
        return self._status("VmRSS")

    def peak_rss_bytes(self) -> int:
        """
        The largest RSS the server has had since it started.
        """
        return self._status("VmHWM")

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


@implementer(IMessageProtocol)
class Client:
    """
    The lean benchmark client: requests with futures, notifications to a
    callback. No validation beyond what measuring needs.
    """

    def __init__(self) -> None:
        self.transport = None
        self.pending: dict[int, Deferred] = {}
        self.on_notification = lambda message: None
        self.next_id = 0

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        message = json.loads(data)
        if "method" in message:
            self.on_notification(message)
        else:
            self.pending.pop(message["id"]).callback(message)

    def connectionLost(self, reason) -> None:
        for waiter in self.pending.values():
            waiter.errback(reason)
        self.pending.clear()

    def call(self, method: str, params=None) -> Deferred:
        self.next_id += 1
        waiter = Deferred()
        self.pending[self.next_id] = waiter
        self.transport.sendMessage(rpc.encode_request(self.next_id, method, params))
        return waiter

    async def initialize(self) -> None:
        await self.call("initialize", {"clientName": "bench"})
        self.transport.sendMessage(b'{"method":"initialized"}')

    def close(self) -> None:
        self.transport.loseConnection()


async def connect(url: str) -> Client:
    client = Client()
    await websocket.connect(reactor, url, client)
    await client.initialize()
    return client


@dataclass
class Row:
    name: str
    unit: str
    reference: float
    ours: float
    target: str
    better: str  # "lower" or "higher"

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")


def report(title: str, rows: list[Row], columns: tuple[str, str] = ("reference", "ours")) -> str:
    base, measured = columns
    lines = [title, "",
             f"| metric | {base} | {measured} | {measured}/{base} | target |",
             "| --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        lines.append(
            f"| {row.name} ({row.unit}) | {row.reference:.4g} | {row.ours:.4g} "
            f"| {row.ratio:.2f}x | {row.target} |"
        )
    return "\n".join(lines)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


median = statistics.median


def run(main) -> None:
    """
    Run an async benchmark function on the reactor and print its report.
    """
    result = {}

    async def wrapper():
        try:
            result["text"] = await main()
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(wrapper()).addErrback(
        lambda f: (f.printTraceback(), result.setdefault("error", f))))
    reactor.run()
    if "error" in result:
        sys.exit(1)
    print(result["text"])


def load_line() -> str:
    """
    The machine's load average, to print beside the numbers (the machine is shared).
    """
    return "load average at the end: " + " ".join(f"{load:.2f}" for load in os.getloadavg())


def now() -> float:
    return time.perf_counter()
