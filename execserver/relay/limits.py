"""
Limits of the relay layer, with the values of codex exec-server 0.169.0.
"""

#: A data record may arrive at most this many sequence numbers ahead of the
#: next expected one (one more resets the stream).
MAX_REORDER_DISTANCE = 64

#: Ciphertext bytes a stream may hold while it waits for a missing record.
MAX_REORDER_BYTES = 1024 * 1024

#: Sequence numbers are u32 and never wrap: a stream ends before reusing one.
MAX_SEQ = 2**32 - 1

#: Largest WebSocket message (and frame) a relay socket accepts; one relay
#: frame is one message.
MAX_WEBSOCKET_MESSAGE_BYTES = 256 * 1024

#: Every relay socket sends a WebSocket Ping this often...
PING_INTERVAL_SECONDS = 30.0

#: ...and gives up on a peer whose Pong has not come this long after a Ping
#: (later Pings do not extend the deadline).
PONG_TIMEOUT_SECONDS = 60.0

#: Decoded messages a paused stream holds for its consumer when it shares
#: its socket with other streams (the socket keeps reading for them); one
#: more resets the stream.
MAX_QUEUED_MESSAGES = 128

#: Plaintext bytes a stream queues for sending before it pauses the protocol
#: that writes to it (the socket or the peer is slower than the writer).
STREAM_SEND_HIGH_WATER = 1024 * 1024
