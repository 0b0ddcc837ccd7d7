"""
The environment registry's HTTP client, as codex calls it:

    POST {base}/cloud/environment/{environment_id}/{action}
    Content-Type: application/json
    Authorization: Bearer <token>
    [ChatGPT-Account-ID: <account>]

The base URL is trimmed and loses a trailing C{/}; the environment id goes
into the path as it is. Requests go through the project's HTTP client, so
C{HTTPS_PROXY}/C{HTTP_PROXY}/C{NO_PROXY} apply as they do for the
reference; redirects are not followed (their Location may drop the
bearer token's scope), and each call has L{REQUEST_TIMEOUT_SECONDS}.

Errors (L{RegistryError}) read as codex's: C{authentication failed (401):
<message>} for 401 and 403, the status and the registry's C{error.code}
and C{error.message} for other statuses, or the first
L{ERROR_PREVIEW_CHARS} characters of the body when it has no such object.
Tokens, authorizations and socket URLs (which carry signatures) are never
logged or shown: a bundle's C{repr} hides them and URLs appear only up to
their C{?}.

L{RegistryClient.connect} is the harness's call; L{RegistryClient.register}
and L{RegistryClient.validate} are the executor's. C{validate}'s error
bodies are never read into an error: a registry may echo the authorization.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from execserver import weburl
from execserver.httpclient import FetchError, HttpClient, Request, UnsupportedProxy
from execserver.httpwire import HeaderMap
from execserver.noise.errors import InvalidPublicKey
from execserver.noise.keys import NoisePublicKey
from execserver.relay.socket import public_url

log = Logger()

#: The only security profile: hybrid IK Noise.
SECURITY_PROFILE = "noise_hybrid_ik_v1"

#: Seconds one registry call may take, connection to last body byte.
REQUEST_TIMEOUT_SECONDS = 10.0

#: Characters of an error body quoted in the error.
ERROR_PREVIEW_CHARS = 4096

#: Largest registry response read.
MAX_RESPONSE_BYTES = 1024 * 1024


class RegistryError(Exception):
    """
    A registry call failed: no answer, an error status, or an answer that
    is not what the call expects. C{status} is the HTTP status, if any.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryAuthenticationFailed(RegistryError):
    """The registry refused the token (401 or 403)."""


@dataclass(frozen=True, repr=False)
class ConnectBundle:
    """
    What a harness needs for one physical connection, all from one
    C{connect} answer. Single-use: the URL's signature and the
    authorization are short-lived.
    """

    websocket_url: str
    environment_id: str
    executor_registration_id: str
    executor_public_key: NoisePublicKey
    harness_key_authorization: str

    def __repr__(self) -> str:
        return (f"ConnectBundle(websocket_url={public_url(self.websocket_url)!r}, "
                f"environment_id={self.environment_id!r}, "
                f"executor_registration_id={self.executor_registration_id!r}, "
                "harness_key_authorization=<redacted>)")


@dataclass(frozen=True, repr=False)
class Registration:
    """
    An executor's registration: the socket URL to dial (and to dial again
    after a drop, until the rendezvous refuses it with 401) and the ids the
    handshake prologue binds.
    """

    websocket_url: str
    environment_id: str
    executor_registration_id: str

    def __repr__(self) -> str:
        return (f"Registration(websocket_url={public_url(self.websocket_url)!r}, "
                f"environment_id={self.environment_id!r}, "
                f"executor_registration_id={self.executor_registration_id!r})")


class _Body:
    """Collects a response body up to L{MAX_RESPONSE_BYTES}."""

    def __init__(self, exchange) -> None:
        self.exchange = exchange
        self.pieces: list[bytes] = []
        self.size = 0
        self.done: Deferred = Deferred(lambda _: exchange.abort())

    def body(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.size += len(piece)
            self.pieces.append(piece)
        if self.size > MAX_RESPONSE_BYTES and not self.done.called:
            self.done.errback(RegistryError("the environment registry's answer is too large"))
            self.exchange.abort()

    def end(self, error: str | None) -> None:
        if self.done.called:
            return
        if error is not None:
            self.done.errback(RegistryError(f"could not read the environment registry's answer: {error}"))
        else:
            self.done.callback(b"".join(self.pieces))


def _nonblank(value: Any, name: str, action: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"the environment registry's {action} answer has no {name}")
    return value


def _error_message(status: int, body: bytes) -> tuple[str, str | None]:
    """The registry's own error message and code, or a preview of the body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code")
        return (message if isinstance(message, str) else "",
                code if isinstance(code, str) else None)
    return text[:ERROR_PREVIEW_CHARS], None


class RegistryClient:
    """
    Calls one registry with one bearer token.

    @param environ: where the proxy settings come from.
    @param trust_root: certificate authorities for https (the platform's
        when C{None}).
    """

    def __init__(self, reactor, base_url: str, token: str, *, account_id: str | None = None,
                 environ: Mapping[str, str] | None = None, clock: IReactorTime | None = None,
                 trust_root=None) -> None:
        base = base_url.strip().rstrip("/")
        try:
            parsed = weburl.parse(base)
        except weburl.URLError as e:
            raise ValueError(f"invalid registry URL: {e}") from None
        if parsed.scheme not in ("http", "https"):
            raise ValueError("a registry URL is http:// or https://")
        if not token.strip():
            raise ValueError("a registry token is required")
        self.base_url = base
        self.clock = clock or reactor
        self._token = token.strip()
        self._account_id = account_id.strip() if account_id else None
        self._http = HttpClient(reactor, os.environ if environ is None else environ, trust_root)

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r}, token=<redacted>)"

    def connect(self, environment_id: str, harness_key: NoisePublicKey) -> Deferred:
        """
        Ask for a connect bundle for C{harness_key}.

        @return: fires with a L{ConnectBundle}, or fails with
            L{RegistryError}.
        """
        environment_id = environment_id.strip()
        calling = self._post(environment_id, "connect",
                             {"harness_public_key": harness_key.to_json_object()})
        return calling.addCallback(self._bundle, environment_id)

    def register(self, environment_id: str, executor_key: NoisePublicKey) -> Deferred:
        """
        Register C{executor_key} as the environment's executor.

        @return: fires with a L{Registration}, or fails with
            L{RegistryError}.
        """
        environment_id = environment_id.strip()
        calling = self._post(environment_id, "register", {
            "security_profile": SECURITY_PROFILE,
            "executor_public_key": executor_key.to_json_object(),
        })
        return calling.addCallback(self._registration, environment_id)

    def _registration(self, answer: Any, environment_id: str) -> Registration:
        if not isinstance(answer, dict):
            raise RegistryError("the environment registry's register answer is not a JSON object")
        if answer.get("environment_id") != environment_id:
            raise RegistryError("the environment registry answered for another environment")
        if answer.get("security_profile") != SECURITY_PROFILE:
            raise RegistryError("the environment registry offers an unsupported security profile")
        return Registration(
            websocket_url=_nonblank(answer.get("url"), "url", "register"),
            environment_id=environment_id,
            executor_registration_id=_nonblank(
                answer.get("executor_registration_id"), "executor_registration_id", "register"),
        )

    def validate(self, environment_id: str, executor_registration_id: str,
                 harness_key: NoisePublicKey, authorization: str, stream_id: str) -> Deferred:
        """
        Ask whether the harness behind C{stream_id} may connect: its key and
        the authorization from its Noise message 1.

        @return: fires with C{True} only for a 2xx answer of
            C{{"valid": true}}; fails with L{RegistryError} (whose text never
            includes the answer's body).
        """
        calling = self._post(environment_id.strip(), "validate", {
            "executor_registration_id": executor_registration_id,
            "harness_public_key": harness_key.to_json_object(),
            "harness_key_authorization": authorization,
        }, {b"x-codex-noise-stream-id": stream_id.encode("utf-8")}, quote_errors=False)
        return calling.addCallback(lambda answer: isinstance(answer, dict)
                                   and answer.get("valid") is True)

    def _bundle(self, answer: Any, environment_id: str) -> ConnectBundle:
        if not isinstance(answer, dict):
            raise RegistryError("the environment registry's connect answer is not a JSON object")
        if answer.get("environment_id") != environment_id:
            raise RegistryError("the environment registry answered for another environment")
        if answer.get("security_profile") != SECURITY_PROFILE:
            raise RegistryError("the environment registry offers an unsupported security profile")
        try:
            executor_key = NoisePublicKey.from_json_object(answer.get("executor_public_key"))
        except InvalidPublicKey as e:
            raise RegistryError(f"the environment registry sent an invalid executor key: {e}") from None
        return ConnectBundle(
            websocket_url=_nonblank(answer.get("url"), "url", "connect"),
            environment_id=environment_id,
            executor_registration_id=_nonblank(
                answer.get("executor_registration_id"), "executor_registration_id", "connect"),
            executor_public_key=executor_key,
            harness_key_authorization=_nonblank(
                answer.get("harness_key_authorization"), "harness_key_authorization", "connect"),
        )

    def _post(self, environment_id: str, action: str, body: Any,
              extra_headers: Mapping[bytes, bytes] | None = None,
              quote_errors: bool = True) -> Deferred:
        """
        POST C{body} as JSON to C{action} and parse the JSON answer.

        @param quote_errors: whether an error answer's message (or body) goes
            into the error.

        @return: fires with the decoded answer, or fails with
            L{RegistryError}.
        """
        if not environment_id:
            raise ValueError("an environment id is required")
        calling = ensureDeferred(self._call(environment_id, action, body, extra_headers or {},
                                            quote_errors))
        calling.addTimeout(REQUEST_TIMEOUT_SECONDS, self.clock)
        return calling.addErrback(self._timed_out, action)

    def _timed_out(self, failure, action: str):
        if failure.check(TimeoutError, CancelledError):
            raise RegistryError(
                f"the environment registry at {self.base_url} did not answer {action} "
                f"within {REQUEST_TIMEOUT_SECONDS:g} s")
        return failure

    async def _call(self, environment_id: str, action: str, body: Any,
                    extra_headers: Mapping[bytes, bytes], quote_errors: bool) -> Any:
        url = weburl.parse(f"{self.base_url}/cloud/environment/{environment_id}/{action}")
        headers = HeaderMap([
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer " + self._token.encode("latin-1")),
        ])
        if self._account_id:
            headers.append(b"chatgpt-account-id", self._account_id.encode("latin-1"))
        for name, value in extra_headers.items():
            headers.append(name, value)
        # One connection per call: calls are rare, and a kept-alive one would
        # outlive the client.
        headers.append(b"connection", b"close")
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
        fetch = self._http.fetch(Request(b"POST", url, headers, payload), follow_redirects=False)
        try:
            response = await fetch.start()
        except (FetchError, UnsupportedProxy) as e:
            log.debug("registry {action}: no answer ({kind})", action=action, kind=type(e).__name__)
            raise RegistryError(
                f"could not reach the environment registry at {self.base_url}") from None
        reading = _Body(response.exchange)
        response.exchange.deliver(reading)
        data = await reading.done
        status = response.status
        if not 200 <= status < 300:
            message, code = _error_message(status, data) if quote_errors else ("", None)
            log.info("registry {action}: HTTP {status}", action=action, status=status)
            detail = f": {message}" if message else ""
            if status in (401, 403):
                raise RegistryAuthenticationFailed(
                    f"authentication failed ({status}){detail}", status, code)
            what = f"{status}, {code}" if code else f"{status}"
            raise RegistryError(f"environment registry {action} failed ({what}){detail}",
                                status, code)
        try:
            return json.loads(data)
        except ValueError:
            raise RegistryError(f"the environment registry's {action} answer is not JSON") from None
