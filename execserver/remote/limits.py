"""
Limits of the executor side of remote mode, with the values of codex
exec-server 0.169.0 (live-findings Part 1, relay-noise spec §3.2, §8.4).
"""

#: Streams one executor socket serves at once; a handshake beyond them is
#: reset.
MAX_ACTIVE_STREAMS = 128

#: Handshakes waiting for the registry's C{validate} at once; one more is
#: reset.
MAX_PENDING_VALIDATIONS = 32

#: Seconds the registry has to answer C{validate}; then the handshake is
#: reset (other streams never wait for it).
VALIDATION_TIMEOUT_SECONDS = 10.0

#: Failed handshakes after which handshakes are refused for a while...
MAX_HANDSHAKE_FAILURES = 8

#: ...this many seconds, during which open streams keep working and the
#: handshakes refused do not extend the pause.
HANDSHAKE_PAUSE_SECONDS = 10.0

#: Reconnection backoff: the first wait, doubled after each failure up to
#: the last; each wait is multiplied by a random factor of at least
#: L{BACKOFF_JITTER_MIN} (codex waited 0.79, 1.41, 3.49, 4.34, 12.55 and
#: 15.29 s).
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
BACKOFF_JITTER_MIN = 0.5
