"""
The audit trail: the events an operator needs, with what identifies actor
and object, and never environment values, file contents, headers or bodies;
and the whole log as JSON lines through twistd's --logger.
"""

from __future__ import annotations

import json
import os
import sys

import pybase64
from twisted.internet import reactor, task
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from execserver import audit, paths
from execserver.session import DETACHED_TTL_SECONDS
from tests import support
from tests.httpserver import Origin
from tests.support import attach, build_exec_server, handshake, send, start_params
from tests.test_stdio import _StdioServer

SECRET = "s3cr3t-value-8e1f"


class AuditTrailTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = task.Clock()
        self.server = build_exec_server(self, self.clock)
        self.connection, self.transport = attach(self.server)
        self.session = handshake(self.connection, self.transport)
        self.directory = support.scratch_directory(self, "execserver-audit-")
        self._ids = 10

    def call(self, method: str, params: dict):
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": method, "params": params})
        return self.transport.reply(self._ids)

    def audit(self) -> list[dict]:
        # Without the keys Twisted adds to every event.
        added = {"format", "isError", "message", "system", "time"}
        return [{k: v for k, v in event.items() if not k.startswith("log_") and k not in added}
                for event in self.events if "audit" in event]

    def assertNoSecret(self) -> None:
        for event in self.events:
            self.assertNotIn(SECRET, repr(event))

    async def test_a_session_from_open_to_expiry(self):
        cwd = paths.from_host_path(self.directory)
        await self.call("process/start", start_params(
            "p", ["/bin/sh", "-c", "exit 7"], cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "TOKEN": SECRET}))
        await self.transport.closed_event("p")
        path = os.path.join(self.directory, "f")
        await self.call("fs/writeFile", {"path": paths.from_host_path(path),
                                         "dataBase64": pybase64.b64encode_as_string(SECRET.encode())})
        await self.call("fs/createDirectory", {"path": paths.from_host_path(path + ".d")})
        await self.call("fs/copy", {"sourcePath": paths.from_host_path(path),
                                    "destinationPath": paths.from_host_path(path + ".c"),
                                    "recursive": False})
        await self.call("fs/remove", {"path": paths.from_host_path(path)})
        await self.call("fs/readFile", {"path": paths.from_host_path(path + ".c")})
        self.connection.connectionLost(None)
        self.clock.advance(DETACHED_TTL_SECONDS)
        connection = self.connection.id
        self.assertEqual(self.audit(), [
            {"audit": "connection.open", "connection": connection, "peer": "test"},
            {"audit": "session.create", "session": self.session, "connection": connection},
            {"audit": "process.start", "session": self.session, "process": "p",
             "argv0": "/bin/sh", "cwd": self.directory, "tty": False, "sandbox": "none"},
            {"audit": "process.exit", "session": self.session, "process": "p", "exit_code": 7},
            {"audit": "fs.write", "connection": connection, "path": path},
            {"audit": "fs.mkdir", "connection": connection, "path": path + ".d"},
            {"audit": "fs.copy", "connection": connection, "path": path,
             "destination": path + ".c"},
            {"audit": "fs.remove", "connection": connection, "path": path},
            {"audit": "connection.close", "connection": connection},
            {"audit": "session.detach", "session": self.session},
            {"audit": "session.expire", "session": self.session},
        ])
        self.assertNoSecret()

    def test_connections_are_numbered_and_name_their_peer(self):
        second, _ = attach(self.server)
        opened = [event for event in self.audit() if event["audit"] == "connection.open"]
        self.assertEqual(opened[-1], {"audit": "connection.open", "connection": second.id,
                                      "peer": "test"})
        self.assertEqual(second.id, self.connection.id + 1)

    async def test_http_headers_and_bodies_are_not_logged(self):
        origin = await Origin().start()
        self.addCleanup(origin.stop)
        reply = await self.call("http/request", {
            "method": "POST", "url": origin.url(), "requestId": "r",
            "headers": [{"name": "authorization", "value": f"Bearer {SECRET}"}],
            "bodyBase64": pybase64.b64encode_as_string(SECRET.encode()),
        })
        self.assertIn("result", reply)
        self.assertNoSecret()


class JsonLogTests(unittest.TestCase):
    timeout = 60

    async def test_twistd_writes_json_lines(self):
        directory = support.scratch_directory(self, "execserver-audit-")
        log_path = os.path.join(directory, "log.jsonl")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logger", "execserver.audit.json_observer",
                "execserver", "--listen", "stdio"]
        server = _StdioServer()
        process = reactor.spawnProcess(
            server, argv[0], argv, path=directory,
            env=support.server_environment({"EXECSERVER_JSON_LOG": log_path}))
        process.write(b'{"id":0,"method":"initialize","params":{"clientName":"t"}}\n'
                      b'{"method":"initialized"}\n')
        process.write(json.dumps({"id": 1, "method": "process/start", "params": start_params(
            "p", ["/bin/true"], env={"PATH": "/usr/bin:/bin", "TOKEN": SECRET})}).encode() + b"\n")
        await server.until(2)
        process.closeStdin()
        await support.with_timeout(server.ended)
        with open(log_path, encoding="utf-8") as f:
            events = [json.loads(line) for line in f]
        audited = [event["audit"] for event in events if "audit" in event]
        self.assertEqual(audited[:3], ["connection.open", "session.create", "process.start"])
        self.assertIn("connection.close", audited)
        (start,) = [event for event in events if event.get("audit") == "process.start"]
        self.assertEqual((start["argv0"], start["process"], start["sandbox"]),
                         ("/bin/true", "p", "none"))
        with open(log_path, encoding="utf-8") as f:
            self.assertNotIn(SECRET, f.read())


class BatchTests(unittest.TestCase):
    """
    While an AuditBatches service runs, events wait for a batch, at most
    BATCH_SECONDS, and keep the time they happened.
    """

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.batches = audit.AuditBatches(self.clock)
        self.batches.startService()
        self.addCleanup(lambda: self.batches.running and self.batches.stopService())

    def audited(self) -> list[tuple[str, str, float]]:
        return [(event["audit"], event["session"], event["log_time"])
                for event in self.events if "audit" in event]

    def test_events_wait_for_their_batch_and_keep_their_time(self):
        audit.record("session.detach", session="a")
        self.clock.advance(audit.BATCH_SECONDS / 4)
        audit.record("session.expire", session="a")
        self.clock.advance(audit.BATCH_SECONDS / 2)
        self.assertEqual(self.audited(), [])
        (due,) = self.clock.getDelayedCalls()
        self.assertEqual(due.getTime(), 1000 + audit.BATCH_SECONDS)
        self.clock.advance(audit.BATCH_SECONDS / 2)
        self.assertEqual(self.audited(), [("session.detach", "a", 1000),
                                          ("session.expire", "a", 1000 + audit.BATCH_SECONDS / 4)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        (event, _) = [event for event in self.events if "audit" in event]
        self.assertEqual(formatEvent(event), "session a detached")
        self.assertEqual(event["log_namespace"], "execserver.audit")
        self.assertEqual(event["log_level"], LogLevel.info)

    def test_a_full_batch_is_logged_at_once(self):
        for n in range(audit.BATCH_EVENTS - 1):
            audit.record("session.expire", session=str(n))
        self.assertEqual(self.audited(), [])
        audit.record("session.expire", session="last")
        self.assertEqual([session for _, session, _ in self.audited()],
                         [str(n) for n in range(audit.BATCH_EVENTS - 1)] + ["last"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_logs_what_is_held_and_then_events_as_they_happen(self):
        audit.record("session.detach", session="a")
        self.batches.stopService()
        self.assertEqual([name for name, _, _ in self.audited()], ["session.detach"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        audit.record("session.expire", session="a")
        self.assertEqual([name for name, _, _ in self.audited()],
                         ["session.detach", "session.expire"])
