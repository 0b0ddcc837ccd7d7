"""
Capability discovery's own pieces: Rust's UTF-8 error texts, URIs as the
reference's PathUri takes them apart, and the refusal of a sandbox we
cannot enforce.
"""

import os

from twisted.trial import unittest

from execserver import capabilities, discovery, skillfiles
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
        refused = capabilities.discover_root("r", uri, capabilities.READS_RESTRICTED)
        self.assertEqual(refused["error"],
                         f"failed to inspect capability root {uri}: {capabilities.READS_RESTRICTED}")
        self.assertEqual(refused["skills"], [])
        found = capabilities.discover_root("r", uri)
        self.assertEqual([s["instructions"]["contents"] for s in found["skills"]], ["skill"])


class SkillFileTests(unittest.TestCase):
    """
    SKILL.md front matter and agents/openai.yaml, read as the reference
    reads them.
    """

    def test_a_skill_needs_front_matter_and_a_description(self):
        for contents in ("no front matter", "---\nname: x\n---\n", "---\nname: x\ndescription: d\n",
                         '---\nname: x\ndescription: ""\n---\n', "\ufeff---\nname: x\ndescription: d\n---\n"):
            self.assertRaises(skillfiles.InvalidSkill, skillfiles.parse_skill, contents, "dir")

    def test_names_default_to_the_directory_and_text_is_one_line(self):
        parsed = skillfiles.parse_skill("---\ndescription: |\n  one\n  two\nmetadata:\n"
                                        "  short-description: '  s  '\n---\n", "dir name")
        self.assertEqual(parsed, {"name": "dir name", "description": "one two", "shortDescription": "s"})

    def test_scalars_are_taken_as_written(self):
        parsed = skillfiles.parse_skill("---\nname: 0x10\ndescription: 1e3\n---\n", "d")
        self.assertEqual((parsed["name"], parsed["description"]), ("0x10", "1e3"))

    def test_prose_with_colons_is_quoted_and_read_again(self):
        parsed = skillfiles.parse_skill("---\nname: n\ndescription: Build for AWS: ECS # note\n---\n", "d")
        self.assertEqual(parsed["description"], "Build for AWS: ECS")

    def test_names_are_at_most_64_characters(self):
        skillfiles.parse_skill("---\nname: %s\ndescription: d\n---\n" % ("n" * 64), "d")
        with self.assertRaises(skillfiles.InvalidSkill):
            skillfiles.parse_skill("---\nname: %s\ndescription: d\n---\n" % ("n" * 65), "d")

    def test_metadata_keeps_valid_tools_and_drops_an_invalid_policy(self):
        metadata = skillfiles.skill_metadata(
            "policy:\n  products: [nope]\ndependencies:\n  tools:\n    - type: cli\n      value: gh\n"
            "    - type: mcp\n")
        self.assertEqual(metadata, {"policy": None, "dependencies": {"tools": [{
            "type": "cli", "value": "gh", "description": None, "transport": None, "command": None,
            "url": None, "oauthCallbackPort": None}]}})

    def test_unreadable_metadata_is_no_metadata(self):
        self.assertEqual(skillfiles.skill_metadata("not: [valid"), {"dependencies": None, "policy": None})


class PluginVersionTests(unittest.TestCase):
    def test_local_wins_then_the_highest_version(self):
        root = scratch_directory(self, "execserver-versions-")
        for version in ("1.2.0", "1.10.0", "1.10.0-rc.1", "not.semver"):
            os.mkdir(os.path.join(root, version))
        self.assertEqual(discovery.active_version(root), "not.semver")
        os.rmdir(os.path.join(root, "not.semver"))
        self.assertEqual(discovery.active_version(root), "1.10.0")
        os.mkdir(os.path.join(root, "local"))
        self.assertEqual(discovery.active_version(root), "local")
