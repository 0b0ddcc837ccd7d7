"""
Capability discovery's own pieces: Rust's UTF-8 error texts, URIs as the
reference's PathUri takes them apart, and the refusal of a sandbox we
cannot enforce.
"""

import os

from twisted.trial import unittest

from execserver import capabilities, sandbox
from tests.support import scratch_directory


class Utf8ErrorTests(unittest.TestCase):
    def test_valid_text_has_no_error(self):
        self.assertIsNone(capabilities.utf8_error("é".encode()))

    def test_an_invalid_sequence_is_measured_from_where_valid_text_ends(self):
        self.assertEqual(capabilities.utf8_error(b"ab\xff"), "invalid utf-8 sequence of 1 bytes from index 2")
        self.assertEqual(capabilities.utf8_error(b"\xe2\x82x"), "invalid utf-8 sequence of 2 bytes from index 0")

    def test_a_truncated_sequence_at_the_end_is_incomplete(self):
        self.assertEqual(capabilities.utf8_error(b"a\xe2\x82"), "incomplete utf-8 byte sequence from index 1")


class UriTests(unittest.TestCase):
    def test_parents_end_at_the_root(self):
        self.assertEqual(capabilities.uri_parent("file:///a/b/"), "file:///a")
        self.assertEqual(capabilities.uri_parent("file:///a"), "file:///")
        self.assertIsNone(capabilities.uri_parent("file:///"))

    def test_joined_names_are_spelled_as_uri_segments(self):
        self.assertEqual(capabilities.uri_join("file:///a/", "b c", "d"), "file:///a/b%20c/d")

    def test_plugin_roots_hold_their_manifest_folder(self):
        self.assertEqual(capabilities.plugin_root_of("file:///p/.codex-plugin/plugin.json"), "file:///p")


class RestrictedSandboxTests(unittest.TestCase):
    def test_a_root_behind_a_sandbox_we_cannot_enforce_fails_alone(self):
        root = scratch_directory(self, "execserver-capabilities-")
        uri = "file://" + root
        with open(os.path.join(root, "SKILL.md"), "w") as f:
            f.write("skill")
        refused = capabilities.discover_root("r", uri, sandbox.UNSUPPORTED)
        self.assertEqual(refused["error"], f"failed to inspect capability root {uri}: {sandbox.UNSUPPORTED}")
        self.assertEqual(refused["skills"], [])
        found = capabilities.discover_root("r", uri)
        self.assertEqual([s["instructions"]["contents"] for s in found["skills"]], ["skill"])
