"""
fs/* against the reference: the same exchanges on the same trees, the same
answers.

Each scenario builds its fixtures under the server's own working directory
(C{peer.path}) and names them by URI (C{peer.uri}); transcripts call that
directory C{<workdir>}. Our deliberate differences (docs/filesystem.md: no
copy of a file onto itself, no write that waits for a FIFO reader, recursive
no-follow removal, restrictive sandboxes refused) are not compared here;
tests/test_filesystem.py specifies them.
"""

from __future__ import annotations

import base64
import os
import socket

from tests.interop import InteropTestCase, interop
from tests.test_filesystem import b64, build_tree, build_walk_tree, read, write

METHODS = ("fs/readFile", "fs/writeFile", "fs/createDirectory", "fs/getMetadata",
           "fs/readDirectory", "fs/remove", "fs/copy", "fs/canonicalize", "fs/walk",
           "fs/open", "fs/readBlock", "fs/close", "fs/writeBlock")

WALK_ALL = {"maxDepth": 10, "maxDirectories": 100, "maxEntries": 1000,
            "followDirectorySymlinks": False}


def tree(peer) -> callable:
    """
    Build the probe tree and return a function naming its URIs.
    """
    build_tree(peer.path())
    return lambda *parts: peer.uri("s", *parts)


def said(peer, value) -> str:
    """
    C{repr(value)} as a transcript label: the working directory differs
    between the two servers.
    """
    return repr(value).replace(peer.workdir, "<workdir>").replace(peer.workdir[1:], "<workdir>")


async def calls(peer, method, cases: dict) -> None:
    for label, params in cases.items():
        await peer.call(method, params, label=f"{method} {label}")


# Params


async def params_before_initialize(peer):
    await peer.call("fs/readFile", {"path": "rel"}, label="bad params first")
    await peer.call("fs/readFile", {"path": "file:///tmp"}, label="then the gate")
    await peer.call("fs/bogus", {}, label="unknown method")
    await peer.call("initialize", {"clientName": "interop"}, record=False)
    await peer.call("fs/getMetadata", {"path": "file:///tmp"}, label="before initialized")


async def params_shapes(peer):
    await peer.handshake()
    for method in METHODS:
        for shape in (None, "x", 5, [], {}):
            await peer.call(method, shape, label=f"{method} {said(peer, shape)}")
    f = peer.uri("f")
    write(peer.path("f"), b"hello")
    m = peer.uri("m")
    write(peer.path("m"), b"meta")
    os.utime(peer.path("m"), (1_700_000_000, 1_700_000_000))
    positional = {
        "fs/readFile": [[f], [f, True], [f, True, None], [f, None, None], [f, False, None, 7]],
        "fs/writeFile": [[f, "aGk="], [f, "aGk=", True], [f, "aGk=", None, None]],
        "fs/createDirectory": [[peer.uri("cd")], [peer.uri("cd"), True], [peer.uri("cd"), True, True, None]],
        "fs/getMetadata": [[m], [m, True], [m, None, None]],
        "fs/readDirectory": [[peer.uri()], [peer.uri(), None]],
        "fs/remove": [[peer.uri("x")], [peer.uri("x"), True], [peer.uri("x"), True, True],
                      [peer.uri("x"), True, True, None, None]],
        "fs/copy": [[f, peer.uri("g")], [f, peer.uri("g"), False], [f, peer.uri("g"), False, None]],
        "fs/canonicalize": [[f], [f, None]],
        "fs/walk": [[peer.uri()], [peer.uri(), [1, 1, 1, False]], [peer.uri(), [1, 1, 1], None],
                    [peer.uri(), [1, 1, 1, False], None], [peer.uri(), [1, 1, 1, False, True], None],
                    [peer.uri(), [1, 1, 1, False, None], None],
                    [peer.uri(), [1, 1, 1, False, True, 7], None]],
        "fs/open": [["h", f], ["h", f, "read"], ["h", f, "read", None]],
        "fs/readBlock": [["h", 0], ["h", 0, 2], ["h", 0, 2, 5]],
        "fs/writeBlock": [["h", 0], ["w", 0, "aGk="]],
        "fs/close": [["h", 1], [f], ["h"]],
    }
    for method, shapes in positional.items():
        for shape in shapes:
            await peer.call(method, shape, label=f"{method} {said(peer, shape)}")


async def field_types(peer):
    await peer.handshake()
    f = peer.uri("f")
    write(peer.path("f"), b"0123456789")
    for value in (5, None, True, ["x"], {"a": 1}):
        await peer.call("fs/readFile", {"path": value}, label=f"path {value!r}")
        await peer.call("fs/copy", {"sourcePath": f, "destinationPath": value, "recursive": True},
                        label=f"destinationPath {value!r}")
    for field in ("followSymlinks", "recursive", "force"):
        for value in ("yes", 1, None):
            params = {"path": peer.uri("nonexist"), field: value}
            await peer.call("fs/remove", params, label=f"remove {field}={value!r}")
    await peer.call("fs/copy", {"sourcePath": f, "destinationPath": peer.uri("g"), "recursive": None},
                    label="copy recursive null")
    walk = {"path": peer.uri(), "options": dict(WALK_ALL, pruneHiddenDirectories=None)}
    await peer.call("fs/walk", walk, label="prune null")
    for field in ("maxDepth", "maxDirectories", "maxEntries"):
        for value in (-1, 1.5, 1.0, 2**64, "x"):
            options = dict(WALK_ALL, **{field: value})
            await peer.call("fs/walk", {"path": peer.uri(), "options": options}, label=f"{field}={value!r}")
    await peer.call("fs/walk", {"path": peer.uri(), "options": "x"}, label="options string")
    await peer.call("fs/walk", {"path": peer.uri(), "options": None}, label="options null")
    await peer.call("fs/walk", {"path": peer.uri(), "options": {}}, label="options empty")
    await peer.call("fs/walk", {"path": peer.uri(), "options": {"maxDepth": 1}}, label="options partial")
    for mode in (None, "zzz", {"read": None}, {}, {"read": None, "replace": None}, 5, ["read"]):
        await peer.call("fs/open", {"handleId": "m", "path": f, "mode": mode}, label=f"mode {mode!r}")
        await peer.call("fs/close", {"handleId": "m"}, record=False)
    await peer.call("fs/open", {"handleId": "h", "path": f})
    for offset in (-1, 1.5, 1.0, 2**64, "x"):
        await peer.call("fs/readBlock", {"handleId": "h", "offset": offset, "len": 1},
                        label=f"offset {offset!r}")
    for length in (-1, "1", 2**64):
        await peer.call("fs/readBlock", {"handleId": "h", "offset": 0, "len": length},
                        label=f"len {length!r}")
    await peer.call("fs/readBlock", {"handleId": 5, "offset": 0, "len": 1}, label="handleId number")
    await peer.call("fs/writeFile", {"path": peer.uri("w"), "dataBase64": 5}, label="dataBase64 number")
    await peer.call("fs/writeFile", {"path": peer.uri("w"), "dataBase64": None}, label="dataBase64 null")
    for chunk in ("!!!!", "a", "aGk", "aGk=\n", 5):
        await peer.call("fs/writeBlock", {"handleId": "h", "offset": 0, "chunk": chunk},
                        label=f"chunk {chunk!r}")
    await peer.call("fs/readFile", {"path": f, "sandbox": 1}, label="sandbox number")
    await peer.call("fs/readFile", {"path": f, "sandbox": {}}, label="sandbox empty")
    await peer.call("fs/readFile", {"path": f, "Path": 5}, label="unknown field")
    await peer.call("fs/close", {"handleId": "h", "sandbox": 5}, label="close ignores sandbox")
    await peer.call("fs/readBlock", {"handleId": "h", "offset": 0, "len": 1, "sandbox": 5},
                    label="readBlock ignores sandbox")


async def field_order(peer):
    await peer.handshake()
    cases = [
        ("fs/readFile", {"followSymlinks": "x", "path": 5}),
        ("fs/readFile", {"path": 5, "followSymlinks": "x"}),
        ("fs/readFile", {"path": "/native", "followSymlinks": "x"}),
        ("fs/readFile", {"followSymlinks": "x", "path": "/native"}),
        ("fs/readFile", {"followSymlinks": True}),
        ("fs/copy", {"destinationPath": "rel"}),
        ("fs/copy", {"recursive": True}),
        ("fs/copy", {"sourcePath": "file:///tmp"}),
        ("fs/copy", {"sourcePath": "file:///C:/x", "destinationPath": "file:///D:/y", "recursive": True}),
        ("fs/readBlock", {"len": "5"}),
        ("fs/readBlock", {"len": 5}),
        ("fs/readBlock", {"handleId": "x", "len": 5}),
        ("fs/walk", {"options": {}}),
        ("fs/walk", {"options": {"maxDepth": 1}}),
        ("fs/walk", {"options": {"maxDepth": 1, "maxDirectories": 1}}),
        ("fs/walk", {"options": {"maxDepth": 1, "maxDirectories": 1, "maxEntries": 1}}),
        ("fs/walk", {"options": WALK_ALL}),
        ("fs/writeFile", {"path": "file:///tmp/%00", "dataBase64": "!"}),
        ("fs/writeFile", {"path": "file:///C:/x", "dataBase64": "!"}),
        ("fs/walk", {"path": "file:///C:/x", "options": dict(WALK_ALL, maxEntries=0)}),
        ("fs/open", {"handleId": "a" * 33, "path": "rel"}),
        ("fs/open", {"handleId": "a" * 33, "path": "file:///C:/x"}),
        ("fs/readBlock", {"handleId": "a" * 33, "offset": 0, "len": 0}),
        ("fs/readBlock", {"handleId": "zz", "offset": 0, "len": 0}),
        ("fs/writeBlock", {"handleId": "a" * 33, "offset": 2**63, "chunk": ""}),
        ("fs/writeBlock", {"handleId": "nope", "offset": 2**63, "chunk": ""}),
        ("fs/writeBlock", {"handleId": "nope", "offset": 2**63, "chunk": "aGk="}),
        ("fs/remove", {"path": "file:///C:/x", "followSymlinks": False, "recursive": False}),
    ]
    for method, params in cases:
        await peer.call(method, params, label=f"{method} {said(peer, params)}")


# URIs


def uri_fixture(peer) -> None:
    u = peer.path("u")
    os.makedirs(os.path.join(u, "dir"))
    for name in ("plain", "pct%x", "eé", "emoji😀", "sp ace", "semi;x", "tilde~x", "hash#x",
                 "q?x", "bs\\x", "tab\tx", "dir/f", "C|/x"):
        if "/" in name:
            os.makedirs(os.path.join(u, os.path.dirname(name)), exist_ok=True)
        write(os.path.join(u, name), name.encode())


async def uri_inputs(peer):
    await peer.handshake()
    uri_fixture(peer)
    plain = peer.path("u", "plain")
    u = peer.uri("u")
    inputs = [
        plain, plain[1:], "./plain", "plain", "", "file:" + plain, "file://" + "/" + plain,
        "file:///" + "/" + plain, "FILE://" + plain, "File://" + plain,
        "file://localhost" + plain, "file://LOCALHOST" + plain,
        "file:/" + plain, "file:" + plain[1:],
        "file://tmp" + plain, "file://127.0.0.1" + plain, "file://otherhost" + plain,
        "file://server/share/x", "file:///C:/x", "file:///c:/x", "file:///C:", "file:///C|/x",
        "file:///c%3a/x", "file:/c|/x", "file://c|/x", "file:C:x", "file:C:\tx",
        "http://example.com/tmp/x", "https://a/b", "ftp://a/b", "urn:x", "data:text/plain,x",
        "mailto:a@b", "x:/tmp/a", "c:/x", "C:\\x",
        "file://user:pass@localhost" + plain, "file://user@" + plain, "file://localhost:8080" + plain,
        "file://:80" + plain, "http://", "http://a:99999/", "http://[", "x://a b/",
        u + "/plain?x=1", u + "/plain?", u + "/plain#frag", u + "/plain#", u + "/plain?a#b",
        u + "/slash%2Fx", u + "/dir%2Ff", u + "/pct%41x", u + "/pct%x", u + "/pct%zz",
        u + "/e%C3%A9", u + "/e%c3%a9", u + "/eé", u + "/emoji😀", u + "/emoji%F0%9F%98%80",
        u + "/sp ace", u + "/sp%20ace", u + "/sp+ace", u + "/semi;x", u + "/semi%3Bx",
        u + "/tilde~x", u + "/tilde%7Ex", u + "/hash%23x", u + "/q%3Fx", u + "/bs%5Cx",
        u + "/bs\\x", u + "\\plain", u + "/tab\tx", u + "/tab%09x", " " + u + "/plain",
        u + "/plain ", u + "/pl%00ain", u + "/pl\0ain", u + "/plain/", u + "/dir/", u + "/dir//f",
        u + "/./plain", u + "/dir/../plain", u + "/nonexist/../plain", u + "/%2E%2E/u/plain",
        u + "/%2e/plain", u + "/dir%2F..%2Fplain", u + "/C|/x", "file:", "file:/", "file://",
        "file:///", "file://localhost", "file://localhost/", "file://[::1]/x", "file://0x7f.1/x",
        "file://1.2.3.256/x", "file://Ünicode/x", "file://xn--/x",
        "file:///%00/bad/path/L3RtcC94", "file://localhost/%00/bad/path/L3RtcC94",
        "file:///%00/bad/path/YQ", "file:///%00/bad/path/L3RtcC94==", "file:///%00/bad/path/a/b",
        "file:///%00/bad/path/!!!", "file:///%00/bad/path/", "file:///%00/bad/path",
        "file:///%00/bad/path/L3RtcC94/extra", "file:///%00/other", "file:///%00/bad/path/YR",
        "file:///c:/%00",
    ]
    for uri in inputs:
        await peer.call("fs/readFile", {"path": uri}, label=f"readFile {said(peer, uri)}")
    await peer.call("fs/canonicalize", {"path": "file:///%00/bad/path/L3RtcC94"}, label="fallback canonicalize")


async def uri_spelling(peer):
    await peer.handshake()
    spell = peer.path("spell")
    os.makedirs(spell)
    names = [b"p" + bytes([byte]) + b"x" for byte in range(1, 0x80) if byte != ord("/")]
    names += ["é".encode(), "😀".encode(), b"%2F", b"%41", b"bad\xffname", b"latin\xe9",
              b"brace{x}", b"brk[x]"]
    for name in names:
        write(os.path.join(os.fsencode(spell), name), b"")
    os.makedirs(os.path.join(spell, "dir"))
    write(os.path.join(spell, "dir", "f"), b"")
    reply = await peer.call("fs/walk", {"path": peer.uri("spell"), "options": dict(WALK_ALL, maxDepth=0)},
                            record=False)
    entries = sorted(reply["result"]["entries"], key=lambda e: e["path"])
    errors = sorted(reply["result"]["errors"], key=lambda e: e["path"])
    peer.record("walk entries", entries)
    peer.record("walk errors", errors)
    for entry in entries:
        await peer.call("fs/canonicalize", {"path": entry["path"]}, label=f"canonicalize {said(peer, entry['path'])}")
    for root in ("/%64ir", "%2Fdir", "//dir", "/dir/", "/dir//", "/./dir", "/x/../dir", "\\dir"):
        uri = peer.uri("spell") + root
        await peer.call("fs/walk", {"path": uri, "options": WALK_ALL}, label=f"walk root {root}")
    await peer.call("fs/walk", {"path": "file://localhost" + peer.path("spell", "dir"),
                                "options": WALK_ALL}, label="walk localhost root")
    await peer.call("fs/canonicalize", {"path": peer.uri("spell") + "/dir/"},
                    label="canonicalize trailing slash")
    await peer.call("fs/canonicalize", {"path": "file:///"}, label="canonicalize root")
    await peer.call("fs/canonicalize", {"path": "file:///tmp/"}, label="canonicalize tmp")
    await peer.call("fs/canonicalize", {"path": peer.uri("spell") + "/p~x"},
                    label="canonicalize tilde")
    await peer.call("fs/canonicalize", {"path": peer.uri("spell") + "/p%7Ex"},
                    label="canonicalize encoded tilde")


# Methods


async def read_file(peer):
    await peer.handshake()
    s = tree(peer)
    for name in ("empty", "bin", "digits", "lf", "chain1", "absdir/f", "dir", "ld", "dir/", "fifo",
                 "broken", "nonexist", "dir/nonexist/x", "loop1", "self", "bin/x", "ne/x/y",
                 "x" * 256, "dir/f/"):
        await peer.call("fs/readFile", {"path": s(name)}, label=f"readFile {name}")
    for uri in ("file:///", "file:///dev/null", "file:///dev/zero", "file:///proc/version"):
        reply = await peer.call("fs/readFile", {"path": uri}, record=False)
        peer.record(f"readFile {uri}", reply.get("error") or "ok")
    with open(peer.path("s", "big"), "wb") as f:
        f.truncate(512 * 1024 * 1024 + 1)
    with open(peer.path("s", "huge"), "wb") as f:
        f.truncate(2**40)
    for name in ("big", "huge"):
        await peer.call("fs/readFile", {"path": s(name)}, label=f"readFile {name}")
        await peer.call("fs/readFile", {"path": s(name), "followSymlinks": False},
                        label=f"readFile {name} no-follow")


async def write_file(peer):
    await peer.handshake()
    s = tree(peer)
    await peer.call("fs/writeFile", {"path": s("new"), "dataBase64": b64(b"new")}, label="create")
    peer.record("new mode", oct(os.stat(peer.path("s", "new")).st_mode))
    os.chmod(peer.path("s", "digits"), 0o600)
    os.link(peer.path("s", "digits"), peer.path("s", "hard"))
    inode = os.stat(peer.path("s", "digits")).st_ino
    await peer.call("fs/writeFile", {"path": s("digits"), "dataBase64": b64(b"changed")}, label="overwrite")
    after = os.stat(peer.path("s", "digits"))
    peer.record("in place", [after.st_ino == inode, oct(after.st_mode), read(peer.path("s", "hard"))
                             .decode()])
    cases = {
        "empty data": {"path": s("e2"), "dataBase64": ""},
        "missing parent": {"path": s("missing/new.txt"), "dataBase64": "aGk="},
        "dir": {"path": s("dir"), "dataBase64": "aGk="},
        "dir/": {"path": s("dir/"), "dataBase64": "aGk="},
        "root": {"path": "file:///", "dataBase64": "aGk="},
        "file/x": {"path": s("bin/x"), "dataBase64": "aGk="},
        "through lf": {"path": s("lf"), "dataBase64": b64(b"via link")},
        "through broken": {"path": s("broken"), "dataBase64": b64(b"made")},
        "through ld": {"path": s("ld/viaLink"), "dataBase64": b64(b"in dir")},
        "loop": {"path": s("loop1"), "dataBase64": "aGk="},
        "dev null": {"path": "file:///dev/null", "dataBase64": "aGk="},
        "trailing slash": {"path": s("newslash/"), "dataBase64": b64(b"slash")},
        "foreign": {"path": "file:///C:/x", "dataBase64": "aGk="},
    }
    await calls(peer, "fs/writeFile", cases)
    for name in ("bin", "nonexist", "dir/viaLink", "newslash", "e2"):
        await peer.call("fs/readFile", {"path": s(name)}, label=f"then {name}")


async def write_file_base64(peer):
    await peer.handshake()
    target = peer.uri("t")
    for data in ("a", "aGk", "ab", "abc", "YQ", "YQ=", "aGk==", "aGk=aGk=", "aGk=é", "aGk=\n", "YWJj\r\n",
                 " aGk=", "aG k=", "aR==", "aGl=", "_-8=", "====", "=", "YQ===", "/+8=", "aaaaa",
                 "aaaa=", "aaaaa===", "a===", "aaaaaa=="):
        await peer.call("fs/writeFile", {"path": target, "dataBase64": data}, label=f"data {data!r}")
    await peer.call("fs/writeFile", {"path": "file:///C:/x", "dataBase64": "a"}, label="base64 first")
    await peer.call("fs/writeFile", {"path": peer.uri("missing", "x"), "dataBase64": "a"},
                    label="base64 before the parent")


async def create_directory(peer):
    await peer.handshake()
    s = tree(peer)
    for recursive in (None, True, False):
        label = f"recursive={recursive}"
        extra = {} if recursive is None else {"recursive": recursive}
        for name in (f"m{recursive}", "dir", "ld", f"m{recursive}/a/b/c", "bin", "lf", "broken",
                     "loop1", "fifo", "bin/x", f"ld/via{recursive}", f"t{recursive}/trail/"):
            await peer.call("fs/createDirectory", dict(extra, path=s(name)), label=f"{label} {name}")
        await peer.call("fs/createDirectory", dict(extra, path="file:///"), label=f"{label} root")
    await peer.call("fs/createDirectory", {"path": s("nullrec"), "recursive": None}, label="recursive null")
    peer.record("mode", oct(os.stat(peer.path("s", "mTrue")).st_mode))
    await peer.call("fs/readDirectory", {"path": s("dir")}, label="made through ld", record=False)
    peer.record("made through ld", sorted(os.listdir(peer.path("s", "dir"))))


async def get_metadata(peer):
    await peer.handshake()
    s = tree(peer)
    write(peer.path("s", "frac"), b"x")
    os.utime(peer.path("s", "frac"), ns=(0, 1_999_900_000))
    write(peer.path("s", "old"), b"x")
    os.utime(peer.path("s", "old"), (-315619200, -315619200))
    for name in ("bin", "digits", "dir", "lf", "ld", "chain1", "fifo", "broken", "nonexist", "loop1",
                 "bin/x", "dir/", "frac", "old", "absdir"):
        target = peer.path("s", name.rstrip("/"))
        if os.path.lexists(target) and not os.path.islink(target) and name not in ("frac", "old"):
            os.utime(target, (1_700_000_000.5, 1_700_000_000.5), follow_symlinks=False)
        await peer.call("fs/getMetadata", {"path": s(name)}, label=f"getMetadata {name}")
    for uri in ("file:///dev/null", "file:///proc/self", "file:///dev/stdin"):
        reply = await peer.call("fs/getMetadata", {"path": uri}, record=False)
        result = dict(reply["result"], modifiedAtMs="<time>", size="<size>")
        peer.record(f"getMetadata {uri}", result)
    reply = await peer.call("fs/getMetadata", {"path": "file:///"}, record=False)
    peer.record("root createdAtMs", reply["result"]["createdAtMs"])
    reply = await peer.call("fs/getMetadata", {"path": "file:///", "followSymlinks": False}, record=False)
    peer.record("root no-follow createdAtMs", reply["result"]["createdAtMs"])
    for name in ("bin", "dir", "frac", "old"):
        reply = await peer.call("fs/getMetadata", {"path": s(name), "followSymlinks": False}, record=False)
        result = dict(reply["result"])
        result["createdAtMs"] = result["createdAtMs"] > 0
        peer.record(f"no-follow {name}", result)


async def read_directory(peer):
    await peer.handshake()
    s = tree(peer)
    d = peer.path("s", "dir")
    os.symlink("/dev/null", os.path.join(d, "devnull"))
    os.mkfifo(os.path.join(d, "fifo2"))
    os.symlink("fifo2", os.path.join(d, "lfifo"))
    os.symlink("nowhere", os.path.join(d, "broken2"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(d, "sock"))
    sock.close()
    for name in ("dir", "ld", "ld/", "", "bin", "empty", "fifo", "nonexist", "broken", "loop1"):
        reply = await peer.call("fs/readDirectory", {"path": s(name)}, record=False)
        if "result" in reply:
            reply = {"result": {"entries": sorted(reply["result"]["entries"],
                                                  key=lambda e: e["fileName"])}}
        peer.record(f"readDirectory {name!r}", reply)
    await peer.call("fs/readDirectory", {"path": "file:///dev/null"}, label="readDirectory /dev/null")
    odd = os.fsencode(peer.path("odd"))
    os.makedirs(odd)
    for name in (b"bad\xffname", b"latin\xe9", b"nl\nx", b"tab\tx", b"ctrl\x01x"):
        write(os.path.join(odd, name), b"")
    reply = await peer.call("fs/readDirectory", {"path": peer.uri("odd")}, record=False)
    peer.record("odd names", sorted(reply["result"]["entries"], key=lambda e: e["fileName"]))


async def read_directory_limit(peer):
    await peer.handshake()
    many = os.fsencode(peer.path("many"))
    os.makedirs(many)
    for index in range(50_000):
        open(os.path.join(many, b"f%05d" % index), "wb").close()
    os.symlink(b"nowhere", os.path.join(many, b"broken"))
    reply = await peer.call("fs/readDirectory", {"path": peer.uri("many")}, record=False)
    peer.record("50000 kept", len(reply["result"]["entries"]))
    open(os.path.join(many, b"f50000"), "wb").close()
    await peer.call("fs/readDirectory", {"path": peer.uri("many")}, label="50001")


async def remove(peer):
    await peer.handshake()
    s = tree(peer)
    os.makedirs(peer.path("s", "full", "deep"))
    write(peer.path("s", "full", "deep", "x"), b"x")
    os.makedirs(peer.path("s", "full2", "deep"))
    os.makedirs(peer.path("s", "emptydir"))
    os.makedirs(peer.path("s", "t", "d"))
    os.symlink("../../dir", peer.path("s", "t", "d", "ldir"))
    os.symlink("dir", peer.path("s", "lr4"))
    cases = {
        "file": {"path": s("digits")},
        "file recursive false": {"path": s("empty"), "recursive": False},
        "empty dir recursive false": {"path": s("emptydir"), "recursive": False},
        "full dir recursive false": {"path": s("full"), "recursive": False},
        "full dir": {"path": s("full")},
        "full dir force false": {"path": s("full2"), "force": False},
        "missing": {"path": s("nonexist")},
        "missing force": {"path": s("nonexist"), "force": True},
        "missing below missing": {"path": s("nonexist/x")},
        "missing force false": {"path": s("nonexist"), "force": False},
        "missing below missing force false": {"path": s("nonexist/x"), "force": False},
        "enotdir": {"path": s("bin/x")},
        "enotdir force false": {"path": s("bin/x"), "force": False},
        "dir link": {"path": s("lr4")},
        "dir link with slash": {"path": s("ld/")},
        "broken": {"path": s("broken"), "force": False},
        "loop": {"path": s("loop1"), "force": False},
        "fifo": {"path": s("fifo"), "force": False},
        "tree with link out": {"path": s("t")},
        "through absdir": {"path": s("absdir/sub")},
        "root": {"path": "file:///", "recursive": False},
        "long name": {"path": s("x" * 256)},
        "foreign": {"path": "file:///C:/x"},
    }
    await calls(peer, "fs/remove", cases)
    peer.record("left", sorted(os.listdir(peer.path("s"))))
    peer.record("dir left", sorted(os.listdir(peer.path("s", "dir"))))


async def copy(peer):
    await peer.handshake()
    s = tree(peer)
    os.chmod(peer.path("s", "bin"), 0o4751)
    os.makedirs(peer.path("s", "dst_exist"))
    t = peer.path("s", "tree")
    os.makedirs(os.path.join(t, "sub", "deeper"))
    os.chmod(os.path.join(t, "sub"), 0o700)
    write(os.path.join(t, "a"), b"a")
    os.chmod(os.path.join(t, "a"), 0o600)
    write(os.path.join(t, "sub", "deeper", "b"), b"b")
    os.symlink("a", os.path.join(t, "la"))
    os.symlink("/nonexist", os.path.join(t, "lbroken"))
    os.symlink("../dir", os.path.join(t, "ldir"))
    os.mkfifo(os.path.join(t, "fifo"))
    os.makedirs(peer.path("s", "partial"))
    write(peer.path("s", "partial", "a"), b"old")
    write(peer.path("s", "partial", "extra"), b"extra")

    def copy(source, destination, recursive=False):
        return {"sourcePath": s(source), "destinationPath": s(destination), "recursive": recursive}

    cases = {
        "file": copy("bin", "bin2"),
        "file recursive": copy("digits", "digits2", True),
        "onto file": copy("digits", "empty"),
        "onto dir": copy("digits", "dst_exist"),
        "onto dir slash": copy("digits", "dst_exist/"),
        "missing parent": copy("digits", "nodir/x"),
        "onto lf": copy("digits", "lf"),
        "onto broken": copy("digits", "broken"),
        "onto loop": copy("digits", "loop1"),
        "missing source": copy("nonexist", "x"),
        "dir not recursive": copy("tree", "nodir/x"),
        "dir to itself": copy("tree", "tree", True),
        "dir to itself slash": copy("tree", "tree/", True),
        "dir into itself": copy("tree", "tree/sub/x", True),
        "dir into itself dots": copy("tree", "treeX/../tree/y", True),
        "dir into itself via link": copy("dir", "ld/x", True),
        "dir to new": copy("tree", "newparent/a/b", True),
        "dir to empty dir": copy("tree", "dst_exist", True),
        "dir merge": copy("tree", "partial", True),
        "dir again": copy("tree", "newparent/a/b", True),
        "dir onto file": copy("tree", "digits", True),
        "dir below file": copy("tree", "bin/x", True),
        "link file": copy("lf", "lf2"),
        "link dir": copy("ld", "ld2"),
        "link broken": copy("broken", "broken2"),
        "link loop": copy("loop1", "loop3"),
        "link onto file": copy("lf", "digits"),
        "link onto dir": copy("lf", "dst_exist"),
        "fifo": copy("fifo", "fifo2"),
        "fifo recursive": copy("fifo", "fifo2", True),
        "dev null": {"sourcePath": "file:///dev/null", "destinationPath": s("null2"), "recursive": False},
        "foreign destination": {"sourcePath": s("digits"), "destinationPath": "file:///C:/x",
                                "recursive": False},
    }
    await calls(peer, "fs/copy", cases)

    def describe(path):
        info = os.lstat(path)
        if os.path.islink(path):
            return ["link", os.readlink(path)]
        if os.path.isdir(path):
            return ["dir", oct(info.st_mode), sorted(os.listdir(path))]
        return ["file", oct(info.st_mode), read(path).decode("latin-1")]

    for name in ("bin2", "empty", "bin", "nonexist", "digits2", "newparent/a/b", "newparent/a/b/a",
                 "newparent/a/b/sub", "newparent/a/b/la", "newparent/a/b/lbroken", "newparent/a/b/ldir",
                 "newparent/a/b/sub/deeper/b", "dst_exist", "partial", "partial/a", "lf2", "ld2",
                 "broken2", "loop3"):
        path = peer.path("s", name)
        peer.record(f"after {name}", describe(path) if os.path.lexists(path) else None)


async def canonicalize(peer):
    await peer.handshake()
    s = tree(peer)
    os.symlink("dir", peer.path("s", "reldir"))
    for name in ("chain1", "ld/f", "absdir/f", "reldir/", "fifo", "digits", "broken", "nonexist",
                 "ld/nonexist", "loop1", "self", "bin/x", "dir/sub/.."):
        await peer.call("fs/canonicalize", {"path": s(name)}, label=f"canonicalize {name}")
    await peer.call("fs/canonicalize", {"path": s("ld"), "followSymlinks": False}, label="ignores followSymlinks")


async def walk_limits(peer):
    await peer.handshake()
    build_walk_tree(peer.path())
    root = peer.uri("w", "r")
    for options in ({"maxDirectories": 0}, {"maxEntries": 0}, {"maxEntries": 0, "maxDepth": 65},
                    {"maxDepth": 65}, {"maxDirectories": 10001}, {"maxEntries": 50001},
                    {"maxDepth": 2**32}, {"maxDepth": 64, "maxDirectories": 10000, "maxEntries": 50000},
                    {"maxDepth": 0}, {"maxDepth": 1}):
        await peer.call("fs/walk", {"path": root, "options": dict(WALK_ALL, **options)},
                        label=f"walk {options}")
    await peer.call("fs/walk", {"path": "file:///C:/x", "options": dict(WALK_ALL, maxEntries=0)},
                    label="limits before the root")


async def walk_roots(peer):
    await peer.handshake()
    s = tree(peer)
    build_walk_tree(peer.path())
    os.symlink(peer.path("w", "r"), peer.path("rootlink"))
    for name in ("nonexist", "broken", "self", "bin/x", "bin", "fifo", "lf"):
        await peer.call("fs/walk", {"path": s(name), "options": WALK_ALL}, label=f"walk {name}")
    await peer.call("fs/walk", {"path": "file:///dev/null", "options": WALK_ALL}, label="walk /dev/null")
    for follow in (False, True):
        await peer.call("fs/walk", {"path": peer.uri("rootlink"),
                                    "options": dict(WALK_ALL, maxDepth=0, followDirectorySymlinks=follow)},
                        label=f"walk root link follow={follow}")


async def walk_traversal(peer):
    await peer.handshake()
    build_walk_tree(peer.path())
    root = peer.uri("w", "r")
    for options in ({}, {"followDirectorySymlinks": True}, {"pruneHiddenDirectories": True},
                    {"maxDirectories": 1}, {"maxDirectories": 2}, {"maxDirectories": 3},
                    {"maxEntries": 3}, {"maxEntries": 8}, {"maxEntries": 9}, {"maxDepth": 2}):
        await peer.call("fs/walk", {"path": root, "options": dict(WALK_ALL, **options)},
                        label=f"walk {options}")
    await peer.call("fs/walk", {"path": root + "/", "options": dict(WALK_ALL, maxDepth=0)}, label="slash")


async def walk_counting(peer):
    await peer.handshake()
    c = peer.path("count")
    os.makedirs(c)
    os.makedirs(peer.path("other"))
    os.symlink("nowhere", os.path.join(c, "a_broken"))
    os.symlink("b_broken", os.path.join(c, "b_broken"))
    os.mkfifo(os.path.join(c, "c_fifo"))
    write(os.path.join(c, "d_file"), b"")
    os.symlink("../other", os.path.join(c, "lother"))
    os.symlink("../other", os.path.join(c, "lother2"))
    os.makedirs(os.path.join(c, "x"))
    for entries in range(1, 7):
        for follow in (False, True):
            options = dict(WALK_ALL, maxEntries=entries, maxDepth=0, followDirectorySymlinks=follow)
            await peer.call("fs/walk", {"path": peer.uri("count"), "options": options},
                            label=f"maxEntries {entries} follow={follow}")


async def walk_loops(peer):
    await peer.handshake()
    base = peer.path("loops")
    os.makedirs(os.path.join(base, "x"))
    os.makedirs(os.path.join(base, "y"))
    os.makedirs(os.path.join(base, "other"))
    write(os.path.join(base, "other", "o1"), b"")
    os.symlink("..", os.path.join(base, "x", "toparent"))
    os.symlink(".", os.path.join(base, "x", "toself"))
    os.symlink(base, os.path.join(base, "y", "toroot"))
    os.symlink("../other", os.path.join(base, "x", "l1"))
    os.symlink("../other", os.path.join(base, "y", "l2"))
    options = dict(WALK_ALL, followDirectorySymlinks=True)
    await peer.call("fs/walk", {"path": peer.uri("loops"), "options": options}, label="loops")


async def walk_odd_names(peer):
    await peer.handshake()
    odd = os.fsencode(peer.path("odd"))
    os.makedirs(os.path.join(odd, b"ok"))
    os.makedirs(os.path.join(odd, b"tab\tdir"))
    write(os.path.join(odd, b"tab\tdir", b"inner"), b"")
    os.symlink(b"../tab\tdir", os.path.join(odd, b"ok", b"lnk_tab"))
    for name in (b"bad\xffname", b"cr\rx", b"nl\nx", b"tab\tx", b"plain", b"sp ace", b"pct%41"):
        write(os.path.join(odd, name), b"")
    options = dict(WALK_ALL, followDirectorySymlinks=True)
    await peer.call("fs/walk", {"path": peer.uri("odd"), "options": options}, label="odd names")
    write(os.path.join(odd, b"tabx"), b"")
    await peer.call("fs/walk", {"path": peer.uri("odd"), "options": dict(WALK_ALL, maxDepth=0)},
                    label="odd names with a namesake")


async def walk_plain_runs(peer):
    """
    Runs of plain files and directories broken by a FIFO, a link and a name
    that needs encoding, cut by maxEntries at every position: our walk
    takes such runs in one go and everything else entry by entry.
    """
    await peer.handshake()
    runs = peer.path("runs")
    for directory in ("d1", "d3", "sp ace", "d3/e1"):
        os.makedirs(os.path.join(runs, directory))
    for name in ("a1", "a2", "b1", "b2", "c1", "e2", "f1", "z1", "d1/x1", "d1/x2", "d1/x4",
                 "d3/y1", "sp ace/s1", "d3/e1/deep"):
        write(os.path.join(runs, name), b"")
    os.mkfifo(os.path.join(runs, "b3fifo"))
    os.mkfifo(os.path.join(runs, "d1", "x3fifo"))
    os.symlink("d1", os.path.join(runs, "e3link"))
    for entries in range(1, 27):
        for follow in (False, True):
            options = dict(WALK_ALL, maxEntries=entries, maxDepth=1, followDirectorySymlinks=follow)
            await peer.call("fs/walk", {"path": peer.uri("runs"), "options": options},
                            label=f"maxEntries {entries} follow={follow}")


async def open_read(peer):
    await peer.handshake()
    s = tree(peer)
    digits = s("digits")
    cases = [
        ("long id", {"handleId": "b" * 33, "path": digits}),
        ("16 e-acute", {"handleId": "é" * 16, "path": digits}),
        ("17 e-acute", {"handleId": "é" * 17, "path": digits}),
        ("empty id", {"handleId": "", "path": digits}),
        ("d", {"handleId": "d", "path": digits}),
        ("duplicate", {"handleId": "d", "path": digits}),
        ("duplicate bad path", {"handleId": "d", "path": "rel"}),
        ("duplicate missing", {"handleId": "d", "path": s("nonexist")}),
        ("fifo", {"handleId": "x", "path": s("fifo")}),
        ("dir", {"handleId": "x", "path": s("dir")}),
        ("dev null", {"handleId": "x", "path": "file:///dev/null"}),
        ("dev zero", {"handleId": "x", "path": "file:///dev/zero"}),
        ("missing", {"handleId": "x", "path": s("nonexist")}),
        ("broken", {"handleId": "x", "path": s("broken")}),
        ("loop", {"handleId": "x", "path": s("loop1")}),
        ("enotdir", {"handleId": "x", "path": s("bin/x")}),
        ("foreign", {"handleId": "x", "path": "file:///C:/x"}),
    ]
    for label, params in cases:
        await peer.call("fs/open", params, label=f"open {label}")
    for offset, length in ((6, 3), (1, 2), (8, 4), (0, 2), (0, 10), (9, 1), (10, 1), (11, 1),
                           (100, 5), (0, 11), (0, 1048576), (5, 0), (0, 1048577), (0, 2**32)):
        await peer.call("fs/readBlock", {"handleId": "d", "offset": offset, "len": length},
                        label=f"readBlock {offset},{length}")
    await peer.call("fs/readBlock", {"handleId": "zz", "offset": 0, "len": 1}, label="unknown")
    await peer.call("fs/readBlock", {"handleId": "zz", "offset": 0, "len": 0}, label="len before lookup")
    await peer.call("fs/readBlock", {"handleId": "d", "offset": 2**63, "len": 1}, label="offset 2^63")
    await peer.call("fs/readBlock", {"handleId": "d", "offset": 0, "len": 1}, label="closed by the error")
    await peer.call("fs/open", {"handleId": "d", "path": s("empty")}, label="id free again")
    await peer.call("fs/readBlock", {"handleId": "d", "offset": 0, "len": 5}, label="empty 0,5")
    await peer.call("fs/readBlock", {"handleId": "d", "offset": 1, "len": 5}, label="empty 1,5")
    await peer.call("fs/readBlock", {"handleId": "d", "offset": 2**63 - 1, "len": 3}, label="offset max")
    await peer.call("fs/close", {"handleId": "d"}, label="close unknown")
    await peer.call("fs/close", {"handleId": "b" * 33}, label="close long id")
    with open(peer.path("s", "huge"), "wb") as f:
        f.truncate(2**40)
    await peer.call("fs/open", {"handleId": "h", "path": s("huge")}, label="open 1 TiB")
    await peer.call("fs/readBlock", {"handleId": "h", "offset": 2**40 - 1, "len": 5}, label="last byte")


async def open_keeps_the_file(peer):
    await peer.handshake()
    write(peer.path("orig"), b"ORIGINAL")
    write(peer.path("grow"), b"12345")
    await peer.call("fs/open", {"handleId": "o", "path": peer.uri("orig")})
    await peer.call("fs/open", {"handleId": "g", "path": peer.uri("grow")})
    write(peer.path("replacement"), b"REPLACED")
    os.rename(peer.path("replacement"), peer.path("orig"))
    await peer.call("fs/readBlock", {"handleId": "o", "offset": 0, "len": 100}, label="after rename")
    os.unlink(peer.path("orig"))
    await peer.call("fs/readBlock", {"handleId": "o", "offset": 0, "len": 100}, label="after unlink")
    with open(peer.path("grow"), "ab") as f:
        f.write(b"678")
    await peer.call("fs/readBlock", {"handleId": "g", "offset": 5, "len": 5}, label="grown")
    with open(peer.path("grow"), "r+b") as f:
        f.truncate(1)
    await peer.call("fs/readBlock", {"handleId": "g", "offset": 0, "len": 5}, label="truncated")
    other = await peer.reconnect()
    await other.handshake()
    await other.call("fs/readBlock", {"handleId": "o", "offset": 0, "len": 1}, label="other connection")
    await other.call("fs/open", {"handleId": "o", "path": peer.uri("grow")}, label="other may reuse")
    await other.call("fs/readBlock", {"handleId": "o", "offset": 0, "len": 1}, label="its own")


async def open_limit(peer):
    await peer.handshake()
    write(peer.path("f"), b"x")
    for index in range(128):
        await peer.call("fs/open", {"handleId": f"h{index}", "path": peer.uri("f")}, record=False)
    await peer.call("fs/open", {"handleId": "h128", "path": peer.uri("f")}, label="129th")
    await peer.call("fs/open", {"handleId": "h0", "path": peer.uri("f")}, label="duplicate before limit")
    await peer.call("fs/open", {"handleId": "w", "path": peer.uri("g"), "mode": "replace"},
                    label="129th for writing")
    await peer.call("fs/close", {"handleId": "h5"})
    await peer.call("fs/open", {"handleId": "w", "path": peer.uri("g"), "mode": "replace"},
                    label="after a close")
    await peer.call("fs/open", {"handleId": "h5", "path": peer.uri("f")}, label="full again")


async def write_stream(peer):
    await peer.handshake()
    s = tree(peer)
    os.chmod(peer.path("s", "digits"), 0o640)
    inode = os.stat(peer.path("s", "digits")).st_ino
    await peer.call("fs/open", {"handleId": "w", "path": s("digits"), "mode": "replace"}, label="open")
    info = os.stat(peer.path("s", "digits"))
    peer.record("truncated in place", [info.st_size, info.st_ino == inode, oct(info.st_mode)])
    blocks = [
        ("hello", {"handleId": "w", "offset": 0, "chunk": b64(b"hello")}),
        ("gap", {"handleId": "w", "offset": 10, "chunk": b64(b"world")}),
        ("empty", {"handleId": "w", "offset": 0, "chunk": ""}),
        ("too big", {"handleId": "w", "offset": 0, "chunk": b64(b"x" * (1024 * 1024 + 1))}),
        ("1 MiB", {"handleId": "w", "offset": 20, "chunk": b64(b"y" * 1024 * 1024)}),
        ("bad base64", {"handleId": "w", "offset": 0, "chunk": "!!!!"}),
        ("offset 2^63", {"handleId": "w", "offset": 2**63, "chunk": "aGk="}),
        ("ends past the limit", {"handleId": "w", "offset": 2**63 - 2, "chunk": "aGk="}),
        ("ends at the limit", {"handleId": "w", "offset": 2**63 - 3, "chunk": "aGk="}),
        ("unknown", {"handleId": "nope", "offset": 0, "chunk": "aGk="}),
    ]
    for label, params in blocks:
        await peer.call("fs/writeBlock", params, label=f"writeBlock {label}")
    peer.record("content", base64.b64encode(read(peer.path("s", "digits"))[:30]).decode())
    await peer.call("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": "aGk="}, label="write error keeps it")
    await peer.call("fs/open", {"handleId": "r", "path": s("bin")})
    await peer.call("fs/writeBlock", {"handleId": "r", "offset": 0, "chunk": "aGk="}, label="on a read handle")
    await peer.call("fs/readBlock", {"handleId": "r", "offset": 0, "len": 2}, label="read handle still open")
    await peer.call("fs/readBlock", {"handleId": "w", "offset": 0, "len": 2}, label="reading a write handle")
    await peer.call("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": "aGk="}, label="closed by it")
    await peer.call("fs/close", {"handleId": "r"})
    cases = {
        "new": {"handleId": "n", "path": s("new"), "mode": "replace"},
        "through lf": {"handleId": "l", "path": s("lf"), "mode": "replace"},
        "through broken": {"handleId": "b", "path": s("broken"), "mode": "replace"},
        "through ld": {"handleId": "i", "path": s("ld/x"), "mode": "replace"},
        "missing parent": {"handleId": "m", "path": s("nodir/x"), "mode": "replace"},
        "dir": {"handleId": "m", "path": s("dir"), "mode": "replace"},
        "fifo": {"handleId": "m", "path": s("fifo"), "mode": "replace"},
        "dev null": {"handleId": "m", "path": "file:///dev/null", "mode": "replace"},
        "map form": {"handleId": "p", "path": s("new2"), "mode": {"replace": None}},
    }
    await calls(peer, "fs/open", cases)
    peer.record("new mode", oct(os.stat(peer.path("s", "new")).st_mode))
    peer.record("sizes", [os.path.getsize(peer.path("s", name)) for name in ("bin", "nonexist", "dir/x")])


async def no_follow(peer):
    await peer.handshake()
    s = tree(peer)
    os.makedirs(peer.path("s", "nonempty", "d"))
    for name in ("digits", "dir", "lf", "broken", "loop1", "ld", "chain1", "ld/f", "absdir/f", "ld/x",
                 "absdir/x/y", "fifo", "nonexist", "bin/x", "ld/nonexist", "dir/", "digits/"):
        for method in ("fs/readFile", "fs/getMetadata"):
            reply = await peer.call(method, {"path": s(name), "followSymlinks": False}, record=False)
            if "result" in reply and method == "fs/getMetadata":
                reply = {"result": dict(reply["result"], createdAtMs="<birth>", modifiedAtMs="<time>")}
            peer.record(f"{method} {name}", reply)
    for uri in ("file:///dev/null", "file:///", "file:///proc/self", "file:///dev/stdin"):
        for method in ("fs/readFile", "fs/writeFile"):
            params = {"path": uri, "followSymlinks": False}
            if method == "fs/writeFile":
                params["dataBase64"] = ""
            await peer.call(method, params, label=f"{method} {uri}")
        reply = await peer.call("fs/getMetadata", {"path": uri, "followSymlinks": False}, record=False)
        peer.record(f"getMetadata {uri}", reply.get("error") or "ok")
    write_cases = ["digits", "lf", "broken", "loop1", "ld/x", "absdir/x/y", "dir", "fifo", "nonexist2",
                   "bin/x", "dir/nonexist/x"]
    for name in write_cases:
        await peer.call("fs/writeFile", {"path": s(name), "dataBase64": b64(b"nf"), "followSymlinks": False},
                        label=f"writeFile {name}")
    await peer.call("fs/writeFile", {"path": "file:///tmp", "dataBase64": "", "followSymlinks": False},
                    label="writeFile /tmp")
    for recursive in (True, False):
        for name in ("ld", "lf", "broken", "ld/x", "absdir/x/y", "fifo", "bin", "bin/x", f"new{recursive}",
                     f"m{recursive}/a/b", "dir"):
            await peer.call("fs/createDirectory",
                            {"path": s(name), "recursive": recursive, "followSymlinks": False},
                            label=f"createDirectory {name} recursive={recursive}")
        for uri in ("file:///", "file:///tmp"):
            await peer.call("fs/createDirectory",
                            {"path": uri, "recursive": recursive, "followSymlinks": False},
                            label=f"createDirectory {uri} recursive={recursive}")
    for name, force in (("ld", True), ("lf", False), ("broken", True), ("ld/f", True), ("absdir/f", False),
                        ("ld/nonexist", True), ("fifo", False), ("nonexist", True), ("nonexist", False),
                        ("nonexist/x", True), ("bin/x", True), ("nonempty", True), ("digits", False),
                        ("x" * 256, True)):
        await peer.call("fs/remove", {"path": s(name), "recursive": False, "force": force,
                                      "followSymlinks": False}, label=f"remove {name} force={force}")
    await peer.call("fs/remove", {"path": "file:///", "recursive": False, "followSymlinks": False},
                    label="remove root")
    peer.record("left", sorted(os.listdir(peer.path("s"))))
    peer.record("dir left", sorted(os.listdir(peer.path("s", "dir"))))


async def sandbox_decoding(peer):
    await peer.handshake()
    write(peer.path("f"), b"x")
    f = peer.uri("f")
    root_write = {"path": {"type": "special", "value": {"kind": "root"}}, "access": "write"}

    def managed(entries, **context):
        permissions = {"type": "managed", "network": "restricted",
                       "file_system": {"type": "restricted", "entries": entries}}
        return dict({"permissions": permissions, "windowsSandboxLevel": "disabled"}, **context)

    def with_entry(entry):
        return managed([root_write, entry])

    sandboxes = {
        "disabled": {"permissions": {"type": "disabled"}},
        "no level": {"permissions": {"type": "disabled"}},
        "level bogus": {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "bogus"},
        "level mxc": {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "mxc"},
        "level map": {"permissions": {"type": "disabled"}, "windowsSandboxLevel": {"elevated": None}},
        "level number": {"permissions": {"type": "disabled"}, "windowsSandboxLevel": 5},
        "no permissions": {"windowsSandboxLevel": "disabled"},
        "permissions empty": {"permissions": {}, "windowsSandboxLevel": "disabled"},
        "permissions string": {"permissions": "x", "windowsSandboxLevel": "disabled"},
        "permissions number": {"permissions": 5, "windowsSandboxLevel": "disabled"},
        "permissions null": {"permissions": None, "windowsSandboxLevel": "disabled"},
        "permissions list": {"permissions": [], "windowsSandboxLevel": "disabled"},
        "permissions tag list": {"permissions": ["disabled"], "windowsSandboxLevel": "disabled"},
        "type number": {"permissions": {"type": 5}, "windowsSandboxLevel": "disabled"},
        "type bogus": {"permissions": {"type": "bogus"}, "windowsSandboxLevel": "disabled"},
        "extra member": {"permissions": {"type": "disabled", "x": 1}, "windowsSandboxLevel": "disabled"},
        "external": {"permissions": {"type": "external", "network": "enabled"}, "windowsSandboxLevel": "disabled"},
        "external no network": {"permissions": {"type": "external"}, "windowsSandboxLevel": "disabled"},
        "network bogus": {"permissions": {"type": "external", "network": "bogus"},
                          "windowsSandboxLevel": "disabled"},
        "network number": {"permissions": {"type": "external", "network": 5}, "windowsSandboxLevel": "disabled"},
        "managed no file_system": {"permissions": {"type": "managed", "network": "restricted"},
                                   "windowsSandboxLevel": "disabled"},
        "managed unrestricted": {"permissions": {"type": "managed", "network": "restricted",
                                                 "file_system": {"type": "unrestricted"}},
                                 "windowsSandboxLevel": "disabled"},
        "managed no network": {"permissions": {"type": "managed", "file_system": {"type": "unrestricted"}},
                               "windowsSandboxLevel": "disabled"},
        "file_system bogus": {"permissions": {"type": "managed", "network": "restricted",
                                              "file_system": {"type": "bogus"}},
                              "windowsSandboxLevel": "disabled"},
        "file_system string": {"permissions": {"type": "managed", "network": "restricted",
                                               "file_system": "x"}, "windowsSandboxLevel": "disabled"},
        "file_system number": {"permissions": {"type": "managed", "network": "restricted",
                                               "file_system": 5}, "windowsSandboxLevel": "disabled"},
        "file_system empty": {"permissions": {"type": "managed", "network": "restricted",
                                              "file_system": {}}, "windowsSandboxLevel": "disabled"},
        "no entries": {"permissions": {"type": "managed", "network": "restricted",
                                       "file_system": {"type": "restricted"}}, "windowsSandboxLevel": "disabled"},
        "entries null": managed(None),
        "entries number": managed(5),
        "entry number": managed([5]),
        "entry empty": managed([{}]),
        "entry no access": managed([{"path": {"type": "path", "path": f}}]),
        "path empty": managed([{"path": {}, "access": "read"}]),
        "path type bogus": with_entry({"path": {"type": "bogus"}, "access": "read"}),
        "path no path": with_entry({"path": {"type": "path"}, "access": "read"}),
        "path number": with_entry({"path": {"type": "path", "path": 5}, "access": "read"}),
        "path negative": with_entry({"path": {"type": "path", "path": -5}, "access": "read"}),
        "path float": with_entry({"path": {"type": "path", "path": 1.5}, "access": "read"}),
        "path null": with_entry({"path": {"type": "path", "path": None}, "access": "read"}),
        "path native": with_entry({"path": {"type": "path", "path": "/native"}, "access": "read"}),
        "path foreign": with_entry({"path": {"type": "path", "path": "file:///C:/x"}, "access": "read"}),
        "path nul": with_entry({"path": {"type": "path", "path": "file:///tmp/%00x"}, "access": "read"}),
        "glob no pattern": with_entry({"path": {"type": "glob_pattern"}, "access": "deny"}),
        "glob number": with_entry({"path": {"type": "glob_pattern", "pattern": 5}, "access": "deny"}),
        "glob without cwd": with_entry({"path": {"type": "glob_pattern", "pattern": "**/*.pem"},
                                        "access": "deny"}),
        "special no value": with_entry({"path": {"type": "special"}, "access": "read"}),
        "special value string": with_entry({"path": {"type": "special", "value": "x"}, "access": "read"}),
        "special no kind": with_entry({"path": {"type": "special", "value": {}}, "access": "read"}),
        "special kind bogus": with_entry({"path": {"type": "special", "value": {"kind": "bogus"}},
                                          "access": "read"}),
        "special unknown no path": with_entry({"path": {"type": "special", "value": {"kind": "unknown"}},
                                               "access": "read"}),
        "special unknown path number": with_entry({"path": {"type": "special",
                                                            "value": {"kind": "unknown", "path": 5}},
                                                   "access": "read"}),
        "project roots without cwd": with_entry({"path": {"type": "special",
                                                          "value": {"kind": "project_roots"}},
                                                 "access": "read"}),
        "cwd alias without cwd": with_entry({"path": {"type": "special",
                                                      "value": {"kind": "current_working_directory"}},
                                             "access": "read"}),
        "subpath number": with_entry({"path": {"type": "special",
                                               "value": {"kind": "project_roots", "subpath": 5}},
                                      "access": "read"}),
        "access bogus": with_entry({"path": {"type": "path", "path": f}, "access": "bogus"}),
        "access number": with_entry({"path": {"type": "path", "path": f}, "access": 5}),
        "access null": with_entry({"path": {"type": "path", "path": f}, "access": None}),
        "access map": managed([dict(root_write, access={"write": None})]),
        "missing behavior bogus": with_entry({"path": {"type": "path", "path": f}, "access": "read",
                                              "missing_path_behavior": "x"}),
        "missing behavior number": with_entry({"path": {"type": "path", "path": f}, "access": "read",
                                               "missing_path_behavior": 5}),
        "entry as list": managed([[{"type": "special", "value": {"kind": "root"}}, "write"]]),
        "entry list bad": managed([["x"]]),
        "entry list too long": managed([[{"type": "special", "value": {"kind": "root"}}, "write", None, 5]]),
        "permissions list too long": {"permissions": ["external", "enabled", 5], "windowsSandboxLevel": "disabled"},
        "permissions list unit extra": {"permissions": ["disabled", 5], "windowsSandboxLevel": "disabled"},
        "permissions list short": {"permissions": ["external"], "windowsSandboxLevel": "disabled"},
        "permissions list ok": {"permissions": ["external", "enabled"], "windowsSandboxLevel": "disabled"},
        "file_system list": {"permissions": {"type": "managed", "network": "restricted",
                                             "file_system": ["unrestricted"]}, "windowsSandboxLevel": "disabled"},
        "depth zero": {"permissions": {"type": "managed", "network": "restricted",
                                       "file_system": {"type": "restricted", "entries": [root_write],
                                                       "glob_scan_max_depth": 0}},
                       "windowsSandboxLevel": "disabled"},
        "depth negative": {"permissions": {"type": "managed", "network": "restricted",
                                           "file_system": {"type": "restricted", "entries": [root_write],
                                                           "glob_scan_max_depth": -1}},
                           "windowsSandboxLevel": "disabled"},
        "depth float": {"permissions": {"type": "managed", "network": "restricted",
                                        "file_system": {"type": "restricted", "entries": [root_write],
                                                        "glob_scan_max_depth": 1.5}},
                        "windowsSandboxLevel": "disabled"},
        "depth string": {"permissions": {"type": "managed", "network": "restricted",
                                         "file_system": {"type": "restricted", "entries": [root_write],
                                                         "glob_scan_max_depth": "x"}},
                         "windowsSandboxLevel": "disabled"},
        "depth null": {"permissions": {"type": "managed", "network": "restricted",
                                       "file_system": {"type": "restricted", "entries": [root_write],
                                                       "glob_scan_max_depth": None}},
                       "windowsSandboxLevel": "disabled"},
        "root write": managed([root_write]),
        "root write with path write": with_entry({"path": {"type": "path", "path": f}, "access": "write"}),
        "glob with policy cwd": managed([root_write], policyContext={"cwd": "file:///tmp"}),
        "glob with foreign cwd": managed([root_write, {"path": {"type": "glob_pattern", "pattern": "x"},
                                                       "access": "deny"}], cwd="file:///C:/x"),
        "cwd relative": managed([root_write], cwd="rel"),
        "cwd number": managed([root_write], cwd=5),
        "cwd foreign": managed([root_write], cwd="file:///C:/x"),
        "workspaceRoots relative": managed([root_write], workspaceRoots=["rel"]),
        "workspaceRoots null": managed([root_write], workspaceRoots=None),
        "userHomeDir relative": managed([root_write], userHomeDir="rel"),
        "temporaryDirectories string": managed([root_write], temporaryDirectories="x"),
        "policyContext number": managed([root_write], policyContext=5),
        "policyContext cwd number": managed([root_write], policyContext={"cwd": 5}),
        "policyContext list": managed([root_write], policyContext=[]),
        "sandboxOverride bogus": managed([root_write], sandboxOverride="bogus"),
        "sandboxOverride null": managed([root_write], sandboxOverride=None),
        "sandboxOverride ok": managed([root_write], sandboxOverride="bypassSandboxFirstAttempt"),
        "proxy bogus": managed([root_write], windowsSandboxProxySettingsMode="bogus"),
        "proxy ok": managed([root_write], windowsSandboxProxySettingsMode="preserve"),
        "landlock null": managed([root_write], useLegacyLandlock=None),
        "landlock disabled": {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled",
                              "useLegacyLandlock": True},
        "private desktop ignored": managed([root_write], windowsSandboxPrivateDesktop=5),
        "huge number": managed([root_write, {"path": {"type": "path", "path": 2**64}, "access": "read"}]),
    }
    for label, sandbox in sandboxes.items():
        if label == "no level":
            sandbox = {"permissions": {"type": "disabled"}}
        elif "windowsSandboxLevel" not in sandbox and "permissions" in sandbox:
            sandbox = dict(sandbox, windowsSandboxLevel="disabled")
        await peer.call("fs/readFile", {"path": f, "sandbox": sandbox}, label=f"sandbox {label}")
    positional = [{"type": "disabled"}, "noOverride", None, None, [], None, None, "disabled", None, False]
    for length in (0, 1, 7, 8, 10):
        await peer.call("fs/readFile", {"path": f, "sandbox": positional[:length]},
                        label=f"sandbox array of {length}")
    await peer.call("fs/readFile", {"path": f, "sandbox": positional + [1]}, label="sandbox array too long")


async def sandbox_order(peer):
    await peer.handshake()
    foreign = {"permissions": {"type": "managed", "network": "restricted", "file_system": {
        "type": "restricted", "entries": [{"path": {"type": "path", "path": "file:///C:/y"},
                                           "access": "read"}]}},
        "windowsSandboxLevel": "disabled"}
    cases = [
        ("fs/walk", {"path": peer.uri(), "options": dict(WALK_ALL, maxEntries=0), "sandbox": foreign}),
        ("fs/writeFile", {"path": peer.uri("x"), "dataBase64": "!", "sandbox": foreign}),
        ("fs/open", {"handleId": "a" * 40, "path": peer.uri("x"), "sandbox": foreign}),
        ("fs/copy", {"sourcePath": "file:///C:/x", "destinationPath": peer.uri("y"), "recursive": False,
                     "sandbox": foreign}),
        ("fs/getMetadata", {"path": "file:///C:/x", "sandbox": foreign}),
    ]
    for method, params in cases:
        await peer.call(method, params, label=method)


class ParamsTests(InteropTestCase):
    test_before_initialize = interop(params_before_initialize)
    test_shapes = interop(params_shapes)
    test_field_types = interop(field_types)
    test_field_order = interop(field_order)


class UriTests(InteropTestCase):
    test_inputs = interop(uri_inputs)
    test_spelling = interop(uri_spelling)


class ReadWriteTests(InteropTestCase):
    test_read_file = interop(read_file)
    test_write_file = interop(write_file)
    test_write_file_base64 = interop(write_file_base64)
    test_no_follow = interop(no_follow)


class DirectoryTests(InteropTestCase):
    test_create_directory = interop(create_directory)
    test_get_metadata = interop(get_metadata)
    test_read_directory = interop(read_directory)
    test_read_directory_limit = interop(read_directory_limit)
    test_remove = interop(remove)
    test_copy = interop(copy)
    test_canonicalize = interop(canonicalize)


class WalkTests(InteropTestCase):
    test_limits = interop(walk_limits)
    test_roots = interop(walk_roots)
    test_traversal = interop(walk_traversal)
    test_counting = interop(walk_counting)
    test_loops = interop(walk_loops)
    test_odd_names = interop(walk_odd_names)
    test_plain_runs = interop(walk_plain_runs)


class HandleTests(InteropTestCase):
    test_open_read = interop(open_read)
    test_open_keeps_the_file = interop(open_keeps_the_file)
    test_open_limit = interop(open_limit)
    test_write_stream = interop(write_stream)


class SandboxTests(InteropTestCase):
    test_decoding = interop(sandbox_decoding)
    test_order = interop(sandbox_order)
