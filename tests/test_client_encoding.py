"""
The client decodes base64 fields strictly first (fast) and leniently when
the strict decoding refuses them: the result must be what the lenient
decoding alone gives, error or not.
"""

from __future__ import annotations

import binascii
import os

import pybase64
from twisted.trial import unittest

from execserver.client.encoding import decode_base64


class DecodeBase64Tests(unittest.TestCase):
    def test_what_servers_send_decodes(self):
        data = os.urandom(96 * 1024 + 2)
        encoded = pybase64.b64encode(data)
        for field in (encoded, encoded.decode("ascii"), memoryview(encoded)[:-4], b""):
            self.assertEqual(decode_base64(field), pybase64.b64decode(field))
        self.assertEqual(decode_base64(encoded), data)

    def test_characters_outside_the_alphabet_are_skipped(self):
        self.assertEqual(decode_base64("aG k=\n"), b"hi")
        self.assertEqual(decode_base64(b"a\x00Gk="), b"hi")

    def test_bad_padding_and_non_ascii_text_are_errors(self):
        self.assertRaises(binascii.Error, decode_base64, "aGk")
        self.assertRaises(ValueError, decode_base64, "aGk\u00e9=")
