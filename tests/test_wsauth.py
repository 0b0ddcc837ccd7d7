"""
The --ws-auth checks without sockets: the Authorization header's parsing,
the JWT time checks at their edges (a task.Clock is "now"), and the
settings' files. The interop tests compare whole answers with the
reference (tests/test_interop_wsauth.py).
"""

from __future__ import annotations

import hashlib
import os

import jwt
from twisted.internet import task
from twisted.trial import unittest

from execserver import wsauth

SECRET = b"s" * 32
NOW = 1_800_000_000


class BearerTokenTests(unittest.SynchronousTestCase):
    def test_accepted_spellings(self):
        for value in (b"Bearer t", b"bearer t", b"BEARER t", b"Bearer   t", b"Bearer t \t",
                      b"Bearer \tt"):
            self.assertEqual(wsauth.bearer_token([value]), "t", value)

    def test_only_the_first_header_counts(self):
        self.assertEqual(wsauth.bearer_token([b"Bearer a", b"Bearer b"]), "a")

    def test_refusals(self):
        cases = {(): wsauth.MISSING, (b"Basic t",): wsauth.INVALID_HEADER,
                 (b"t",): wsauth.INVALID_HEADER, (b"Bearer",): wsauth.INVALID_HEADER,
                 (b"Bearer   ",): wsauth.INVALID_HEADER, (b"Bearer\tt",): wsauth.INVALID_HEADER,
                 (b"Bearer t\xc3\xb6",): wsauth.INVALID_HEADER}
        for values, reason in cases.items():
            self.assertEqual(wsauth.CapabilityToken(b"").refusal(list(values)), reason, values)


class CapabilityTokenTests(unittest.SynchronousTestCase):
    def test_the_token_and_nothing_else(self):
        check = wsauth.CapabilityToken(hashlib.sha256(b"token").digest())
        self.assertEqual([check.refusal([b"Bearer " + t]) for t in (b"token", b"toke", b"tokenx")],
                         [None, wsauth.INVALID_TOKEN, wsauth.INVALID_TOKEN])


class SignedBearerTokenTests(unittest.SynchronousTestCase):
    def refusal(self, claims: dict, skew: int = 30, **options) -> str | None:
        clock = task.Clock()
        clock.advance(NOW + 0.75)
        check = wsauth.SignedBearerToken(SECRET, clock, skew, **options)
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        return check.refusal([f"Bearer {token}".encode()])

    def test_expiry_at_the_edge_of_the_skew(self):
        self.assertEqual([self.refusal({"exp": NOW - 30}), self.refusal({"exp": NOW - 31}),
                          self.refusal({"exp": NOW}, skew=0), self.refusal({"exp": NOW - 1}, skew=0)],
                         [None, wsauth.EXPIRED_JWT, None, wsauth.EXPIRED_JWT])

    def test_not_before_at_the_edge_of_the_skew(self):
        future = NOW + 3600
        self.assertEqual([self.refusal({"exp": future, "nbf": NOW + 30}),
                          self.refusal({"exp": future, "nbf": NOW + 31}),
                          self.refusal({"exp": future, "nbf": NOW + 1}, skew=0)],
                         [None, wsauth.NOT_YET_VALID_JWT, wsauth.NOT_YET_VALID_JWT])

    def test_issuer_and_audience_only_when_configured(self):
        claims = {"exp": NOW + 60, "iss": "a", "aud": ["x", "b"]}
        self.assertEqual([self.refusal(claims), self.refusal(claims, issuer="a", audience="b"),
                          self.refusal(claims, issuer="z"), self.refusal(claims, audience="z")],
                         [None, None, wsauth.ISSUER_MISMATCH, wsauth.AUDIENCE_MISMATCH])


class SettingsTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write(self, name: str, content: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_token_file_is_trimmed(self):
        path = self.write("token", b"  tok \n\n")
        check = wsauth.AuthSettings(mode=wsauth.CAPABILITY_TOKEN, token_file=path).authenticator(None)
        self.assertIsNone(check.refusal([b"Bearer tok"]))

    def test_digest_in_either_case_with_spaces(self):
        digest = " " + hashlib.sha256(b"tok").hexdigest().upper()
        settings = wsauth.AuthSettings(mode=wsauth.CAPABILITY_TOKEN, token_sha256=digest)
        settings.check_flags()
        self.assertIsNone(settings.authenticator(None).refusal([b"Bearer tok"]))

    def test_secret_length_counts_after_trimming(self):
        path = self.write("secret", b"a" * 31 + b"\n")
        settings = wsauth.AuthSettings(mode=wsauth.SIGNED_BEARER_TOKEN, shared_secret_file=path)
        with self.assertRaises(wsauth.AuthConfigError) as raised:
            settings.authenticator(task.Clock())
        self.assertEqual(str(raised.exception),
                         f"signed websocket bearer secret {path} must be at least 32 bytes")

    def test_no_mode_no_authenticator(self):
        settings = wsauth.AuthSettings()
        settings.check_flags()
        self.assertIsNone(settings.authenticator(None))
