"""
The hybrid IK handshake, C{Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256},
in clatter 2.2.0's token order (codex exec-server 0.169.0 pins it):

    <- s                          (the executor's static keys are known)
    ...
    -> skem, e, es, s, ss         message 1: 3568 bytes + authorization
    <- ekem, skem, e, ee, se      message 2: 3424 bytes, empty payload

The harness is the initiator (L{Initiator}), the executor the responder
(L{Responder}). Each side's static key is an X25519 key and an ML-KEM-768
key; C{e} and C{s} send both. C{ekem}/C{skem} encapsulate to the peer's
ephemeral/static ML-KEM key: C{ekem} sends the ciphertext in clear and mixes
the secret with MixKey, C{skem} encrypts it and uses MixKeyAndHash.

The prologue binds the handshake to one relay stream of one registration
(L{prologue}); a different environment, registration or stream id makes
message 1 fail to decrypt. The executor asks its registry whether the
harness key and authorization recovered from message 1 are allowed before
it writes message 2, so L{Responder} is a two-step object.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from twisted.logger import Logger

from execserver.noise import keys
from execserver.noise.errors import DecryptFailed, HandshakeFailed
from execserver.noise.keys import NoiseIdentity, NoisePublicKey
from execserver.noise.limits import (
    MAX_AUTHORIZATION_LEN,
    MAX_NOISE_MESSAGE_LEN,
    MESSAGE1_OVERHEAD,
    MLKEM768_CIPHERTEXT_LEN,
    MLKEM768_PUBLIC_KEY_LEN,
    TAG_LEN,
    X25519_KEY_LEN,
)
from execserver.noise.symmetric import CipherState, SymmetricState, sha256

log = Logger()

#: The Noise protocol name hashed into the handshake ("25519", unlike the
#: suite tag's "X25519"). It is longer than a hash, so Noise starts from
#: its SHA-256.
PROTOCOL_NAME = b"Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256"

#: First part of every prologue.
PROLOGUE_DOMAIN = "codex-exec-server-relay-noise/v1"

MESSAGE1_TOKENS = ("skem", "e", "es", "s", "ss")
MESSAGE2_TOKENS = ("ekem", "skem", "e", "ee", "se")


def prologue(environment_id: str, executor_registration_id: str, stream_id: str) -> bytes:
    """
    Each part as a u64 big-endian byte length and its UTF-8 bytes. Both
    sides take the ids from the registry (the executor from its
    registration, the harness from its connect bundle).
    """
    out = bytearray()
    for part in (PROLOGUE_DOMAIN, environment_id, executor_registration_id, stream_id):
        data = part.encode("utf-8")
        out += len(data).to_bytes(8, "big")
        out += data
    return bytes(out)


class TransportCiphers:
    """
    The two transport cipher states a finished handshake yields, seen from
    one side. Records go through them strictly in order.
    """

    __slots__ = ("send", "receive")

    def __init__(self, send: CipherState, receive: CipherState) -> None:
        self.send = send
        self.receive = receive

    def __repr__(self) -> str:
        return f"TransportCiphers(send={self.send!r}, receive={self.receive!r})"


class HandshakeRequest:
    """What the executor learns from message 1, to ask its registry about."""

    __slots__ = ("harness_key", "authorization")

    def __init__(self, harness_key: NoisePublicKey, authorization: str) -> None:
        self.harness_key = harness_key
        self.authorization = authorization

    def __repr__(self) -> str:
        return "HandshakeRequest(harness_key=<redacted>, authorization=<redacted>)"


def _overhead(tokens: tuple[str, ...], has_key: bool) -> int:
    """Bytes a message of these tokens carries besides its payload."""
    size = 0
    for token in tokens:
        if token == "e":
            size += X25519_KEY_LEN + MLKEM768_PUBLIC_KEY_LEN
        elif token == "s":
            size += X25519_KEY_LEN + MLKEM768_PUBLIC_KEY_LEN + (2 * TAG_LEN if has_key else 0)
        elif token == "ekem":
            size += MLKEM768_CIPHERTEXT_LEN
            has_key = True
        elif token == "skem":
            size += MLKEM768_CIPHERTEXT_LEN + (TAG_LEN if has_key else 0)
            has_key = True
        else:
            has_key = True
    return size + (TAG_LEN if has_key else 0)


class _HandshakeState:
    """
    Runs message patterns token by token. Keys: C{s} is our identity,
    C{rs} the peer's static key (known in advance to the initiator, learnt
    from message 1 by the responder), C{e_*}/C{re_*} ephemerals. Received
    ML-KEM keys are checked on arrival, so that a bad key fails the read of
    its message, not the next write.
    """

    def __init__(self, initiator: bool, identity: NoiseIdentity, responder_key: NoisePublicKey,
                 prologue: bytes) -> None:
        self.initiator = initiator
        self.s = identity
        self.rs: NoisePublicKey | None = responder_key if initiator else None
        self.e_dh: X25519PrivateKey | None = None
        self.e_kem = None
        self.re_dh: bytes | None = None
        self.re_kem = None
        self.symmetric = SymmetricState(sha256(PROTOCOL_NAME))
        self.symmetric.mix_hash(prologue)
        self.symmetric.mix_hash(responder_key.x25519)
        self.symmetric.mix_hash(responder_key.mlkem768)

    def _dh(self, token: str) -> bytes:
        # A DH token names the initiator's key first.
        mine, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        private = self.e_dh if mine == "e" else self.s.x25519
        public = self.re_dh if theirs == "e" else self.rs.x25519
        return private.exchange(X25519PublicKey.from_public_bytes(public))

    def write(self, tokens: tuple[str, ...], payload: bytes) -> bytes:
        """
        Produce a message carrying C{payload}.

        @raise HandshakeFailed: the peer's X25519 key is of low order.
        """
        try:
            return self._write(tokens, payload)
        except ValueError:
            raise HandshakeFailed("the peer's Noise key is unusable") from None

    def _write(self, tokens: tuple[str, ...], payload: bytes) -> bytes:
        sym = self.symmetric
        out = []
        for token in tokens:
            if token == "e":
                self.e_dh = X25519PrivateKey.generate()
                self.e_kem = keys.MLKEM768PrivateKey.generate()
                for public in (
                    self.e_dh.public_key().public_bytes_raw(),
                    self.e_kem.public_key().public_bytes_raw(),
                ):
                    sym.mix_hash(public)
                    out.append(public)
            elif token == "s":
                out.append(sym.encrypt_and_hash(self.s.public_key.x25519))
                out.append(sym.encrypt_and_hash(self.s.public_key.mlkem768))
            elif token == "ekem":
                secret, ciphertext = self.re_kem.encapsulate()
                sym.mix_hash(ciphertext)
                sym.mix_key(secret)
                out.append(ciphertext)
            elif token == "skem":
                secret, ciphertext = keys.MLKEM768PublicKey.from_public_bytes(
                    self.rs.mlkem768).encapsulate()
                out.append(sym.encrypt_and_hash(ciphertext))
                sym.mix_key_and_hash(secret)
            else:
                sym.mix_key(self._dh(token))
        out.append(sym.encrypt_and_hash(payload))
        return b"".join(out)

    def read(self, tokens: tuple[str, ...], message: bytes) -> bytes:
        """
        Consume a message and return its payload.

        @raise HandshakeFailed: wrong size, authentication failure, or a
            key the primitives refuse (a malformed ML-KEM key, a low-order
            X25519 key).
        """
        sym = self.symmetric
        if not _overhead(tokens, sym.has_key) <= len(message) <= MAX_NOISE_MESSAGE_LEN:
            raise HandshakeFailed("Noise handshake message has the wrong size")
        view = memoryview(message)
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            pos += n
            return bytes(view[pos - n:pos])

        def tagged(n: int) -> int:
            return n + TAG_LEN if sym.has_key else n

        try:
            for token in tokens:
                if token == "e":
                    self.re_dh = take(X25519_KEY_LEN)
                    sym.mix_hash(self.re_dh)
                    re_kem = take(MLKEM768_PUBLIC_KEY_LEN)
                    sym.mix_hash(re_kem)
                    self.re_kem = keys.MLKEM768PublicKey.from_public_bytes(re_kem)
                elif token == "s":
                    rs_dh = sym.decrypt_and_hash(take(tagged(X25519_KEY_LEN)))
                    rs_kem = sym.decrypt_and_hash(take(tagged(MLKEM768_PUBLIC_KEY_LEN)))
                    self.rs = NoisePublicKey(rs_dh, rs_kem)
                elif token == "ekem":
                    ciphertext = take(MLKEM768_CIPHERTEXT_LEN)
                    sym.mix_hash(ciphertext)
                    sym.mix_key(self.e_kem.decapsulate(ciphertext))
                elif token == "skem":
                    ciphertext = sym.decrypt_and_hash(take(tagged(MLKEM768_CIPHERTEXT_LEN)))
                    sym.mix_key_and_hash(self.s.mlkem768.decapsulate(ciphertext))
                else:
                    sym.mix_key(self._dh(token))
            return sym.decrypt_and_hash(bytes(view[pos:]))
        except (DecryptFailed, ValueError):
            raise HandshakeFailed("Noise handshake message failed authentication") from None


def _failed(side: str, reason: str) -> None:
    log.debug(
        "Noise handshake failed: {noise_reason}",
        noise_event="handshake", noise_outcome="error", noise_side=side, noise_reason=reason,
    )


def _completed(side: str) -> None:
    log.debug(
        "Noise handshake completed",
        noise_event="handshake", noise_outcome="ok", noise_side=side,
    )


class _OneShot:
    """Runs each step once, in order; a failed step ends the handshake."""

    _next: str | None

    def _begin(self, step: str) -> None:
        if self._next != step:
            raise HandshakeFailed("Noise handshake step out of order")
        self._next = None


class Initiator(_OneShot):
    """
    The harness's side: pins the executor key from the connect bundle,
    sends its own key and the authorization in message 1.

    Use once: L{write_message1}, then L{read_message2}.
    """

    def __init__(self, identity: NoiseIdentity, responder_key: NoisePublicKey,
                 prologue: bytes) -> None:
        self._state = _HandshakeState(True, identity, responder_key, prologue)
        self._next = "write_message1"

    def write_message1(self, payload: bytes) -> bytes:
        """
        Message 1, carrying the payload encrypted: the connect bundle's
        harness authorization as UTF-8.

        @raise HandshakeFailed: the payload does not fit in message 1.
        """
        self._begin("write_message1")
        if len(payload) > MAX_NOISE_MESSAGE_LEN - MESSAGE1_OVERHEAD:
            _failed("harness", "payload_too_large")
            raise HandshakeFailed("handshake payload is too large")
        try:
            message = self._state.write(MESSAGE1_TOKENS, payload)
        except HandshakeFailed:
            _failed("harness", "invalid_key")
            raise
        self._next = "read_message2"
        return message

    def read_message2(self, message: bytes) -> TransportCiphers:
        """
        @raise HandshakeFailed: the message is not from the pinned executor
            for this prologue, or carries a payload.
        """
        self._begin("read_message2")
        try:
            payload = self._state.read(MESSAGE2_TOKENS, message)
        except HandshakeFailed:
            _failed("harness", "authentication_failed")
            raise
        if payload:
            _failed("harness", "unexpected_payload")
            raise HandshakeFailed("Noise handshake response carries a payload")
        to_responder, to_initiator = self._state.symmetric.split()
        _completed("harness")
        return TransportCiphers(send=to_responder, receive=to_initiator)


class Responder(_OneShot):
    """
    The executor's side. L{read_message1} recovers the harness key and
    authorization; once the registry allowed them, L{write_message2}
    finishes the handshake.
    """

    def __init__(self, identity: NoiseIdentity, prologue: bytes) -> None:
        self._state = _HandshakeState(False, identity, identity.public_key, prologue)
        self._next = "read_message1"

    def read_message1(self, message: bytes) -> HandshakeRequest:
        """
        @raise HandshakeFailed: the message is not for this executor and
            prologue, or its authorization is not UTF-8 of at most
            L{MAX_AUTHORIZATION_LEN} bytes.
        """
        self._begin("read_message1")
        state = self._state
        try:
            payload = state.read(MESSAGE1_TOKENS, message)
        except HandshakeFailed:
            _failed("executor", "authentication_failed")
            raise
        if len(payload) > MAX_AUTHORIZATION_LEN:
            _failed("executor", "authorization_too_large")
            raise HandshakeFailed("harness authorization is too large")
        try:
            authorization = payload.decode("utf-8")
        except UnicodeDecodeError:
            _failed("executor", "authorization_not_utf8")
            raise HandshakeFailed("harness authorization is not UTF-8") from None
        self._next = "write_message2"
        return HandshakeRequest(state.rs, authorization)

    def write_message2(self) -> tuple[bytes, TransportCiphers]:
        """
        The reply to send and this side's transport ciphers.
        """
        self._begin("write_message2")
        message = self._state.write(MESSAGE2_TOKENS, b"")
        to_responder, to_initiator = self._state.symmetric.split()
        _completed("executor")
        return message, TransportCiphers(send=to_initiator, receive=to_responder)
