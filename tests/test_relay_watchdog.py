"""
The relay sockets' liveness check, on a fake clock: a Ping every 30 s, and
a peer whose Pong is 60 s late is gone. Later Pings do not extend the
deadline; a Pong clears it.
"""

from twisted.internet import task
from twisted.trial import unittest

from execserver.relay.watchdog import PongWatchdog


class WatchdogTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.pings: list[float] = []
        self.timeouts: list[float] = []
        self.watchdog = PongWatchdog(
            self.clock,
            lambda: self.pings.append(self.clock.seconds()),
            lambda: self.timeouts.append(self.clock.seconds()),
        )
        self.watchdog.start()

    def test_the_first_ping_goes_out_after_30_seconds(self):
        self.clock.advance(29.9)
        self.assertEqual(self.pings, [])
        self.clock.advance(0.1)
        self.assertEqual(self.pings, [30.0])

    def test_pings_repeat_every_30_seconds_while_pongs_come(self):
        for _ in range(4):
            self.clock.advance(30)
            self.watchdog.pong_received()
        self.assertEqual((self.pings, self.timeouts), ([30.0, 60.0, 90.0, 120.0], []))

    def test_a_missing_pong_ends_the_socket_60_seconds_after_the_ping(self):
        self.clock.advance(30)
        self.clock.advance(59.9)
        self.assertEqual(self.timeouts, [])
        self.clock.advance(0.1)
        self.assertEqual(self.timeouts, [90.0])

    def test_later_pings_do_not_extend_the_deadline(self):
        self.clock.pump([30, 30, 30])
        self.assertEqual((self.pings, self.timeouts), ([30.0, 60.0], [90.0]))

    def test_a_pong_starts_a_fresh_deadline_at_the_next_ping(self):
        self.clock.pump([30, 30])
        self.watchdog.pong_received()
        self.clock.advance(30)  # the Ping at 90 s sets the deadline
        self.clock.pump([30, 29])
        self.assertEqual(self.timeouts, [])
        self.clock.advance(1)
        self.assertEqual(self.timeouts, [150.0])

    def test_it_times_out_once_and_stops(self):
        self.clock.pump([30, 60, 30, 30])
        self.assertEqual((self.timeouts, self.watchdog.running), ([90.0], False))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_its_timers(self):
        self.clock.advance(30)
        self.watchdog.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual((self.pings, self.timeouts), ([30.0], []))
