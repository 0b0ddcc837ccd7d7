"""
Memory given back: the allocator settings, the periodic trim, and output
that does not wait for the cycle collector once nobody can read it.
"""

import gc
import weakref

from twisted.internet import task
from twisted.trial import unittest

from execserver import memory, rpc
from execserver.process import OutputLog
from execserver.server import _diagnose
from tests.support import attach, build_exec_server, handshake, send, start_params


class AllocatorTests(unittest.SynchronousTestCase):
    def test_glibc_takes_the_settings(self):
        # The development and CI machines run glibc.
        self.assertTrue(memory.tune_allocator())


class FreezeTests(unittest.SynchronousTestCase):
    def test_startup_objects_leave_the_collector_and_garbage_goes_first(self):
        class Cycle:
            pass

        garbage = Cycle()
        garbage.me = garbage
        gone = weakref.ref(garbage)
        del garbage
        kept = Cycle()
        self.addCleanup(gc.unfreeze)
        memory.freeze_startup_heap()
        self.assertIsNone(gone())
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertNotIn(kept, gc.get_objects())


class IdleTrimmerTests(unittest.SynchronousTestCase):
    """
    Memory is given back once the server turns idle after some work.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.cpu = 0.0
        self.released = 0
        self.given_back = []
        self.trimmer = memory.IdleTrimmer(self.clock, lambda: self.given_back.append(
            self.clock.seconds()), lambda: self.cpu, interval=10,
            take_released=self.take_released)
        self.trimmer.startService()
        self.addCleanup(self.trimmer.stopService)

    def take_released(self) -> int:
        released, self.released = self.released, 0
        return released

    def interval(self, cpu_used: float, released: int = 0) -> None:
        self.cpu += cpu_used
        self.released += released
        self.clock.advance(10)

    def test_not_while_busy(self):
        self.interval(5.0)
        self.interval(memory.IDLE_CPU_FRACTION * 10)
        self.assertEqual(self.given_back, [])

    def test_once_idle_after_work(self):
        self.interval(5.0)
        self.interval(0.0)
        self.assertEqual(self.given_back, [20])

    def test_not_again_while_nothing_happens(self):
        self.interval(5.0)
        self.interval(0.0)
        self.interval(0.0)
        self.interval(0.001)
        self.assertEqual(self.given_back, [20])

    def test_little_work_adds_up(self):
        for _ in range(5):
            self.interval(memory.WORK_CPU_SECONDS / 4)
        self.assertEqual(self.given_back, [40])

    def test_once_idle_after_output_was_let_go_of(self):
        # Closed processes' output goes 80 s after they ended, at almost no
        # CPU cost, on a server that may have been idle all along.
        self.interval(5.0)
        self.interval(0.0)
        self.interval(0.0, released=memory.RELEASED_BYTES)
        self.assertEqual(self.given_back, [20, 30])

    def test_little_output_let_go_of_adds_up(self):
        for _ in range(3):
            self.interval(0.0, released=memory.RELEASED_BYTES // 2)
        self.assertEqual(self.given_back, [20])

    def test_stopping_stops_it(self):
        self.interval(5.0)
        self.trimmer.stopService()
        self.interval(0.0)
        self.assertEqual(self.given_back, [])

    def test_giving_back_frees_cycles_an_idle_server_would_keep(self):
        class Holder:
            pass

        holder = Holder()
        holder.itself, holder.data = holder, b"x" * 1_000_000
        freed = weakref.ref(holder)
        gc.disable()
        self.addCleanup(gc.enable)
        del holder
        self.assertIsNotNone(freed())
        memory.give_back()
        self.assertIsNone(freed())


class IdleReleaseTests(unittest.SynchronousTestCase):
    def test_what_is_kept_for_reuse_goes_when_memory_is_given_back(self):
        released = []
        memory.release_when_idle(lambda: released.append(True))
        self.addCleanup(memory._idle_releases.pop)
        memory.give_back()
        self.assertEqual(released, [True])


class CycleFreeTests(unittest.TestCase):
    """
    A server that is idle allocates nothing, so Python's cycle collector
    does not run: big data must be freed by reference counting alone.
    """

    def setUp(self):
        gc.disable()
        self.addCleanup(gc.enable)

    def test_a_cleared_log_lets_go_of_its_output(self):
        log = OutputLog()
        for _ in range(4):
            log.record_output("stdout", b"x" * 1024)
        memory.take_released()
        log.clear()
        self.assertEqual(memory.take_released(), 4 * 1024)
        self.assertEqual(log.chunks_after(0, None), [])
        self.assertEqual(log.retained(), [])
        self.assertEqual(log.record_output("stdout", b"y"), 5)

    async def test_a_process_evicted_from_its_session_lets_go_of_its_output(self):
        clock = task.Clock()
        server = build_exec_server(self, clock)
        connection, transport = attach(server)
        session_id = handshake(connection, transport)
        send(connection, {"id": 1, "method": "process/start",
                          "params": start_params("p", ["head", "-c", "100000", "/dev/zero"])})
        await transport.closed_event("p")
        process = server.registry.sessions[session_id].processes["p"]
        self.assertTrue(process.log.retained())
        clock.advance(80)
        self.assertNotIn("p", server.registry.sessions[session_id].processes)
        self.assertEqual(process.log.retained(), [])

    def test_a_diagnosis_in_the_pool_returns_its_text_instead_of_raising(self):
        message = '{"id": 1, "method": "x", "params": "' + "x" * 10000
        outcome = _diagnose(message)
        self.assertEqual(outcome, "EOF while parsing a string at line 1 column 10036")
        self.assertIsInstance(_diagnose('{"id": 1, "method": "x"}'), rpc.Request)
