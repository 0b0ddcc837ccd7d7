"""
Test support: real servers in child processes, and a WebSocket client that
queues what it receives so tests can wait for exactly the message they
expect.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

import execserver
from execserver.interfaces import IMessageProtocol, IMessageTransport
from execserver.transports import websocket

#: How long any single awaited event may take before the test is broken.
EVENT_TIMEOUT = 20.0

PROJECT_ROOT = Path(execserver.__file__).resolve().parent.parent

#: Where servers get their home (the reference's CODEX_HOME): not under
#: /tmp, where the reference refuses to make the helper aliases that its
#: sandboxed and terminal children need.
HOME_PARENT = "/var/tmp"

_reference_binary: str | None = None


def reference_binary() -> str:
    """
    The reference C{codex} binary, installed by the project's script.

    No skipping: when it cannot be installed the interop tests fail.
    """
    global _reference_binary
    if _reference_binary is None:
        result = subprocess.run(
            [str(PROJECT_ROOT / "scripts" / "install-reference")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "the reference exec-server could not be installed:\n" + result.stderr
            )
        _reference_binary = result.stdout.strip().splitlines()[-1]
    return _reference_binary


def with_timeout(d: Deferred, seconds: float = EVENT_TIMEOUT) -> Deferred:
    return d.addTimeout(seconds, reactor)


class _ServerProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.url: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.stdout = b""
        self.stderr = b""

    def outVolume(self, data: bytes) -> None:
        self.stdout += data
        for line in self.stdout.split(b"\n")[:-1]:
            if line.startswith((b"ws://", b"unix:")) and not self.url.called:
                self.url.callback(line.decode().strip())

    outReceived = outVolume

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        if not self.url.called:
            self.url.errback(RuntimeError(
                "server exited before announcing its URL:\n" + self.stderr.decode(errors="replace")
            ))
        self.ended.callback(reason.value)


class RunningServer:
    """
    An exec-server (ours or the reference) in a child process.
    """

    def __init__(self, kind: str, url: str, process, proto: _ServerProcess, home: str):
        self.kind = kind
        self.url = url
        self.process = process
        self.proto = proto
        self.home = home

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if not self.proto.ended.called:
            try:
                self.process.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        await with_timeout(self.proto.ended)


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    env.update(extra or {})
    return env


def server_argv(kind: str, listen: str, args: Sequence[str] = ()) -> list[str]:
    """
    The command that runs C{kind} ("ours" or "reference") listening on
    C{listen}: C{ws://127.0.0.1:0} or C{stdio}.
    """
    if kind == "reference":
        return [reference_binary(), "exec-server", "--listen", listen, *args]
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "execserver", "--listen", listen, *args,
    ]


#: Run by L{ignoring_signals}: undo what Python ignores at its start, ignore
#: the signals numbered in argv[1], then exec the rest of argv.
_IGNORE_AND_EXEC = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
    "for number in sys.argv[1].split(','):\n"
    "    signal.signal(int(number), signal.SIG_IGN)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def ignoring_signals(argv: Sequence[str], signals: Iterable[int]) -> list[str]:
    """
    C{argv} started with C{signals} ignored, as C{nohup} (SIGHUP) or a
    shell's C{&} (SIGINT, SIGQUIT) start a program.
    """
    numbers = ",".join(str(int(number)) for number in signals)
    if not numbers:
        return list(argv)
    return [sys.executable, "-c", _IGNORE_AND_EXEC, numbers, *argv]


async def start_server(
    kind: str,
    args: list[str] = (),
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    home: str | None = None,
    ignored_signals: Iterable[int] = (),
    wrapper: list[str] = (),
    listen: str = "ws://127.0.0.1:0",
) -> RunningServer:
    """
    Start C{kind} ("ours" or "reference") listening on C{listen} (an
    ephemeral loopback port by default), with C{ignored_signals} ignored
    from the start; C{wrapper} is a command that runs it. Its C{CODEX_HOME}
    is C{home} (a new directory if not given, removed when the server ends,
    whoever ends it).
    """
    proto = _ServerProcess()
    if home is None:
        home = tempfile.mkdtemp(prefix="execserver-test-home-", dir=HOME_PARENT)
        proto.ended.addBoth(_remove_then_pass_on, home)
    full_env = server_environment(env)
    full_env.setdefault("CODEX_HOME", home)
    argv = [*wrapper, *ignoring_signals(server_argv(kind, listen, args), ignored_signals)]
    process = reactor.spawnProcess(proto, argv[0], argv, env=full_env, path=cwd or home)
    try:
        url = await with_timeout(proto.url)
    except BaseException:
        if not proto.ended.called:
            process.signalProcess("KILL")
        await proto.ended
        raise
    return RunningServer(kind, url, process, proto, home)


def _remove_then_pass_on(result, directory: str):
    shutil.rmtree(directory, ignore_errors=True)
    return result


async def serve(testcase, kind: str, args: Sequence[str] = ()) -> RunningServer:
    """
    A server of C{kind} (started with C{args}) for C{testcase}, stopped when
    the test ends.
    """
    server = await start_server(kind, list(args))
    testcase.addCleanup(lambda: defer.ensureDeferred(server.stop()))
    return server


def complete_http_message(data: bytes, bodiless: bool = False) -> tuple[bytes, bytes] | None:
    """
    The head and body of the HTTP message at the start of C{data}, once it
    has all arrived (as much body as its content-length announces; none
    when C{bodiless}, as for the answer to a HEAD request); None before.
    """
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return None
    length = 0
    if not bodiless:
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
    if len(body) < length:
        return None
    return head, body[:length]


def scratch_directory(testcase, prefix: str) -> str:
    """
    A directory for C{testcase}, removed when the test ends.
    """
    directory = tempfile.mkdtemp(prefix=prefix)
    testcase.addCleanup(shutil.rmtree, directory, True)
    return directory


class Disconnected(Exception):
    pass


@implementer(IMessageProtocol)
class MessageQueue:
    """
    A message protocol that queues incoming messages (parsed JSON) for tests.
    """

    def __init__(self) -> None:
        self.transport = None
        self.messages: list[Any] = []
        self.raw: list[bytes] = []
        self._waiters: list[tuple[Callable[[Any], bool], Deferred]] = []
        self.lost: Deferred = Deferred()

    def makeConnection(self, transport) -> None:
        self.transport = transport

    def messageReceived(self, data: bytes) -> None:
        self.raw.append(data)
        message = json.loads(data)
        for i, (match, waiter) in enumerate(self._waiters):
            if match(message):
                del self._waiters[i]
                waiter.callback(message)
                return
        self.messages.append(message)

    def connectionLost(self, reason) -> None:
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.errback(Disconnected(reason.value))
        if not self.lost.called:
            self.lost.callback(reason.value)

    def next(self, match: Callable[[Any], bool] = lambda m: True, timeout=EVENT_TIMEOUT) -> Deferred:
        """
        The first queued (or next arriving) message for which C{match} holds.
        """
        for i, message in enumerate(self.messages):
            if match(message):
                del self.messages[i]
                return defer.succeed(message)
        if self.lost.called:
            return defer.fail(Disconnected())
        waiter = Deferred()
        self._waiters.append((match, waiter))
        return with_timeout(waiter, timeout)

    def response(self, id: Any, timeout=EVENT_TIMEOUT) -> Deferred:
        return self.next(lambda m: "method" not in m and m.get("id") == id, timeout)

    def notification(self, match: Callable[[Any], bool] = lambda m: True) -> Deferred:
        return self.next(lambda m: "method" in m and "id" not in m and match(m))

    def send(self, message: Any) -> None:
        self.transport.sendMessage(json.dumps(message).encode())

    def send_raw(self, data: bytes | str, binary: bool = False) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.transport.protocol.sendMessage(data, isBinary=binary)

    def close(self) -> Deferred:
        if not self.lost.called:
            self.transport.loseConnection()
        return with_timeout(self.lost)


async def connect(url: str, headers: dict[str, str] | None = None) -> MessageQueue:
    queue = MessageQueue()
    await with_timeout(websocket.connect(reactor, url, queue, headers=headers))
    return queue


@implementer(IMessageTransport)
class FakeMessageTransport:
    """
    An in-memory message transport: records what the connection sends.
    """

    peer = "test"
    parseErrorPrefix = "failed to parse JSON-RPC message from test"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        #: How many messages had been sent at each flush.
        self.flushes: list[int] = []
        self.aborted = False
        self.closed = False
        self.producer = None
        #: False while the connection has paused reading from this transport.
        self.reading = True
        self._waiters: list[tuple[Callable[[Any], bool], Deferred]] = []

    def sendMessage(self, data: bytes | tuple[bytes, ...]) -> None:
        if isinstance(data, tuple):
            data = b"".join(data)
        self.sent.append(data)
        if self._waiters:
            message = json.loads(data)
            for entry in list(self._waiters):
                if entry[0](message):
                    self._waiters.remove(entry)
                    # Like a real transport, never call back into the sender.
                    reactor.callLater(0, entry[1].callback, message)

    def flush(self) -> None:
        # Messages are "sent" as they come; what was sent by each flush is
        # remembered.
        self.flushes.append(len(self.sent))

    def wait_for(self, match: Callable[[Any], bool]) -> Deferred:
        """
        Fires with the first message sent so far, or later, that matches.
        """
        for message in self.messages():
            if match(message):
                return defer.succeed(message)
        waiter = Deferred()
        self._waiters.append((match, waiter))
        return with_timeout(waiter)

    def closed_event(self, process_id: str) -> Deferred:
        return self.wait_for(lambda m: m.get("method") == "process/closed"
                             and m["params"]["processId"] == process_id)

    def reply(self, id: Any) -> Deferred:
        return self.wait_for(lambda m: "method" not in m and m.get("id") == id)

    def events(self, process_id: str) -> list[Any]:
        return [m for m in self.messages()
                if m.get("method", "").startswith("process/")
                and m["params"]["processId"] == process_id]

    def output(self, process_id: str, stream: str | None = None) -> bytes:
        import base64
        return b"".join(
            base64.b64decode(m["params"]["chunk"]) for m in self.events(process_id)
            if m["method"] == "process/output" and stream in (None, m["params"]["stream"])
        )

    def loseConnection(self) -> None:
        self.closed = True

    def abortConnection(self) -> None:
        self.aborted = True

    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.aborted = True

    def messages(self) -> list[Any]:
        return [json.loads(data) for data in self.sent]

    def take(self) -> list[Any]:
        messages = self.messages()
        self.sent.clear()
        return messages


def build_exec_server(testcase, clock=None, concurrency: int = 1):
    """
    A server core with every method, its timers on C{clock}; at the end of
    the test its processes are killed and reaped and its threads stopped.
    """
    from twisted.python.threadpool import ThreadPool

    from execserver import environment, methods
    from execserver.server import ExecServer

    pool = ThreadPool(minthreads=0, maxthreads=2)
    pool.start()
    testcase.addCleanup(pool.stop)
    exec_server = ExecServer(
        reactor,
        methods.all_methods(),
        environment.environment_info,
        concurrency=concurrency,
        threadpool=pool,
        clock=clock,
    )
    testcase.addCleanup(exec_server.shutdown)
    return exec_server


def attach(exec_server) -> tuple[Any, FakeMessageTransport]:
    connection = exec_server.buildConnection()
    transport = FakeMessageTransport()
    connection.makeConnection(transport)
    return connection, transport


def handshake(connection, transport) -> str:
    connection.messageReceived(b'{"id":0,"method":"initialize","params":{"clientName":"t"}}')
    (reply,) = transport.take()
    connection.messageReceived(b'{"method":"initialized"}')
    return reply["result"]["sessionId"]


def send(connection, message: Any) -> None:
    connection.messageReceived(json.dumps(message).encode())


class _PidWatcher:
    def __init__(self, pidfd: int, done: Deferred) -> None:
        self.pidfd = pidfd
        self.done = done

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self) -> None:
        reactor.removeReader(self)
        os.close(self.pidfd)
        self.done.callback(None)

    def logPrefix(self) -> str:
        return "pid-watcher"

    def connectionLost(self, reason) -> None:
        pass


def process_gone(pid: int) -> Deferred:
    """
    Fires when process C{pid} (not necessarily our child) has exited.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return defer.succeed(None)
    done = Deferred()
    reactor.addReader(_PidWatcher(pidfd, done))
    return with_timeout(done)


def start_params(process_id: str, argv: list[str], **extra) -> dict:
    params = {"processId": process_id, "argv": argv, "cwd": "file:///tmp",
              "env": {"PATH": "/usr/bin:/bin"}, "tty": False}
    params.update(extra)
    return params


def children_states(pid: int) -> dict[int, str]:
    """
    The children of C{pid} and their states (C{"Z"} for a zombie), from /proc.
    """
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children[int(entry)] = fields[0]
    return children
