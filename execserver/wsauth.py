"""
WebSocket authentication (C{--ws-auth}), as the reference checks it.

The token travels only in the first C{Authorization} header, as
C{Bearer <token>}; query strings, subprotocols and other headers do not
count. Two modes:

  - C{capability-token}: the token is a shared secret, given as a file
    (C{--ws-token-file}) or as its SHA-256 (C{--ws-token-sha256}); we keep
    only the digest and compare digests in constant time;
  - C{signed-bearer-token}: the token is an HS256 JWT signed with the
    secret of C{--ws-shared-secret-file}; C{exp} is required, C{nbf} is
    checked, both allowing C{--ws-max-clock-skew-seconds}; C{iss} and
    C{aud} are checked when C{--ws-issuer} / C{--ws-audience} are given.

Every failure is a 401 whose plain-text body is one of the texts below;
the reference's probes are in docs/reference/websocket-auth.md. Tokens and
secrets are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

import jwt
from zope.interface import Interface, implementer

from execserver.oserrors import describe

CAPABILITY_TOKEN = "capability-token"
SIGNED_BEARER_TOKEN = "signed-bearer-token"
MODES = (CAPABILITY_TOKEN, SIGNED_BEARER_TOKEN)

#: The reference's default for --ws-max-clock-skew-seconds.
DEFAULT_CLOCK_SKEW_SECONDS = 30
#: The shortest shared secret the reference accepts for HS256.
MIN_SHARED_SECRET_BYTES = 32
#: The largest skew: the reference keeps it in a signed 64-bit integer.
MAX_CLOCK_SKEW_SECONDS = 2**63 - 1
#: What C{exp}/C{nbf} may hold (the reference reads them as i64).
_I64 = range(-(2**63), 2**63)

MISSING = "missing websocket bearer token"
INVALID_HEADER = "invalid authorization header"
INVALID_TOKEN = "invalid websocket bearer token"
INVALID_JWT = "invalid websocket jwt"
EXPIRED_JWT = "expired websocket jwt"
NOT_YET_VALID_JWT = "websocket jwt is not valid yet"
ISSUER_MISMATCH = "websocket jwt issuer mismatch"
AUDIENCE_MISMATCH = "websocket jwt audience mismatch"

#: Flags of each mode, as the reference names them in its errors.
_CAPABILITY_FLAGS = ("ws-token-file", "ws-token-sha256")
_SIGNED_FLAGS = ("ws-shared-secret-file", "ws-issuer", "ws-audience", "ws-max-clock-skew-seconds")

#: Compact JWS: three unpadded base64url segments (the signature may be empty,
#: which the HS256 check then refuses).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
#: What Rust's str::trim removes from a header value that is visible ASCII.
_ASCII_WHITESPACE = " \t\n\x0b\x0c\r"


class AuthConfigError(Exception):
    """
    The auth flags are inconsistent or their files unusable; the message is
    the reference's startup error.
    """


class IAuthenticator(Interface):
    """
    Decides whether a WebSocket upgrade request may proceed.
    """

    def refusal(authorization: list[bytes]) -> str | None:
        """
        @param authorization: the request's C{Authorization} header values,
            in order.
        @return: None to accept, else the body of the 401.
        """


def bearer_token(authorization: list[bytes]) -> str:
    """
    The token of the first C{Authorization} header.

    @raise Refused: with the reference's text when there is none or the
        header is not C{Bearer <token>}.
    """
    if not authorization:
        raise Refused(MISSING)
    value = authorization[0]
    if any(not (32 <= byte < 127 or byte == 9) for byte in value):
        raise Refused(INVALID_HEADER)
    scheme, space, rest = value.decode("ascii").partition(" ")
    token = rest.strip(_ASCII_WHITESPACE)
    if not space or scheme.lower() != "bearer" or not token:
        raise Refused(INVALID_HEADER)
    return token


class Refused(Exception):
    """
    The request is refused; the message is the 401's body.
    """


@implementer(IAuthenticator)
class CapabilityToken:
    """
    Accepts the one token whose SHA-256 is C{digest}.
    """

    def __init__(self, digest: bytes) -> None:
        self._digest = digest

    def refusal(self, authorization: list[bytes]) -> str | None:
        try:
            token = bearer_token(authorization)
        except Refused as e:
            return str(e)
        presented = hashlib.sha256(token.encode()).digest()
        if not hmac.compare_digest(presented, self._digest):
            return INVALID_TOKEN
        return None


@implementer(IAuthenticator)
class SignedBearerToken:
    """
    Accepts HS256 JWTs signed with C{secret} whose claims hold.

    @param clock: an C{IReactorTime}; its C{seconds()} is "now".
    """

    def __init__(self, secret: bytes, clock, skew: int = DEFAULT_CLOCK_SKEW_SECONDS,
                 issuer: str | None = None, audience: str | None = None) -> None:
        self._secret = secret
        self._clock = clock
        self._skew = skew
        self._issuer = issuer
        self._audience = audience

    def refusal(self, authorization: list[bytes]) -> str | None:
        try:
            token = bearer_token(authorization)
            claims = self._verified_claims(token)
            self._check(claims)
        except Refused as e:
            return str(e)
        return None

    def _verified_claims(self, token: str) -> dict:
        if not _COMPACT_JWS.fullmatch(token):
            raise Refused(INVALID_JWT)
        try:
            signed = jwt.api_jws.decode_complete(token, self._secret, algorithms=["HS256"])
            claims = json.loads(signed["payload"])
        except (jwt.InvalidTokenError, ValueError):
            raise Refused(INVALID_JWT) from None
        if not isinstance(claims, dict) or not _claims_well_typed(claims):
            raise Refused(INVALID_JWT)
        return claims

    def _check(self, claims: dict) -> None:
        now = int(self._clock.seconds())
        if claims["exp"] < now - self._skew:
            raise Refused(EXPIRED_JWT)
        nbf = claims.get("nbf")
        if nbf is not None and nbf > now + self._skew:
            raise Refused(NOT_YET_VALID_JWT)
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise Refused(ISSUER_MISMATCH)
        if self._audience is not None:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self._audience not in audiences:
                raise Refused(AUDIENCE_MISMATCH)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in _I64


def _claims_well_typed(claims: dict) -> bool:
    """
    Whether the claims the reference reads have the types it reads them as:
    C{exp} an i64, C{nbf} an optional i64, C{iss} an optional string,
    C{aud} an optional string or list of strings. Other claims (C{iat}
    too) may be anything.
    """
    if not _integer(claims.get("exp")):
        return False
    if claims.get("nbf") is not None and not _integer(claims["nbf"]):
        return False
    if claims.get("iss") is not None and not isinstance(claims["iss"], str):
        return False
    audience = claims.get("aud")
    if audience is None or isinstance(audience, str):
        return True
    return isinstance(audience, list) and all(isinstance(a, str) for a in audience)


@dataclass(frozen=True)
class AuthSettings:
    """
    The C{--ws-*} flags as given (None when absent).
    """

    mode: str | None = None
    token_file: str | None = None
    token_sha256: str | None = None
    shared_secret_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    max_clock_skew_seconds: int | None = None

    def given(self, flag: str) -> bool:
        return getattr(self, flag.removeprefix("ws-").replace("-", "_")) is not None

    def check_flags(self) -> None:
        """
        The reference's checks of the flags alone, in its order.

        @raise AuthConfigError: with the reference's text.
        """
        capability_given = [f for f in _CAPABILITY_FLAGS if self.given(f)]
        signed_given = [f for f in _SIGNED_FLAGS if self.given(f)]
        if self.mode is None:
            if capability_given or signed_given:
                raise AuthConfigError(
                    "websocket auth flags require `--ws-auth capability-token` "
                    "or `--ws-auth signed-bearer-token`")
            return
        if self.mode == CAPABILITY_TOKEN:
            if signed_given:
                raise AuthConfigError(
                    "`--ws-shared-secret-file`, `--ws-issuer`, `--ws-audience`, and "
                    "`--ws-max-clock-skew-seconds` require `--ws-auth signed-bearer-token`")
            if not capability_given:
                raise AuthConfigError(
                    "`--ws-token-file` or `--ws-token-sha256` is required when "
                    "`--ws-auth capability-token` is set")
            if len(capability_given) == 2:
                raise AuthConfigError(
                    "`--ws-token-file` and `--ws-token-sha256` are mutually exclusive")
            if self.token_sha256 is not None:
                _digest_from_hex(self.token_sha256)
            return
        if capability_given:
            raise AuthConfigError(
                "`--ws-token-file` and `--ws-token-sha256` require "
                "`--ws-auth capability-token`, not `signed-bearer-token`")
        if self.shared_secret_file is None:
            raise AuthConfigError(
                "`--ws-shared-secret-file` is required when "
                "`--ws-auth signed-bearer-token` is set")

    def authenticator(self, clock) -> IAuthenticator | None:
        """
        Read the secret files and build the authenticator (None without
        C{--ws-auth}). Call L{check_flags} first.

        @raise AuthConfigError: a file cannot be read or is unusable.
        """
        if self.mode is None:
            return None
        if self.mode == CAPABILITY_TOKEN:
            if self.token_sha256 is not None:
                return CapabilityToken(_digest_from_hex(self.token_sha256))
            token = _read_secret(self.token_file)
            return CapabilityToken(hashlib.sha256(token).digest())
        secret = _read_secret(self.shared_secret_file)
        if len(secret) < MIN_SHARED_SECRET_BYTES:
            raise AuthConfigError(
                f"signed websocket bearer secret {self.shared_secret_file} "
                f"must be at least {MIN_SHARED_SECRET_BYTES} bytes")
        skew = self.max_clock_skew_seconds
        if skew is None:
            skew = DEFAULT_CLOCK_SKEW_SECONDS
        if skew > MAX_CLOCK_SKEW_SECONDS:
            raise AuthConfigError("websocket auth clock skew must fit in a signed 64-bit integer")
        return SignedBearerToken(secret, clock, skew, self.issuer, self.audience)


def _digest_from_hex(text: str) -> bytes:
    text = text.strip()
    if len(text) != 64 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise AuthConfigError("--ws-token-sha256 must be a 64-character hex SHA-256 digest")
    return bytes.fromhex(text)


def _read_secret(path: str) -> bytes:
    """
    A secret file's text without surrounding whitespace, as UTF-8 bytes.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AuthConfigError(
            f"failed to read websocket auth secret {path}: {describe(e)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthConfigError(
            f"failed to read websocket auth secret {path}: "
            "stream did not contain valid UTF-8") from None
    text = text.strip()
    if not text:
        raise AuthConfigError(f"websocket auth secret {path} must not be empty")
    return text.encode("utf-8")

