"""
Memory given back: the allocator settings, the periodic trim, and output
that does not wait for the cycle collector once nobody can read it.
"""

import gc

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

    def test_the_trimmer_trims_every_interval_while_running(self):
        clock = task.Clock()
        calls = []

        def trim():
            calls.append(clock.seconds())
            memory.trim()

        trimmer = memory.IdleTrimmer(clock, trim, interval=10)
        trimmer.startService()
        clock.advance(10)
        clock.advance(10)
        trimmer.stopService()
        clock.advance(10)
        self.assertEqual(calls, [10, 20])


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
        log.clear()
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
