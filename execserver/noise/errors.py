"""
What the Noise layer raises. Messages are fixed texts: they never carry
keys, authorizations, plaintext or ciphertext.
"""


class NoiseError(Exception):
    """A Noise failure: the stream it happened on cannot continue."""


class NoiseUnavailable(NoiseError):
    """The installed C{cryptography} cannot do ML-KEM-768."""


class InvalidPublicKey(NoiseError, ValueError):
    """A public key object that is not exactly the suite's JSON form."""


class HandshakeFailed(NoiseError):
    """A handshake message was refused (wrong key, prologue, tampering...)."""


class DecryptFailed(NoiseError):
    """A transport record failed authentication (tampered, replayed, reordered)."""


class RecordError(NoiseError):
    """A record or framed message breaks the size rules of the channel."""
