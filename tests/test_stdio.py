"""
The stdio transport: line framing in memory, and both servers over real
pipes.
"""

import base64
import json
import sys

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from execserver.interfaces import IMessageProtocol
from execserver.transports.stdio import MAX_LINE_BYTES, LineMessageProtocol
from tests import support


@implementer(IMessageProtocol)
class Recorder:
    def __init__(self):
        self.messages = []
        self.lost = False

    def makeConnection(self, transport):
        self.transport = transport

    def messageReceived(self, data):
        self.messages.append(data)

    def connectionLost(self, reason):
        self.lost = True


class LineFramingTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.recorder = Recorder()
        self.lines = LineMessageProtocol(self.recorder)
        self.transport = StringTransport()
        self.lines.makeConnection(self.transport)

    def test_lines_in_pieces(self):
        self.lines.dataReceived(b'{"a"')
        self.lines.dataReceived(b':1}\n{"b":2}\r\n{"c"')
        self.assertEqual(self.recorder.messages, ['{"a":1}', '{"b":2}'])

    def test_only_one_carriage_return_is_dropped(self):
        self.lines.dataReceived(b"x\r\r\n")
        self.assertEqual(self.recorder.messages, ["x\r"])

    def test_whitespace_only_lines_are_skipped(self):
        self.lines.dataReceived(b"\n   \n\t\r\n\x0b\n\xc2\xa0\n\x0cx\n")
        self.assertEqual(self.recorder.messages, ["\x0cx"])

    def test_invalid_utf8_ends_the_connection(self):
        self.lines.dataReceived(b'{"a":1}\n\xff\n{"b":2}\n')
        self.assertEqual(self.recorder.messages, ['{"a":1}'])
        self.assertTrue(self.transport.disconnecting)

    def test_the_longest_line(self):
        piece = b"x" * (1 << 20)
        for _ in range(MAX_LINE_BYTES // len(piece)):
            self.lines.dataReceived(piece)
        self.lines.dataReceived(b"\r\n")
        self.assertEqual(len(self.recorder.messages[0]), MAX_LINE_BYTES)
        self.assertFalse(self.transport.disconnecting)

    def test_a_longer_line_ends_the_connection(self):
        self.lines.dataReceived(b"x" * MAX_LINE_BYTES + b"y\n{}\n")
        self.assertEqual(self.recorder.messages, [])
        self.assertTrue(self.transport.disconnecting)

    def test_messages_out_are_lines(self):
        self.lines.sendMessage(b'{"id":1}')
        self.assertEqual(self.transport.value(), b'{"id":1}\n')


class _StdioServer(protocol.ProcessProtocol):
    def __init__(self):
        self.buffer = b""
        self.lines = []
        self.waiters = []
        self.ended: Deferred = Deferred()

    def outReceived(self, data):
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for line in complete:
            self.lines.append(json.loads(line))
        waiters, self.waiters = self.waiters, []
        for count, waiter in waiters:
            self._check(count, waiter)

    def _check(self, count, waiter):
        if len(self.lines) >= count:
            waiter.callback(self.lines[:count])
        else:
            self.waiters.append((count, waiter))

    def until(self, count):
        waiter = Deferred()
        self._check(count, waiter)
        return support.with_timeout(waiter)

    def processEnded(self, reason):
        self.ended.callback(reason.value)


async def run_stdio(kind, lines: list[bytes], expect: int, pid_from=None):
    home = support.tempfile.mkdtemp()
    env = support.server_environment({"CODEX_HOME": home})
    if kind == "reference":
        argv = [support.reference_binary(), "exec-server", "--listen", "stdio"]
    else:
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "execserver", "--listen", "stdio"]
    server = _StdioServer()
    process = reactor.spawnProcess(server, argv[0], argv, env=env, path=home)
    try:
        for line in lines:
            process.write(line)
        replies = await server.until(expect)
        process.closeStdin()
        status = await support.with_timeout(server.ended)
    except BaseException:
        if not server.ended.called:
            process.signalProcess("KILL")
            await server.ended
        raise
    return replies, status


def normalized(replies):
    text = json.dumps(replies)
    for reply in replies:
        result = reply.get("result")
        if isinstance(result, dict) and "sessionId" in result:
            text = text.replace(result["sessionId"], "<session>")
    return json.loads(text)


STDIO_SCRIPT = [
    b"not-json\n",
    b'{"id":1,"method":"environment/status"}\r\n',
    b"   \n",
    b'{"id":2,"method":"initialize","params":{"clientName":"x"}}\n',
    b'{"method":"initialized"}\n',
    b'{"id":3,"method":"process/start","params":{"processId":"s","argv":["/bin/sh","-c","echo $$; exec sleep 100"],'
    b'"cwd":"file:///tmp","env":{},"tty":false}}\n',
    b'{"id":4,"method":"environment/status"}\n',
]


class StdioInteropTests(unittest.TestCase):
    timeout = 60

    async def test_same_replies_and_everything_killed_at_eof(self):
        results = {}
        for kind in ("reference", "ours"):
            replies, status = await run_stdio(kind, STDIO_SCRIPT, expect=6)
            self.assertIsInstance(status, error.ProcessDone, kind)
            (output,) = [r for r in replies if "method" in r]
            await support.process_gone(int(base64.b64decode(output["params"]["chunk"])))
            responses = [r for r in replies if "method" not in r]
            for reply in responses:
                if "result" in reply and "environmentInfo" in reply["result"]:
                    del reply["result"]["environmentInfo"]
            results[kind] = normalized(responses)
        self.assertEqual(results["reference"], results["ours"])


class StdioShutdownTests(unittest.TestCase):
    timeout = 60

    async def _stop_with(self, *causes: str) -> None:
        """
        Start a stdio server with children to kill, then stop it with each
        of C{causes} ("TERM", "INT" or "eof") at once, in that order.
        """
        children = 20
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "execserver", "--listen", "stdio"]
        server = _StdioServer()
        errors = []
        server.errReceived = errors.append
        home = support.scratch_directory(self, "execserver-stdio-")
        process = reactor.spawnProcess(server, argv[0], argv, env=support.server_environment(),
                                       path=home)
        process.write(b'{"id":0,"method":"initialize","params":{"clientName":"t"}}\n'
                      b'{"method":"initialized"}\n')
        for n in range(children):
            process.write(json.dumps({"id": n + 1, "method": "process/start", "params": {
                "processId": f"p{n}", "argv": ["sleep", "100"], "cwd": "file:///tmp",
                "env": {"PATH": "/usr/bin:/bin"}, "tty": False}}).encode() + b"\n")
        await server.until(children + 1)
        for cause in causes:
            if cause == "eof":
                process.closeStdin()
            else:
                process.signalProcess(cause)
        await support.with_timeout(server.ended)
        log = b"".join(errors).decode()
        self.assertIn("Server Shut Down", log)
        self.assertNotIn("Traceback", log)
        self.assertNotIn("critical", log)

    def test_a_signal_then_the_end_of_stdin(self):
        """
        A harness that exits signals its server and closes its stdin: the
        server stops once, quietly, while its children are being killed.
        """
        return defer.ensureDeferred(self._stop_with("TERM", "eof"))

    def test_the_end_of_stdin_then_a_signal(self):
        return defer.ensureDeferred(self._stop_with("eof", "TERM"))

    def test_two_signals(self):
        return defer.ensureDeferred(self._stop_with("INT", "TERM"))
