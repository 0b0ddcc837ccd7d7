"""
The codex JSON-RPC dialect: JSON-RPC 2.0 shapes without the C{"jsonrpc"}
member, one message per transport message.

    request       {"id": 1, "method": "m", "params": ...}
    notification  {"method": "m", "params": ...}
    response      {"id": 1, "result": ...}
    error         {"error": {"code": -32600, "message": "..."}, "id": 1}

Ids are strings or signed 64-bit integers. Malformed input is answered with
id -1. Both the server and the client use this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from execserver import params as P
from execserver import wirejson

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = -32004
SESSION_ALREADY_ATTACHED = -32010

#: The id used to answer a message whose own id could not be read.
MALFORMED_ID = -1

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


class RpcError(Exception):
    """
    A JSON-RPC error to send to the peer, with the reference's code and text.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


def invalid_request(message: str) -> RpcError:
    return RpcError(INVALID_REQUEST, message)


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def internal_error(message: str) -> RpcError:
    return RpcError(INTERNAL_ERROR, message)


def not_found(message: str) -> RpcError:
    return RpcError(NOT_FOUND, message)


class MalformedMessage(ValueError):
    """
    The message is not JSON, or not one of the four message shapes.
    """


@dataclass(frozen=True, slots=True)
class Request:
    id: int | str
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: Any


@dataclass(frozen=True, slots=True)
class Response:
    id: int | str
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    id: int | str
    code: int
    message: str


Message = Request | Notification | Response | ErrorResponse


class NeedsDiagnosis(MalformedMessage):
    """
    The message is malformed JSON, and finding the reference's text for it
    may take a while: call L{parse} again with C{diagnose_now=True}.
    """


def parse(data: bytes | str, diagnose_now: bool = True) -> Message:
    """
    Parse and classify one message, checking in the reference's order:
    the first JSON value, that it is an object, its envelope, and only then
    whatever trails it.

    @param diagnose_now: when false, JSON the fast parser refuses raises
        L{NeedsDiagnosis} rather than being diagnosed here.
    @raise MalformedMessage: with the reference's detail text.
    """
    try:
        document = wirejson.parse_document(data, diagnose_now)
    except wirejson.NeedsDiagnosis:
        raise NeedsDiagnosis() from None
    except wirejson.JsonSyntaxError as e:
        raise MalformedMessage(str(e)) from None
    if not isinstance(document.value, dict):
        raise MalformedMessage("expected a JSON-RPC object")
    message = classify(document.value)
    trailing = document.trailing_error()
    if trailing is not None:
        raise MalformedMessage(trailing)
    return message


class _RequestId(P.Type):
    """
    A string or a signed 64-bit integer, with serde's texts for the rest.
    """

    def decode(self, value: Any) -> int | str:
        if isinstance(value, str) or (type(value) is int and I64_MIN <= value <= I64_MAX):
            return value
        if type(value) is int and -(2**127) <= value < I64_MIN:
            raise P.DecodeError(f"invalid type: integer `{value}` as i128, expected any value")
        if type(value) is int and 2**64 <= value < 2**128:
            raise P.DecodeError(f"invalid type: integer `{value}` as u128, expected any value")
        raise P.DecodeError("data did not match any variant of untagged enum RequestId")


_ID = _RequestId()
_TRACE = P.Struct("W3cTraceContext", [
    P.Field("traceparent", P.Optional(P.String())),
    P.Field("tracestate", P.Optional(P.String())),
])
_REQUEST = P.Struct("JSONRPCRequest", [
    P.Field("id", _ID),
    P.Field("method", P.String()),
    P.Field("params", P.Optional(P.AnyValue())),
    P.Field("trace", P.Optional(_TRACE)),
])
_NOTIFICATION = P.Struct("JSONRPCNotification", [
    P.Field("method", P.String()),
    P.Field("params", P.Optional(P.AnyValue())),
])
_RESPONSE = P.Struct("JSONRPCResponse", [
    P.Field("id", _ID),
    P.Field("result", P.AnyValue()),
])
_ERROR = P.Struct("JSONRPCError", [
    P.Field("error", P.Struct("JSONRPCErrorError", [
        P.Field("code", P.Int("i64")),
        P.Field("message", P.String()),
        P.Field("data", P.Optional(P.AnyValue())),
    ])),
    P.Field("id", _ID),
])


def classify(value: dict) -> Message:
    """
    A C{method} makes a request (with an id) or a notification; else a
    C{result} makes a response; anything else is an error object.
    """
    method = value.get("method")
    if type(method) is str and "id" in value and "trace" not in value:
        # The common case, without the general decoder: the other fields
        # are any params, and members the request ignores ("jsonrpc").
        id = value["id"]
        if isinstance(id, str) or (type(id) is int and I64_MIN <= id <= I64_MAX):
            return Request(id, method, value.get("params"))
    try:
        if "method" in value:
            if "id" in value:
                decoded = _REQUEST.decode(value)
                return Request(decoded["id"], decoded["method"], decoded["params"])
            decoded = _NOTIFICATION.decode(value)
            return Notification(decoded["method"], decoded["params"])
        if "result" in value:
            decoded = _RESPONSE.decode(value)
            return Response(decoded["id"], decoded["result"])
        decoded = _ERROR.decode(value)
    except P.DecodeError as e:
        raise MalformedMessage(str(e)) from None
    return ErrorResponse(decoded["id"], decoded["error"]["code"], decoded["error"]["message"])


def encode_request(id: int | str, method: str, params: Any) -> bytes:
    message: dict[str, Any] = {"id": id, "method": method}
    if params is not None:
        message["params"] = params
    return wirejson.dumps(message)


def encode_notification(method: str, params: Any) -> bytes:
    message: dict[str, Any] = {"method": method}
    if params is not None:
        message["params"] = params
    return wirejson.dumps(message)


class RawJson:
    """
    A result already serialized as JSON, in parts. Handlers that return
    megabytes of base64 build it where the data is (in a worker thread);
    the parts go to the transport as they are, never re-scanned by the JSON
    encoder or joined into one more copy.
    """

    __slots__ = ("parts",)

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts


def encode_response(id: int | str, result: Any) -> bytes | tuple[bytes, ...]:
    if isinstance(result, RawJson):
        return (b'{"id":' + wirejson.dumps(id) + b',"result":', *result.parts, b"}")
    return wirejson.dumps({"id": id, "result": result})


def encode_error(id: int | str, code: int, message: str) -> bytes:
    return wirejson.dumps({"error": {"code": code, "message": message}, "id": id})
