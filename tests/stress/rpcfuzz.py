"""
A seeded generator of fuzzed JSON-RPC messages for the exec-server.

Requests are made from the servers' own params schemas (every method,
every field, each value either of its type or of any other), then some are
mangled: cut short, bytes changed, nested deeply, given huge numbers, made
huge. The messages that may make a server close the connection (a
notification or response it does not expect, invalid UTF-8 in a text
frame, a binary frame) only ever end a batch, so that a batch's other
messages are all read first.

The generator tries to be harmless: every command is one of a few that
exit at once, every URL is refused or invalid, and every message that
names a file outside its scratch directory, as our server's own parsers
read it, is made again (L{Generator.safe}). That is not enough on its
own (an early version sent C{"file:"}, which is C{/}, and a fuzzed
fs/remove deleted /etc): the fuzz programs also run every fuzzed server
confined, with only its scratch directory writable.
"""

from __future__ import annotations

import base64
import json
import posixpath
import random
import string
import urllib.parse

from execserver import params as P
from execserver import paths, rpc
from execserver.methods import all_methods

#: Messages of a batch; and the chance that a batch ends with a message
#: that may close the connection.
BATCH = 100
TAIL_CHANCE = 0.1
#: How often a message is huge (1 to 8 MiB), and how deep the deepest
#: nesting goes.
HUGE_CHANCE = 1 / 50_000
MAX_DEPTH = 200_000
MAX_DIGITS = 100_000

#: Commands that exit at once and read nothing.
ARGVS = (["true"], ["echo", "fuzz"], ["sh", "-c", "exit 3"], ["/nonexistent/fuzz"], [],
         ["printf", "%s", "x" * 1000], ["sh", "-c", "echo err >&2"])
URLS = ("http://127.0.0.1:1/", "http://[::1]:1/x", "ftp://127.0.0.1/", "not a url", "",
        "http://", "http://127.0.0.1:1/" + "a" * 5000)
IDS = ("p0", "p1", "p2", "h0", "h1", "w0", "")
#: Fields whose values the generator never draws at random.
GUARDED = {"argv": ARGVS, "url": URLS, "arg0": (None, "fuzz", 5), "shellSnapshot": (None,)}
#: Methods run less often: each costs a child process or a connection.
RARE = {"process/start": 0.3, "http/request": 0.3}
UNKNOWN_METHODS = ("fuzz/unknown", "", "process/", "PROCESS/START", "initialize ", "é")
_ALPHABET = string.ascii_letters + string.digits + " _-.%\\\"'{}[],:\t\n\x00\x1f\u00e9\u2028\U0001f600"


class Generator:
    """
    Fuzzed messages from C{seed}; paths under C{scratch} (an absolute
    directory that the caller owns).
    """

    def __init__(self, seed: int, scratch: str) -> None:
        self.rng = random.Random(seed)
        self.scratch = scratch.rstrip("/")
        methods = all_methods()
        self.schemas = {name: method.params for name, method in methods.items()
                        if not method.notification}
        self.notifications = [name for name, method in methods.items() if method.notification]
        self.schemas["initialize"] = P.Struct("InitializeParams", [
            P.Field("clientName", P.String()),
            P.Field("resumeSessionId", P.Optional(P.String()), default=None)])
        names = sorted(self.schemas)
        self.methods = names
        self.weights = [RARE.get(name, 1.0) for name in names]

    # Batches

    def batch(self) -> list[tuple[bytes, bool]]:
        """
        L{BATCH} messages as (payload, binary); the last may be one that
        closes the connection.
        """
        messages = [self.checked(self.message) for _ in range(BATCH)]
        if self.rng.random() < TAIL_CHANCE:
            messages[-1] = self.checked(self.tail)
        return messages

    def checked(self, make) -> tuple[bytes, bool]:
        while True:
            message = make()
            if self.safe(message[0]):
                return message

    def safe(self, payload: bytes) -> bool:
        """
        Whether every file URI that C{payload} names, read as our parsers
        read it, is under the scratch directory. A payload that names one
        but does not parse is refused too: another parser might take it.
        """
        if b"file:" not in payload.lower() and b"\\u" not in payload:
            return True
        values = []
        try:
            message = rpc.parse(payload)
            values.append(getattr(message, "params", None))
        except (rpc.MalformedMessage, RecursionError):
            pass
        try:
            values.append(json.loads(payload))
        except (ValueError, RecursionError):
            pass
        if not values:
            return b"file:" not in payload.lower()
        return all(self._inside(text) for text in _strings(values))

    def _inside(self, text: str) -> bool:
        try:
            uri = paths.parse_uri(text)
        except P.DecodeError:
            return True
        if not uri.startswith("file:///"):
            return False
        path = posixpath.normpath(urllib.parse.unquote(uri[len("file://"):]))
        return path == self.scratch or path.startswith(self.scratch + "/")

    def message(self) -> tuple[bytes, bool]:
        rng = self.rng
        if rng.random() < HUGE_CHANCE:
            return self.huge(), False
        roll = rng.random()
        if roll < 0.62:
            return self.encode(self.request()), False
        if roll < 0.74:
            return self.mutated(self.encode(self.request())), False
        if roll < 0.79:
            data = self.encode(self.request())
            return data[:rng.randrange(len(data))], False
        if roll < 0.83:
            return self.deep(), False
        if roll < 0.89:
            return self.big_numbers(), False
        if roll < 0.95:
            return self.encode(self.value(3)), False
        return self.garbage_text(), False

    def tail(self) -> tuple[bytes, bool]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.2:
            method = rng.choice([*self.notifications, "initialized", "fuzz/note",
                                 *self.methods])
            return self.encode({"method": method, "params": self.params_for(method)}), False
        if roll < 0.4:
            reply = {"id": self.request_id(), "result": self.value(2)}
            if rng.random() < 0.5:
                reply = {"id": self.request_id(), "error": {"code": -1, "message": "x"}}
            return self.encode(reply), False
        if roll < 0.6:
            data = bytearray(self.encode(self.request()))
            data[rng.randrange(len(data))] = rng.choice((0x80, 0xC0, 0xFF, 0xED))
            return bytes(data), False
        if roll < 0.8:
            return self.encode(self.request()), True
        return rng.randbytes(rng.randrange(1, 200)), True

    # Requests from the schemas

    def request(self) -> dict:
        rng = self.rng
        if rng.random() < 0.03:
            method = rng.choice(UNKNOWN_METHODS)
        else:
            method = rng.choices(self.methods, self.weights)[0]
        message = {"id": self.request_id(), "method": method}
        roll = rng.random()
        if roll < 0.85:
            message["params"] = self.params_for(method)
        elif roll < 0.95:
            message["params"] = self.value(2)
        if rng.random() < 0.05:
            message["jsonrpc"] = rng.choice(["2.0", "1.0", 2])
        if rng.random() < 0.03:
            message[self.text(8)] = self.value(1)
        return message

    def request_id(self):
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return rng.randrange(1 << 31)
        if roll < 0.8:
            return self.text(12)
        return rng.choice([-1, 0, 2**63 - 1, 2**63, -(2**63), 1.5, None, True, [], {}, "", 10**30])

    def params_for(self, method: str):
        schema = self.schemas.get(method)
        if schema is None:
            return self.value(2)
        return self.of(schema, method)

    def of(self, schema: P.Type, name: str = ""):
        """
        A value for C{schema}: mostly of its type, sometimes of any.
        """
        rng = self.rng
        if name in GUARDED:
            return rng.choice(GUARDED[name])
        if rng.random() < 0.08:
            return self.value(1)
        if isinstance(schema, P.Struct):
            return self.struct(schema)
        if isinstance(schema, P.Optional):
            return None if rng.random() < 0.3 else self.of(schema.inner, name)
        if isinstance(schema, P.Seq):
            return [self.of(schema.item, name) for _ in range(rng.randrange(4))]
        if isinstance(schema, P.Map):
            return {self.text(6): self.of(schema.value_type, name) for _ in range(rng.randrange(4))}
        if isinstance(schema, P.Enum):
            roll = rng.random()
            if roll < 0.7 and schema.variants:
                return rng.choice(schema.variants)
            if roll < 0.85:
                return {rng.choice(schema.variants or ["x"]): None}
            return self.text(8)
        if isinstance(schema, P.Int):
            return self.integer(schema)
        if isinstance(schema, P.Bool):
            return rng.random() < 0.5
        if isinstance(schema, P.Base64):
            return self.base64()
        if isinstance(schema, P.String):
            if name.endswith("Id") or name in ("processId", "handleId", "writeId"):
                return rng.choice(IDS)
            if name == "dataBase64":
                return self.base64()
            return self.text(rng.randrange(0, 40))
        if isinstance(schema, P.Unit):
            return None
        if isinstance(schema, P.Custom):
            return self.path()
        return self.value(2)

    def struct(self, schema: P.Struct):
        rng = self.rng
        fields = [field for field in schema.fields
                  if field.required or rng.random() < 0.5]
        if fields and rng.random() < 0.05:
            fields.remove(rng.choice(fields))
        if rng.random() < 0.05:
            return [self.of(field.type, field.name) for field in fields]
        value = {field.name: self.of(field.type, field.name) for field in fields}
        if rng.random() < 0.05:
            value[self.text(6)] = self.value(1)
        return value

    def integer(self, schema: P.Int):
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return rng.randint(schema.low, min(schema.high, 1 << 20))
        if roll < 0.8:
            return rng.choice([schema.low - 1, schema.high + 1, schema.high, schema.low])
        return rng.choice([1.5, -0.0, 1e300, -1, 10**40])

    def base64(self) -> str:
        rng = self.rng
        data = base64.b64encode(rng.randbytes(rng.randrange(64))).decode()
        if rng.random() < 0.15 and data:
            index = rng.randrange(len(data))
            data = data[:index] + rng.choice("!=-_ \n") + data[index + 1:]
        return data

    def path(self) -> str:
        """
        A file URI under the scratch directory, or something that is not
        a file URI (L{safe} checks it: even "file:" is one, of C{/}).
        """
        rng = self.rng
        roll = rng.random()
        if roll < 0.8:
            parts = [rng.choice("abcdef") for _ in range(rng.randrange(3))]
            return "file://" + "/".join([self.scratch, *parts])
        if roll < 0.9:
            return rng.choice(["relative", "", "http://127.0.0.1:1/", "ftp://127.0.0.1/x",
                               "C:\\x", "%2e%2e"])
        return self.text(10)

    # Values of any type

    def text(self, length: int) -> str:
        """
        Random text that never names a file: no URI scheme, no C{..}.
        """
        value = "".join(self.rng.choices(_ALPHABET, k=length))
        return value.replace("..", "._").replace(":", ";")

    def value(self, depth: int):
        rng = self.rng
        roll = rng.random()
        if depth <= 0 or roll < 0.5:
            return rng.choice([None, True, False, rng.randrange(-1000, 1000), 1.25,
                               self.text(rng.randrange(20)), 2**64, -(2**63) - 1])
        if roll < 0.75:
            return [self.value(depth - 1) for _ in range(rng.randrange(4))]
        return {self.text(5): self.value(depth - 1) for _ in range(rng.randrange(4))}

    # Mangled messages

    def encode(self, message) -> bytes:
        return json.dumps(message, ensure_ascii=self.rng.random() < 0.5).encode()

    def mutated(self, data: bytes) -> bytes:
        """
        A few bytes changed, inserted or removed (ASCII: the text stays
        UTF-8 if it was).
        """
        rng = self.rng
        data = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            index = rng.randrange(len(data) + 1)
            roll = rng.random()
            byte = rng.choice(b'{}[]",:0123456789.eE-+ \\ntfalsu')
            if roll < 0.4 and index < len(data) and data[index] < 0x80:
                data[index] = byte
            elif roll < 0.7:
                data.insert(index, byte)
            elif index < len(data) and data[index] < 0x80:
                del data[index]
        return bytes(data)

    def deep(self) -> bytes:
        rng = self.rng
        depth = int(rng.choices((10, 100, 127, 128, 129, 1000, 10_000, MAX_DEPTH),
                                (4, 4, 2, 2, 2, 4, 2, 1))[0] * rng.uniform(0.9, 1.0)) or 1
        opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        inner = opener * depth + b"1" + closer * (depth if rng.random() < 0.8 else depth // 2)
        if rng.random() < 0.5:
            return inner
        return b'{"id":1,"method":"fs/readFile","params":' + inner + b"}"

    def big_numbers(self) -> bytes:
        rng = self.rng
        digits = rng.choices((19, 20, 309, 4300, 4301, 10_000, MAX_DIGITS),
                             (4, 4, 4, 2, 2, 1, 1))[0]
        number = rng.choice("123456789").encode() + bytes(rng.choices(b"0123456789", k=digits))
        number = rng.choice((number, b"-" + number, number + b".5", b"1e" + number,
                             b"0." + number, b"1E-" + number))
        where = rng.random()
        if where < 0.4:
            return b'{"id":' + number + b',"method":"environment/status"}'
        if where < 0.8:
            method = rng.choice([b"process/read", b"fs/readBlock", b"fs/watchMissing"])
            field = rng.choice([b"afterSeq", b"maxBytes", b"waitMs", b"offset", b"len",
                                b"watchId"])
            return (b'{"id":7,"method":"' + method + b'","params":{"processId":"p0",'
                    b'"handleId":"h0","' + field + b'":' + number + b"}}")
        return number

    def garbage_text(self) -> bytes:
        rng = self.rng
        return bytes(rng.choices(range(0x20, 0x7F), k=rng.randrange(0, 300)))

    def huge(self) -> bytes:
        rng = self.rng
        size = rng.randint(1, 8) * 1024 * 1024
        roll = rng.random()
        if roll < 0.4:
            return (b'{"id":3,"method":"fs/getMetadata","params":{"path":"' + b"a" * size
                    + b'"}}')
        if roll < 0.7:
            return b'{"id":4,"method":"environment/status","params":[' + b"1," * (size // 2) + b"1]}"
        return b"[" + b"0" * size + b"x"


def _strings(value):
    """
    Every string in a JSON value, keys included.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
