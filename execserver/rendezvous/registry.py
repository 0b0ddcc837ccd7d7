"""
The environment registry's HTTP API, as codex's executor and harness call
it (JSON bodies, C{Authorization: Bearer <token>}):

    POST /cloud/environment/{id}/register
         {"security_profile": "noise_hybrid_ik_v1", "executor_public_key": KEY}
      -> {"environment_id", "url", "security_profile", "executor_registration_id"}
    POST /cloud/environment/{id}/validate
         {"executor_registration_id", "harness_public_key": KEY, "harness_key_authorization"}
      -> {"valid": bool}
    POST /cloud/environment/{id}/connect
         {"harness_public_key": KEY}
      -> {"environment_id", "url", "security_profile", "executor_registration_id",
          "executor_public_key": KEY, "harness_key_authorization"}

Errors are C{{"error": {"code", "message"}}} with a 4xx/5xx status: 401 for
a missing or wrong token, 400 for a body that is not what the endpoint
takes, 503 from C{connect} while the environment's executor is not
connected. Tokens and authorizations never appear in logs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from execserver.noise.errors import InvalidPublicKey
from execserver.noise.keys import NoisePublicKey
from execserver.rendezvous.limits import MAX_REQUEST_BODY_BYTES
from execserver.rendezvous.store import GrantsExhausted

log = Logger()

#: The only security profile: hybrid IK Noise.
SECURITY_PROFILE = "noise_hybrid_ik_v1"

ACTIONS = ("register", "validate", "connect")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def _string(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string")
    return value


def _key(body: dict, name: str) -> NoisePublicKey:
    try:
        return NoisePublicKey.from_json_object(body.get(name))
    except InvalidPublicKey as e:
        raise _bad(f"{name}: {e}") from None


def _bearer(request: server.Request) -> str:
    value = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def websocket_base(request: server.Request, configured: str | None) -> str:
    """
    Where this rendezvous's WebSockets are, as the caller reached us
    (unless configured).
    """
    if configured:
        return configured.rstrip("/")
    host = request.getHeader(b"host")
    if host is None:
        address = request.getHost()
        host = f"{address.host}:{address.port}".encode("ascii")
    scheme = "wss" if request.isSecure() else "ws"
    return f"{scheme}://{host.decode('latin-1')}"


class EnvironmentApi(resource.Resource):
    """C{POST /cloud/environment/{id}/{action}}."""

    isLeaf = True

    def __init__(self, rendezvous, environment_id: str, action: str) -> None:
        super().__init__()
        self.rendezvous = rendezvous
        self.environment_id = environment_id
        self.action = action

    def render_POST(self, request: server.Request) -> int:
        ensureDeferred(self._answer(request)).addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _answer(self, request: server.Request) -> None:
        try:
            if not self.rendezvous.tokens.allows(self.environment_id, _bearer(request)):
                raise ApiError(401, "unauthorized", "missing or invalid bearer token")
            body = self._body(request)
            result = await getattr(self, "_" + self.action)(request, body)
        except ApiError as e:
            log.info("registry: {action} refused ({status} {code})",
                     action=self.action, status=e.status, code=e.code)
            _write(request, e.status, {"error": {"code": e.code, "message": e.message}})
            return
        _write(request, 200, result)

    def _failed(self, failure: Failure, request: server.Request) -> None:
        log.failure("registry: {action} failed", failure, action=self.action)
        _write(request, 500, {"error": {"code": "internal_error", "message": "internal error"}})

    def _body(self, request: server.Request) -> dict:
        data = request.content.read(MAX_REQUEST_BODY_BYTES + 1)
        if len(data) > MAX_REQUEST_BODY_BYTES:
            raise ApiError(413, "request_too_large", "request body is too large")
        try:
            body = json.loads(data)
        except ValueError:
            raise _bad("request body is not JSON") from None
        if not isinstance(body, dict):
            raise _bad("request body must be a JSON object")
        return body

    def _websocket_url(self, base: str, role: str, ticket: str) -> str:
        environment = quote(self.environment_id, safe="")
        return f"{base}/ws/environment/{environment}?role={role}&ticket={ticket}"

    async def _register(self, request: server.Request, body: dict) -> dict:
        if body.get("security_profile") != SECURITY_PROFILE:
            raise _bad(f"security_profile must be {SECURITY_PROFILE}")
        key = _key(body, "executor_public_key")
        registration = await self.rendezvous.store.register(self.environment_id, key)
        log.info("registry: executor registered")
        return {
            "environment_id": self.environment_id,
            # On the origin the executor reached (in a cluster: the front of
            # every node), never one node's: codex's executor redials the
            # same URL after a drop, and a node may be gone by then.
            "url": self._websocket_url(websocket_base(request, self.rendezvous.websocket_base),
                                       "environment", registration.ticket),
            "security_profile": SECURITY_PROFILE,
            "executor_registration_id": registration.registration_id,
        }

    async def _validate(self, request: server.Request, body: dict) -> dict:
        registration_id = _string(body, "executor_registration_id")
        key = _key(body, "harness_public_key")
        authorization = _string(body, "harness_key_authorization")
        valid = await self.rendezvous.store.validate(
            self.environment_id, registration_id, key, authorization)
        log.info("registry: harness key {outcome}", outcome="valid" if valid else "refused")
        return {"valid": valid}

    async def _executor_base(self, request: server.Request) -> str | None:
        """
        Where the environment's executor socket is: this rendezvous, or in
        a cluster its home node; C{None} while it is not connected.
        """
        node = self.rendezvous.node
        if node is None:
            if not self.rendezvous.router.has_executor(self.environment_id):
                return None
            return websocket_base(request, self.rendezvous.websocket_base)
        home = await node.home(self.environment_id)
        return None if home is None else home.url

    async def _connect(self, request: server.Request, body: dict) -> dict:
        key = _key(body, "harness_public_key")
        base = await self._executor_base(request)
        if base is None:
            raise ApiError(503, "environment_unavailable",
                           "the environment's executor is not connected")
        try:
            grant = await self.rendezvous.store.grant(self.environment_id, key)
        except GrantsExhausted:
            raise ApiError(429, "too_many_connects",
                           "too many unused connections for this environment") from None
        if grant is None:
            raise ApiError(503, "environment_unavailable", "the environment has no executor")
        registration = grant.registration
        return {
            "environment_id": self.environment_id,
            "url": self._websocket_url(base, "harness", grant.ticket),
            "security_profile": SECURITY_PROFILE,
            "executor_registration_id": registration.registration_id,
            "executor_public_key": registration.executor_key.to_json_object(),
            "harness_key_authorization": grant.authorization,
        }


def _write(request: server.Request, status: int, value: Any) -> None:
    if request.finished or request.channel is None:
        return
    body = json.dumps(value, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
