"""
The client reads process/output notifications of the usual shape without
parsing their chunk as JSON: what it reads must be what the full parse
gives, and any other shape must take the full parse.
"""

from __future__ import annotations

import json

import pybase64
from twisted.trial import unittest

from execserver.client.rpc import RpcConnection, _output_params

USUAL = (b'{"method":"process/output","params":{"processId":"p-\xc3\xa9","seq":12,'
         b'"stream":"stderr","chunk":"aGVsbG8="}}')


def parsed(data: bytes) -> dict:
    params = json.loads(data)["params"]
    params["chunk"] = pybase64.b64decode(params["chunk"])
    return params


class OutputShapeTests(unittest.TestCase):
    def test_the_usual_shape_reads_as_the_full_parse_does(self):
        params = _output_params(USUAL)
        self.assertEqual(params, parsed(USUAL))
        self.assertEqual(params["chunk"], b"hello")

    def test_a_view_of_a_message_reads_as_the_message(self):
        """The in-place reader hands messages over as views of its buffer."""
        buffer = bytearray(b"xx" + USUAL + b"yy")
        self.assertEqual(_output_params(memoryview(buffer)[2:-2]), parsed(USUAL))

    def test_other_shapes_take_the_full_parse(self):
        others = [
            USUAL.replace(b'"p-\xc3\xa9"', b'"p-\\u00e9"'),  # an escape in the id
            USUAL.replace(b"aGVsbG8=", b"aGVs\\/bG8="),  # an escape in the chunk
            USUAL.replace(b"aGVsbG8=", b"aGVs bG8="),  # base64 strict decoding refuses
            USUAL.replace(b'"seq":12', b'"seq": 12'),  # whitespace
            USUAL.replace(b'"seq":12', b'"seq":012'),  # not JSON
            USUAL.replace(b'"}}', b'","extra":1}}'),  # another field
            USUAL.replace(b'"p-\xc3\xa9"', b'"p-\xff"'),  # not UTF-8
            b'{"params":{"processId":"p","seq":1,"stream":"stdout","chunk":""},'
            b'"method":"process/output"}',  # another order
        ]
        for message in others:
            self.assertIsNone(_output_params(message), message)


class DecodedChunkTests(unittest.TestCase):
    """
    Whichever way a process/output notification is read, its chunk is
    handed on decoded.
    """

    def received(self, message: bytes) -> dict:
        notifications = []
        connection = RpcConnection(lambda link, method, params: notifications.append(params),
                                   lambda link, reason: None)
        connection.messageReceived(message)
        [params] = notifications
        return params

    def test_the_usual_shape(self):
        self.assertEqual(self.received(USUAL)["chunk"], b"hello")

    def test_another_shape(self):
        message = USUAL.replace(b"aGVsbG8=", b"aGVs bG8=").replace(b'"seq":12', b'"seq": 12')
        self.assertIsNone(_output_params(message))
        self.assertEqual(self.received(message)["chunk"], b"hello")
