"""
The connections' turns on the reactor thread (L{execserver.turns}).
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest

from execserver import turns


class _Taker:
    """A connection with C{messages} to serve, each taking C{cost} seconds."""

    def __init__(self, clock: task.Clock, messages: int, cost: float, served: list) -> None:
        self.clock, self.messages, self.cost, self.served = clock, messages, cost, served

    def serve_next(self) -> bool:
        # The message takes its time: within one iteration of the reactor,
        # its clock moves on without running what falls due.
        self.clock.rightNow += self.cost
        self.messages -= 1
        self.served.append(self)
        return self.messages > 0


class TurnTests(unittest.SynchronousTestCase):
    def served_in_first_turn(self, turn_seconds: float) -> int:
        clock = task.Clock()
        line = turns.Turns(clock, turn_seconds)
        served: list = []
        line.want(_Taker(clock, 100, 0.0001, served))
        first = len(served)
        # The next turn comes with the reactor's next iteration.
        clock.advance(0)
        self.assertGreater(len(served), first)
        return first

    def test_a_turn_ends_once_it_has_taken_its_time(self):
        self.assertEqual(self.served_in_first_turn(turns.SOCKETS_TURN_SECONDS), 3)
        self.assertEqual(self.served_in_first_turn(turns.TURN_SECONDS), 20)
