"""
The rendezvous's state without sockets: the store's registrations, tickets
and authorizations (single use, expiring, bound to a key and a
registration), and the router's streams, resets and back-pressure, driven
through recording peers (the router's whole view of a socket).
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest
from zope.interface import implementer

from execserver.noise.keys import NoiseIdentity
from execserver.relay import frames
from execserver.rendezvous.limits import (
    GRANT_SECONDS,
    MAX_GRANTS_PER_ENVIRONMENT,
    MAX_STREAMS_PER_HARNESS_SOCKET,
    SLOW_HARNESS_SECONDS,
)
from execserver.rendezvous.router import TO_EXECUTOR, TO_HARNESS, IRelayPeer, Router
from execserver.rendezvous.store import BearerTokens, GrantsExhausted, MemoryStore

EXECUTOR_KEY = NoiseIdentity.generate().public_key
HARNESS_KEY = NoiseIdentity.generate().public_key
OTHER_KEY = NoiseIdentity.generate().public_key


class StoreTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemoryStore(self.clock)
        self.registration = self.successResultOf(self.store.register("env-1", EXECUTOR_KEY))

    def grant(self):
        return self.successResultOf(self.store.grant("env-1", HARNESS_KEY))

    def validate(self, grant, key=HARNESS_KEY, registration_id=None):
        return self.successResultOf(self.store.validate(
            "env-1", registration_id or grant.registration.registration_id, key, grant.authorization))

    def test_the_executor_ticket_opens_its_socket_until_it_registers_again(self):
        ticket = self.registration.ticket
        self.assertIs(self.successResultOf(self.store.executor_ticket("env-1", ticket)),
                      self.registration)
        self.successResultOf(self.store.register("env-1", EXECUTOR_KEY))
        self.assertIsNone(self.successResultOf(self.store.executor_ticket("env-1", ticket)))

    def test_a_wrong_ticket_opens_nothing(self):
        self.assertIsNone(self.successResultOf(self.store.executor_ticket("env-1", "guess")))
        self.assertIsNone(self.successResultOf(
            self.store.executor_ticket("env-2", self.registration.ticket)))

    def test_registrations_get_fresh_ids_and_tickets(self):
        again = self.successResultOf(self.store.register("env-1", EXECUTOR_KEY))
        self.assertNotEqual(again.registration_id, self.registration.registration_id)
        self.assertNotEqual(again.ticket, self.registration.ticket)

    def test_no_grant_without_a_registration(self):
        self.assertIsNone(self.successResultOf(self.store.grant("env-2", HARNESS_KEY)))

    def test_a_harness_ticket_works_once(self):
        grant = self.grant()
        self.assertIs(self.successResultOf(self.store.harness_ticket("env-1", grant.ticket)), grant)
        self.assertIsNone(self.successResultOf(self.store.harness_ticket("env-1", grant.ticket)))

    def test_an_authorization_is_valid_once_after_its_ticket_was_used(self):
        grant = self.grant()
        self.assertFalse(self.validate(grant))
        grant = self.grant()
        self.successResultOf(self.store.harness_ticket("env-1", grant.ticket))
        self.assertTrue(self.validate(grant))
        self.assertFalse(self.validate(grant))

    def test_an_authorization_is_bound_to_its_harness_key_and_registration(self):
        for kwargs in ({"key": OTHER_KEY}, {"registration_id": "reg-other"}):
            grant = self.grant()
            self.successResultOf(self.store.harness_ticket("env-1", grant.ticket))
            self.assertFalse(self.validate(grant, **kwargs))

    def test_grants_expire(self):
        grant = self.grant()
        self.clock.advance(GRANT_SECONDS)
        self.assertIsNone(self.successResultOf(self.store.harness_ticket("env-1", grant.ticket)))
        grant = self.grant()
        self.successResultOf(self.store.harness_ticket("env-1", grant.ticket))
        self.clock.advance(GRANT_SECONDS)
        self.assertFalse(self.validate(grant))

    def test_registering_again_voids_the_grants(self):
        grant = self.grant()
        self.successResultOf(self.store.harness_ticket("env-1", grant.ticket))
        self.successResultOf(self.store.register("env-1", EXECUTOR_KEY))
        self.assertFalse(self.validate(grant))

    def test_unused_grants_are_bounded(self):
        for _ in range(MAX_GRANTS_PER_ENVIRONMENT):
            self.grant()
        self.failureResultOf(self.store.grant("env-1", HARNESS_KEY), GrantsExhausted)
        self.clock.advance(GRANT_SECONDS)
        self.grant()

    def test_secrets_stay_out_of_reprs(self):
        grant = self.grant()
        text = repr(grant) + repr(self.registration)
        for secret in (grant.ticket, grant.authorization, self.registration.ticket):
            self.assertNotIn(secret, text)


class TokenTests(unittest.TestCase):
    def test_each_environment_has_its_token(self):
        tokens = BearerTokens({"env-1": "one", "env-2": "two"})
        self.assertEqual(
            [tokens.allows("env-1", "one"), tokens.allows("env-1", "two"),
             tokens.allows("env-3", "one"), tokens.allows("env-1", "")],
            [True, False, False, False])
        self.assertNotIn("one", repr(tokens))


@implementer(IRelayPeer)
class Peer:
    """A socket as the router sees it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.paused: set = set()
        self.closed = False
        self.aborted = False

    def writeFrame(self, raw: bytes) -> None:
        self.sent.append(raw)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pauseReading(self, reason) -> None:
        self.paused.add(reason)

    def resumeReading(self, reason) -> None:
        self.paused.discard(reason)

    def frames(self):
        return [frames.parse_frame(raw) for raw in self.sent]


def reset(stream_id: str) -> bytes:
    return frames.encode_reset(stream_id)


class RouterTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.tapped = []
        self.router = Router(self.clock, lambda *args: self.tapped.append(args))
        self.executor = Peer()
        self.router.executor_connected("env", self.executor)
        self.harness = self.harness_socket()

    def harness_socket(self, environment_id: str = "env") -> Peer:
        peer = Peer()
        self.assertTrue(self.router.harness_connected(environment_id, peer))
        return peer

    def from_harness(self, peer: Peer, raw: bytes) -> None:
        self.router.from_harness(peer, frames.parse_frame(raw), raw)

    def from_executor(self, raw: bytes) -> None:
        self.router.from_executor(self.executor, frames.parse_frame(raw), raw)

    def test_frames_travel_unchanged_both_ways(self):
        up = frames.encode_handshake("s", b"hello") + b"\x58\x07"  # an unknown field 11
        down = frames.encode_data("s", 0, b"ciphertext")
        self.from_harness(self.harness, up)
        self.from_executor(down)
        self.assertEqual((self.executor.sent, self.harness.sent), ([up], [down]))

    def test_the_tap_sees_each_frame_with_its_direction(self):
        up, down = frames.encode_resume("s"), frames.encode_data("s", 0, b"c")
        self.from_harness(self.harness, up)
        self.from_executor(down)
        self.assertEqual([(d, e, raw) for d, e, _, raw in self.tapped],
                         [(TO_EXECUTOR, "env", up), (TO_HARNESS, "env", down)])

    def test_a_stream_belongs_to_the_socket_that_used_it_first(self):
        intruder = self.harness_socket()
        self.from_harness(self.harness, frames.encode_resume("s"))
        self.from_harness(intruder, frames.encode_data("s", 0, b"x"))
        self.from_executor(frames.encode_data("s", 0, b"y"))
        self.assertEqual(len(self.executor.sent), 1)
        self.assertEqual((len(self.harness.sent), intruder.sent), (1, []))

    def test_frames_of_unknown_streams_from_the_executor_are_dropped(self):
        self.from_executor(frames.encode_data("nobody", 0, b"y"))
        self.assertEqual(self.harness.sent, [])

    def test_a_harness_without_an_executor_gets_a_reset(self):
        lonely = self.harness_socket("env-2")
        self.from_harness(lonely, frames.encode_resume("s"))
        self.assertEqual(lonely.sent, [reset("s")])

    def test_a_harness_socket_that_closes_resets_its_streams_at_the_executor(self):
        self.from_harness(self.harness, frames.encode_resume("a"))
        self.from_harness(self.harness, frames.encode_resume("b"))
        self.router.harness_lost(self.harness)
        self.assertEqual(sorted(self.executor.sent[2:]), sorted([reset("a"), reset("b")]))

    def test_an_executor_that_goes_resets_every_stream_at_its_harness(self):
        self.from_harness(self.harness, frames.encode_resume("a"))
        self.router.executor_lost(self.executor)
        self.assertEqual(self.harness.sent, [reset("a")])
        self.assertFalse(self.router.has_executor("env"))

    def test_a_reset_from_either_side_ends_the_route(self):
        self.from_harness(self.harness, frames.encode_resume("a"))
        self.from_executor(reset("a"))
        self.from_executor(frames.encode_data("a", 0, b"late"))
        self.assertEqual(self.harness.sent, [reset("a")])
        self.from_harness(self.harness, frames.encode_resume("b"))
        self.from_harness(self.harness, reset("b"))
        self.router.harness_lost(self.harness)
        self.assertEqual(self.executor.sent, [frames.encode_resume("a"), frames.encode_resume("b"),
                                              reset("b")])

    def test_a_harness_socket_carries_a_bounded_number_of_streams(self):
        for n in range(MAX_STREAMS_PER_HARNESS_SOCKET):
            self.from_harness(self.harness, frames.encode_resume(f"s{n}"))
        self.from_harness(self.harness, frames.encode_resume("one-too-many"))
        self.assertEqual(len(self.executor.sent), MAX_STREAMS_PER_HARNESS_SOCKET)
        self.assertEqual(self.harness.sent, [reset("one-too-many")])

    def test_a_new_executor_socket_replaces_the_old_one(self):
        self.from_harness(self.harness, frames.encode_resume("a"))
        newer = Peer()
        self.router.executor_connected("env", newer)
        self.assertTrue(self.executor.closed)
        self.assertEqual(self.harness.sent, [reset("a")])
        self.from_harness(self.harness, frames.encode_resume("b"))
        self.assertEqual(newer.sent, [frames.encode_resume("b")])

    def test_when_executor_waits_for_one(self):
        self.successResultOf(self.router.when_executor("env"))
        waiting = self.router.when_executor("env-2")
        self.assertNoResult(waiting)
        self.router.executor_connected("env-2", Peer())
        self.successResultOf(waiting)

    # Back-pressure

    def test_a_harness_that_cannot_take_more_pauses_the_executor(self):
        self.router.harness_blocked(self.harness, True)
        self.assertEqual(self.executor.paused, {self.harness})
        self.router.harness_blocked(self.harness, False)
        self.assertEqual(self.executor.paused, set())

    def test_a_harness_blocked_for_30_seconds_is_dropped_and_the_executor_goes_on(self):
        self.router.harness_blocked(self.harness, True)
        self.clock.advance(SLOW_HARNESS_SECONDS - 1)
        self.assertFalse(self.harness.aborted)
        self.clock.advance(1)
        self.assertTrue(self.harness.aborted)
        self.assertEqual(self.executor.paused, set())

    def test_a_harness_that_leaves_while_blocked_no_longer_pauses_the_executor(self):
        self.router.harness_blocked(self.harness, True)
        self.router.harness_lost(self.harness)
        self.assertEqual((self.executor.paused, self.clock.getDelayedCalls()), (set(), []))

    def test_an_executor_that_cannot_take_more_pauses_its_harnesses(self):
        self.router.executor_blocked(self.executor, True)
        later = self.harness_socket()
        self.assertEqual((self.harness.paused, later.paused), ({self.executor}, {self.executor}))
        self.router.executor_blocked(self.executor, False)
        self.assertEqual((self.harness.paused, later.paused), (set(), set()))
