"""
Noise's cipher and symmetric states (Noise revision 34, sections 5.1 and
5.2) over AES-256-GCM and SHA-256, as clatter 2.2.0 implements them.

The nonce is 4 zero bytes followed by the 64-bit counter in big-endian
order (codex refuses little-endian). Handshake encryptions use the
handshake hash as associated data; transport records use none.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from execserver.noise.errors import DecryptFailed, NoiseError
from execserver.noise.limits import MAX_NOISE_MESSAGE_LEN, TAG_LEN

#: Noise reserves the last nonce value.
_MAX_NONCE = 2**64 - 1


def sha256(*parts: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> list[bytes]:
    """Noise's HKDF: two or three 32-byte outputs."""
    temp = _hmac(chaining_key, ikm)
    out = [_hmac(temp, b"\x01")]
    for i in range(2, outputs + 1):
        out.append(_hmac(temp, out[-1], bytes([i])))
    return out


class CipherState:
    """
    One direction's AES-256-GCM key and implicit nonce. The transport
    cipher states of a finished handshake are of this class: C{nonce} is the
    number of the next record, which the relay sends as C{seq}.
    """

    __slots__ = ("_aead", "nonce")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.nonce = 0

    def _next_nonce(self) -> bytes:
        if self.nonce >= _MAX_NONCE:
            raise NoiseError("Noise nonce exhausted")
        return self.nonce.to_bytes(12, "big")

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Seal the next message; plaintext plus tag must fit a Noise message."""
        if len(plaintext) + TAG_LEN > MAX_NOISE_MESSAGE_LEN:
            raise NoiseError("Noise plaintext is too large")
        ciphertext = self._aead.encrypt(self._next_nonce(), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """
        Open the next message; a failure leaves the nonce where it was.

        @raise DecryptFailed: wrong size, or authentication failed.
        """
        if not TAG_LEN <= len(ciphertext) <= MAX_NOISE_MESSAGE_LEN:
            raise DecryptFailed("Noise ciphertext has an impossible size")
        try:
            plaintext = self._aead.decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise DecryptFailed("Noise ciphertext failed authentication") from None
        self.nonce += 1
        return plaintext

    def __repr__(self) -> str:
        return f"CipherState(nonce={self.nonce}, key=<redacted>)"


class SymmetricState:
    """The handshake's chaining key, hash and current cipher."""

    __slots__ = ("h", "_ck", "_cipher")

    def __init__(self, initial_hash: bytes) -> None:
        self.h = initial_hash
        self._ck = initial_hash
        self._cipher: CipherState | None = None

    @property
    def has_key(self) -> bool:
        return self._cipher is not None

    def mix_hash(self, data: bytes) -> None:
        self.h = sha256(self.h, data)

    def mix_key(self, ikm: bytes) -> None:
        self._ck, key = hkdf(self._ck, ikm, 2)
        self._cipher = CipherState(key)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self._ck, temp_h, key = hkdf(self._ck, ikm, 3)
        self.mix_hash(temp_h)
        self._cipher = CipherState(key)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._cipher is None:
            ciphertext = plaintext
        else:
            ciphertext = self._cipher.encrypt(plaintext, self.h)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, data: bytes) -> bytes:
        plaintext = data if self._cipher is None else self._cipher.decrypt(data, self.h)
        self.mix_hash(data)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport ciphers: initiator-to-responder first."""
        k1, k2 = hkdf(self._ck, b"", 2)
        return CipherState(k1), CipherState(k2)

    def __repr__(self) -> str:
        return "SymmetricState(<redacted>)"
