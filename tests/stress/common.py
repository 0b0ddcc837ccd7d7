"""
What the stress programs share: servers in child processes with their log
kept, the resources of a process read from /proc, a lean JSON-RPC client,
and the report.

The stress programs measure and print figures; they are not tests. Each
prints a table and, with C{--json}, the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from zope.interface import implementer

from execserver import rpc
from execserver.interfaces import IMessageProtocol
from execserver.transports import websocket
from tests import support

ROOT = Path(__file__).resolve().parent.parent.parent

#: Runs our server with the allocator left as glibc sets it up, to measure
#: what the tuning in execserver.memory is worth.
UNTUNED = (
    "import execserver.memory as m; m.tune_allocator = lambda: False; "
    "m.IdleTrimmer.startService = lambda self: None; "
    "from twisted.scripts.twistd import run; run()"
)
TUNED = "from twisted.scripts.twistd import run; run()"


def reference_binary() -> str:
    out = subprocess.run([str(ROOT / "scripts" / "install-reference")], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def confined(argv: list[str], writable: str) -> list[str]:
    """
    C{argv} under bubblewrap with the whole file system read-only but for
    C{writable} (and a private /tmp and /dev): what a fuzzed server runs
    in, since fuzzed requests may name any path and the servers run as
    whoever runs the program (root, here).
    """
    if shutil.which("bwrap") is None:
        raise RuntimeError("bwrap is needed to confine fuzzed servers")
    return ["bwrap", "--die-with-parent", "--ro-bind", "/", "/", "--bind", writable, writable,
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--", *argv]


class Child:
    """
    A child process, possibly confined (L{confined}): then C{popen} is
    bubblewrap's, and L{pid} its child's, the program itself.
    """

    popen: subprocess.Popen
    confined: bool = False

    @property
    def pid(self) -> int:
        if not self.confined:
            return self.popen.pid
        pid = self.popen.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return int(f.read().split()[0])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> int:
        """
        SIGTERM to the program (not to bubblewrap, which would not pass it
        on); @return: the exit status.
        """
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except (OSError, IndexError, ValueError):
                self.popen.terminate()
        return self.popen.wait(15)


class Server(Child):
    """
    A server (C{ours} or C{reference}) in a child process, listening on a
    free port; its log (ours) or stderr (the reference) is kept in a file.
    With C{confine}, it may write only in its home directory.
    """

    def __init__(self, kind: str, extra_args=(), untuned: bool = False,
                 confine: bool = False) -> None:
        self.kind = kind
        self.confined = confine
        # Not under /tmp, where the reference cannot make the helper
        # aliases its sandboxed and terminal children need. Of one length
        # for both kinds, so that paths under it are too.
        self.home = tempfile.mkdtemp(prefix="execserver-stress-", dir="/var/tmp")
        self.log_path = os.path.join(self.home, "server.log")
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
               "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT), "CODEX_HOME": self.home}
        if kind == "reference":
            argv = [reference_binary(), "exec-server", "--listen", "ws://127.0.0.1:0", *extra_args]
            stderr = open(self.log_path, "wb")
        else:
            argv = [sys.executable, "-c", UNTUNED if untuned else TUNED,
                    "-n", "--pidfile=", f"--logfile={self.log_path}", "execserver",
                    "--port", "0", *extra_args]
            stderr = subprocess.DEVNULL
        if confine:
            argv = confined(argv, self.home)
        self.popen = subprocess.Popen(argv, cwd=self.home, env=env, stdout=subprocess.PIPE,
                                      stderr=stderr)
        for line in self.popen.stdout:
            if line.startswith(b"ws://"):
                self.url = line.decode().strip()
                break
        else:
            raise RuntimeError(f"{kind} server did not start")

    def log_text(self) -> str:
        """
        The whole log: twistd rotates ours every MB into C{server.log.N}.
        """
        texts = []
        for name in sorted(os.listdir(self.home)):
            if name == "server.log" or name.startswith("server.log."):
                with open(os.path.join(self.home, name), errors="replace") as f:
                    texts.append(f.read())
        return "\n".join(texts)

    def stop(self) -> int:
        """
        @return: the exit status.
        """
        status = self.terminate()
        shutil.rmtree(self.home, ignore_errors=True)
        return status


#: What a log must not contain after a run: tracebacks and failures.
LOG_PROBLEMS = ("Traceback", "Unhandled", "CRITICAL", "[-] Failure", "panicked")


def log_problems(text: str) -> list[str]:
    """
    The lines of a server log that report an unhandled error.
    """
    return [line for line in text.splitlines() if any(word in line for word in LOG_PROBLEMS)]


@dataclass
class Resources:
    """
    What a process holds, from /proc.
    """

    rss_mib: float
    fds: int
    threads: int
    children: int
    zombies: int

    @classmethod
    def of(cls, pid: int) -> "Resources":
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        rss = int(status["VmRSS"].split()[0]) / 1024
        states = list(support.children_states(pid).values())
        return cls(rss, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]),
                   len(states), states.count("Z"))


@implementer(IMessageProtocol)
class Client:
    """
    A lean JSON-RPC client: requests with Deferreds (firing with the whole
    reply), notifications to a callback, the loss to a Deferred.
    """

    def __init__(self) -> None:
        self.transport = None
        self.pending: dict[int, Deferred] = {}
        self.on_notification = lambda message: None
        self.next_id = 0
        self.lost: Deferred = Deferred()

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        message = json.loads(data)
        if "id" not in message:
            self.on_notification(message)
        else:
            waiter = self.pending.pop(message["id"], None)
            if waiter is not None:
                waiter.callback(message)

    def connectionLost(self, reason) -> None:
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            waiter.errback(reason)
        if not self.lost.called:
            self.lost.callback(None)

    def call(self, method: str, params=None) -> Deferred:
        self.next_id += 1
        waiter = Deferred()
        self.pending[self.next_id] = waiter
        self.transport.sendMessage(rpc.encode_request(self.next_id, method, params))
        return waiter

    def send_raw(self, data: bytes, binary: bool = False) -> None:
        self.transport.protocol.sendMessage(data, isBinary=binary)

    async def initialize(self) -> dict:
        reply = await self.call("initialize", {"clientName": "stress"})
        self.transport.sendMessage(b'{"method":"initialized"}')
        return reply["result"]

    def close(self) -> Deferred:
        if not self.lost.called:
            self.transport.loseConnection()
        return self.lost

    def abort(self) -> None:
        if not self.lost.called:
            self.transport.abortConnection()


async def connect(url: str, initialize: bool = True) -> Client:
    client = Client()
    await websocket.connect(reactor, url, client)
    if initialize:
        await client.initialize()
    return client


def sleep(seconds: float) -> Deferred:
    d = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def settle(pid: int, seconds: float = 2.0) -> Resources:
    """
    The resources of C{pid} once things have calmed down for a moment.
    """
    await sleep(seconds)
    return Resources.of(pid)


@dataclass
class Report:
    """
    A titled table of figures, printed as markdown; C{figures} keeps them
    for --json.
    """

    title: str
    command: str
    header: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def add(self, *row) -> None:
        self.rows.append(row)

    def text(self) -> str:
        lines = [f"## {self.title}", "", f"    {self.command}", "",
                 "| " + " | ".join(self.header) + " |",
                 "| " + " | ".join("---" for _ in self.header) + " |"]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def program(parser: argparse.ArgumentParser, main) -> None:
    """
    Run a stress program: C{main(args)} returns its L{Report}, printed as
    a table or, with C{--json}, as its figures (what the CI test reads).
    """
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report = run(lambda: main(args))
    if args.json:
        print(json.dumps(report.figures | {"command": report.command}))
    else:
        print(report.text())


def run(main):
    """
    Run an async function on the reactor; exit 1 if it raised.
    """
    outcome = {}

    async def wrapper():
        try:
            outcome["result"] = await main()
        except BaseException as e:  # report, then exit non-zero
            import traceback
            traceback.print_exc()
            outcome["error"] = e
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(wrapper()))
    reactor.run()
    if "error" in outcome:
        sys.exit(1)
    return outcome.get("result")


def now() -> float:
    return time.perf_counter()
