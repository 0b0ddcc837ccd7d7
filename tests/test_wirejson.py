"""
The message parser: the reference's texts for every malformed input we
recorded from it, its limits, and fuzzing for crashes and disagreements.
"""

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from execserver import rpc, wirejson

CASES = json.loads((Path(__file__).parent / "data" / "envelope_cases.json").read_text())


def detail(text):
    try:
        rpc.parse(text)
    except rpc.MalformedMessage as e:
        return str(e)
    return None


class ReferenceCorpusTests(unittest.SynchronousTestCase):
    """
    Inputs sent to the reference binary and the detail it answered with
    (docs/reference/envelope.md, appendices A and B).
    """

    def test_every_recorded_detail(self):
        checked = 0
        for case in CASES:
            if "detail" in case:
                self.assertEqual(detail(case["input"]), case["detail"], repr(case["input"]))
                checked += 1
        self.assertGreater(checked, 150)

    def test_accepted_messages_parse(self):
        for case in CASES:
            if "reply" in case or "dropped" in case:
                self.assertIsNone(detail(case["input"]), repr(case["input"]))


class LimitTests(unittest.SynchronousTestCase):
    def message(self, params: str) -> str:
        return '{"id":1,"method":"x","params":' + params + "}"

    def test_value_count(self):
        self.assertIsNone(detail(self.message("[" + ",".join(["0"] * 262140) + "]")))
        self.assertEqual(
            detail(self.message("[" + ",".join(["0"] * 262141) + "]")),
            "JSON-RPC message exceeds the limit of 262144 JSON values at line 1 column 524311",
        )

    def test_keys_do_not_count(self):
        members = ",".join(f'"k{i}":0' for i in range(262140))
        self.assertIsNone(detail(self.message("{" + members + "}")))

    def test_depth(self):
        self.assertIsNone(detail(self.message("[" * 126 + "]" * 126)))
        self.assertEqual(
            detail(self.message("[" * 127 + "]" * 127)),
            "recursion limit exceeded at line 1 column 157",
        )

    def test_a_container_nested_too_deep_is_read_a_few_times(self):
        """
        Valid JSON nested past the limit (but not so deep that the C
        parser gives up): the C parser accepts it at every level, and each
        time the diagnoser cannot step over it; it must not be read again
        at each of the 128 levels (the fuzzer's 5 KiB messages of nested
        objects took 60 ms each on the reactor thread).
        """
        message = self.message('{"a":' * 400 + "1" + "}" * 400).encode()
        expected = "recursion limit exceeded at line 1 column 661"
        walked = wirejson._Diagnoser(message)
        walked.text = None
        self.assertEqual(walked.diagnose(), expected)
        reads = []
        decode = wirejson._raw_decode

        def counted(text, start):
            reads.append(start)
            return decode(text, start)

        self.patch(wirejson, "_raw_decode", counted)
        self.assertEqual(detail(message), expected)
        self.assertLessEqual(len(reads), 5)

    def test_duplicate_keys_anywhere(self):
        self.assertEqual(
            detail('{"id":1,"method":"x","params":{"a":{"b":{"b":1,"b":2}}}}'),
            "duplicate JSON object key `b` at line 1 column 50",
        )

    def test_invalid_utf8_in_bytes(self):
        self.assertEqual(
            detail(b'{"id":1,"method":"x","params":"\xff"}'),
            "invalid unicode code point at line 1 column 33",
        )

    def test_limits_hold_inside_containers_the_fast_parser_accepts(self):
        # Each inner container is valid JSON on its own; the limit is only
        # broken by where it sits.
        self.assertEqual(
            detail(self.message("[1,[" + ",".join(["0"] * 262141) + "],x]")),
            "JSON-RPC message exceeds the limit of 262144 JSON values at line 1 column 524310",
        )
        self.assertEqual(
            detail(self.message("[1," + "[" * 126 + "]" * 126 + ",x]")),
            "recursion limit exceeded at line 1 column 159",
        )
        self.assertEqual(
            detail(self.message('[1,{"a":"\\udc00"},x]')),
            "lone leading surrogate in hex escape at line 1 column 45",
        )

    def test_integers_of_any_length_are_numbers(self):
        digits = "9" * 5000
        message = rpc.parse('{"id":3,"method":"x","params":{"big":' + digits + "}}")
        self.assertEqual((message.id, message.params["big"].text), (3, digits))
        self.assertEqual(detail(self.message("[-" + digits + ",x]")),
                         "expected value at line 1 column 5034")

    def test_a_large_message_parses_quickly_enough_to_matter(self):
        data = "A" * (16 << 20)
        message = rpc.parse(self.message(json.dumps({"dataBase64": data})))
        self.assertEqual(len(message.params["dataBase64"]), len(data))


_openers = st.sampled_from(["[", "[ ", "[\n", '{"a":', '{ "key" : ', '{"[{":', '{"\\n":', '{"é":',
                            '{"a" ', "{1:", "[,", "x"])


class DeepRunTests(unittest.SynchronousTestCase):
    """
    Runs of openers that reach the recursion limit are refused without
    walking them level by level (L{wirejson._Diagnoser._refuse_deep_run});
    the walk must find the same first problem.
    """

    def walked(self, message: bytes) -> str | None:
        diagnoser = wirejson._Diagnoser(message)
        diagnoser._refuse_deep_run = lambda: None
        return diagnoser.diagnose()

    @settings(max_examples=500, deadline=None)
    @given(st.lists(_openers, min_size=100, max_size=140), st.sampled_from(["1", "", "]", "}", "x"]),
           st.booleans())
    def test_the_same_diagnosis_as_the_walk(self, openers, inner, in_params):
        value = "".join(openers) + inner
        message = ('{"id":1,"method":"m","params":' + value + "}" if in_params else value).encode()
        self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))

    def test_the_limit_of_values_first(self):
        self.patch(wirejson, "MAX_VALUES", 60)
        message = ('{"id":1,"method":"m","params":' + "[" * 200 + "]" * 200 + "}").encode()
        self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))
        self.assertIn("limit of", wirejson._Diagnoser(message).diagnose())

    def test_a_deep_run_costs_one_pass(self):
        message = ('{"id":1,"method":"m","params":' + '{"a":' * 200_000 + "1}").encode()
        matches = []
        opener = wirejson._OPENER

        class Counted:
            def match(self, data, index):
                matches.append(index)
                return opener.match(data, index)

        self.patch(wirejson, "_OPENER", Counted())
        self.assertEqual(wirejson._Diagnoser(message).diagnose(),
                         "recursion limit exceeded at line 1 column 661")
        self.assertLess(len(matches), 2 * wirejson.RECURSION_LIMIT)
        self.assertEqual(self.walked(message), "recursion limit exceeded at line 1 column 661")


_elements = st.sampled_from(["1", "-0.5e3", "0", "01", "1.", "2E+9", "true", "nul", "null", "false",
                              '"a"', '""', '"a,b"', '"\\n"', '"é"', "[]", "{}", '{"k":[1,2]}', "", "x"])
_separators = st.sampled_from([",", " , ", ",\n", ",,", " "])


class ScalarRunTests(unittest.SynchronousTestCase):
    """
    Runs of plain list elements are stepped over by a regular expression
    (L{wirejson._Diagnoser._skip_scalar_run}); the walk element by element
    must find the same first problem, the limit of values included.
    """

    def walked(self, message: bytes) -> str | None:
        diagnoser = wirejson._Diagnoser(message)
        diagnoser._skip_scalar_run = lambda byte: byte
        return diagnoser.diagnose()

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(_elements, _separators), max_size=80), st.sampled_from(["]", "", "]]", "}"]),
           st.booleans(), st.sampled_from([40, 1040, 5000]))
    def test_the_same_diagnosis_as_the_walk(self, items, end, in_params, limit):
        self.patch(wirejson, "MAX_VALUES", limit)
        value = "[" + "".join(element + separator for element, separator in items) + end
        message = ('{"id":1,"method":"m","params":' + value + "}" if in_params else value).encode()
        self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))

    def test_the_limit_after_runs(self):
        self.patch(wirejson, "MAX_VALUES", 2500)
        for elements in ("1,", '"x", ', "true ,", "[1],"):
            message = ("[" + elements * 3000 + "1]").encode()
            self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))
            self.assertIn("limit of 2500", self.walked(message))


_keys = st.sampled_from(['"a"', '"b"', '"c"', '"a,"', '"\\u0061"', '""', "1", '"é"'])


class MemberRunTests(unittest.SynchronousTestCase):
    """
    The same for runs of object members (L{wirejson._Diagnoser._skip_member_run}),
    duplicate keys included.
    """

    def walked(self, message: bytes) -> str | None:
        diagnoser = wirejson._Diagnoser(message)
        diagnoser._skip_member_run = lambda keys: diagnoser._peek()
        return diagnoser.diagnose()

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.tuples(_keys, st.sampled_from([":", " : ", ""]), _elements, _separators),
                    max_size=40),
           st.sampled_from(["}", "", "}}", "]"]), st.sampled_from([10, 1040, 5000]))
    def test_the_same_diagnosis_as_the_walk(self, members, end, limit):
        self.patch(wirejson, "MAX_VALUES", limit)
        value = "{" + "".join("".join(member) for member in members) + end
        message = ('{"id":1,"method":"m","params":[1,' + value + "]}").encode()
        self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))

    def test_the_limit_or_a_repeated_key_after_runs(self):
        self.patch(wirejson, "MAX_VALUES", 2500)
        for count, repeated in ((3000, None), (2000, 1500), (2000, 5)):
            members = [f'"k{i}":0' for i in range(count)]
            if repeated is not None:
                members.insert(1800, f'"k{repeated}":1')
            message = ('{"id":1,"method":"m","params":[{' + ",".join(members) + "}]}").encode()
            self.assertEqual(wirejson._Diagnoser(message).diagnose(), self.walked(message))
            self.assertIsNotNone(self.walked(message))

    def test_the_limit_in_a_large_object(self):
        members = ",".join(f'"k{i}":0' for i in range(300_000))
        message = '{"id":1,"method":"x","params":{' + members + "}}"
        self.assertEqual(detail(message), self.walked(message.encode()))
        self.assertIn("exceeds the limit of 262144 JSON values", detail(message))


class SkipWindowTests(unittest.SynchronousTestCase):
    """
    The C parser vouches for a container only within a window of the text
    (L{wirejson._SKIP_WINDOWS}); the diagnosis does not depend on the
    windows' sizes.
    """

    def test_every_recorded_detail_with_tiny_windows(self):
        self.patch(wirejson, "_SKIP_WINDOWS", (8, 32))
        for case in CASES:
            if "detail" in case:
                self.assertEqual(detail(case["input"]), case["detail"], repr(case["input"]))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_elements, _separators), max_size=30), st.sampled_from(["]", "", "x"]))
    def test_tiny_windows_find_what_large_ones_do(self, items, end):
        inner = "[" + ",".join(element for element, _ in items) + "]"
        message = ('{"id":1,"method":"m","params":[' + inner + ',{"a":' + inner + "}" + end
                   + "}").encode()
        expected = wirejson._Diagnoser(message).diagnose()
        self.patch(wirejson, "_SKIP_WINDOWS", (8, 32))
        self.assertEqual(wirejson._Diagnoser(message).diagnose(), expected)


class ManyValuesTests(unittest.SynchronousTestCase):
    """
    A long message with the commas of many values is walked for the limits
    before the C parser builds it: the C parser never reads more than the
    largest window at a time, and the answer is the same.
    """

    def message(self, count: int) -> bytes:
        return b'{"id":1,"method":"m","params":[' + b"1," * count + b"1]}"

    def test_a_long_list_is_refused_without_being_built(self):
        read = []
        decode = wirejson._raw_decode

        def recorded(text, start):
            read.append(len(text) - start)
            return decode(text, start)

        self.patch(wirejson, "_raw_decode", recorded)
        data = self.message(600_000)
        with self.assertRaises(wirejson.NeedsDiagnosis):
            wirejson.parse_document(data, diagnose_now=False)
        self.assertEqual(read, [])
        self.assertEqual(
            detail(data),
            "JSON-RPC message exceeds the limit of 262144 JSON values at line 1 column 524311")
        self.assertLessEqual(max(read), max(wirejson._SKIP_WINDOWS))

    def test_a_long_list_within_the_limit_parses(self):
        data = self.message(200_000) + b" " * 200_000
        self.assertTrue(wirejson._may_break_the_value_limit(data))
        self.assertEqual(rpc.parse(data).params, json.loads(data)["params"])

    def test_a_long_string_is_not_walked_first(self):
        data = json.dumps({"id": 1, "method": "m", "params": {"d": "A," * 100 + "A" * (1 << 20)}})
        self.assertFalse(wirejson._may_break_the_value_limit(data.encode()))
        self.assertFalse(wirejson._may_break_the_value_limit(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=30,
)


class FuzzTests(unittest.SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(json_values)
    def test_serialized_values_round_trip(self, value):
        self.assertEqual(wirejson.loads(wirejson.dumps(value)), value)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_parse_or_fail_cleanly(self, data):
        try:
            message = rpc.parse(data)
        except rpc.MalformedMessage as e:
            self.assertTrue(str(e))
        else:
            self.assertIsInstance(message, (rpc.Request, rpc.Notification, rpc.Response, rpc.ErrorResponse))

    @settings(max_examples=1000, deadline=None)
    @given(st.data())
    def test_skipping_valid_containers_changes_no_diagnosis(self, data):
        """
        The diagnoser steps over containers the C parser accepts; walking
        them byte by byte must find the same first problem.
        """
        text = ('{"id":7,"method":"m","params":[[1,2,{"a":[3,{"b":"\\u00e9"}]}],'
                '{"c":{"d":[true,null,-0.5e3]}},[[],[{}]],"z"]}')
        position = data.draw(st.integers(0, len(text)))
        insert = data.draw(st.sampled_from(['"', "{", "}", "[", "]", ",", ":", "\\", "x", "1", "-",
                                            '"a":1,', "\\udc00", "\x01", "0"]))
        cut = data.draw(st.integers(0, 3))
        mutated = (text[:position] + insert + text[position + cut:]).encode()
        walked = wirejson._Diagnoser(mutated)
        walked.text = None
        self.assertEqual(wirejson._Diagnoser(mutated).diagnose(), walked.diagnose())

    @settings(max_examples=1000, deadline=None)
    @given(st.data())
    def test_mutated_messages_fail_with_a_position_or_parse(self, data):
        text = '{"id":7,"method":"process/start","params":{"argv":["a\\u00e9",1.5e3,true,null],"x":{}}}'
        position = data.draw(st.integers(0, len(text)))
        insert = data.draw(st.sampled_from(['"', "{", "}", "[", "]", ",", ":", "\\", "x", " ", "\n", "0", "-", "\x01"]))
        cut = data.draw(st.integers(0, 3))
        mutated = text[:position] + insert + text[position + cut:]
        try:
            python_value = json.loads(mutated)
        except ValueError:
            python_value = None
        try:
            message = rpc.parse(mutated)
        except rpc.MalformedMessage as e:
            problem = str(e)
            if python_value is None and not problem.startswith(
                ("missing field", "invalid type", "data did not", "expected a JSON-RPC object")
            ):
                self.assertIn(" at line ", problem)
        else:
            if isinstance(python_value, dict) and isinstance(message, rpc.Request):
                self.assertEqual(message.params, python_value.get("params"))


class CutShortTests(unittest.SynchronousTestCase):
    """
    A value cut short where its containers could have been closed gets
    "EOF while parsing" its innermost container from the C parser and
    regular expressions (L{wirejson._cut_inside_containers}); the walk
    must find the same, and is still what answers anything else.
    """

    def walked(self, text: str) -> str | None:
        return wirejson._Diagnoser(text.encode("utf-8", "surrogatepass")).diagnose()

    @settings(max_examples=200, deadline=None)
    @given(json_values, st.sampled_from([None, 0, 2]))
    def test_the_same_diagnosis_as_the_walk(self, value, indent):
        text = json.dumps(value, ensure_ascii=False, indent=indent)
        for end in range(len(text)):
            cut = wirejson._cut_inside_containers(text[:end])
            if cut is not None:
                self.assertEqual(cut, self.walked(text[:end]), repr(text[:end]))

    def test_truncated_messages_and_runs_short_of_the_limit(self):
        for text in ['{"a":' * 127 + "1" + "}" * 63,
                     '{"id":1,"method":"fs/readFile","params":' + "[" * 126 + "1",
                     '{"id":1,"method":"m","params":{"argv":["[{", "é"], "env":{"A":"}"}',
                     '[1, [2, {"k": [3]}] \n ']:
            cut = wirejson._cut_inside_containers(text)
            self.assertIsNotNone(cut, text)
            self.assertEqual(cut, self.walked(text))
            self.assertTrue(cut.startswith("EOF while parsing "), cut)

    def test_anything_else_is_left_to_the_walk(self):
        for text in ["[" * 128 + "1", "[1,", '{"a"', '{"a":', '["a', '[1}', '{"a":1,"a":2',
                     '["\\ud800"', "[1.", "[tru", "[1] [", '{"a":1}', "", "x"]:
            self.assertIsNone(wirejson._cut_inside_containers(text), text)

    def test_a_string_cut_short_is_read_once(self):
        """
        A string cut short is matched to the end of the text, not searched
        again from each quote it escapes (64 KiB of them took 11 s).
        """
        text = '["' + '\\"' * 20_000
        self.assertEqual(wirejson._JSON_STRING.findall(text), [text[1:]])
        self.assertIsNone(wirejson._cut_inside_containers(text))

    def test_no_walk_for_a_run_short_of_the_limit(self):
        text = '{"a":' * 127 + "1" + "}" * 63

        def refuse(data):
            raise AssertionError("walked")

        self.patch(wirejson, "_Diagnoser", refuse)
        self.assertEqual(detail(text), "EOF while parsing an object at line 1 column 699")
