"""
The examples in the documentation run as they are written.
"""

from __future__ import annotations

import re
import sys

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from tests import support

#: The URL the examples use; replaced by the test server's.
EXAMPLE_URL = "ws://127.0.0.1:8765"


def python_blocks(path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


class _Program(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.ended = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


class ClientDocumentationTests(unittest.TestCase):
    async def test_the_library_example_is_a_complete_program(self):
        (example,) = python_blocks(support.PROJECT_ROOT / "docs" / "client.md")
        self.assertEqual(example.count(EXAMPLE_URL), 1)
        server = await support.serve(self, "ours")
        program = _Program()
        argv = [sys.executable, "-c", example.replace(EXAMPLE_URL, server.url)]
        reactor.spawnProcess(program, argv[0], argv, env=support.server_environment())
        code = await support.with_timeout(program.ended, 120)
        self.assertEqual((code, bytes(program.out), bytes(program.err)),
                         (0, b"b'hi\\nthere\\n' 0\n", b""))
