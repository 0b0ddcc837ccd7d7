"""
The end-to-end harness's own parts, without codex: the scripted model over
real HTTP, the normalization, the TOML it writes, accepted differences.
"""

from __future__ import annotations

import io
import json
import re
import tomllib

from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests import support
from tests.codex import model, runner
from tests.codex.compare import Difference
from tests.codex.normalize import comparable, normalize_outputs
from tests.codex.scenario import Scenario, exec_command, view_image, write_stdin

SCENARIO = Scenario(
    name="two turns",
    turns=(
        (exec_command("start", "cat", tty=True), view_image("image", "a.png")),
        (write_stdin("write", "start", "x\n"),),
    ),
)


def events(body: bytes) -> list[dict]:
    return [json.loads(line[len(b"data: "):]) for line in body.split(b"\n")
            if line.startswith(b"data: ")]


def output_items(body: bytes) -> list[dict]:
    return [event["item"] for event in events(body) if event["type"] == "response.output_item.done"]


class ScriptedModelTests(unittest.TestCase):
    async def post(self, path: bytes, conversation: list[dict]) -> tuple[int, bytes]:
        response = await support.with_timeout(Agent(reactor).request(
            b"POST", b"http://127.0.0.1:%d%s" % (self.port.getHost().port, path),
            Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(io.BytesIO(json.dumps({"input": conversation}).encode())),
        ))
        return response.code, await support.with_timeout(readBody(response))

    async def serve(self, scenario: Scenario) -> model.ScriptedModel:
        scripted = model.ScriptedModel(scenario)
        self.port = await model.listen(reactor, scripted)
        self.addCleanup(self.port.stopListening)
        return scripted

    async def test_each_request_gets_the_first_turn_not_yet_called(self):
        await self.serve(SCENARIO)
        user = {"type": "message", "role": "user", "content": []}
        code, body = await self.post(b"/v1/responses", [user])
        self.assertEqual(code, 200)
        first = output_items(body)
        self.assertEqual([(item["call_id"], item["name"]) for item in first],
                         [("start", "exec_command"), ("image", "view_image")])
        self.assertEqual(json.loads(first[0]["arguments"]), {"cmd": "cat", "tty": True})
        # The same conversation again (a retry) gets the same answer.
        self.assertEqual(output_items((await self.post(b"/v1/responses", [user]))[1]), first)

    async def test_events_end_with_response_completed(self):
        await self.serve(SCENARIO)
        _, body = await self.post(b"/v1/responses", [])
        types = [event["type"] for event in events(body)]
        self.assertEqual(types, ["response.created", "response.output_item.done",
                                 "response.output_item.done", "response.completed"])

    async def test_outputs_are_recorded_and_fill_in_sessions(self):
        scripted = await self.serve(SCENARIO)
        conversation = [
            *output_items((await self.post(b"/v1/responses", []))[1]),
            {"type": "function_call_output", "call_id": "start",
             "output": "Process running with session ID 4711\nOutput:\n"},
            {"type": "function_call_output", "call_id": "image", "output": [{"type": "input_image"}]},
        ]
        (item,) = output_items((await self.post(b"/v1/responses", conversation))[1])
        self.assertEqual(json.loads(item["arguments"]), {"session_id": 4711, "chars": "x\n"})
        self.assertEqual(scripted.outputs, {
            "start": "Process running with session ID 4711\nOutput:\n",
            "image": [{"type": "input_image"}],
        })

    async def test_a_message_ends_the_script(self):
        await self.serve(Scenario("one", ((exec_command("only", "true"),),)))
        conversation = [*output_items((await self.post(b"/v1/responses", []))[1]),
                        {"type": "function_call_output", "call_id": "only", "output": "done"}]
        (item,) = output_items((await self.post(b"/v1/responses", conversation))[1])
        self.assertEqual(item["type"], "message")
        self.assertEqual(item["content"][0]["text"], model.FINAL_MESSAGE)

    async def test_a_session_that_was_never_reported_ends_the_script(self):
        scripted = await self.serve(SCENARIO)
        conversation = [
            *output_items((await self.post(b"/v1/responses", []))[1]),
            {"type": "function_call_output", "call_id": "start", "output": "Process exited with code 0"},
            {"type": "function_call_output", "call_id": "image", "output": "no"},
        ]
        (item,) = output_items((await self.post(b"/v1/responses", conversation))[1])
        self.assertEqual(item["type"], "message")
        self.assertEqual(scripted.errors, ["no session in the output of 'start'"])

    async def test_other_paths_are_not_found(self):
        await self.serve(SCENARIO)
        code, _ = await self.post(b"/v1/chat/completions", [])
        self.assertEqual(code, 404)


class NormalizeTests(unittest.TestCase):
    def test_random_parts_become_placeholders(self):
        outputs = {
            "a": "Chunk ID: 3f9a1c\nWall time: 1.0013 seconds\n"
                 "Process running with session ID 41263\nOutput:\n/var/tmp/x-1/work\n",
            "b": "Chunk ID: 00aa11\nWall time: 0 seconds\nProcess running with session ID 777\n",
            "c": "Process exited; session ID 41263",
        }
        calls = [exec_command(label, "true") for label in "abc"]
        self.assertEqual(normalize_outputs(outputs, calls, "/var/tmp/x-1"), {
            "a": "Chunk ID: <chunk>\nWall time: <wall>\n"
                 "Process running with session ID <session-0>\nOutput:\n<scratch>/work\n",
            "b": "Chunk ID: <chunk>\nWall time: <wall>\nProcess running with session ID <session-1>\n",
            "c": "Process exited; session ID <session-0>",
        })

    def test_unordered_outputs_compare_as_sorted_words(self):
        call = exec_command("x", "true", unordered=True)
        self.assertEqual(comparable(call, "err\nout"), comparable(call, "out\nerr"))
        # A line of one stream cut by a line of the other.
        self.assertEqual(comparable(call, "touch: cannot touch 'f'\nrc=1\n"),
                         comparable(call, "cannot touch 'f'\ntouch: rc=1\n"))
        self.assertNotEqual(comparable(call, "rc=1\n"), comparable(call, "rc=0\n"))
        # The output itself keeps its order (expectations are looked for in it).
        self.assertEqual(normalize_outputs({"x": "out\nerr"}, [call], "/s"), {"x": "out\nerr"})
        ordered = exec_command("y", "true")
        self.assertEqual(comparable(ordered, "out\nerr"), "out\nerr")

    def test_content_items_are_json(self):
        outputs = {"i": [{"type": "input_image", "image_url": "data:/var/tmp/s"}]}
        self.assertEqual(normalize_outputs(outputs, [view_image("i", "p")], "/var/tmp/s"),
                         {"i": '[{"image_url": "data:<scratch>", "type": "input_image"}]'})


class TomlTests(unittest.TestCase):
    def test_config_reads_back(self):
        text = runner.config_toml("http://127.0.0.1:9/v1", {"sandbox_mode": "read-only"})
        config = tomllib.loads(text)
        self.assertEqual(config["sandbox_mode"], "read-only")
        self.assertEqual(config["model_provider"], runner.PROVIDER)
        self.assertEqual(config["model_providers"][runner.PROVIDER]["base_url"], "http://127.0.0.1:9/v1")
        self.assertIs(config["model_providers"][runner.PROVIDER]["requires_openai_auth"], False)

    def test_environments_read_back(self):
        environment = {"id": "e2e", "program": "/bin/x", "args": ["-c", 'say "hi"\n'],
                       "env": {"A": "b"}}
        self.assertEqual(tomllib.loads(runner.environments_toml([environment])), {
            "default": "e2e", "include_local": False, "environments": [environment],
        })


class DifferenceTests(unittest.TestCase):
    difference = Difference(doc="test", reference=re.compile("code 1$"),
                            ours=re.compile("code 13[0-9]$"), placeholder="code <signal>")

    def test_both_sides_must_show_it(self):
        self.assertEqual(self.difference.accept("code 1", "code 130"), ("code <signal>", "code <signal>"))
        self.assertEqual(self.difference.accept("code 1", "code 1"), ("code 1", "code 1"))
        self.assertEqual(self.difference.accept("code 0", "code 130"), ("code 0", "code 130"))
