"""
process/* against real child processes, through the connection core.
"""

import base64
import collections
import gc
import os
import signal

from twisted.internet import task
from twisted.trial import unittest

from execserver.process import (
    CLOSED_RETENTION_SECONDS,
    MAX_RETAINED_BYTES,
    MAX_RETAINED_CHUNKS,
    ManagedProcess,
    OutputLog,
    WriteIds,
)
from execserver.spawn import ChildSpec
from tests.support import (
    attach,
    build_exec_server,
    handshake,
    process_gone,
    send,
    start_params,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ProcessTestCase(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.server = build_exec_server(self, self.clock)
        self.connection, self.transport = attach(self.server)
        self.session_id = handshake(self.connection, self.transport)
        self._ids = 100

    def call(self, method, params):
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": method, "params": params})
        return self.transport.reply(self._ids)

    async def run_process(self, process_id, argv, **extra):
        reply = await self.call("process/start", start_params(process_id, argv, **extra))
        self.assertEqual(reply["result"], {"processId": process_id, "sandboxType": "none"})
        await self.transport.closed_event(process_id)
        return self.transport.events(process_id)

    def exit_code(self, process_id):
        (exited,) = [m for m in self.transport.events(process_id) if m["method"] == "process/exited"]
        return exited["params"]["exitCode"]


class LifecycleTests(ProcessTestCase):
    async def test_output_exit_and_close_share_one_sequence(self):
        events = await self.run_process("p", ["/bin/sh", "-c", "echo out; echo err >&2"])
        self.assertEqual([m["params"]["seq"] for m in events], list(range(1, len(events) + 1)))
        self.assertEqual([m["method"] for m in events[-2:]], ["process/exited", "process/closed"])
        self.assertEqual(self.transport.output("p", "stdout"), b"out\n")
        self.assertEqual(self.transport.output("p", "stderr"), b"err\n")
        self.assertEqual(events[-2]["params"], {
            "processId": "p", "seq": len(events) - 1, "exitCode": 0, "sandboxDenied": False})

    async def test_closed_is_sent_at_once_after_the_child_is_let_go_of(self):
        """
        A process's last notification is flushed, not left for the end of
        the reactor's turn, but only once the callbacks added to the
        child's end before it started have run (process/start adds those
        that let go of what the child held: a sandbox's mount targets).
        """
        session = self.server.registry.sessions[self.session_id]
        spec = ChildSpec(executable="/bin/true", argv=["/bin/true"], cwd="/", env={},
                         tty=False, pipe_stdin=False)
        process = session.processes["p"] = ManagedProcess(session, "p", spec)
        before = list(self.transport.flushes)
        flushes_at_end = []
        process.child.finished.addBoth(
            lambda result: flushes_at_end.append(list(self.transport.flushes)))
        process.start()
        await self.transport.closed_event("p")
        self.assertEqual(self.transport.messages()[-1]["method"], "process/closed")
        self.assertEqual(flushes_at_end, [before])
        self.assertEqual(self.transport.flushes, [*before, len(self.transport.sent)])

    async def test_start_replies_before_any_notification(self):
        reply_id = self._ids + 1
        await self.run_process("p", ["/bin/echo", "early"])
        messages = self.transport.messages()
        self.assertEqual(messages[0]["id"], reply_id)

    async def test_exit_codes(self):
        cases = {
            "zero": (["/bin/true"], 0),
            "three": (["/bin/sh", "-c", "exit 3"], 3),
            "term": (["/bin/sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
            "kill": (["/bin/sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
        }
        for name, (argv, code) in cases.items():
            await self.run_process(name, argv)
            self.assertEqual(self.exit_code(name), code, name)

    async def test_closed_waits_for_every_holder_of_the_output(self):
        await self.run_process("p", ["/bin/sh", "-c", "(sleep 0.2; echo late) & echo early"])
        self.assertEqual(self.transport.output("p"), b"early\nlate\n")
        methods = [m["method"] for m in self.transport.events("p")]
        self.assertEqual(methods[-1], "process/closed")

    async def test_missing_program(self):
        reply = await self.call("process/start", start_params("p", ["no-such-program"]))
        self.assertEqual(reply["error"], {
            "code": -32603, "message": "No such file or directory (os error 2)"})

    async def test_bare_names_are_found_without_a_path(self):
        await self.run_process("p", ["true"], env={})
        self.assertEqual(self.exit_code("p"), 0)

    async def test_environment_is_exactly_env(self):
        await self.run_process("p", ["/usr/bin/env"], env={"ONLY": "this"})
        self.assertEqual(self.transport.output("p"), b"ONLY=this\n")

    async def test_env_policy_core_keeps_core_variables_and_drops_secrets(self):
        os.environ["EXECSERVER_TEST_SECRET"] = "x"
        self.addCleanup(os.environ.pop, "EXECSERVER_TEST_SECRET")
        policy = {"inherit": "all", "ignoreDefaultExcludes": False, "exclude": [],
                  "set": {"ADDED": "1"}, "includeOnly": []}
        await self.run_process("p", ["/usr/bin/env"], env={"OVER": "2"}, envPolicy=policy)
        lines = self.transport.output("p").decode().splitlines()
        self.assertIn("ADDED=1", lines)
        self.assertIn("OVER=2", lines)
        self.assertNotIn("EXECSERVER_TEST_SECRET=x", lines)

    async def test_arg0_replaces_argv0(self):
        await self.run_process("p", ["/bin/sh", "-c", "echo $0"], arg0="renamed")
        self.assertEqual(self.transport.output("p"), b"renamed\n")

    async def test_cwd(self):
        await self.run_process("p", ["/bin/pwd"], cwd="file:///usr")
        self.assertEqual(self.transport.output("p"), b"/usr\n")

    async def test_each_process_leads_its_own_process_group(self):
        await self.run_process("p", ["/bin/sh", "-c", "echo $$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$)"])
        pid, pgid, sid = self.transport.output("p").split()
        self.assertEqual(pid, pgid)
        self.assertEqual(pid, sid)

    async def test_duplicate_process_id(self):
        await self.run_process("p", ["/bin/true"])
        reply = await self.call("process/start", start_params("p", ["/bin/true"]))
        self.assertEqual(reply["error"], {"code": -32600, "message": "process p already exists"})

    async def test_closed_process_is_evicted_after_retention(self):
        await self.run_process("p", ["/bin/true"])
        self.clock.advance(CLOSED_RETENTION_SECONDS - 1)
        reply = await self.call("process/read", {"processId": "p"})
        self.assertTrue(reply["result"]["closed"])
        self.clock.advance(1)
        reply = await self.call("process/read", {"processId": "p"})
        self.assertEqual(reply["error"], {"code": -32600, "message": "unknown process id p"})
        await self.run_process("p", ["/bin/true"])

    async def test_each_closed_process_is_evicted_at_its_own_time_by_one_timer(self):
        await self.run_process("a", ["/bin/true"])
        self.clock.advance(30)
        await self.run_process("b", ["/bin/true"])
        # The server's turn on the reactor thread ends with its iteration.
        self.clock.advance(0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(CLOSED_RETENTION_SECONDS - 30)
        reply = await self.call("process/read", {"processId": "a"})
        self.assertEqual(reply["error"], {"code": -32600, "message": "unknown process id a"})
        reply = await self.call("process/read", {"processId": "b"})
        self.assertTrue(reply["result"]["closed"])
        self.clock.advance(30)
        reply = await self.call("process/read", {"processId": "b"})
        self.assertEqual(reply["error"], {"code": -32600, "message": "unknown process id b"})
        self.clock.advance(0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StdinTests(ProcessTestCase):
    async def test_without_pipe_stdin_writes_report_stdin_closed(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"]))
        reply = await self.call("process/write", {"processId": "p", "chunk": b64(b"x"), "writeId": "w"})
        self.assertEqual(reply["result"], {"status": "stdinClosed"})

    async def test_retried_write_ids_are_written_once(self):
        await self.call("process/start", start_params("p", ["/bin/cat"], pipeStdin=True))
        for write_id, data in (("w1", b"first\n"), ("w1", b"first\n"), ("w2", b"second\n")):
            reply = await self.call("process/write", {"processId": "p", "chunk": b64(data), "writeId": write_id})
            self.assertEqual(reply["result"], {"status": "accepted"})
        await self.transport.wait_for(lambda m: self.transport.output("p") == b"first\nsecond\n")

    async def test_unknown_process(self):
        reply = await self.call("process/write", {"processId": "nope", "chunk": "", "writeId": "w"})
        self.assertEqual(reply["result"], {"status": "unknownProcess"})

    async def test_empty_write_id(self):
        reply = await self.call("process/write", {"processId": "nope", "chunk": "", "writeId": ""})
        self.assertEqual(reply["error"], {"code": -32602, "message": "writeId must not be empty"})


class CloseStdinTests(ProcessTestCase):
    """
    process/closeStdin, our extension (docs/compatibility.md).
    """

    def write(self, process_id, data, write_id):
        return self.call("process/write", {"processId": process_id, "chunk": b64(data),
                                           "writeId": write_id})

    async def test_closing_stdin_ends_the_childs_input(self):
        await self.call("process/start", start_params("p", ["/bin/sh", "-c", "cat; echo end"],
                                                      pipeStdin=True))
        await self.write("p", b"hello\n", "w")
        reply = await self.call("process/closeStdin", {"processId": "p"})
        self.assertEqual(reply["result"], {})
        await self.transport.closed_event("p")
        self.assertEqual((self.transport.output("p"), self.exit_code("p")), (b"hello\nend\n", 0))

    async def test_queued_writes_reach_the_child_before_the_end(self):
        data = os.urandom(4 * 1024 * 1024)
        await self.call("process/start", start_params("p", ["/usr/bin/wc", "-c"], pipeStdin=True))
        await self.write("p", data, "w")
        await self.call("process/closeStdin", {"processId": "p"})
        await self.transport.closed_event("p")
        self.assertEqual(self.transport.output("p"), b"%d\n" % len(data))

    async def test_writes_after_the_close_report_stdin_closed(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"], pipeStdin=True))
        await self.write("p", b"x", "before")
        await self.call("process/closeStdin", {"processId": "p"})
        reply = await self.write("p", b"y", "after")
        self.assertEqual(reply["result"], {"status": "stdinClosed"})
        # A write that landed before the close, sent again, is still the
        # same accepted write.
        reply = await self.write("p", b"x", "before")
        self.assertEqual(reply["result"], {"status": "accepted"})

    async def test_closing_again_succeeds(self):
        # Idempotent, so a client may send it again after a reconnect.
        await self.call("process/start", start_params("p", ["/bin/cat"], pipeStdin=True))
        for _ in range(2):
            reply = await self.call("process/closeStdin", {"processId": "p"})
            self.assertEqual(reply["result"], {})
        await self.transport.closed_event("p")
        reply = await self.call("process/closeStdin", {"processId": "p"})
        self.assertEqual(reply["result"], {})

    async def test_stdin_that_is_not_piped_is_already_closed(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"]))
        reply = await self.call("process/closeStdin", {"processId": "p"})
        self.assertEqual(reply["result"], {})

    async def test_after_terminate(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"], pipeStdin=True))
        await self.call("process/terminate", {"processId": "p"})
        reply = await self.call("process/closeStdin", {"processId": "p"})
        self.assertEqual(reply["result"], {})

    async def test_unknown_process(self):
        reply = await self.call("process/closeStdin", {"processId": "nope"})
        self.assertEqual(reply["error"], {"code": -32600, "message": "unknown process id nope"})

    async def test_a_terminal_cannot_be_closed(self):
        await self.call("process/start", start_params("p", ["/bin/cat"], tty=True))
        reply = await self.call("process/closeStdin", {"processId": "p"})
        self.assertEqual(reply["error"], {"code": -32600, "message": (
            "process p runs under a terminal: its stdin cannot be closed; "
            "write the terminal's end-of-file character (Ctrl-D) instead")})
        await self.call("process/terminate", {"processId": "p"})

    async def test_params(self):
        send(self.connection, {"id": 1, "method": "process/closeStdin", "params": {}})
        reply = await self.transport.reply(1)
        self.assertEqual(reply["error"], {"code": -32602, "message": "missing field `processId`"})

    async def test_a_queued_write_is_let_go_when_the_child_is_terminated(self):
        writer = await self._queue_for_a_child_that_never_reads()
        await self.call("process/closeStdin", {"processId": "p"})
        self.assertTrue(writer.dataBuffer or writer._tempDataBuffer)
        await self.call("process/terminate", {"processId": "p"})
        await self.transport.closed_event("p")
        self.assert_let_go(writer)

    async def test_a_queued_write_is_let_go_when_the_child_exits(self):
        writer = await self._queue_for_a_child_that_never_reads()
        await self.call("process/signal", {"processId": "p", "signal": "interrupt"})
        await self.transport.closed_event("p")
        self.assert_let_go(writer)

    async def _queue_for_a_child_that_never_reads(self):
        # More than a pipe holds: the rest stays queued in the server.
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"], pipeStdin=True))
        await self.write("p", os.urandom(1024 * 1024), "w")
        writer = self.server.registry.sessions[self.session_id].processes["p"].child.stdin
        self.assertTrue(writer.dataBuffer or writer._tempDataBuffer)
        return writer

    def assert_let_go(self, writer):
        from twisted.internet import reactor

        self.assertEqual((writer.dataBuffer, writer._tempDataBuffer, writer.fd), (b"", [], -1))
        self.assertNotIn(writer, reactor.getWriters())


class SignalTests(ProcessTestCase):
    async def test_terminate_kills_the_group(self):
        await self.call("process/start", start_params(
            "p", ["/bin/sh", "-c", "sleep 100 & echo $!; wait"]))
        await self.transport.wait_for(lambda m: self.transport.output("p").endswith(b"\n"))
        grandchild = int(self.transport.output("p"))
        reply = await self.call("process/terminate", {"processId": "p"})
        self.assertEqual(reply["result"], {"running": True})
        await self.transport.closed_event("p")
        self.assertEqual(self.exit_code("p"), 128 + signal.SIGKILL)
        await process_gone(grandchild)
        reply = await self.call("process/terminate", {"processId": "p"})
        self.assertEqual(reply["result"], {"running": False})

    async def test_interrupt(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"]))
        reply = await self.call("process/signal", {"processId": "p", "signal": "interrupt"})
        self.assertEqual(reply["result"], {})
        await self.transport.closed_event("p")
        self.assertEqual(self.exit_code("p"), 128 + signal.SIGINT)

    async def test_signal_for_unknown_process_is_not_an_error(self):
        reply = await self.call("process/signal", {"processId": "nope", "signal": "interrupt"})
        self.assertEqual(reply["result"], {})


class PtyTests(ProcessTestCase):
    async def test_pty_output_and_size(self):
        await self.run_process("p", ["/bin/sh", "-c", "stty size; tty"], tty=True)
        self.assertEqual({m["params"]["stream"] for m in self.transport.events("p")
                          if m["method"] == "process/output"}, {"pty"})
        size, name = self.transport.output("p").decode().split("\r\n")[:2]
        self.assertEqual(size, "24 80")
        self.assertTrue(name.startswith("/dev/pts/"), name)

    async def test_ctrl_c_through_the_terminal_interrupts(self):
        await self.call("process/start", start_params(
            "p", ["/bin/sh", "-c", "echo ready; exec sleep 100"], tty=True))
        await self.transport.wait_for(lambda m: b"ready" in self.transport.output("p"))
        await self.call("process/write", {"processId": "p", "chunk": b64(b"\x03"), "writeId": "c"})
        await self.transport.closed_event("p")
        self.assertEqual(self.exit_code("p"), 128 + signal.SIGINT)

    async def test_stdin_through_the_terminal(self):
        await self.call("process/start", start_params(
            "p", ["/bin/sh", "-c", "read line; echo got:$line"], tty=True))
        await self.call("process/write", {"processId": "p", "chunk": b64(b"hello\n"), "writeId": "w"})
        await self.transport.closed_event("p")
        self.assertIn(b"got:hello", self.transport.output("p"))


class ReadTests(ProcessTestCase):
    async def test_read_replays_the_log(self):
        await self.run_process("p", ["/bin/sh", "-c", "printf a; sleep 0.05; printf b"])
        reply = await self.call("process/read", {"processId": "p"})
        result = reply["result"]
        data = b"".join(base64.b64decode(c["chunk"]) for c in result["chunks"])
        self.assertEqual(data, b"ab")
        last_seq = self.transport.events("p")[-1]["params"]["seq"]
        self.assertEqual(result["nextSeq"], last_seq + 1)
        self.assertEqual((result["exited"], result["exitCode"], result["closed"]), (True, 0, True))

    async def test_max_bytes_always_returns_the_first_chunk(self):
        await self.run_process("p", ["/bin/echo", "0123456789"])
        reply = await self.call("process/read", {"processId": "p", "maxBytes": 1})
        (chunk,) = reply["result"]["chunks"]
        self.assertEqual(base64.b64decode(chunk["chunk"]), b"0123456789\n")
        self.assertEqual(reply["result"]["nextSeq"], chunk["seq"] + 1)

    async def test_long_poll_wakes_on_output(self):
        await self.call("process/start", start_params("p", ["/bin/sh", "-c", "sleep 0.1; printf x"]))
        read = self.call("process/read", {"processId": "p", "afterSeq": 0, "waitMs": 60000})
        self.assertFalse(read.called)
        reply = await read
        self.assertEqual(base64.b64decode(reply["result"]["chunks"][0]["chunk"]), b"x")

    async def test_long_poll_times_out_with_an_empty_snapshot(self):
        await self.call("process/start", start_params("p", ["/bin/sleep", "100"]))
        read = self.call("process/read", {"processId": "p", "waitMs": 1500})
        self.clock.advance(1.5)
        reply = await read
        self.assertEqual(reply["result"], {
            "chunks": [], "nextSeq": 1, "exited": False, "exitCode": None,
            "closed": False, "failure": None, "sandboxDenied": False})

    async def test_unknown_process(self):
        reply = await self.call("process/read", {"processId": "nope"})
        self.assertEqual(reply["error"], {"code": -32600, "message": "unknown process id nope"})


def _reachable_bytes(root) -> int:
    """
    The size of every bytes object that C{root} keeps alive through its
    attributes and containers.
    """
    total = 0
    seen = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes):
            total += len(obj)
        elif isinstance(obj, (dict, list, tuple, set, collections.deque)) or obj is root:
            stack.extend(gc.get_referents(obj))
    return total


class OutputLogTests(unittest.SynchronousTestCase):
    def test_replay_window_is_bounded_by_bytes(self):
        log = OutputLog()
        for _ in range(40):
            log.record_output("stdout", b"x" * 65536)
        chunks = log.chunks_after(0, None)
        self.assertLessEqual(sum(len(c[2]) for c in chunks), MAX_RETAINED_BYTES)
        self.assertEqual(chunks[-1][0], 40)
        self.assertEqual(chunks[0][0], 40 - len(chunks) + 1)

    def test_replay_window_is_bounded_by_chunks(self):
        log = OutputLog()
        for _ in range(MAX_RETAINED_CHUNKS + 10):
            log.record_output("stdout", b"x")
        chunks = log.chunks_after(0, None)
        self.assertEqual(len(chunks), MAX_RETAINED_CHUNKS)
        self.assertEqual(chunks[0][0], 11)

    def test_memory_is_bounded_by_the_window(self):
        """
        Streaming hundreds of MiB through a process keeps no more output
        alive than its replay window.
        """
        log = OutputLog()
        chunk = 64 * 1024
        for n in range(1, 6401):
            log.record_output("stdout", b"x" * chunk)
            if n % 100 == 0:
                self.assertLessEqual(_reachable_bytes(log), MAX_RETAINED_BYTES, n)
        self.assertEqual(_reachable_bytes(log), MAX_RETAINED_BYTES)

    def test_exit_and_close_take_sequence_numbers(self):
        log = OutputLog()
        self.assertEqual(log.record_exit(0), 1)
        self.assertEqual(log.record_output("stdout", b"late"), 2)
        self.assertEqual(log.record_close(), 3)
        self.assertEqual(log.next_seq, 4)
        self.assertEqual([c[0] for c in log.chunks_after(0, None)], [2])

    def test_max_bytes_stops_before_overflowing(self):
        log = OutputLog()
        for size in (3, 3, 3):
            log.record_output("stdout", b"x" * size)
        self.assertEqual([c[0] for c in log.chunks_after(0, 7)], [1, 2])
        self.assertEqual([c[0] for c in log.chunks_after(0, 6)], [1, 2])
        self.assertEqual([c[0] for c in log.chunks_after(1, 2)], [2])


class WriteIdTests(unittest.SynchronousTestCase):
    def test_oldest_ids_are_forgotten(self):
        ids = WriteIds()
        for n in range(4097):
            ids.add(str(n))
        self.assertNotIn("0", ids)
        self.assertIn("1", ids)
        self.assertIn("4096", ids)


class ReferenceBehaviourTests(ProcessTestCase):
    """
    Behaviour probed on the reference binary (docs/reference/process.md).
    """

    async def test_write_after_terminate_fails_but_after_exit_is_accepted(self):
        await self.call("process/start", start_params("killed", ["/bin/cat"], pipeStdin=True))
        await self.call("process/write", {"processId": "killed", "chunk": "", "writeId": "before"})
        await self.call("process/terminate", {"processId": "killed"})
        reply = await self.call("process/write", {"processId": "killed", "chunk": "", "writeId": "after"})
        self.assertEqual(reply["error"], {"code": -32603, "message": "failed to write to process stdin"})
        reply = await self.call("process/write", {"processId": "killed", "chunk": "", "writeId": "before"})
        self.assertEqual(reply["result"], {"status": "accepted"})
        await self.run_process("exited", ["/bin/true"], pipeStdin=True)
        reply = await self.call("process/write", {"processId": "exited", "chunk": b64(b"x"), "writeId": "w"})
        self.assertEqual(reply["result"], {"status": "accepted"})

    async def test_terminate_ends_a_background_job_holding_the_output(self):
        await self.call("process/start", start_params("p", ["/bin/sh", "-c", "sleep 100 & echo $!"]))
        exited = await self.transport.wait_for(lambda m: m.get("method") == "process/exited")
        grandchild = int(self.transport.output("p"))
        self.assertEqual(exited["params"]["exitCode"], 0)
        reply = await self.call("process/terminate", {"processId": "p"})
        self.assertEqual(reply["result"], {"running": False})
        await self.transport.closed_event("p")
        await process_gone(grandchild)

    async def test_a_terminal_closes_with_its_session_leader(self):
        await self.run_process("p", ["/bin/sh", "-c", "sleep 100 & echo started"], tty=True)
        self.assertIn(b"started", self.transport.output("p"))

    async def test_a_terminal_child_knows_its_shell(self):
        await self.run_process("p", ["/usr/bin/env"], env={}, tty=True)
        self.assertTrue(self.transport.output("p").startswith(b"SHELL=/"))

    async def test_empty_program(self):
        for tty, kind in ((False, "pipe"), (True, "PTY")):
            reply = await self.call("process/start", start_params("p", [""], tty=tty))
            self.assertEqual(reply["error"], {
                "code": -32603, "message": f"missing program for {kind} spawn"})

    async def test_nul_bytes(self):
        reply = await self.call("process/start", start_params("p", ["/bin/echo", "a\0b"]))
        self.assertEqual(reply["error"], {"code": -32603, "message": "nul byte found in provided data"})
        reply = await self.call("process/start", start_params("p", ["/bin/true"], env={"A": "a\0b"}))
        self.assertEqual(reply["error"], {"code": -32603, "message": "data provided contains a nul byte"})

    async def test_a_directory_is_not_a_program(self):
        reply = await self.call("process/start", start_params("p", ["/tmp"]))
        self.assertEqual(reply["error"], {"code": -32603, "message": "Permission denied (os error 13)"})

    async def test_bare_names_without_path_use_the_libc_default(self):
        await self.run_process("p", ["true"], env={})
        self.assertEqual(self.exit_code("p"), 0)
        # /usr/sbin is not on musl's default path, whatever our own PATH says.
        reply = await self.call("process/start", start_params("q", ["ldconfig"], env={}))
        self.assertEqual(reply["error"], {
            "code": -32603, "message": "No such file or directory (os error 2)"})


class PtyOutputTests(ProcessTestCase):
    async def test_output_written_just_before_exit_is_never_lost(self):
        # The kernel hands what a child wrote to our side of its terminal in
        # the background; the last of it may still be on its way at exit.
        script = "i=0; while [ $i -lt 50 ]; do echo line$i; i=$((i+1)); done"
        expected = b"".join(b"line%d\r\n" % i for i in range(50))
        closed = []
        for n in range(100):
            send(self.connection, {"id": n, "method": "process/start",
                                   "params": start_params(f"t{n}", ["/bin/sh", "-c", script], tty=True)})
            closed.append(self.transport.closed_event(f"t{n}"))
        for waiter in closed:
            await waiter
        for n in range(100):
            self.assertEqual(self.transport.output(f"t{n}"), expected, n)
