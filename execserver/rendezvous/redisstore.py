"""
The rendezvous's state in Redis (or Valkey), shared by several nodes:
L{RedisStore} implements L{IRendezvousStore} with the same rules as
L{MemoryStore}, and L{IClusterStore}: node presence, executor homes and
node-to-node forward tickets. See docs/rendezvous-cluster.md.

Keys (C{P} is the prefix, C{execserver:rendezvous:} by default):

    P reg:ENV            registration: id, executor key, SHA-256 of its ticket
    P grants:ENV         sorted set: outstanding bundles (authorization digest, expiry)
    P grant:ENV:DIGEST   a bundle by the digest of its ticket, until used
    P claim:ENV:DIGEST   a used bundle by the digest of its authorization, until validated
    P home:ENV           the id of the node holding the executor's socket
    P node:ID            a live node: its URLs
    P forward:ENV:DIGEST a node-to-node forward ticket

Secrets (tickets, authorizations) are stored as SHA-256 digests only, so a
copy of the store opens nothing. Every rule that reads and writes (single
use, the limit on outstanding bundles, "current registration") is one Lua
script, atomic in Redis. Per-environment keys are built inside scripts, so
this is for a single Redis primary (with replicas or Sentinel), not Redis
Cluster.

The client is txredisapi, on Twisted's own reactor (the project runs the
default epoll reactor; redis-py's asyncio client would need the asyncio
reactor or a second event loop).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import txredisapi
from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface import Interface, implementer

from execserver.noise.keys import NoisePublicKey
from execserver.rendezvous.limits import (
    FORWARD_TICKET_SECONDS,
    GRANT_SECONDS,
    HOME_SECONDS,
    MAX_GRANTS_PER_ENVIRONMENT,
    NODE_SECONDS,
    REGISTRATION_SECONDS,
    STORE_REPLY_SECONDS,
)
from execserver.rendezvous.store import (
    Grant,
    GrantsExhausted,
    IRendezvousStore,
    Registration,
    new_secret,
)

DEFAULT_PREFIX = "execserver:rendezvous:"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _key_json(key: NoisePublicKey) -> str:
    return json.dumps(key.to_json_object(), sort_keys=True, separators=(",", ":"))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True)
class Node:
    """A live rendezvous node: C{url} for harnesses, C{peer_url} for nodes."""

    node_id: str
    url: str
    peer_url: str


class IClusterStore(Interface):
    """What nodes share beyond L{IRendezvousStore}. Every method returns a Deferred."""

    def heartbeat(node: Node, environment_ids: list[str]) -> Deferred:
        """
        Refresh C{node}'s presence and, for each environment whose home it
        still is, the home and the registration. Fires with the ids whose
        home is another node now.
        """

    def leave(node: Node, environment_ids: list[str]) -> Deferred:
        """Forget C{node}'s presence and the homes it holds."""

    def claim_home(environment_id: str, node_id: str) -> Deferred:
        """The executor's socket is open on C{node_id} (the newest wins)."""

    def release_home(environment_id: str, node_id: str) -> Deferred:
        """The executor's socket on C{node_id} is gone (if it still is the home)."""

    def home(environment_id: str) -> Deferred:
        """Fires with the live L{Node} holding the executor's socket, or C{None}."""

    def forward_ticket(environment_id: str) -> Deferred:
        """Fires with a new single-use ticket for a node-to-node forward."""

    def use_forward_ticket(environment_id: str, ticket: str) -> Deferred:
        """Fires with whether C{ticket} was a forward ticket (now used)."""


_REGISTER = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
"""

# KEYS: reg, grants, grant; ARGV: now, expires, limit, grant record, auth digest, ttl
_GRANT = """
local reg = redis.call('GET', KEYS[1])
if not reg then return false end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local grant = cjson.decode(ARGV[4])
grant['reg'] = cjson.decode(reg)['id']
redis.call('SET', KEYS[3], cjson.encode(grant), 'PX', ARGV[6])
return reg
"""

# KEYS: grant, reg; ARGV: claim key prefix
_HARNESS_TICKET = """
local grant = redis.call('GET', KEYS[1])
if not grant then return false end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
local reg = redis.call('GET', KEYS[2])
if not reg or ttl <= 0 then return false end
local g = cjson.decode(grant)
if g['reg'] ~= cjson.decode(reg)['id'] then return false end
redis.call('SET', ARGV[1] .. g['auth'], grant, 'PX', ttl)
return {reg, grant}
"""

# KEYS: claim, reg, grants; ARGV: registration id, harness key, auth digest
_VALIDATE = """
local claim = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[3])
local reg = redis.call('GET', KEYS[2])
if not claim or not reg then return 0 end
local c = cjson.decode(claim)
local id = cjson.decode(reg)['id']
if c['reg'] ~= id or id ~= ARGV[1] or c['key'] ~= ARGV[2] then return 0 end
return 1
"""

# KEYS: node; ARGV: node record, node ttl, home ttl, registration ttl, prefix, node id, envs...
_HEARTBEAT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local moved = {}
for i = 7, #ARGV do
  local home = ARGV[5] .. 'home:' .. ARGV[i]
  if redis.call('GET', home) == ARGV[6] then
    redis.call('PEXPIRE', home, ARGV[3])
    redis.call('PEXPIRE', ARGV[5] .. 'reg:' .. ARGV[i], ARGV[4])
  else
    table.insert(moved, ARGV[i])
  end
end
return moved
"""

# KEYS: home, reg; ARGV: node id, home ttl, registration ttl
_CLAIM = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
"""

# KEYS: home...; ARGV: node id
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
"""

# KEYS: home; ARGV: node key prefix
_HOME = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local node = redis.call('GET', ARGV[1] .. id)
if not node then return false end
return {id, node}
"""


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """C{redis://HOST[:PORT][/DB]} -> (host, port, db)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError("a store URL is redis://HOST[:PORT][/DB]")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("the database in a redis:// URL is a number")
    return parts.hostname, parts.port or 6379, int(path or 0)


@implementer(IRendezvousStore, IClusterStore)
class RedisStore:
    """
    Registrations, grants, homes and nodes in one Redis database.

    @param redis: a txredisapi connection (one connection: the commands of
        a node reach Redis in the order they were made).
    """

    def __init__(self, clock, redis, prefix: str = DEFAULT_PREFIX,
                 grant_seconds: float = GRANT_SECONDS) -> None:
        self.clock = clock
        self.redis = redis
        self.prefix = prefix
        self.grant_seconds = grant_seconds

    @classmethod
    def from_url(cls, clock, url: str, prefix: str = DEFAULT_PREFIX) -> "RedisStore":
        host, port, db = parse_redis_url(url)
        redis = txredisapi.lazyConnection(host, port, dbid=db, reconnect=True,
                                          charset=None, replyTimeout=STORE_REPLY_SECONDS,
                                          convertNumbers=False)
        return cls(clock, redis, prefix)

    def close(self) -> Deferred:
        return self.redis.disconnect()

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _eval(self, script: str, keys: list[str], args: list) -> Deferred:
        return self.redis.eval(script, keys, [str(a) if isinstance(a, (int, float)) else a
                                              for a in args])

    @staticmethod
    def _registration(environment_id: str, record: bytes, ticket: str = "") -> Registration:
        value = json.loads(record)
        return Registration(environment_id, value["id"],
                            NoisePublicKey.from_json_object(json.loads(value["key"])), ticket)

    # IRendezvousStore

    def register(self, environment_id: str, executor_key: NoisePublicKey) -> Deferred:
        return ensureDeferred(self._register(environment_id, executor_key))

    async def _register(self, environment_id: str, executor_key: NoisePublicKey) -> Registration:
        registration = Registration(environment_id, "reg-" + secrets.token_hex(16),
                                    executor_key, new_secret())
        record = json.dumps({"id": registration.registration_id,
                             "key": _key_json(executor_key),
                             "ticket": digest(registration.ticket)})
        await self._eval(_REGISTER, [self._key("reg", environment_id),
                                     self._key("grants", environment_id)],
                         [record, _ms(REGISTRATION_SECONDS)])
        return registration

    def registration(self, environment_id: str) -> Deferred:
        return ensureDeferred(self._current(environment_id))

    async def _current(self, environment_id: str) -> Registration | None:
        record = await self.redis.get(self._key("reg", environment_id))
        return None if record is None else self._registration(environment_id, record)

    def executor_ticket(self, environment_id: str, ticket: str) -> Deferred:
        return ensureDeferred(self._executor_ticket(environment_id, ticket))

    async def _executor_ticket(self, environment_id: str, ticket: str) -> Registration | None:
        record = await self.redis.get(self._key("reg", environment_id))
        if record is None or not hmac.compare_digest(json.loads(record)["ticket"], digest(ticket)):
            return None
        return self._registration(environment_id, record, ticket)

    def grant(self, environment_id: str, harness_key: NoisePublicKey) -> Deferred:
        return ensureDeferred(self._grant(environment_id, harness_key))

    async def _grant(self, environment_id: str, harness_key: NoisePublicKey) -> Grant | None:
        ticket, authorization = new_secret(), new_secret()
        now = self.clock.seconds()
        expires_at = now + self.grant_seconds
        answer = await self._eval(
            _GRANT,
            [self._key("reg", environment_id), self._key("grants", environment_id),
             self._key("grant", environment_id, digest(ticket))],
            [_ms(now), _ms(expires_at), MAX_GRANTS_PER_ENVIRONMENT,
             json.dumps({"key": _key_json(harness_key), "auth": digest(authorization)}),
             digest(authorization), _ms(self.grant_seconds)])
        if answer is None:
            return None
        if answer in (0, b"0"):
            raise GrantsExhausted(environment_id)
        return Grant(self._registration(environment_id, answer), harness_key, authorization,
                     ticket, expires_at)

    def harness_ticket(self, environment_id: str, ticket: str) -> Deferred:
        return ensureDeferred(self._harness_ticket(environment_id, ticket))

    async def _harness_ticket(self, environment_id: str, ticket: str) -> Grant | None:
        """The grant, without the secrets the store does not keep."""
        answer = await self._eval(
            _HARNESS_TICKET,
            [self._key("grant", environment_id, digest(ticket)), self._key("reg", environment_id)],
            [self._key("claim", environment_id, "")])
        if not answer:
            return None
        record, grant = answer
        key = NoisePublicKey.from_json_object(json.loads(json.loads(grant)["key"]))
        return Grant(self._registration(environment_id, record), key, "", ticket,
                     self.clock.seconds() + self.grant_seconds)

    def validate(self, environment_id: str, registration_id: str, harness_key: NoisePublicKey,
                 authorization: str) -> Deferred:
        d = self._eval(_VALIDATE,
                       [self._key("claim", environment_id, digest(authorization)),
                        self._key("reg", environment_id), self._key("grants", environment_id)],
                       [registration_id, _key_json(harness_key), digest(authorization)])
        return d.addCallback(lambda answer: answer in (1, b"1"))

    # IClusterStore

    def heartbeat(self, node: Node, environment_ids: list[str]) -> Deferred:
        record = json.dumps({"url": node.url, "peer": node.peer_url})
        d = self._eval(_HEARTBEAT, [self._key("node", node.node_id)],
                       [record, _ms(NODE_SECONDS), _ms(HOME_SECONDS), _ms(REGISTRATION_SECONDS),
                        self.prefix, node.node_id, *environment_ids])
        return d.addCallback(lambda moved: [m.decode("utf-8") for m in moved or ()])

    def leave(self, node: Node, environment_ids: list[str]) -> Deferred:
        d = self.redis.delete(self._key("node", node.node_id))
        if environment_ids:
            d.addCallback(lambda _: self._eval(
                _RELEASE, [self._key("home", e) for e in environment_ids], [node.node_id]))
        return d

    def claim_home(self, environment_id: str, node_id: str) -> Deferred:
        return self._eval(_CLAIM, [self._key("home", environment_id),
                                   self._key("reg", environment_id)],
                          [node_id, _ms(HOME_SECONDS), _ms(REGISTRATION_SECONDS)])

    def release_home(self, environment_id: str, node_id: str) -> Deferred:
        return self._eval(_RELEASE, [self._key("home", environment_id)], [node_id])

    def home(self, environment_id: str) -> Deferred:
        return ensureDeferred(self._home(environment_id))

    async def _home(self, environment_id: str) -> Node | None:
        answer = await self._eval(_HOME, [self._key("home", environment_id)],
                                  [self._key("node", "")])
        if not answer:
            return None
        node_id, record = answer
        value = json.loads(record)
        return Node(node_id.decode("utf-8"), value["url"], value["peer"])

    def forward_ticket(self, environment_id: str) -> Deferred:
        ticket = new_secret()
        d = self.redis.set(self._key("forward", environment_id, digest(ticket)), "1",
                           pexpire=_ms(FORWARD_TICKET_SECONDS))
        return d.addCallback(lambda _: ticket)

    def use_forward_ticket(self, environment_id: str, ticket: str) -> Deferred:
        d = self.redis.delete(self._key("forward", environment_id, digest(ticket)))
        return d.addCallback(lambda removed: int(removed) == 1)
