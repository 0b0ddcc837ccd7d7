"""
file: URIs in and out, as the reference parses and spells them.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from execserver import paths
from execserver.params import DecodeError


def host_path(uri: str) -> bytes:
    return paths.to_host_path(paths.parse_uri(uri))


class ParseTests(unittest.TestCase):
    def assertRefused(self, uri: str, message: str) -> None:
        with self.assertRaises(DecodeError) as caught:
            paths.parse_uri(uri)
        self.assertEqual(str(caught.exception), message)

    def assertForeign(self, uri: str, canonical: str) -> None:
        self.assertEqual(paths.parse_uri(uri), canonical)
        with self.assertRaises(paths.ForeignPathError) as caught:
            paths.to_host_path(canonical)
        self.assertEqual(str(caught.exception), f"'{canonical}' is invalid on 'linux'")

    def test_native_and_relative_paths_are_not_uris(self):
        for text in ("/tmp/a", "tmp/a", "./a", "a", "", "//host/a"):
            self.assertRefused(text, "invalid URI: relative URL without a base")

    def test_other_schemes_are_named(self):
        for text, scheme in (("http://example.com/x", "http"), ("urn:x", "urn"), ("c:/x", "c"),
                             ("C:\\x", "c"), ("mailto:a@b", "mailto"), ("X+Y:/a", "x+y")):
            self.assertRefused(text, f"unsupported path URI scheme `{scheme}`")

    def test_other_schemes_must_still_parse(self):
        self.assertRefused("http://", "invalid URI: empty host")
        self.assertRefused("http://a:99999/", "invalid URI: invalid port number")
        self.assertRefused("http://[", "invalid URI: invalid IPv6 address")
        self.assertRefused("x://a b/", "invalid URI: invalid domain character")

    def test_spellings_of_one_path(self):
        for text in ("file:///tmp/a", "file:/tmp/a", "file:tmp/a", "file:////tmp/a", "FILE:///tmp/a",
                     "file://localhost/tmp/a", "file://LOCALHOST/tmp/a", " file:///tmp/a\n",
                     "fi\tle:///t\nmp/a", "file:\\\\\\tmp\\a", "file:///tmp/./a", "file:///tmp/b/../a",
                     "file:///../../tmp/a", "file:///tmp/%2e/a", "file:///tmp/x/%2E%2E/a"):
            self.assertEqual(paths.parse_uri(text), "file:///tmp/a", text)

    def test_path_characters_are_encoded_as_the_url_parser_does(self):
        self.assertEqual(paths.parse_uri("file:///a b/é/{x}/<y>/`/\"/%zz/%41"),
                         'file:///a%20b/%C3%A9/%7Bx%7D/%3Cy%3E/%60/%22/%zz/%41')
        self.assertEqual(paths.parse_uri("file:///x\x01\x7f"), "file:///x%01%7F")

    def test_queries_and_fragments_are_refused(self):
        for text in ("file:///a?x=1", "file:///a?", "file:///a?b#c"):
            self.assertRefused(text, "query parameters are not allowed in path URIs")
        for text in ("file:///a#f", "file:///a#"):
            self.assertRefused(text, "fragments are not allowed in path URIs")

    def test_credentials_and_ports_are_not_hosts(self):
        for text in ("file://user:pass@localhost/a", "file://user@/a", "file://localhost:8080/a",
                     "file://:80/a", "file://a b/x", "file://xn--/x"):
            self.assertRefused(text, "invalid URI: invalid international domain name")
        self.assertRefused("file://1.2.3.256/x", "invalid URI: invalid IPv4 address")
        self.assertRefused("file://[zz]/x", "invalid URI: invalid IPv6 address")

    def test_hosts_are_valid_but_foreign(self):
        self.assertForeign("file://server/share/x", "file://server/share/x")
        self.assertForeign("file://OtherHost/x", "file://otherhost/x")
        self.assertForeign("file://0x7f.1/x", "file://127.0.0.1/x")
        self.assertForeign("file://[0:0::1]/x", "file://[::1]/x")
        self.assertForeign("file://Ünicode/x", "file://xn--nicode-2ya/x")
        self.assertForeign("file://ß/x", "file://xn--zca/x")
        self.assertForeign("file://a%41/x", "file://aa/x")

    def test_drive_letters_are_foreign(self):
        self.assertForeign("file:///C:/x", "file:///C:/x")
        self.assertForeign("file:///c:/x", "file:///C:/x")
        self.assertForeign("file:///c%3a/x", "file:///C%3a/x")
        self.assertForeign("file:///C:", "file:///C:")
        self.assertForeign("file:/c|/x", "file:///C:/x")
        self.assertForeign("file://c|/x", "file:///C:/x")
        self.assertForeign("file://server/C:/x", "file:///C:/x")
        self.assertForeign("file:///C:/../x", "file:///C:/x")
        self.assertForeign("file:///x/../C:", "file:///C:")

    def test_what_only_looks_like_a_drive_letter(self):
        self.assertEqual(host_path("file:///C|/x"), b"/C|/x")
        self.assertEqual(host_path("file:///x/C:/y"), b"/x/C:/y")
        self.assertEqual(host_path("file:C:x"), b"/C:x")
        self.assertEqual(host_path("file:///C:x"), b"/C:x")

    def test_a_tab_can_end_a_drive_letter(self):
        # The url crate copies characters in runs; a stripped TAB ends a run
        # and lets it see the drive letter it has copied so far.
        self.assertForeign("file:C:\tx", "file:///C:/x")
        self.assertForeign("file:C:\n.A", "file:///C:/.A")

    def test_nul_bytes_are_refused_when_parsing(self):
        for text, canonical in (("file:///tmp/%00x", "file:///tmp/%00x"),
                                ("file:///tmp/a\0b", "file:///tmp/a%00b"),
                                ("file:///%00/bad/path/L3RtcC94==", "file:///%00/bad/path/L3RtcC94=="),
                                ("file:///%00/bad/path/", "file:///%00/bad/path/"),
                                ("file:///%00/bad/path/YR", "file:///%00/bad/path/YR"),
                                ("file:///%00/bad/path/YQ/x", "file:///%00/bad/path/YQ/x"),
                                ("file://c|/%00", "file:///c:/%00")):
            self.assertRefused(text, f"'{canonical}' is invalid on 'linux'")

    def test_the_fallback_form_parses_but_names_nothing_here(self):
        self.assertForeign("file:///%00/bad/path/L3RtcC94", "file:///%00/bad/path/L3RtcC94")
        self.assertForeign("file://localhost/%00/bad/path/YQ", "file:///%00/bad/path/YQ")


class HostPathTests(unittest.TestCase):
    def test_percent_encoded_bytes_are_decoded(self):
        self.assertEqual(host_path("file:///a%20b/%C3%A9/%FF"), b"/a b/\xc3\xa9/\xff")

    def test_an_encoded_slash_is_a_separator(self):
        self.assertEqual(host_path("file:///tmp%2Fa"), b"/tmp/a")
        self.assertEqual(host_path("file:///tmp/a%252Fb"), b"/tmp/a%2Fb")

    def test_the_decoded_path_is_normalized(self):
        self.assertEqual(host_path("file:///tmp/a%2F..%2Fb"), b"/tmp/b")
        self.assertEqual(host_path("file:///tmp/a/"), b"/tmp/a")
        self.assertEqual(host_path("file:///tmp//a"), b"/tmp/a")
        self.assertEqual(host_path("file:///a%2F..%2F..%2F.."), b"/")
        self.assertEqual(host_path("file:"), b"/")

    def test_message_paths_are_lossy(self):
        self.assertEqual(paths.display(b"/bad\xffname"), "/bad\ufffdname")


class ProducedUriTests(unittest.TestCase):
    def test_spelling(self):
        self.assertEqual(paths.from_host_path(b"/"), "file:///")
        self.assertEqual(paths.from_host_path(b"/tmp/"), "file:///tmp")
        self.assertEqual(paths.from_host_path(b'/a b"#%<>?`{}\\x'),
                         "file:///a%20b%22%23%25%3C%3E%3F%60%7B%7D%5Cx")
        self.assertEqual(paths.from_host_path(b"/!$&'()*+,;=:@[]^|~"), "file:///!$&'()*+,;=:@[]^|~")
        self.assertEqual(paths.from_host_path(b"/\t\x01\x7f\xff"), "file:///%09%01%7F%FF")
        self.assertEqual(paths.from_host_path("/é"), "file:///%C3%A9")

    def test_child_uris_keep_the_parents_spelling(self):
        self.assertEqual(paths.child_uri("file:///tmp/%64ir", b"f"), "file:///tmp/%64ir/f")
        self.assertEqual(paths.child_uri("file:///tmp/dir/", b"f"), "file:///tmp/dir/f")
        self.assertEqual(paths.child_uri("file:///tmp/dir//", b"f"), "file:///tmp/dir//f")
        self.assertEqual(paths.child_uri("file:///", b".dockerenv"), "file:///.dockerenv")
        self.assertEqual(paths.child_uri("file:///d", b"%41 x"), "file:///d/%2541%20x")

    def test_child_uris_of_awkward_names_name_something_else(self):
        self.assertEqual(paths.child_uri("file:///d", b"tab\tx"), "file:///d/tabx")
        self.assertEqual(paths.child_uri("file:///d", b"bad\xffname"), "file:///d/bad%EF%BF%BDname")
        self.assertFalse(paths.names_host_path(b"tab\tx"))
        self.assertFalse(paths.names_host_path(b"bad\xffname"))
        self.assertTrue(paths.names_host_path("é%\\".encode()))

    def test_literal_segments(self):
        self.assertEqual(paths.literal_segment(b"a.b-c_d~"), "a.b-c_d~")
        self.assertIsNone(paths.literal_segment(b"a b"))
        self.assertIsNone(paths.literal_segment("é".encode()))


names = st.binary(min_size=1, max_size=12).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b".."))

#: Absolute paths whose first component does not look like a Windows drive
#: (see test_a_drive_letter_name_under_the_root_has_no_uri).
absolute_paths = st.lists(names, max_size=6).filter(
    lambda parts: not (parts and re.fullmatch(rb"[A-Za-z](:|%3[aA])", parts[0]))
).map(lambda parts: b"/" + b"/".join(parts))


class RoundTripTests(unittest.TestCase):
    @given(absolute_paths)
    def test_every_path_survives_a_round_trip(self, path):
        uri = paths.from_host_path(path)
        self.assertEqual(paths.parse_uri(uri), uri)
        self.assertEqual(paths.to_host_path(uri), path)

    def test_a_drive_letter_name_under_the_root_has_no_uri(self):
        # As in the reference: the URI of /C: reads as a Windows drive.
        with self.assertRaises(paths.ForeignPathError):
            paths.to_host_path(paths.from_host_path(b"/C:/x"))

    @given(absolute_paths, names)
    def test_child_uris_of_spellable_names_are_their_paths(self, parent, name):
        if not paths.names_host_path(name):
            return
        uri = paths.child_uri(paths.from_host_path(parent), name)
        self.assertEqual(paths.to_host_path(paths.parse_uri(uri)), paths.normalize(parent + b"/" + name))

    @given(st.text(max_size=40))
    def test_parsing_never_fails_unexpectedly(self, text):
        try:
            uri = paths.parse_uri(text)
        except DecodeError:
            return
        self.assertEqual(paths.parse_uri(uri), uri)


class CanonicalShortcutTests(unittest.TestCase):
    """
    A URI already in its canonical spelling is given back without the step
    by step parse: only where that parse would give it back too.
    """

    @given(st.one_of(st.text(alphabet="/.aZ09_~+,=@-", max_size=24),
                     st.text(alphabet="/.%:|\\?#\t aZ09_~-", max_size=24)).map(
        lambda path: "file:///" + path))
    def test_what_the_shortcut_takes_the_full_parse_leaves_alone(self, text):
        if paths._CANONICAL_PLAIN.fullmatch(text):
            self.assertEqual(paths._parse_uri_in_full(text), text)

    def test_the_shortcut_takes_the_usual_uris(self):
        for text in ("file:///", "file:///tmp/a", "file:///tmp/a/", "file:///work/x-1/v2.3_b~c/",
                     "file:///.../.a/b."):
            self.assertTrue(paths._CANONICAL_PLAIN.fullmatch(text), text)
        for text in ("file:///tmp/./a", "file:///a/..", "file:////a", "file:///a//b",
                     "FILE:///a", "file:///C:/x", "file:///a%20b", " file:///a"):
            self.assertFalse(paths._CANONICAL_PLAIN.fullmatch(text), text)
