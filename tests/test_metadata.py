"""
process/start's C{metadata}: the thread id (a UUID, read as the uuid crate
reads it) and tool call id that the child finds in its environment. The
texts and spellings were observed on the reference (docs/reference/methods.md).
"""

from twisted.trial import unittest

from execserver import params as P
from execserver import uuids
from execserver.process_methods import StartParams, child_environment

THREAD = "67e55044-10b1-426f-9247-bb680e5fe0c8"


class UuidTests(unittest.TestCase):
    def test_every_accepted_form_reads_as_the_hyphenated_lowercase_spelling(self):
        for text in (THREAD, THREAD.upper(), THREAD.replace("-", ""), "{" + THREAD + "}",
                     "urn:uuid:" + THREAD):
            self.assertEqual(uuids.parse(text), THREAD)

    def test_rejections_carry_the_uuid_crate_texts(self):
        cases = {
            "": "invalid length: expected length 32 for simple format, found 0",
            "5": "invalid length: expected length 32 for simple format, found 1",
            "é": "invalid character: expected an optional prefix of `urn:uuid:` "
                 "followed by [0-9a-fA-F-], found `é` at 1",
            "/x": "invalid character: expected an optional prefix of `urn:uuid:` "
                  "followed by [0-9a-fA-F-], found `/` at 1",
            "{00000000000000000000000000000000}": "invalid group count: expected 5, found 1",
            "67e550-4105b1426f9247bb680e5fe0c": "invalid group count: expected 5, found 2",
            "F9168C5E-CEB2-4faa-B6BF1-02BF39FA1E4": "invalid group length in group 3: expected 4, found 5",
            "URN:UUID:" + THREAD: "invalid character: expected an optional prefix of `urn:uuid:` "
                                  "followed by [0-9a-fA-F-], found `U` at 1",
            "{" + THREAD: "invalid character: expected an optional prefix of `urn:uuid:` "
                          "followed by [0-9a-fA-F-], found `{` at 1",
            THREAD + "0": "invalid group length in group 4: expected 12, found 13",
        }
        for text, message in cases.items():
            with self.assertRaises(P.DecodeError) as caught:
                uuids.parse(text)
            self.assertEqual(str(caught.exception), message, text)


def start(**extra):
    params = {"processId": "p", "argv": ["/bin/true"], "cwd": "file:///tmp", "env": {}, "tty": False}
    params.update(extra)
    return params


class DecodingTests(unittest.TestCase):
    def test_metadata_is_optional_and_its_fields_too(self):
        self.assertIsNone(P.decode_params(StartParams, start())["metadata"])
        self.assertEqual(P.decode_params(StartParams, start(metadata={}))["metadata"],
                         {"threadId": None, "toolCallId": None})

    def test_the_thread_id_is_kept_in_its_canonical_spelling(self):
        decoded = P.decode_params(StartParams, start(metadata={"threadId": "{" + THREAD.upper() + "}"}))
        self.assertEqual(decoded["metadata"]["threadId"], THREAD)

    def test_positional_params_follow_the_reference_declaration_order(self):
        decoded = P.decode_params(StartParams, ["p", [THREAD, "c"], ["/bin/true"], "file:///tmp",
                                                None, None, {"A": "1"}, True, False, None,
                                                None, False, None, None])
        self.assertEqual((decoded["metadata"]["toolCallId"], decoded["env"], decoded["tty"]),
                         ("c", {"A": "1"}, True))
        with self.assertRaises(P.DecodeError) as caught:
            P.decode_params(StartParams, ["p"])
        self.assertEqual(str(caught.exception),
                         "invalid length 1, expected struct WireExecParams with 14 elements")


class EnvironmentTests(unittest.TestCase):
    def test_metadata_names_the_thread_and_tool_call(self):
        env = child_environment({"A": "1"}, None, {"threadId": THREAD, "toolCallId": "call"})
        self.assertEqual(env, {"A": "1", "CODEX_THREAD_ID": THREAD, "CODEX_TOOL_CALL_ID": "call"})

    def test_a_tool_call_id_comes_only_from_metadata(self):
        env = child_environment({"CODEX_TOOL_CALL_ID": "x", "codex_tool_call_id": "y"}, None)
        self.assertEqual(env, {"codex_tool_call_id": "y"})

    def test_without_metadata_a_requested_thread_id_stays(self):
        self.assertEqual(child_environment({"CODEX_THREAD_ID": "t"}, None), {"CODEX_THREAD_ID": "t"})

    def test_metadata_without_a_thread_removes_the_requested_one(self):
        env = child_environment({"CODEX_THREAD_ID": "t"}, None, {"threadId": None, "toolCallId": None})
        self.assertEqual(env, {})

    def test_a_tool_call_id_with_a_nul_is_left_out(self):
        env = child_environment({}, None, {"threadId": None, "toolCallId": "a\0b"})
        self.assertEqual(env, {})
