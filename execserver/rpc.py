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

from execserver import wirejson

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = -32004
SESSION_ALREADY_ATTACHED = -32010

#: The id used to answer a message whose own id could not be read.
MALFORMED_ID = -1

#: At most this many JSON values (scalars, arrays and objects) per message.
MAX_JSON_VALUES = 256 * 1024

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


def parse(data: bytes | str) -> Message:
    """
    Parse and classify one message.

    @raise MalformedMessage: with the reference's detail text.
    """
    try:
        value = wirejson.loads(data)
    except wirejson.JsonSyntaxError as e:
        raise MalformedMessage(str(e)) from None
    _check_limits(value)
    return classify(value)


def _check_limits(value: Any) -> None:
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        if count > MAX_JSON_VALUES:
            raise MalformedMessage(
                f"JSON-RPC message exceeds the limit of {MAX_JSON_VALUES} JSON values"
            )


def _valid_id(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return type(value) is int and I64_MIN <= value <= I64_MAX


def classify(value: Any) -> Message:
    if not isinstance(value, dict):
        raise MalformedMessage(_no_variant())
    if "method" in value:
        method = value["method"]
        if not isinstance(method, str):
            raise MalformedMessage(_no_variant())
        if "id" in value:
            if not _valid_id(value["id"]):
                raise MalformedMessage(_no_variant())
            return Request(value["id"], method, value.get("params"))
        return Notification(method, value.get("params"))
    if "id" not in value or not _valid_id(value["id"]):
        raise MalformedMessage(_no_variant())
    if "result" in value:
        return Response(value["id"], value["result"])
    error = value.get("error")
    if (
        isinstance(error, dict)
        and type(error.get("code")) is int
        and isinstance(error.get("message"), str)
    ):
        return ErrorResponse(value["id"], error["code"], error["message"])
    raise MalformedMessage(_no_variant())


def _no_variant() -> str:
    return "data did not match any variant of untagged enum JSONRPCMessage"


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


def encode_response(id: int | str, result: Any) -> bytes:
    return wirejson.dumps({"id": id, "result": result})


def encode_error(id: int | str, code: int, message: str) -> bytes:
    return wirejson.dumps({"error": {"code": code, "message": message}, "id": id})
