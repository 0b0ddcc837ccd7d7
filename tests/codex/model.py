"""
A scripted model: the Responses API as codex uses it, over real HTTP.

Codex POSTs C{/v1/responses} with the whole conversation in C{input} and
reads server-sent events back. Each answer is C{response.created}, one
C{response.output_item.done} per output item and C{response.completed}
(with C{usage}; codex needs nothing else). A C{function_call} item makes
codex call that tool; its result, the C{function_call_output} with the same
C{call_id}, is in the C{input} of codex's next request. A reply with only an
assistant message ends the turn, and C{codex exec} exits.

The next scripted turn is chosen from the conversation itself (the first
turn with a call that C{input} does not hold yet), so a request that codex
repeats gets the same answer.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.web import resource, server

from tests.codex.scenario import MissingSession, Scenario

log = Logger()

#: What the model says when the script is done.
FINAL_MESSAGE = "Done."

#: The token usage every response reports.
USAGE = {
    "input_tokens": 1,
    "input_tokens_details": None,
    "output_tokens": 1,
    "output_tokens_details": None,
    "total_tokens": 2,
}


def event_stream(response_id: str, items: list[dict]) -> bytes:
    """
    The server-sent events of one response that outputs C{items}.
    """
    events = [("response.created", {"type": "response.created", "response": {"id": response_id}})]
    for item in items:
        events.append(("response.output_item.done",
                       {"type": "response.output_item.done", "item": item}))
    events.append(("response.completed", {
        "type": "response.completed",
        "response": {"id": response_id, "usage": USAGE},
    }))
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def assistant_message(text: str) -> dict:
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_final",
        "content": [{"type": "output_text", "text": text}],
    }


class ScriptedModel(resource.Resource):
    """
    Answers codex's requests from a L{Scenario} and records what codex sent.

    @ivar outputs: the C{output} of every C{function_call_output}, by call
        label, as codex first sent it (a string, or a list of content items
        such as an C{input_image}).
    @ivar requests: the body of every request, in order.
    @ivar errors: what went wrong in the script (codex then got the final
        message early, so the run ends).
    """

    isLeaf = True

    def __init__(self, scenario: Scenario) -> None:
        super().__init__()
        self.scenario = scenario
        self.outputs: dict[str, Any] = {}
        self.requests: list[dict] = []
        self.errors: list[str] = []

    def render_POST(self, request: server.Request) -> bytes:
        if request.path != b"/v1/responses":
            request.setResponseCode(404)
            return b""
        body = json.load(request.content)
        self.requests.append(body)
        called = set()
        for item in body.get("input", []):
            if item.get("type") == "function_call":
                called.add(item.get("call_id"))
            elif item.get("type") == "function_call_output":
                self.outputs.setdefault(item["call_id"], item["output"])
        request.setHeader(b"content-type", b"text/event-stream")
        return event_stream(f"resp_{len(self.requests)}", self._answer(called))

    def _answer(self, called: set) -> list[dict]:
        for turn in self.scenario.turns:
            if all(call.label in called for call in turn):
                continue
            try:
                return [call.item(self.outputs) for call in turn]
            except MissingSession as e:
                self.errors.append(str(e))
                log.error("scripted model: {error}", error=str(e))
                break
        return [assistant_message(FINAL_MESSAGE)]


async def listen(reactor, model: ScriptedModel):
    """
    Serve C{model} on an ephemeral loopback port; returns the listening port.
    """
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    return await endpoint.listen(server.Site(model))
