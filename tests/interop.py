"""
Interop harness: run one scripted exchange against the reference server and
against ours, and compare what each answered.

A scenario is an C{async def scenario(peer)} that talks to a server through
a L{Peer}. Everything the peer records (responses, aggregated process
events, disconnects) goes into a transcript; the two transcripts must be
equal after normalization: session ids, peer ports and, unless a scenario
asks for exact sequence numbers, the timing-dependent split of process
output into chunks are normalized away.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import re
import tempfile
import urllib.parse
from typing import Any, Awaitable, Callable

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial import unittest

from tests import support

_PEER_ADDRESS = re.compile(r"(exec-server websocket )(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+")

#: environmentInfo fields that describe the host (equal for both servers);
#: the others describe the implementation (version, build, capabilities).
HOST_FIELDS = ("shell", "cwd", "userHomeDir", "platformOs", "temporaryDirectories", "tempDir")

_ABSENT = object()


def host_facts(info: dict) -> dict:
    return {key: info.get(key, "<absent>") for key in HOST_FIELDS}


class Peer:
    """
    One scripted client connection, recording into a shared transcript.
    """

    def __init__(self, server: support.RunningServer, transcript: list, workdir: str,
                 connections: list | None = None):
        self.server = server
        self.transcript = transcript
        self.workdir = workdir
        self.queue: support.MessageQueue | None = None
        self.session_ids: list[str] = []
        #: Every connection of the scenario, closed when it ends.
        self.connections = connections if connections is not None else []
        self._next_id = 0
        self._auto_ids: set = set()

    @property
    def kind(self) -> str:
        return self.server.kind

    def path(self, *parts: str) -> str:
        """
        A host path inside this server's private working directory.
        """
        return os.path.join(self.workdir, *parts)

    def uri(self, *parts: str) -> str:
        """
        The C{file:} URI of L{path}, spelled as the reference spells URIs.
        """
        return "file://" + urllib.parse.quote(self.path(*parts), safe="/!$&'()*+,;=:@[]^|~")

    async def open(self) -> "Peer":
        self.queue = await support.connect(self.server.url)
        self.connections.append(self.queue)
        return self

    async def reconnect(self) -> "Peer":
        """
        A second connection to the same server, recording into the same
        transcript.
        """
        other = Peer(self.server, self.transcript, self.workdir, self.connections)
        other.session_ids = self.session_ids
        return await other.open()

    def record(self, label: str, value: Any) -> None:
        self.transcript.append((label, self.normalize(value)))

    def normalize(self, value: Any) -> Any:
        text = json.dumps(value, sort_keys=True)
        for index, session_id in enumerate(self.session_ids):
            text = text.replace(session_id, f"<session-{index}>")
        text = text.replace(self.workdir, "<workdir>")
        text = text.replace(self.server.home, "<codex-home>")
        text = _PEER_ADDRESS.sub(r"\1<peer>", text)
        return json.loads(text)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, message: Any) -> None:
        self.queue.send(message)

    def send_raw(self, data: bytes | str, binary: bool = False) -> None:
        self.queue.send_raw(data, binary)

    def request(self, method: str, params: Any = _ABSENT, id: Any = None) -> Any:
        """
        Send a request without waiting; returns its id.
        """
        if id is None:
            id = self.new_id()
            self._auto_ids.add(id)
        message = {"id": id, "method": method}
        if params is not _ABSENT:
            message["params"] = params
        self.send(message)
        return id

    async def response(self, id: Any, label: str | None = None, record=True) -> dict:
        message = await self.queue.response(id)
        if record:
            # Generated ids depend on how often a scenario had to poll; only
            # ids the scenario chose are part of what is compared.
            recorded = dict(message)
            if id in self._auto_ids:
                del recorded["id"]
            self.record(label or f"response {id}", recorded)
        return message

    async def call(self, method: str, params: Any = _ABSENT, label: str | None = None,
                   record=True, id: Any = None) -> dict:
        """
        Send a request, wait for its response and record it.
        """
        request_id = self.request(method, params, id)
        return await self.response(request_id, label or method, record)

    async def next_message(self, label: str) -> dict:
        message = await self.queue.next()
        self.record(label, message)
        return message

    async def handshake(self, client_name: str = "interop", resume: str | None = None) -> dict:
        params = {"clientName": client_name}
        if resume is not None:
            params["resumeSessionId"] = resume
        reply = await self.call("initialize", params, record=False)
        result = reply.get("result")
        if result is not None:
            if result["sessionId"] not in self.session_ids:
                self.session_ids.append(result["sessionId"])
            self.record("initialize", {
                "sessionId": result["sessionId"],
                "environmentInfo": host_facts(result["environmentInfo"]),
            })
            self.send({"method": "initialized", "params": {}})
        else:
            self.record("initialize", reply)
        return reply

    async def process_events(self, process_id: str, exact: bool = False, label=None) -> dict:
        """
        Wait for C{process/closed} of C{process_id} and record its events:
        exactly (every notification) or aggregated (bytes per stream, exit
        code, and whether the sequence numbers were contiguous from 1).
        """
        def for_process(message):
            return message.get("params", {}).get("processId") == process_id

        events = []
        while True:
            message = await self.queue.notification(for_process)
            events.append(message)
            if message["method"] == "process/closed":
                break
        if exact:
            self.record(label or f"events {process_id}", events)
            return {"events": events}
        summary = aggregate(events)
        self.record(label or f"events {process_id}", summary)
        return summary

    async def output_until(self, process_id: str, expected: bytes) -> None:
        """
        Take output notifications of C{process_id} until its output so far
        is C{expected}, and record it.
        """
        output = b""
        while len(output) < len(expected):
            message = await self.queue.notification(
                lambda m: m["method"] == "process/output" and m["params"]["processId"] == process_id
            )
            output += base64.b64decode(message["params"]["chunk"])
        self.record(f"output of {process_id}", output.decode("utf-8", "replace"))

    async def expect_disconnect(self, label: str = "disconnected") -> None:
        try:
            await support.with_timeout(self.queue.lost)
        except Exception:
            self.record(label, False)
            raise
        self.record(label, True)

    async def close(self) -> None:
        await self.queue.close()


def aggregate(events: list[dict]) -> dict:
    streams: dict[str, bytes] = {}
    seqs = []
    exit_code = None
    sandbox_denied = None
    for message in events:
        params = message["params"]
        seqs.append(params["seq"])
        if message["method"] == "process/output":
            chunk = base64.b64decode(params["chunk"])
            streams[params["stream"]] = streams.get(params["stream"], b"") + chunk
        elif message["method"] == "process/exited":
            exit_code = params["exitCode"]
            sandbox_denied = params["sandboxDenied"]
    return {
        "output": {name: data.decode("utf-8", "replace") for name, data in sorted(streams.items())},
        "exitCode": exit_code,
        "sandboxDenied": sandbox_denied,
        "closed": events[-1]["method"] == "process/closed",
        "seqsContiguous": sorted(seqs) == list(range(1, len(seqs) + 1)),
    }


Scenario = Callable[[Peer], Awaitable[None]]


Wrapper = Callable[[str], list]


async def run_against(kind: str, scenario: Scenario, args=(), env=None,
                      ignored_signals=(), wrapper: Wrapper | None = None) -> list:
    """
    Run C{scenario} against a fresh server of C{kind}, started in a working
    directory of its own (the transcript calls it C{<workdir>}, and its
    C{CODEX_HOME} C{<codex-home>}) with C{ignored_signals} ignored;
    C{wrapper(kind)} is a command that runs the server.
    """
    workdir = tempfile.mkdtemp(prefix=f"execserver-interop-{kind}-")
    workdir = os.path.realpath(workdir)
    server = await support.start_server(kind, list(args), env=env, cwd=workdir,
                                        ignored_signals=ignored_signals,
                                        wrapper=wrapper(kind) if wrapper else ())
    transcript: list = []
    connections: list = []
    try:
        peer = await Peer(server, transcript, workdir, connections).open()
        await scenario(peer)
    finally:
        for queue in connections:
            await queue.close()
        await server.stop()
    return transcript


def _render(transcript: list) -> list[str]:
    return [
        f"{label}: {json.dumps(value, sort_keys=True)}"
        for label, value in transcript
    ]


class InteropTestCase(unittest.TestCase):
    """
    Tests whose scenarios run against both servers; see L{interop}.
    """

    timeout = 120

    async def compare(self, scenario: Scenario, args=(), env=None, ignored_signals=(),
                      wrapper: Wrapper | None = None) -> list:
        # Both runs finish (and clean up) before either failure is reported.
        results = await DeferredList([
            ensureDeferred(run_against(kind, scenario, args, env, ignored_signals, wrapper))
            for kind in ("reference", "ours")
        ], consumeErrors=True)
        for kind, (succeeded, result) in zip(("reference", "ours"), results):
            if not succeeded:
                self.fail(f"the scenario failed against {kind}:\n{result.getTraceback()}")
        (_, reference), (_, ours) = results
        if reference != ours:
            diff = "\n".join(difflib.unified_diff(
                _render(reference), _render(ours), "reference", "ours", lineterm=""
            ))
            self.fail("transcripts differ:\n" + diff)
        return ours


def interop(scenario: Scenario, args=(), env=None, ignored_signals=(),
            wrapper: Wrapper | None = None):
    """
    Make a test method that runs C{scenario} against both servers (started
    with C{ignored_signals} ignored) and compares the transcripts.
    """

    def test(self):
        return ensureDeferred(self.compare(scenario, args, env, ignored_signals, wrapper))

    test.__doc__ = scenario.__doc__
    return test
