"""
What a rendezvous remembers between requests: each environment's current
executor registration, and the connect bundles (grants) handed to
harnesses. Behind L{IRendezvousStore}, whose methods return Deferreds so
that a shared store (Redis) can replace L{MemoryStore} without touching
the registry or the sockets.

Secrets in here (socket tickets, harness authorizations) are random and
compared in constant time; they never appear in a C{repr} or a log.

  - A registration's ticket opens its executor's socket for as long as the
    registration is current (codex reconnects to the same URL after a drop
    and registers again only when the URL is refused).
  - A grant's ticket opens one harness socket, once; its authorization is
    valid once, for the harness key it was granted to, on the registration
    it was granted for. Both expire after L{GRANT_SECONDS}.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Mapping

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from execserver.noise.keys import NoisePublicKey
from execserver.rendezvous.limits import GRANT_SECONDS, MAX_GRANTS_PER_ENVIRONMENT, SECRET_BYTES


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True, repr=False)
class Registration:
    """An executor's registration: its key, and the ticket of its socket URL."""

    environment_id: str
    registration_id: str
    executor_key: NoisePublicKey
    ticket: str

    def __repr__(self) -> str:
        return (f"Registration(environment_id={self.environment_id!r}, "
                f"registration_id={self.registration_id!r}, ticket=<redacted>)")


@dataclass(frozen=True, repr=False)
class Grant:
    """A connect bundle given to one harness key."""

    registration: Registration
    harness_key: NoisePublicKey
    authorization: str
    ticket: str
    expires_at: float

    def __repr__(self) -> str:
        return (f"Grant(environment_id={self.registration.environment_id!r}, "
                "authorization=<redacted>, ticket=<redacted>)")


class GrantsExhausted(Exception):
    """Too many unused connect bundles for one environment."""


class IRendezvousStore(Interface):
    """
    Registrations and grants. Every method returns a Deferred.
    """

    def register(environment_id: str, executor_key: NoisePublicKey) -> Deferred:
        """
        Record a new registration, replacing the environment's previous one
        (whose socket ticket stops working). Fires with the L{Registration}.
        """

    def registration(environment_id: str) -> Deferred:
        """Fires with the current L{Registration}, or C{None}."""

    def executor_ticket(environment_id: str, ticket: str) -> Deferred:
        """
        Fires with the current L{Registration} if C{ticket} is its socket
        ticket, else C{None}.
        """

    def grant(environment_id: str, harness_key: NoisePublicKey) -> Deferred:
        """
        Issue a connect bundle for the current registration. Fires with the
        L{Grant}, or C{None} when the environment has no registration;
        fails with L{GrantsExhausted}.
        """

    def harness_ticket(environment_id: str, ticket: str) -> Deferred:
        """
        Use a grant's socket ticket (once). Fires with the L{Grant}, or
        C{None} if the ticket is unknown, used, expired or for a
        registration that is no longer current.
        """

    def validate(environment_id: str, registration_id: str, harness_key: NoisePublicKey,
                 authorization: str) -> Deferred:
        """
        Use a harness authorization (once). Fires with whether it was
        granted to this harness key on this current registration and has
        not expired.
        """


@dataclass
class _Environment:
    registration: Registration | None = None
    #: Unexpired grants by ticket, oldest first.
    grants: dict[str, Grant] = field(default_factory=dict)
    #: Grants whose ticket was used, by authorization, until validated.
    claimed: dict[str, Grant] = field(default_factory=dict)


@implementer(IRendezvousStore)
class MemoryStore:
    """
    The store of a single rendezvous process.
    """

    def __init__(self, clock: IReactorTime, grant_seconds: float = GRANT_SECONDS) -> None:
        self.clock = clock
        self.grant_seconds = grant_seconds
        self._environments: dict[str, _Environment] = {}

    def _environment(self, environment_id: str) -> _Environment:
        environment = self._environments.get(environment_id)
        if environment is None:
            environment = self._environments[environment_id] = _Environment()
        return environment

    def _expire(self, environment: _Environment) -> None:
        now = self.clock.seconds()
        for table in (environment.grants, environment.claimed):
            for key in [key for key, grant in table.items() if grant.expires_at <= now]:
                del table[key]

    def _current(self, environment: _Environment, grant: Grant) -> bool:
        return (grant.expires_at > self.clock.seconds()
                and environment.registration is grant.registration)

    def register(self, environment_id: str, executor_key: NoisePublicKey) -> Deferred:
        environment = self._environment(environment_id)
        environment.registration = Registration(
            environment_id, "reg-" + secrets.token_hex(16), executor_key, new_secret())
        environment.grants.clear()
        environment.claimed.clear()
        return succeed(environment.registration)

    def registration(self, environment_id: str) -> Deferred:
        environment = self._environments.get(environment_id)
        return succeed(environment.registration if environment else None)

    def executor_ticket(self, environment_id: str, ticket: str) -> Deferred:
        environment = self._environments.get(environment_id)
        registration = environment.registration if environment else None
        if registration is None or not same_secret(ticket, registration.ticket):
            return succeed(None)
        return succeed(registration)

    def grant(self, environment_id: str, harness_key: NoisePublicKey) -> Deferred:
        environment = self._environments.get(environment_id)
        if environment is None or environment.registration is None:
            return succeed(None)
        self._expire(environment)
        if len(environment.grants) + len(environment.claimed) >= MAX_GRANTS_PER_ENVIRONMENT:
            return fail(GrantsExhausted(environment_id))
        grant = Grant(environment.registration, harness_key, new_secret(), new_secret(),
                      self.clock.seconds() + self.grant_seconds)
        environment.grants[grant.ticket] = grant
        return succeed(grant)

    def harness_ticket(self, environment_id: str, ticket: str) -> Deferred:
        environment = self._environments.get(environment_id)
        if environment is None:
            return succeed(None)
        # Tickets are looked up by value: a dict lookup, whose timing tells
        # nothing useful about a 256-bit random key.
        grant = environment.grants.pop(ticket, None)
        if grant is None or not self._current(environment, grant):
            return succeed(None)
        environment.claimed[grant.authorization] = grant
        return succeed(grant)

    def validate(self, environment_id: str, registration_id: str, harness_key: NoisePublicKey,
                 authorization: str) -> Deferred:
        environment = self._environments.get(environment_id)
        if environment is None:
            return succeed(False)
        grant = environment.claimed.pop(authorization, None)
        return succeed(
            grant is not None
            and self._current(environment, grant)
            and same_secret(registration_id, grant.registration.registration_id)
            and grant.harness_key == harness_key
        )


class BearerTokens:
    """
    Who may use an environment: one bearer token per environment id, for
    its executor (register, validate) and its harnesses (connect) alike.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = dict(tokens)

    def allows(self, environment_id: str, token: str) -> bool:
        expected = self._tokens.get(environment_id)
        return expected is not None and same_secret(token, expected)

    def __repr__(self) -> str:
        return f"BearerTokens(environments={sorted(self._tokens)!r}, tokens=<redacted>)"
