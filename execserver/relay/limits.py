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
