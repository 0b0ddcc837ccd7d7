"""
Children on the reactor stay correct when the reactor misleads them: an
event meant for an earlier holder of a descriptor number (the number was
freed and taken again within one poll batch) must neither end a stream nor
lose or invent an exit, and stopping the server must finish even when a
child's exit is never observed. A busy writer's output is read in bounded
chunks from a pipe grown for it. A child that cannot become its program
reports why, whichever way it was started.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys

import pybase64
from twisted.internet import main, reactor, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial import unittest

from execserver import memory
from execserver.session import SHUTDOWN_REAP_SECONDS
from execserver.spawn import BUSY_PIPE_BYTES, READ_SIZE, Child, ChildSpec
from tests import support


class Recorder:
    """
    A ChildHandler that keeps what it is told.
    """

    def __init__(self) -> None:
        self.output: list[tuple[str, bytes]] = []
        self.ended: list[str] = []
        self.exits: list[int] = []
        self.exited = Deferred()
        self.all_ended = Deferred()

    def childOutput(self, stream: str, data: bytes) -> None:
        self.output.append((stream, data))

    def childStreamEnded(self, stream: str) -> None:
        self.ended.append(stream)
        if len(self.ended) == 2:
            self.all_ended.callback(None)

    def childExited(self, exit_code: int) -> None:
        self.exits.append(exit_code)
        self.exited.callback(exit_code)


def start_child(testcase, argv: list[str], tty: bool = False) -> tuple[Child, Recorder]:
    """
    A child reading its stdin (a pipe, or a terminal), killed at the end of
    the test.
    """
    handler = Recorder()
    spec = ChildSpec(executable=argv[0], argv=argv, cwd="/", env={"PATH": "/usr/bin:/bin"},
                     tty=tty, pipe_stdin=True)
    child = Child(reactor, spec, handler)
    child.start()

    def cleanup():
        if not child.finished.called:
            child.kill()
            return child.finished
        return None

    testcase.addCleanup(cleanup)
    return child, handler


class StaleEventTests(unittest.TestCase):
    async def test_a_stale_read_event_does_not_invent_an_exit(self):
        child, handler = start_child(self, ["/bin/sh", "-c", "read x; exit 3"])
        child._watcher.doRead()
        self.assertEqual(handler.exits, [])
        child.write(b"go\n")
        self.assertEqual(await support.with_timeout(handler.exited), 3)

    async def test_an_exit_watcher_dropped_by_the_reactor_still_sees_the_exit(self):
        child, handler = start_child(self, ["/bin/sh", "-c", "read x; exit 4"])
        # What the reactor does with a hang-up event for the descriptor's
        # number: it forgets the descriptor and tells it the connection is lost.
        reactor.removeReader(child._watcher)
        child._watcher.connectionLost(Failure(main.CONNECTION_LOST))
        child.write(b"go\n")
        self.assertEqual(await support.with_timeout(handler.exited), 4)
        self.assertEqual(await support.with_timeout(child.finished), 4)

    async def test_a_stream_ends_only_once_its_descriptor_is_closed(self):
        child, handler = start_child(self, ["/bin/echo", "hi"])
        descriptors = {reader.stream: reader.fd for reader in child.readers}
        still_open = []

        def stream_ended(stream: str) -> None:
            try:
                os.fstat(descriptors[stream])
            except OSError:
                pass
            else:
                still_open.append(stream)
            Recorder.childStreamEnded(handler, stream)

        handler.childStreamEnded = stream_ended
        await support.with_timeout(handler.all_ended)
        self.assertEqual((sorted(handler.ended), still_open, child.readers),
                         (["stderr", "stdout"], [], []))
        self.assertEqual(handler.output, [("stdout", b"hi\n")])


class TerminalHangUpTests(unittest.TestCase):
    async def test_a_leader_that_closes_its_terminal_first_is_not_hung_up(self):
        """
        A terminal's session leader closes its terminal descriptors, then
        exits a little later (as every program does at exit, in a shorter
        window): its terminal must stay up until it has exited, or the
        hang-up kills it with SIGHUP.
        """
        child, handler = start_child(
            self, ["/bin/sh", "-c", "exec </dev/null >/dev/null 2>&1; exec sleep 1"], tty=True)
        self.assertEqual(await support.with_timeout(handler.exited), 0)


class SpuriousLossTests(unittest.TestCase):
    """
    The reactor drops a descriptor over a hang-up event that was meant for an
    earlier holder of its number: what the kernel says wins.
    """

    @staticmethod
    def drop(descriptor, reason) -> None:
        # What the reactor does with a hang-up event for the number.
        reactor.removeReader(descriptor)
        reactor.removeWriter(descriptor)
        descriptor.connectionLost(Failure(reason))

    async def test_a_terminal_is_not_hung_up(self):
        child, handler = start_child(self, ["/bin/cat"], tty=True)
        (master,) = child.readers
        self.drop(master, main.CONNECTION_DONE)
        child.write(b"x\n\x04")
        self.assertEqual(await support.with_timeout(handler.exited), 0)

    async def test_a_pipe_keeps_its_output(self):
        child, handler = start_child(self, ["/bin/sh", "-c", "read x; echo late; exit 3"])
        (stdout, _) = child.readers
        self.drop(stdout, main.CONNECTION_DONE)
        child.write(b"go\n")
        self.assertEqual(await support.with_timeout(handler.exited), 3)
        await support.with_timeout(handler.all_ended)
        self.assertEqual(handler.output, [("stdout", b"late\n")])

    async def test_stdin_stays_open(self):
        child, handler = start_child(self, ["/bin/sh", "-c", "read a; read b; echo $a$b"])
        child.write(b"1\n")
        self.drop(child.stdin, main.CONNECTION_LOST)
        child.write(b"2\n")
        self.assertEqual(await support.with_timeout(handler.exited), 0)
        await support.with_timeout(handler.all_ended)
        self.assertEqual(handler.output, [("stdout", b"12\n")])


class PipeSizes(Recorder):
    """
    Also notes the size of the stdout pipe each time output arrives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.child: Child | None = None
        self.sizes: set[int] = set()

    def childOutput(self, stream: str, data: bytes) -> None:
        super().childOutput(stream, data)
        stdout = self.child.readers[0]
        if stdout.fd >= 0:
            self.sizes.add(fcntl.fcntl(stdout.fd, fcntl.F_GETPIPE_SZ))


class BusyWriterTests(unittest.TestCase):
    async def run_child(self, script: str) -> tuple[PipeSizes, int]:
        """
        Run C{script} to its end; its handler and its stdout pipe's size at
        the start.
        """
        handler = PipeSizes()
        spec = ChildSpec(executable="/bin/sh", argv=["/bin/sh", "-c", script], cwd="/",
                         env={"PATH": "/usr/bin:/bin"}, tty=False, pipe_stdin=False)
        handler.child = child = Child(reactor, spec, handler)
        child.start()
        initial = fcntl.fcntl(child.readers[0].fd, fcntl.F_GETPIPE_SZ)
        await support.with_timeout(child.finished)
        return handler, initial

    async def test_a_busy_writer_gets_a_larger_pipe_and_bounded_chunks(self):
        total = 8 * 1024 * 1024
        handler, initial = await self.run_child(f"head -c {total} /dev/zero")
        self.assertLess(initial, BUSY_PIPE_BYTES)
        self.assertIn(BUSY_PIPE_BYTES, handler.sizes)
        self.assertEqual(sum(len(data) for _, data in handler.output), total)
        self.assertLessEqual(max(len(data) for _, data in handler.output), READ_SIZE)

    def test_a_full_chunk_in_base64_comes_from_the_heap(self):
        # glibc compares the request plus its 16-byte-aligned chunk header.
        encoded = pybase64.b64encode(bytes(READ_SIZE))
        self.assertLess(sys.getsizeof(encoded) + 16, memory.MMAP_THRESHOLD_BYTES)

    async def test_a_quiet_writer_keeps_the_default_pipe(self):
        handler, initial = await self.run_child("echo quiet")
        self.assertEqual(handler.output, [("stdout", b"quiet\n")])
        self.assertEqual(handler.sizes, {initial})


class StartFailureTests(unittest.TestCase):
    """
    What the child reports when it cannot become the program reaches the
    caller whole, whether the child was started with vfork (pipes) or fork
    (a terminal, or code to run before exec), and nothing is left behind.
    """

    def start(self, argv: list[str], tty: bool, before_exec=None) -> Child:
        spec = ChildSpec(executable=argv[0], argv=argv, cwd="/", env={}, tty=tty,
                         pipe_stdin=True, before_exec=before_exec)
        return Child(reactor, spec, Recorder())

    def test_a_program_that_cannot_be_run(self):
        for tty in (False, True):
            before = set(os.listdir("/proc/self/fd"))
            error = self.assertRaises(OSError, self.start(["/tmp"], tty).start)
            self.assertEqual(error.errno, errno.EACCES, tty)
            self.assertEqual(set(os.listdir("/proc/self/fd")), before, tty)

    def test_a_failure_before_exec(self):
        def fail():
            raise RuntimeError("no")

        error = self.assertRaises(subprocess.SubprocessError,
                                  self.start(["/bin/true"], False, fail).start)
        self.assertEqual(str(error), "Exception occurred in preexec_fn.")


class ShutdownTests(unittest.TestCase):
    async def test_shutdown_finishes_when_an_exit_is_never_seen(self):
        clock = task.Clock()
        server = support.build_exec_server(self, clock)
        connection, transport = support.attach(server)
        support.handshake(connection, transport)
        support.send(connection, {"id": 1, "method": "process/start",
                                  "params": support.start_params("p", ["/bin/sleep", "100"])})
        await transport.reply(1)
        (session,) = server.registry.sessions.values()
        child = session.processes["p"].child
        # The watcher is lost without a word: nothing will report the exit.
        reactor.removeReader(child._watcher)
        stopped = server.shutdown()
        await support.process_gone(child.pid)
        self.assertFalse(stopped.called)
        clock.advance(SHUTDOWN_REAP_SECONDS)
        self.assertTrue(stopped.called)
        self.assertEqual(child.exit_code, 128 + 9)
