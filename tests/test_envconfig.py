"""
environmentConfig/read's pieces: the toml crate's spelling of TOML, the
projection of layers onto the asked paths, and the reading of project
layers, on real directories. The reference's behaviour is compared in
tests/test_interop_envconfig.py.
"""

import datetime
import os

from twisted.trial import unittest

from execserver import envconfig, tomlwriter
from tests.support import scratch_directory


class TomlWriterTests(unittest.TestCase):
    def test_strings_take_the_first_spelling_without_escapes(self):
        cases = {
            "plain": '"plain"',
            'say "x"': "'say \"x\"'",
            "quote\" and 'single'": '"""quote" and \'single\'"""',
            "a\nb": '"""\na\nb"""',
            "back\\slash\nand 'q'": "'''\nback\\slash\nand 'q''''",
            "tab\tonly": '"tab\\tonly"',
            "ctrl\x01\x7f": '"ctrl\\u0001\\u007F"',
            '"""': "'\"\"\"'",
        }
        for value, spelled in cases.items():
            self.assertEqual(tomlwriter.format_string(value), spelled, repr(value))

    def test_keys_are_bare_where_they_can_be(self):
        self.assertEqual([tomlwriter.format_key(k) for k in ("a-b_1", "a b", "", "it's", 'say "x"')],
                         ["a-b_1", '"a b"', '""', "\"it's\"", "'say \"x\"'"])

    def test_numbers_and_dates_are_spelled_as_rust_prints_them(self):
        values = [1e10, 6.02e-23, -0.0, float("inf"), float("nan"), 1.5,
                  datetime.datetime(1979, 5, 27, 7, 32, tzinfo=datetime.timezone.utc),
                  datetime.datetime(1979, 5, 27, 0, 32, 0, 500000,
                                    tzinfo=datetime.timezone(datetime.timedelta(hours=-7))),
                  datetime.time(7, 32), datetime.date(1979, 5, 27)]
        self.assertEqual([tomlwriter.format_value(v) for v in values], [
            "10000000000.0", "0.0000000000000000000000602", "-0.0", "inf", "nan", "1.5",
            "1979-05-27T07:32:00Z", "1979-05-27T00:32:00.5-07:00", "07:32:00", "1979-05-27"])

    def test_values_come_before_tables_and_only_needed_headers_are_written(self):
        document = {"t": {"arr": [{"a": 1}], "plain": 1}, "x": 1,
                    "implicit": {"only": {"v": 1}}, "empty": {}, "aot": [{}, {"s": {"q": 1}}]}
        self.assertEqual(tomlwriter.dumps(document), (
            "x = 1\n\n[t]\nplain = 1\n\n[[t.arr]]\na = 1\n\n[implicit.only]\nv = 1\n\n[empty]\n\n"
            "[[aot]]\n\n[[aot]]\n\n[aot.s]\nq = 1\n"))

    def test_mixed_arrays_stay_inline(self):
        self.assertEqual(tomlwriter.dumps({"a": ["x", {"y": 1}, {}]}), 'a = ["x", { y = 1 }, {}]\n')


class ProjectionTests(unittest.TestCase):
    layers = [("system", "/etc/codex", {"a": {"b": 1, "c": 2}}),
              ("user", "/home", {"a": "not a table", "d": 3})]

    def test_paths_select_and_empty_layers_go(self):
        projected = envconfig.project(self.layers, 1, [["d"]])
        self.assertEqual(projected, {"layers": [{"source": "user", "baseDir": "file:///home", "toml": "d = 3\n"}],
                                     "cloudInsertionIndex": 0})

    def test_a_value_that_is_not_a_table_overrides_whole(self):
        projected = envconfig.project(self.layers, 1, [["a", "b"]])
        self.assertEqual([layer["toml"] for layer in projected["layers"]],
                         ["[a]\nb = 1\n", 'a = "not a table"\n'])
        self.assertEqual(projected["cloudInsertionIndex"], 1)

    def test_a_shorter_path_selects_everything_below_it(self):
        projected = envconfig.project(self.layers[:1], 1, [["a", "b"], ["a"]])
        self.assertEqual(projected["layers"][0]["toml"], "[a]\nb = 1\nc = 2\n")


class LegacyRequirementsTests(unittest.TestCase):
    def test_the_legacy_settings_become_allowed_lists(self):
        self.assertEqual(envconfig.legacy_requirements({
            "approval_policy": "on-failure", "approvals_reviewer": "guardian_subagent",
            "sandbox_mode": "workspace-write", "model": "ignored"}), {
            "allowed_approval_policies": ["on-request"],
            "allowed_approvals_reviewers": ["auto_review", "user"],
            "allowed_sandbox_modes": ["read-only", "workspace-write"]})

    def test_unknown_values_are_refused_with_serde_texts(self):
        with self.assertRaises(envconfig.ConfigError) as caught:
            envconfig.legacy_requirements({"sandbox_mode": "open"})
        self.assertIn("unknown variant `open`, expected one of `read-only`", str(caught.exception))


class ProjectTests(unittest.TestCase):
    def setUp(self):
        self.base = scratch_directory(self, "execserver-envconfig-")
        self.home = os.path.join(self.base, "home")
        os.makedirs(self.home)
        self.patch(envconfig, "SYSTEM_CONFIG", os.path.join(self.base, "none", "config.toml"))
        self.patch(envconfig, "MANAGED_CONFIG", os.path.join(self.base, "none", "managed.toml"))
        self.patch(envconfig, "SYSTEM_REQUIREMENTS", os.path.join(self.base, "none", "requirements.toml"))

    def write(self, relative, text):
        path = os.path.join(self.base, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def read(self, cwd):
        result = envconfig._read(os.path.join(self.base, cwd), self.home, [["model"]], [["x"]])
        return [layer["toml"] for layer in result["config"]["layers"]]

    def test_trusted_repositories_contribute_each_directory_down_to_cwd(self):
        self.write("p/.git/HEAD", "ref")
        self.write("p/.codex/config.toml", 'model = "p"\nnotify = ["x"]\n')
        self.write("p/a/.codex/config.toml", 'model = "a"\n')
        self.write("home/config.toml", f'[projects."{self.base}/p"]\ntrust_level = "trusted"\n')
        self.assertEqual(self.read("p/a"), ['model = "p"\n', 'model = "a"\n'])

    def test_untrusted_projects_contribute_nothing(self):
        self.write("p/.git/HEAD", "ref")
        self.write("p/.codex/config.toml", "model = \n")
        self.assertEqual(self.read("p"), [])

    def test_a_git_directory_without_head_is_no_repository(self):
        os.makedirs(os.path.join(self.base, "p", ".git"))
        self.write("p/.codex/config.toml", 'model = "p"\n')
        self.write("p/a/.codex/config.toml", 'model = "a"\n')
        self.write("home/config.toml", f'[projects."{self.base}/p"]\ntrust_level = "trusted"\n')
        self.assertEqual(self.read("p/a"), [])
        self.assertEqual(self.read("p"), ['model = "p"\n'])
