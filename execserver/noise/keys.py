"""
Static identities (one X25519 and one ML-KEM-768 keypair) and the public
key's JSON form, the object registries and codex peers exchange:

    {"suite": "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256",
     "x25519_public_key": "<base64, 32 bytes>",
     "mlkem768_public_key": "<base64, 1184 bytes>"}

Exactly these three keys in this order; base64 is the standard alphabet
with canonical padding. codex refuses anything else (unknown keys included),
and so does L{NoisePublicKey.from_json_object}. Private keys never leave the
process and appear in no C{repr}.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import cryptography
import pybase64
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from execserver.noise.errors import InvalidPublicKey, NoiseUnavailable
from execserver.noise.limits import MLKEM768_PUBLIC_KEY_LEN, X25519_KEY_LEN

try:
    from cryptography.hazmat.primitives.asymmetric.mlkem import (
        MLKEM768PrivateKey,
        MLKEM768PublicKey,
    )
except ImportError:  # cryptography < 47: require_mlkem() says what to install
    MLKEM768PrivateKey = MLKEM768PublicKey = None

#: The suite tag in the public key JSON (note "X25519": the Noise protocol
#: name hashed into the handshake spells it "25519").
SUITE = "Noise_hybridIK_X25519+MLKEM768_AESGCM_SHA256"

_JSON_KEYS = ("suite", "x25519_public_key", "mlkem768_public_key")


def require_mlkem() -> None:
    """
    Fail early, with a message that says what to install, when this
    C{cryptography} cannot do ML-KEM-768 (services call this at startup).

    @raise NoiseUnavailable: ML-KEM-768 is missing from the package or its
        OpenSSL backend.
    """
    try:
        if MLKEM768PrivateKey is None:
            raise UnsupportedAlgorithm("no ML-KEM module")
        MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        raise NoiseUnavailable(
            "remote mode needs ML-KEM-768 from the 'cryptography' package "
            "(version 48 or later, with a backend that provides ML-KEM); "
            f"installed: cryptography {cryptography.__version__}"
        ) from None


def _decode_base64(text: object, length: int, name: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidPublicKey(f"{name} is not a string")
    try:
        raw = pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPublicKey(f"{name} is not standard base64") from None
    if pybase64.b64encode(raw).decode("ascii") != text:
        raise InvalidPublicKey(f"{name} is not canonical base64")
    if len(raw) != length:
        raise InvalidPublicKey(f"{name} does not hold {length} bytes")
    return raw


@dataclass(frozen=True, slots=True, repr=False)
class NoisePublicKey:
    """
    The public half of an identity: raw X25519 and ML-KEM-768 keys. The
    ML-KEM key is checked as FIPS 203 requires before encapsulating to it.
    """

    x25519: bytes
    mlkem768: bytes

    def __post_init__(self) -> None:
        if len(self.x25519) != X25519_KEY_LEN:
            raise InvalidPublicKey("x25519_public_key has the wrong length")
        if len(self.mlkem768) != MLKEM768_PUBLIC_KEY_LEN:
            raise InvalidPublicKey("mlkem768_public_key has the wrong length")
        try:
            MLKEM768PublicKey.from_public_bytes(self.mlkem768)
        except ValueError:
            raise InvalidPublicKey("mlkem768_public_key is not an ML-KEM-768 key") from None

    def __repr__(self) -> str:
        return f"NoisePublicKey(suite={SUITE!r}, keys=<redacted>)"

    def to_json_object(self) -> dict[str, str]:
        """The registry's JSON object, keys in codex's order."""
        return {
            "suite": SUITE,
            "x25519_public_key": pybase64.b64encode(self.x25519).decode("ascii"),
            "mlkem768_public_key": pybase64.b64encode(self.mlkem768).decode("ascii"),
        }

    @classmethod
    def from_json_object(cls, value: object) -> NoisePublicKey:
        """
        Parse the JSON object as strictly as codex does.

        @raise InvalidPublicKey: not an object, missing or extra keys, a
            different suite, non-canonical base64, or wrong key lengths.
        """
        if not isinstance(value, dict):
            raise InvalidPublicKey("a public key must be a JSON object")
        if set(value) != set(_JSON_KEYS):
            raise InvalidPublicKey(
                "a public key has exactly the keys " + ", ".join(_JSON_KEYS)
            )
        if value["suite"] != SUITE:
            raise InvalidPublicKey("unsupported public key suite")
        return cls(
            _decode_base64(value["x25519_public_key"], X25519_KEY_LEN, "x25519_public_key"),
            _decode_base64(
                value["mlkem768_public_key"], MLKEM768_PUBLIC_KEY_LEN, "mlkem768_public_key"
            ),
        )


class NoiseIdentity:
    """
    An endpoint's static keypairs: generated once per process, reused for
    every registration, reconnection and stream, never persisted.
    """

    __slots__ = ("x25519", "mlkem768", "public_key")

    def __init__(self, x25519: X25519PrivateKey, mlkem768: MLKEM768PrivateKey) -> None:
        self.x25519 = x25519
        self.mlkem768 = mlkem768
        self.public_key = NoisePublicKey(
            x25519.public_key().public_bytes_raw(),
            mlkem768.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls) -> NoiseIdentity:
        """A fresh identity (call L{require_mlkem} first for a clear error)."""
        return cls(X25519PrivateKey.generate(), MLKEM768PrivateKey.generate())

    def __repr__(self) -> str:
        return "NoiseIdentity(private keys=<redacted>)"
