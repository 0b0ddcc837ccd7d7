"""
WebSocket authentication (--ws-auth) against the reference: the same
upgrade requests get the same status and 401 text from both servers, for
every row of docs/reference/websocket-auth.md; an accepted client then
serves requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

from twisted.trial import unittest

from tests import support
from tests.test_interop_envelope import UPGRADE, raw_http

TOKEN = "capability-token-for-tests"
SECRET = b"0123456789abcdef0123456789abcdef-secret"
ISSUER = "https://issuer.example"
AUDIENCE = "exec-server"


def upgrade(*headers: str, path: str = "/") -> bytes:
    lines = "".join(f"{header}\r\n" for header in headers)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + UPGRADE + lines.encode() + b"\r\n"


def bearer(token: str) -> str:
    return f"Authorization: Bearer {token}"


#: Requests whose answer does not depend on the mode.
COMMON = {
    "no header": upgrade(),
    "token in the query": upgrade(path=f"/?token={TOKEN}"),
    "token as subprotocol": upgrade(f"Sec-WebSocket-Protocol: {TOKEN}"),
    "token in another header": upgrade(f"X-Auth-Token: {TOKEN}"),
    "Basic": upgrade("Authorization: Basic dXNlcjpwYXNz"),
    "bare token": upgrade(f"Authorization: {TOKEN}"),
    "Bearer alone": upgrade("Authorization: Bearer"),
    "Bearer and spaces": upgrade("Authorization: Bearer    "),
    "empty header": upgrade("Authorization: "),
    "tab after the scheme": upgrade(f"Authorization: Bearer\t{TOKEN}"),
    "colon after the scheme": upgrade(f"Authorization: Bearer: {TOKEN}"),
    "non-ASCII token": upgrade("Authorization: Bearer t\u00f6k".encode().decode("latin-1")),
    "Origin before auth": upgrade("Origin: http://x", bearer(TOKEN)),
    "Origin without token": upgrade("Origin: http://x"),
    "readyz needs no token": b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "readyz HEAD": b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
    "other path": upgrade(path="/nope"),
    "upgrade problem before auth": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST before auth": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
}

CAPABILITY = {
    "the token": upgrade(bearer(TOKEN)),
    "lower-case scheme": upgrade(f"Authorization: bearer {TOKEN}"),
    "mixed-case scheme": upgrade(f"Authorization: BeArEr {TOKEN}"),
    "two spaces": upgrade(f"Authorization: Bearer  {TOKEN}"),
    "trailing spaces": upgrade(f"Authorization: Bearer {TOKEN}   "),
    "wrong token": upgrade(bearer("nope")),
    "token with a tab inside": upgrade(bearer(TOKEN[:3] + "\t" + TOKEN[3:])),
    "prefix of the token": upgrade(bearer(TOKEN[:-1])),
    "first header right": upgrade(bearer(TOKEN), bearer("nope")),
    "first header wrong": upgrade(bearer("nope"), bearer(TOKEN)),
    "first header Basic": upgrade("Authorization: Basic x", bearer(TOKEN)),
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jws(header: dict, claims: dict, secret: bytes = SECRET, digest=hashlib.sha256) -> str:
    """
    A JWS made by hand (PyJWT refuses to encode some of the claims we need):
    C{digest} None leaves the signature empty.
    """
    signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signing.encode(), digest).digest() if digest else b""
    return signing + "." + _b64(signature)


def signed_requests(now: int) -> dict[str, bytes]:
    """
    JWTs around C{now}, kept well away from the 30 s skew's edges.
    """
    good = {"exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}

    def token(claims: dict, header=None, **options) -> bytes:
        return upgrade(bearer(_jws(header or {"alg": "HS256", "typ": "JWT"}, claims, **options)))

    return {
        "valid": token(good),
        "valid without typ": token(good, header={"alg": "HS256"}),
        "valid with kid": token(good, header={"alg": "HS256", "kid": "k1"}),
        "audience in a list": token({**good, "aud": ["other", AUDIENCE]}),
        "iat in the future": token({**good, "iat": now + 3600}),
        "iat a string": token({**good, "iat": "soon"}),
        "other claims of any type": token({**good, "sub": 5, "jti": [1]}),
        "expired within the skew": token({**good, "exp": now - 10}),
        "nbf within the skew": token({**good, "nbf": now + 10}),
        "wrong secret": token(good, secret=b"x" * 32),
        "secret with its newline": token(good, secret=SECRET + b"\n"),
        "alg none": token(good, header={"alg": "none", "typ": "JWT"}, digest=None),
        "HS512": token(good, header={"alg": "HS512", "typ": "JWT"}, digest=hashlib.sha512),
        "no exp": token({"iss": ISSUER, "aud": AUDIENCE}),
        "exp a string": token({**good, "exp": str(now + 600)}),
        "exp a float": token({**good, "exp": now + 600.5}),
        "exp a whole float": token({**good, "exp": float(now + 600)}),
        "exp true": token({**good, "exp": True}),
        "exp beyond i64": token({**good, "exp": 2**63}),
        "exp negative": token({**good, "exp": -5}),
        "expired": token({**good, "exp": now - 120}),
        "nbf in the future": token({**good, "nbf": now + 120}),
        "nbf a string": token({**good, "nbf": str(now)}),
        "nbf a float": token({**good, "nbf": now + 0.5}),
        "nbf null": token({**good, "nbf": None}),
        "wrong issuer": token({**good, "iss": "https://other.example"}),
        "no issuer": token({"exp": now + 600, "aud": AUDIENCE}),
        "issuer null": token({**good, "iss": None}),
        "issuer a number": token({**good, "iss": 5}),
        "wrong audience": token({**good, "aud": "other"}),
        "no audience": token({"exp": now + 600, "iss": ISSUER}),
        "audience list without ours": token({**good, "aud": ["other"]}),
        "audience empty list": token({**good, "aud": []}),
        "audience a number": token({**good, "aud": 5}),
        "audience list with a number": token({**good, "aud": [AUDIENCE, 5]}),
        "expired and wrong issuer": token({**good, "exp": now - 120, "iss": "o"}),
        "expired and not yet valid": token({**good, "exp": now - 120, "nbf": now + 120}),
        "not yet valid and wrong audience": token({**good, "nbf": now + 120, "aud": "o"}),
        "wrong issuer and audience": token({**good, "iss": "o", "aud": "o"}),
        "expired with a bad audience type": token({**good, "exp": now - 120, "aud": 5}),
        "expired with a wrong signature": token({**good, "exp": now - 120}, secret=b"y" * 32),
        "not a JWT": upgrade(bearer("abc")),
        "two segments": upgrade(bearer("abc.def")),
        "padded signature": upgrade(bearer(_jws({"alg": "HS256"}, good) + "=")),
        "claims an array": upgrade(bearer(_signed_payload(b"[1]"))),
    }


def _signed_payload(payload: bytes) -> str:
    signing = _b64(json.dumps({"alg": "HS256"}).encode()) + "." + _b64(payload)
    return signing + "." + _b64(hmac.new(SECRET, signing.encode(), hashlib.sha256).digest())


class AuthTableTests(unittest.TestCase):
    """
    Each test starts both servers with the same flags and sends both the
    same requests, one connection each.
    """

    timeout = 120

    def setUp(self):
        self.directory = support.scratch_directory(self, "execserver-wsauth-")

    def secret_file(self, name: str, content: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    async def answers(self, kind: str, args: list[str], requests: dict[str, bytes]) -> dict:
        server = await support.start_server(kind, args)
        try:
            return {name: await raw_http(server.url, request) for name, request in requests.items()}
        finally:
            await server.stop()

    async def compare(self, args: list[str], requests: dict[str, bytes]) -> dict:
        reference = await self.answers("reference", args, requests)
        ours = await self.answers("ours", args, requests)
        differing = {name: (reference[name], ours[name])
                     for name in requests if reference[name] != ours[name]}
        self.assertEqual(differing, {}, "answers differ (reference, ours)")
        return ours

    async def test_capability_token_file(self):
        path = self.secret_file("token", f"  {TOKEN}\n\n".encode())
        ours = await self.compare(["--ws-auth", "capability-token", "--ws-token-file", path],
                                  {**COMMON, **CAPABILITY})
        self.assertEqual((ours["the token"]["status"], ours["wrong token"]["body"]),
                         ("101", "invalid websocket bearer token"))

    async def test_capability_token_digest(self):
        digest = hashlib.sha256(TOKEN.encode()).hexdigest().upper()
        ours = await self.compare(["--ws-auth", "capability-token", "--ws-token-sha256", digest],
                                  CAPABILITY)
        self.assertEqual(ours["first header right"]["status"], "101")

    async def test_signed_bearer_token(self):
        path = self.secret_file("secret", SECRET + b"\n")
        ours = await self.compare(
            ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", path,
             "--ws-issuer", ISSUER, "--ws-audience", AUDIENCE],
            {**COMMON, **signed_requests(int(time.time()))})
        self.assertEqual((ours["valid"]["status"], ours["expired"]["body"]),
                         ("101", "expired websocket jwt"))

    async def test_signed_bearer_token_without_issuer_or_audience(self):
        path = self.secret_file("secret", SECRET)
        requests = signed_requests(int(time.time()))
        ours = await self.compare(["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", path],
                                  requests)
        self.assertEqual(ours["wrong issuer and audience"]["status"], "101")

    async def test_signed_bearer_token_without_skew(self):
        path = self.secret_file("secret", SECRET)
        requests = signed_requests(int(time.time()))
        ours = await self.compare(
            ["--ws-auth", "signed-bearer-token", "--ws-shared-secret-file", path,
             "--ws-max-clock-skew-seconds", "0"], requests)
        self.assertEqual((ours["expired within the skew"]["body"], ours["nbf within the skew"]["body"]),
                         ("expired websocket jwt", "websocket jwt is not valid yet"))


class AuthenticatedClientTests(unittest.TestCase):
    timeout = 60

    async def test_an_accepted_client_is_served(self):
        directory = support.scratch_directory(self, "execserver-wsauth-")
        path = os.path.join(directory, "token")
        with open(path, "w") as f:
            f.write(TOKEN)
        for kind in ("reference", "ours"):
            server = await support.serve(self, kind, ["--ws-auth", "capability-token",
                                                      "--ws-token-file", path])
            queue = await support.connect(server.url, headers={"Authorization": f"Bearer {TOKEN}"})
            queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
            self.assertIn("sessionId", (await queue.response(1))["result"], kind)
            await queue.close()
            with self.assertRaises(Exception, msg=kind) as refused:
                await support.connect(server.url)
            self.assertIn("401", str(refused.exception), kind)

