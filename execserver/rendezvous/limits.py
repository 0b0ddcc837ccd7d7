"""
Limits of the rendezvous. codex fixes none of them (its rendezvous is a
hosted service); these bound what one client can make us hold.
"""

#: Seconds a harness's connect bundle stays usable: its URL ticket must be
#: used to open the socket, and its authorization validated, within it.
GRANT_SECONDS = 60.0

#: Unused connect bundles one environment may have outstanding; more
#: connects are refused until some are used or expire.
MAX_GRANTS_PER_ENVIRONMENT = 256

#: Streams one harness socket may carry (codex opens one per socket).
MAX_STREAMS_PER_HARNESS_SOCKET = 8

#: Harness sockets one environment may have open (the executor serves 128
#: streams at once).
MAX_HARNESS_SOCKETS_PER_ENVIRONMENT = 256

#: Seconds a harness may hold its executor's socket paused because it
#: does not read what the executor sends; then it is disconnected, so that
#: the other harnesses of the environment go on (codex's executor gives up
#: on a socket it cannot write to for 60 s).
SLOW_HARNESS_SECONDS = 30.0

#: Largest registry request body.
MAX_REQUEST_BODY_BYTES = 64 * 1024

#: Bytes of randomness in registration ids, tickets and authorizations.
SECRET_BYTES = 32

# Several nodes on a shared (Redis) store; see docs/rendezvous-cluster.md.

#: Seconds a node's presence lives in the store unless refreshed: how long
#: a dead node is still named to harnesses.
NODE_SECONDS = 15.0

#: Seconds between a node's refreshes of its presence, of the homes of the
#: executors connected to it, and of their registrations.
HEARTBEAT_SECONDS = 5.0

#: Seconds an executor's home (the node holding its socket) lives unless
#: that node refreshes it.
HOME_SECONDS = 15.0

#: Seconds a registration lives unless the node holding its executor's
#: socket refreshes it: an executor that registered and never connected,
#: or whose node died and that does not come back, is forgotten then (its
#: URL is refused, and it registers again).
REGISTRATION_SECONDS = 120.0

#: Seconds a node-to-node forward ticket may wait to be used.
FORWARD_TICKET_SECONDS = 10.0

#: Seconds a store command may take before the call fails.
STORE_REPLY_SECONDS = 5.0
