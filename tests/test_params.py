"""
Struct decoding keeps serde's rules: members are checked in input order and
the first bad one is reported; only then the first missing required field,
in declaration order; absent fields get their defaults, a fresh one each
time where the default is a list or a map.
"""

from __future__ import annotations

from twisted.trial import unittest

from execserver import params as P

POINT = P.Struct("Point", [
    P.Field("x", P.Int("i64")),
    P.Field("y", P.Int("i64")),
    P.Field("label", P.Optional(P.String())),
    P.Field("tags", P.Seq(P.String()), default=[]),
    P.Field("visible", P.Bool(), default=True),
])


class StructTests(unittest.SynchronousTestCase):
    def decode_error(self, value) -> str:
        return str(self.assertRaises(P.DecodeError, POINT.decode, value))

    def test_absent_fields_get_their_defaults(self):
        self.assertEqual(POINT.decode({"y": 2, "x": 1}),
                         {"x": 1, "y": 2, "label": None, "tags": [], "visible": True})

    def test_a_list_default_is_fresh_each_time(self):
        first = POINT.decode({"x": 1, "y": 2})
        first["tags"].append("changed")
        self.assertEqual(POINT.decode({"x": 1, "y": 2})["tags"], [])

    def test_given_values_replace_defaults(self):
        self.assertEqual(POINT.decode({"x": 1, "y": 2, "label": "a", "tags": ["t"], "visible": False}),
                         {"x": 1, "y": 2, "label": "a", "tags": ["t"], "visible": False})

    def test_unknown_members_are_ignored(self):
        self.assertEqual(POINT.decode({"x": 1, "y": 2, "z": "anything"})["x"], 1)

    def test_the_first_missing_field_in_declaration_order(self):
        self.assertEqual(self.decode_error({}), "missing field `x`")
        self.assertEqual(self.decode_error({"x": 1, "label": "a"}), "missing field `y`")

    def test_a_bad_member_is_reported_before_a_missing_field(self):
        self.assertEqual(self.decode_error({"visible": 5}),
                         "invalid type: number, expected a boolean")

    def test_bad_members_in_input_order(self):
        self.assertEqual(self.decode_error({"label": 1, "x": "one"}),
                         "invalid type: number, expected a string")
