"""
fs/* through the connection core, against real temporary directories.
"""

from __future__ import annotations

import base64
import os
import threading

from twisted.internet import defer
from twisted.trial import unittest

from execserver import filesystem, fsops, memory, nowait, paths, wirejson
from tests.support import attach, build_exec_server, handshake, send
from tests.test_nowait import skip_unless_read_in_place

#: 256 bytes, 0 to 255.
BIN = bytes(range(256))
DIGITS = b"0123456789"


def build_tree(root: str) -> str:
    """
    Build the reference probe's tree under C{root}/s and return that path:

        bin (256 bytes)  digits  empty  dir/{f, sub/}  fifo
        lf -> bin  ld -> dir  broken -> nonexist  loop1 <-> loop2
        self -> self  chain1 -> chain2 -> chain3 -> bin  absdir -> <s>/dir
    """
    s = os.path.join(root, "s")
    os.makedirs(os.path.join(s, "dir", "sub"))
    write(os.path.join(s, "bin"), BIN)
    write(os.path.join(s, "digits"), DIGITS)
    write(os.path.join(s, "empty"), b"")
    write(os.path.join(s, "dir", "f"), b"in dir\n")
    os.mkfifo(os.path.join(s, "fifo"))
    links = {
        "lf": "bin", "ld": "dir", "broken": "nonexist", "loop1": "loop2", "loop2": "loop1",
        "self": "self", "chain1": "chain2", "chain2": "chain3", "chain3": "bin",
        "absdir": os.path.join(s, "dir"),
    }
    for name, target in links.items():
        os.symlink(target, os.path.join(s, name))
    return s


def build_walk_tree(root: str) -> str:
    """
    The reference probe's walk tree under C{root}/w/r (with C{root}/w/ext
    outside it), returning the C{r} path.
    """
    w = os.path.join(root, "w")
    r = os.path.join(w, "r")
    for directory in (".hid/h1", "a/aa", "b/bb/bbb", "c"):
        os.makedirs(os.path.join(r, directory))
    os.makedirs(os.path.join(w, "ext"))
    for name in (".hf", ".hid/h1/hf", "B", "_u", "a/a1", "a/aa/aa1", "b/b1", "b/bb/bb1",
                 "b/bb/bbb/bbb1", "c/c1", "z.txt", "../ext/e1"):
        write(os.path.join(r, name), b"x")
    os.mkfifo(os.path.join(r, "fifo"))
    for name, target in {"lb": "b", "lz": "z.txt", "lbroken": "nonexist", "loopy": "loopy",
                         "lext": os.path.join(w, "ext")}.items():
        os.symlink(target, os.path.join(r, name))
    return r


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class FsTestCase(unittest.TestCase):
    """
    A handshaken connection, a fresh directory, and helpers to call fs/*.
    """

    concurrency = 1

    def setUp(self):
        self.server = build_exec_server(self, concurrency=self.concurrency)
        self.connection, self.transport = attach(self.server)
        handshake(self.connection, self.transport)
        self.root = os.path.realpath(self.mktemp())
        os.makedirs(self.root)
        self._ids = 0

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def uri(self, *parts: str) -> str:
        return paths.from_host_path(self.path(*parts))

    def request(self, method: str, params) -> int:
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": method, "params": params})
        return self._ids

    async def call(self, method: str, params) -> dict:
        return await self.transport.reply(self.request(method, params))

    async def result(self, method: str, params):
        reply = await self.call(method, params)
        self.assertIn("result", reply, reply)
        return reply["result"]

    async def error(self, method: str, params) -> dict:
        reply = await self.call(method, params)
        self.assertIn("error", reply, reply)
        return reply["error"]

    async def assertError(self, method: str, params, code: int, message: str) -> None:
        self.assertEqual(await self.error(method, params), {"code": code, "message": message})


NOT_FOUND = (-32004, "No such file or directory (os error 2)")
NOT_A_DIRECTORY = (-32603, "Not a directory (os error 20)")
LOOP = (-32603, "Symbolic link loop (os error 40)")
NO_READER = (-32603, "No such device or address (os error 6)")
NOT_REGULAR = (-32600, "path is not a regular file")
def managed(entries, **context) -> dict:
    return dict({
        "permissions": {"type": "managed", "network": "restricted",
                        "file_system": {"type": "restricted", "entries": entries}},
        "windowsSandboxLevel": "disabled",
    }, **context)


def entry(kind: str, access: str, **value) -> dict:
    if kind == "path":
        return {"path": {"type": "path", "path": value["path"]}, "access": access}
    if kind == "glob_pattern":
        return {"path": {"type": "glob_pattern", "pattern": value["pattern"]}, "access": access}
    return {"path": {"type": "special", "value": {"kind": kind}}, "access": access}


class ParamsTests(FsTestCase):
    async def test_option_fields_may_not_be_left_off_the_end_of_an_array(self):
        write(self.path("f"), b"hi")
        await self.assertError("fs/readFile", [self.uri("f")], -32602,
                               "invalid length 2, expected struct WireFsReadFileParams with 3 elements")
        self.assertEqual(await self.result("fs/readFile", [self.uri("f"), None, None]),
                         {"dataBase64": b64(b"hi")})
        self.assertEqual(await self.result("fs/open", ["h", self.uri("f"), "read", None]),
                         {"handleId": "h"})

    async def test_buffered_sandbox_values_name_numbers_as_serde_does(self):
        await self.assertError("fs/readFile", {"path": self.uri("f"), "sandbox": managed(5)}, -32602,
                               "invalid type: integer `5`, expected a sequence")
        sandbox = managed([entry("path", "read", path=1.5)])
        await self.assertError("fs/readFile", {"path": self.uri("f"), "sandbox": sandbox}, -32602,
                               "invalid type: floating point `1.5`, expected a string")
        sandbox = {"permissions": {"type": 5}, "windowsSandboxLevel": "disabled"}
        await self.assertError("fs/readFile", {"path": self.uri("f"), "sandbox": sandbox}, -32602,
                               "invalid type: number, expected variant identifier")

    async def test_walk_limits_are_checked_before_the_root(self):
        options = {"maxDepth": 65, "maxDirectories": 1, "maxEntries": 0, "followDirectorySymlinks": False}
        await self.assertError("fs/walk", {"path": "file:///C:/x", "options": options}, -32600,
                               "filesystem walk limits must be greater than zero")


class SandboxTests(FsTestCase):
    async def test_contexts_that_do_not_restrict_run_directly(self):
        write(self.path("f"), b"hi")
        for sandbox in (None,
                        {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"},
                        {"permissions": {"type": "external", "network": "enabled"},
                         "windowsSandboxLevel": "elevated"},
                        {"permissions": {"type": "managed", "network": "restricted",
                                         "file_system": {"type": "unrestricted"}},
                         "windowsSandboxLevel": "disabled"},
                        managed([entry("root", "write")]),
                        managed([entry("root", "write"), entry("path", "write", path=self.uri())]),
                        managed([entry("path", "write", path="file:///")])):
            self.assertEqual(await self.result("fs/readFile", {"path": self.uri("f"), "sandbox": sandbox}),
                             {"dataBase64": b64(b"hi")}, sandbox)

    async def test_restrictive_contexts_are_enforced(self):
        read_only = (-32603, "Read-only file system (os error 30)")
        invisible = (-32004, "No such file or directory (os error 2)")
        for sandbox, refusal in (
                (managed([]), invisible),
                (managed([entry("path", "read", path=self.uri())]), read_only),
                (managed([entry("root", "write"), entry("path", "read", path=self.uri())]), read_only),
                (managed([entry("minimal", "read")]), invisible)):
            await self.assertError("fs/writeFile", {"path": self.uri("new"), "dataBase64": "",
                                                    "sandbox": sandbox}, *refusal)
            await self.assertError("fs/open", {"handleId": "h", "path": self.uri("new"), "mode": "replace",
                                               "sandbox": sandbox}, *refusal)
        self.assertEqual(os.listdir(self.root), [])

    async def test_restrictive_contexts_grant_their_roots(self):
        sandbox = managed([entry("root", "read"), entry("path", "write", path=self.uri())])
        self.assertEqual(await self.result("fs/writeFile", {"path": self.uri("new"), "dataBase64": b64(b"x"),
                                                            "sandbox": sandbox}), {})
        self.assertEqual(await self.result("fs/readFile", {"path": self.uri("new"), "sandbox": sandbox}),
                         {"dataBase64": b64(b"x")})
        self.assertEqual(sorted(os.listdir(self.root)), ["new"])

    async def test_foreign_permission_paths_are_reported_first(self):
        sandbox = managed([entry("root", "write"), entry("path", "read", path="file:///C:/x")])
        await self.assertError("fs/readFile", {"path": "file:///D:/y", "sandbox": sandbox}, -32600,
                               "invalid sandbox permission path URI: 'file:///C:/x' is invalid on 'linux'")

    async def test_dynamic_permissions_need_a_cwd(self):
        for kind in ({"pattern": "**/*.pem"}, None):
            extra = entry("glob_pattern", "deny", **kind) if kind else entry("project_roots", "read")
            sandbox = managed([entry("root", "write"), extra])
            await self.assertError("fs/readFile", {"path": self.uri("f"), "sandbox": sandbox}, -32602,
                                   "file system sandbox context with dynamic permissions requires cwd")
            sandbox = managed([entry("root", "write"), extra], cwd="file:///C:/x")
            await self.assertError("fs/readFile", {"path": self.uri("f"), "sandbox": sandbox}, -32600,
                                   "'file:///C:/x' is invalid on 'linux'")


class ReadFileTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_bytes_come_back_as_standard_base64(self):
        self.assertEqual(await self.result("fs/readFile", {"path": self.uri("s", "bin")}),
                         {"dataBase64": b64(BIN)})
        self.assertEqual(await self.result("fs/readFile", {"path": self.uri("s", "empty")}),
                         {"dataBase64": ""})

    async def test_symbolic_links_are_followed(self):
        for name in ("lf", "chain1"):
            self.assertEqual(await self.result("fs/readFile", {"path": self.uri("s", name)}),
                             {"dataBase64": b64(BIN)})

    async def test_only_regular_files_are_read_and_nothing_blocks(self):
        for name in ("dir", "ld", "fifo"):
            await self.assertError("fs/readFile", {"path": self.uri("s", name)}, -32600,
                                   f"path `{self.path('s', name)}` is not a file")
        await self.assertError("fs/readFile", {"path": "file:///dev/zero"}, -32600,
                               "path `/dev/zero` is not a file")

    async def test_files_that_claim_no_size_are_read_whole(self):
        data = base64.b64decode((await self.result("fs/readFile", {"path": "file:///proc/self/status"}))
                                ["dataBase64"])
        self.assertIn(b"Pid:", data)

    async def test_size_limit(self):
        with open(self.path("big"), "wb") as f:
            f.truncate(512 * 1024 * 1024 + 1)
        for follow in (True, False):
            await self.assertError("fs/readFile", {"path": self.uri("big"), "followSymlinks": follow},
                                   -32600, "file is too large to read: limit is 536870912 bytes")

    async def test_errors(self):
        await self.assertError("fs/readFile", {"path": self.uri("s", "broken")}, *NOT_FOUND)
        await self.assertError("fs/readFile", {"path": self.uri("s", "loop1")}, *LOOP)
        await self.assertError("fs/readFile", {"path": self.uri("s", "bin", "x")}, *NOT_A_DIRECTORY)
        await self.assertError("fs/readFile", {"path": "file:///C:/x"}, -32600,
                               "'file:///C:/x' is invalid on 'linux'")

    async def test_without_following_no_component_may_be_a_link(self):
        def read(name):
            return {"path": self.uri("s", name), "followSymlinks": False}

        self.assertEqual(await self.result("fs/readFile", read("digits")), {"dataBase64": b64(DIGITS)})
        await self.assertError("fs/readFile", read("lf"), *LOOP)
        await self.assertError("fs/readFile", read("ld/f"), *NOT_A_DIRECTORY)
        await self.assertError("fs/readFile", read("absdir/f"), *NOT_A_DIRECTORY)
        await self.assertError("fs/readFile", read("fifo"), *NOT_REGULAR)
        await self.assertError("fs/readFile", {"path": "file:///", "followSymlinks": False},
                               -32600, "path must name an entry")


class WriteFileTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_new_files_get_the_default_mode(self):
        self.assertEqual(await self.result("fs/writeFile", {"path": self.uri("new"), "dataBase64": b64(b"x")}),
                         {})
        self.assertEqual(read(self.path("new")), b"x")
        self.assertEqual(os.stat(self.path("new")).st_mode & 0o777, 0o666 & ~_umask())

    async def test_existing_files_are_rewritten_in_place(self):
        target = self.path("s", "digits")
        os.chmod(target, 0o600)
        os.link(target, self.path("hard"))
        before = os.stat(target)
        await self.result("fs/writeFile", {"path": self.uri("s", "digits"), "dataBase64": b64(b"new")})
        after = os.stat(target)
        self.assertEqual((after.st_ino, after.st_mode), (before.st_ino, before.st_mode))
        self.assertEqual(read(self.path("hard")), b"new")

    async def test_base64_is_checked_first(self):
        await self.assertError("fs/writeFile", {"path": "file:///C:/x", "dataBase64": "aGk"}, -32600,
                               "fs/writeFile requires valid base64 dataBase64: Invalid padding")

    async def test_a_fifo_without_a_reader_fails_at_once(self):
        # The reference waits for a reader and holds the connection meanwhile.
        await self.assertError("fs/writeFile", {"path": self.uri("s", "fifo"), "dataBase64": "aGk="},
                               *NO_READER)

    async def test_a_fifo_with_a_reader_is_not_written(self):
        reader = os.open(self.path("s", "fifo"), os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        await self.assertError("fs/writeFile", {"path": self.uri("s", "fifo"), "dataBase64": "aGk="},
                               *NOT_REGULAR)
        self.assertEqual(os.read(reader, 10), b"")

    async def test_devices_are_written(self):
        self.assertEqual(await self.result("fs/writeFile", {"path": "file:///dev/null", "dataBase64": "aGk="}),
                         {})

    async def test_links_are_followed_unless_asked_not_to(self):
        await self.result("fs/writeFile", {"path": self.uri("s", "broken"), "dataBase64": b64(b"made")})
        self.assertEqual(read(self.path("s", "nonexist")), b"made")
        await self.assertError("fs/writeFile", {"path": self.uri("s", "lf"), "dataBase64": "",
                                                "followSymlinks": False}, *LOOP)
        self.assertEqual(read(self.path("s", "bin")), BIN)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CreateDirectoryTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_recursive_by_default(self):
        await self.result("fs/createDirectory", {"path": self.uri("a", "b", "c")})
        self.assertTrue(os.path.isdir(self.path("a", "b", "c")))
        await self.result("fs/createDirectory", {"path": self.uri("a", "b", "c")})

    async def test_single_level(self):
        await self.assertError("fs/createDirectory", {"path": self.uri("m", "n"), "recursive": False},
                               *NOT_FOUND)
        await self.assertError("fs/createDirectory", {"path": self.uri("s", "dir"), "recursive": False},
                               -32603, "File exists (os error 17)")

    async def test_something_else_in_the_way(self):
        for name in ("bin", "broken", "fifo"):
            await self.assertError("fs/createDirectory", {"path": self.uri("s", name)},
                                   -32603, "File exists (os error 17)")
        await self.assertError("fs/createDirectory", {"path": self.uri("s", "bin", "x")}, *NOT_A_DIRECTORY)

    async def test_without_following_links(self):
        await self.result("fs/createDirectory", {"path": self.uri("new", "deep"), "followSymlinks": False})
        self.assertTrue(os.path.isdir(self.path("new", "deep")))
        await self.assertError("fs/createDirectory", {"path": self.uri("s", "ld", "x"),
                                                      "followSymlinks": False}, *NOT_A_DIRECTORY)
        await self.assertError("fs/createDirectory", {"path": self.uri("s", "ld"),
                                                      "followSymlinks": False}, *NOT_A_DIRECTORY)
        await self.assertError("fs/createDirectory", {"path": "file:///", "recursive": False,
                                                      "followSymlinks": False},
                               -32603, "directory already exists")
        self.assertFalse(os.path.exists(self.path("s", "dir", "x")))


class GetMetadataTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_following_describes_the_target(self):
        os.utime(self.path("s", "bin"), ns=(0, 1_700_000_001_999_900_000))
        self.assertEqual(await self.result("fs/getMetadata", {"path": self.uri("s", "lf")}), {
            "isDirectory": False, "isFile": True, "isSymlink": True, "size": 256,
            "createdAtMs": 0, "modifiedAtMs": 1_700_000_001_999,
        })

    async def test_times_before_1970(self):
        os.utime(self.path("s", "digits"), (-315619200, -315619200))
        following = await self.result("fs/getMetadata", {"path": self.uri("s", "digits")})
        self.assertEqual(following["modifiedAtMs"], 0)
        itself = await self.result("fs/getMetadata", {"path": self.uri("s", "digits"), "followSymlinks": False})
        self.assertEqual(itself["modifiedAtMs"], -315619200000)

    async def test_without_following_the_birth_time_is_known(self):
        result = await self.result("fs/getMetadata", {"path": self.uri("s", "dir"), "followSymlinks": False})
        self.assertGreater(result["createdAtMs"], 0)
        self.assertEqual((result["isDirectory"], result["isSymlink"]), (True, False))
        await self.assertError("fs/getMetadata", {"path": self.uri("s", "ld"), "followSymlinks": False},
                               -32600, "path contains a symbolic link")

    async def test_special_files_are_neither(self):
        result = await self.result("fs/getMetadata", {"path": self.uri("s", "fifo")})
        self.assertEqual((result["isDirectory"], result["isFile"]), (False, False))


class ReadDirectoryTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_entries_in_the_order_the_directory_lists_them(self):
        result = await self.result("fs/readDirectory", {"path": self.uri("s")})
        kept = [name for name in os.listdir(self.s)
                if name not in ("broken", "loop1", "loop2", "self")]
        self.assertEqual([e["fileName"] for e in result["entries"]], kept)
        types = {e["fileName"]: (e["isDirectory"], e["isFile"]) for e in result["entries"]}
        self.assertEqual(types["ld"], (True, False))
        self.assertEqual(types["lf"], (False, True))
        self.assertEqual(types["fifo"], (False, False))

    async def test_names_are_lossy_utf8(self):
        os.makedirs(self.path("odd"))
        write(os.path.join(os.fsencode(self.path("odd")), b"bad\xffname"), b"")
        result = await self.result("fs/readDirectory", {"path": self.uri("odd")})
        self.assertEqual(result["entries"], [{"fileName": "bad\ufffdname", "isDirectory": False,
                                              "isFile": True}])

    async def test_the_limit_counts_kept_entries(self):
        from execserver import fsops

        self.patch(fsops, "MAX_DIRECTORY_ENTRIES", 3)
        os.makedirs(self.path("many"))
        for name in ("a", "b", "c"):
            write(self.path("many", name), b"")
        os.symlink("nowhere", self.path("many", "broken"))
        self.assertEqual(len((await self.result("fs/readDirectory", {"path": self.uri("many")}))["entries"]), 3)
        write(self.path("many", "d"), b"")
        await self.assertError("fs/readDirectory", {"path": self.uri("many")}, -32603,
                               "fs/readDirectory returned 4 entries; limit is 3")

    async def test_a_file_is_not_a_directory(self):
        await self.assertError("fs/readDirectory", {"path": self.uri("s", "fifo")}, *NOT_A_DIRECTORY)


class RemoveTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_recursive_and_forced_by_default(self):
        await self.result("fs/remove", {"path": self.uri("s", "dir")})
        self.assertFalse(os.path.exists(self.path("s", "dir")))
        await self.result("fs/remove", {"path": self.uri("s", "nonexist")})
        await self.assertError("fs/remove", {"path": self.uri("s", "nonexist"), "force": False}, *NOT_FOUND)

    async def test_force_does_not_hide_other_errors(self):
        await self.assertError("fs/remove", {"path": self.uri("s", "bin", "x")}, *NOT_A_DIRECTORY)

    async def test_a_link_is_removed_never_its_target(self):
        await self.result("fs/remove", {"path": self.uri("s", "ld") + "/"})
        self.assertFalse(os.path.lexists(self.path("s", "ld")))
        self.assertEqual(sorted(os.listdir(self.path("s", "dir"))), ["f", "sub"])

    async def test_links_inside_a_tree_are_not_followed(self):
        os.makedirs(self.path("t", "d"))
        os.symlink(self.path("s", "dir"), self.path("t", "d", "out"))
        await self.result("fs/remove", {"path": self.uri("t")})
        self.assertFalse(os.path.exists(self.path("t")))
        self.assertEqual(sorted(os.listdir(self.path("s", "dir"))), ["f", "sub"])

    async def test_the_root_is_never_removed(self):
        for recursive in (False, True):
            await self.assertError("fs/remove", {"path": "file:///", "recursive": recursive},
                                   -32603, "Resource busy (os error 16)")

    async def test_without_following_a_tree_is_removed_where_it_is(self):
        # The reference refuses recursive no-follow removal outright; we
        # remove the tree without following any link on the way or inside.
        os.makedirs(self.path("t", "d"))
        write(self.path("t", "d", "f"), b"")
        os.symlink(self.path("s", "dir"), self.path("t", "d", "out"))
        await self.result("fs/remove", {"path": self.uri("t"), "followSymlinks": False})
        self.assertFalse(os.path.exists(self.path("t")))
        self.assertEqual(sorted(os.listdir(self.path("s", "dir"))), ["f", "sub"])

    async def test_without_following_no_component_may_be_a_link(self):
        await self.assertError("fs/remove", {"path": self.uri("s", "ld"), "followSymlinks": False},
                               -32600, "path contains a symbolic link")
        await self.assertError("fs/remove", {"path": self.uri("s", "ld", "f"), "followSymlinks": False},
                               *NOT_A_DIRECTORY)
        self.assertTrue(os.path.exists(self.path("s", "dir", "f")))
        await self.assertError("fs/remove", {"path": "file:///", "followSymlinks": False},
                               -32600, "path must name an entry")

    async def test_a_non_empty_directory_needs_recursion(self):
        await self.assertError("fs/remove", {"path": self.uri("s", "dir"), "recursive": False},
                               -32603, "Directory not empty (os error 39)")


class CopyTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    def copy(self, source: str, destination: str, recursive: bool = False) -> dict:
        return {"sourcePath": self.uri("s", source), "destinationPath": self.uri("s", destination),
                "recursive": recursive}

    async def test_a_file_keeps_its_mode_bits(self):
        os.chmod(self.path("s", "bin"), 0o4751)
        await self.result("fs/copy", self.copy("bin", "bin2"))
        self.assertEqual(read(self.path("s", "bin2")), BIN)
        self.assertEqual(os.stat(self.path("s", "bin2")).st_mode & 0o7777, 0o4751)

    async def test_a_file_is_never_copied_onto_itself(self):
        # The reference empties the file.
        os.link(self.path("s", "digits"), self.path("s", "hard"))
        for destination in ("digits", "hard"):
            await self.assertError("fs/copy", self.copy("digits", destination), -32600,
                                   "fs/copy cannot copy a file to itself")
        await self.assertError("fs/copy", self.copy("bin", "lf"), -32600, "fs/copy cannot copy a file to itself")
        self.assertEqual(read(self.path("s", "digits")), DIGITS)
        self.assertEqual(read(self.path("s", "bin")), BIN)

    async def test_a_fifo_destination_never_blocks(self):
        # The reference waits for a reader.
        await self.assertError("fs/copy", self.copy("digits", "fifo"), *NO_READER)
        reader = os.open(self.path("s", "fifo"), os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        await self.assertError("fs/copy", self.copy("digits", "fifo"), *NOT_REGULAR)
        self.assertEqual(os.read(reader, 10), b"")

    async def test_a_tree_is_merged_into_the_destination(self):
        tree = self.path("s", "tree")
        os.makedirs(os.path.join(tree, "sub"))
        os.chmod(os.path.join(tree, "sub"), 0o700)
        write(os.path.join(tree, "a"), b"new")
        os.symlink("a", os.path.join(tree, "la"))
        os.mkfifo(os.path.join(tree, "fifo"))
        os.makedirs(self.path("s", "into"))
        write(self.path("s", "into", "a"), b"old")
        write(self.path("s", "into", "extra"), b"kept")
        await self.result("fs/copy", self.copy("tree", "into", True))
        into = self.path("s", "into")
        self.assertEqual(sorted(os.listdir(into)), ["a", "extra", "la", "sub"])
        self.assertEqual(read(os.path.join(into, "a")), b"new")
        self.assertEqual(os.readlink(os.path.join(into, "la")), "a")
        self.assertEqual(os.stat(os.path.join(into, "sub")).st_mode & 0o777, 0o777 & ~_umask())

    async def test_a_directory_never_into_itself(self):
        os.makedirs(self.path("s", "tree", "sub"))
        for destination in ("tree", "tree/sub/x"):
            await self.assertError("fs/copy", self.copy("tree", destination, True), -32600,
                                   "fs/copy cannot copy a directory to itself or one of its descendants")
        await self.assertError("fs/copy", self.copy("dir", "ld/x", True), -32600,
                               "fs/copy cannot copy a directory to itself or one of its descendants")
        await self.assertError("fs/copy", self.copy("dir", "nodir/x"), -32600,
                               "fs/copy requires recursive: true when sourcePath is a directory")

    async def test_links_are_copied_as_links(self):
        await self.result("fs/copy", self.copy("ld", "ld2"))
        self.assertEqual(os.readlink(self.path("s", "ld2")), "dir")
        await self.assertError("fs/copy", self.copy("lf", "digits"), -32603, "File exists (os error 17)")

    async def test_only_files_directories_and_links(self):
        await self.assertError("fs/copy", self.copy("fifo", "fifo2"), -32600,
                               "fs/copy only supports regular files, directories, and symlinks")


class CanonicalizeTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.s = build_tree(self.root)

    async def test_links_are_resolved(self):
        for name, target in (("chain1", "bin"), ("ld/f", "dir/f"), ("absdir/", "dir"), ("fifo", "fifo")):
            self.assertEqual(await self.result("fs/canonicalize", {"path": self.uri("s", name)}),
                             {"path": self.uri("s", target)})

    async def test_errors(self):
        await self.assertError("fs/canonicalize", {"path": self.uri("s", "broken")}, *NOT_FOUND)
        await self.assertError("fs/canonicalize", {"path": self.uri("s", "self")}, *LOOP)


WALK = {"maxDepth": 10, "maxDirectories": 100, "maxEntries": 1000, "followDirectorySymlinks": False}


class WalkTests(FsTestCase):
    def setUp(self):
        super().setUp()
        self.r = build_walk_tree(self.root)

    async def walk(self, **options) -> dict:
        return await self.result("fs/walk", {"path": self.uri("w", "r"), "options": dict(WALK, **options)})

    def names(self, result) -> list:
        prefix = self.uri("w", "r") + "/"
        return [entry["path"][len(prefix):] for entry in result["entries"]]

    async def test_breadth_first_with_names_sorted_bytewise(self):
        result = await self.walk()
        self.assertEqual(self.names(result), [
            ".hf", ".hid", "B", "_u", "a", "b", "c", "z.txt", ".hid/h1", "a/a1", "a/aa", "b/b1", "b/bb",
            "c/c1", ".hid/h1/hf", "a/aa/aa1", "b/bb/bb1", "b/bb/bbb", "b/bb/bbb/bbb1",
        ])
        self.assertEqual((result["errors"], result["truncated"]), ([], False))

    async def test_directory_links_are_entered_only_when_following(self):
        self.assertNotIn("lext", self.names(await self.walk(maxDepth=1)))
        names = self.names(await self.walk(maxDepth=1, followDirectorySymlinks=True))
        self.assertIn("lext/e1", names)
        # lb is b, which the walk enters already.
        self.assertIn("lb", names)
        self.assertNotIn("lb/b1", names)
        self.assertNotIn("lz", names)

    async def test_hidden_directories_can_be_listed_but_not_entered(self):
        names = self.names(await self.walk(pruneHiddenDirectories=True))
        self.assertIn(".hid", names)
        self.assertNotIn(".hid/h1", names)

    async def test_the_directory_budget_counts_the_root(self):
        result = await self.walk(maxDirectories=1)
        self.assertEqual(self.names(result), [".hf", ".hid", "B", "_u", "a", "b", "c", "z.txt"])
        self.assertTrue(result["truncated"])

    async def test_every_examined_name_counts(self):
        # fifo, lb, lext and lz are examined and skipped; the broken links
        # are not examined at all.
        result = await self.walk(maxDepth=0, maxEntries=11)
        self.assertEqual(self.names(result), [".hf", ".hid", "B", "_u", "a", "b", "c"])
        self.assertTrue(result["truncated"])
        result = await self.walk(maxDepth=0, maxEntries=12)
        self.assertEqual(self.names(result)[-1], "z.txt")
        self.assertFalse(result["truncated"])

    async def test_the_answer_has_a_size_budget(self):
        from execserver import fsops

        first = [self.uri("w", "r", name) for name in (".hf", ".hid", "B")]
        self.patch(fsops, "WALK_RESPONSE_BUDGET", sum(len(uri) + 64 for uri in first))
        result = await self.walk(maxDepth=0)
        self.assertEqual([entry["path"] for entry in result["entries"]], first)
        self.assertTrue(result["truncated"])

    async def test_the_size_budget_cuts_at_the_entry_that_would_exceed_it(self):
        from execserver import fsops

        whole = await self.walk()
        self.assertFalse(whole["truncated"])
        listed = [entry["path"] for entry in whole["entries"]]
        for count in range(len(listed)):
            cost = sum(len(uri) + fsops.WALK_ITEM_COST for uri in listed[:count + 1])
            for budget in (cost - 1, cost):
                self.patch(fsops, "WALK_RESPONSE_BUDGET", budget)
                result = await self.walk()
                kept = count + 1 if budget == cost else count
                self.assertEqual([entry["path"] for entry in result["entries"]], listed[:kept])
                self.assertEqual(result["truncated"], kept < len(listed))

    async def test_each_directory_is_entered_once(self):
        os.symlink(self.r, self.path("w", "r", "a", "toroot"))
        os.symlink("../b", self.path("w", "r", "a", "tob"))
        names = self.names(await self.walk(followDirectorySymlinks=True))
        self.assertIn("a/toroot", names)
        self.assertIn("a/tob", names)
        self.assertFalse(any(name.startswith(("a/toroot/", "a/tob/")) for name in names))

    async def test_roots(self):
        for name in ("z.txt", "fifo"):
            self.assertEqual(await self.result("fs/walk", {"path": self.uri("w", "r", name), "options": WALK}),
                             {"entries": [], "errors": [], "truncated": False})
        await self.assertError("fs/walk", {"path": self.uri("w", "r", "lbroken"), "options": WALK}, *NOT_FOUND)
        await self.assertError("fs/walk", {"path": self.uri("w", "r", "loopy"), "options": WALK}, *LOOP)
        self.assertEqual(await self.result("fs/walk", {"path": self.uri("w", "r", "lb"), "options": WALK}),
                         {"entries": [], "errors": [], "truncated": False})

    async def test_names_without_a_uri_become_errors(self):
        odd = os.fsencode(self.path("odd"))
        os.makedirs(odd)
        write(os.path.join(odd, b"tab\tx"), b"")
        result = await self.result("fs/walk", {"path": self.uri("odd"), "options": WALK})
        self.assertEqual(result["errors"], [{"path": self.uri("odd", "tabx"),
                                             "message": "No such file or directory (os error 2)"}])


class HandleTests(FsTestCase):
    def setUp(self):
        super().setUp()
        write(self.path("digits"), DIGITS)

    async def open(self, handle_id: str, name: str = "digits", **extra) -> dict:
        return await self.call("fs/open", dict({"handleId": handle_id, "path": self.uri(name)}, **extra))

    async def block(self, handle_id: str, offset: int, length: int) -> dict:
        return await self.call("fs/readBlock", {"handleId": handle_id, "offset": offset, "len": length})

    async def test_ids_are_chosen_by_the_client(self):
        self.assertEqual((await self.open(""))["result"], {"handleId": ""})
        self.assertEqual((await self.open("é" * 16))["result"], {"handleId": "é" * 16})
        self.assertEqual((await self.open("é" * 17))["error"],
                         {"code": -32600, "message": "file handle ID must not exceed 32 bytes"})
        self.assertEqual((await self.open(""))["error"],
                         {"code": -32600, "message": "file handle `` already exists"})

    async def test_at_most_128_per_connection(self):
        for index in range(127):
            await self.open(f"r{index}")
        await self.open("w", "new", mode="replace")
        self.assertEqual((await self.open("x"))["error"],
                         {"code": -32600, "message": "at most 128 file handles may be open per connection"})
        await self.result("fs/close", {"handleId": "w"})
        self.assertIn("result", await self.open("x"))

    async def test_blocks_whether_or_not_the_shared_buffer_is_free(self):
        await self.open("d")
        for _ in range(2):
            self.assertEqual((await self.block("d", 2, 5))["result"],
                             {"chunk": b64(b"23456"), "eof": False})
            with filesystem._read_buffer.lent():
                self.assertEqual((await self.block("d", 7, 5))["result"],
                                 {"chunk": b64(b"789"), "eof": True})

    async def test_blocks_and_the_end_of_the_file(self):
        await self.open("d")
        for offset, length, data, eof in ((6, 3, b"678", False), (8, 4, b"89", True),
                                          (0, 10, DIGITS, False), (10, 1, b"", True), (100, 5, b"", True)):
            self.assertEqual((await self.block("d", offset, length))["result"],
                             {"chunk": b64(data), "eof": eof})
        for length in (0, 1024 * 1024 + 1):
            self.assertEqual((await self.block("d", 0, length))["error"], {
                "code": -32600, "message": "file read block length must be between 1 and 1048576"})

    async def test_a_handle_reads_the_file_it_opened(self):
        await self.open("d")
        write(self.path("other"), b"REPLACED")
        os.rename(self.path("other"), self.path("digits"))
        self.assertEqual((await self.block("d", 0, 3))["result"], {"chunk": b64(b"012"), "eof": False})

    async def test_a_failed_read_closes_the_handle(self):
        await self.open("d")
        self.assertEqual((await self.block("d", 2**63, 1))["error"],
                         {"code": -32600, "message": "Invalid argument (os error 22)"})
        self.assertEqual((await self.block("d", 0, 1))["error"],
                         {"code": -32004, "message": "unknown file handle `d`"})

    async def test_writing_in_place(self):
        write(self.path("target"), b"old contents")
        await self.open("w", "target", mode="replace")
        self.assertEqual(read(self.path("target")), b"")
        await self.result("fs/writeBlock", {"handleId": "w", "offset": 0, "chunk": b64(b"hello")})
        await self.result("fs/writeBlock", {"handleId": "w", "offset": 10, "chunk": b64(b"world")})
        self.assertEqual(read(self.path("target")), b"hello\0\0\0\0\0world")
        await self.assertError("fs/writeBlock", {"handleId": "w", "offset": 2**63 - 2, "chunk": b64(b"xyz")},
                               -32600, "file write range exceeds the signed 64-bit file offset limit")

    async def test_replacing_never_waits_for_a_fifo(self):
        os.mkfifo(self.path("fifo"))
        self.assertEqual((await self.open("f", "fifo", mode="replace"))["error"],
                         {"code": -32603, "message": "No such device or address (os error 6)"})

    async def test_handles_belong_to_their_connection(self):
        await self.open("d")
        other, transport = attach(self.server)
        handshake(other, transport)
        send(other, {"id": 1, "method": "fs/readBlock", "params": {"handleId": "d", "offset": 0, "len": 1}})
        self.assertEqual((await transport.reply(1))["error"],
                         {"code": -32004, "message": "unknown file handle `d`"})

    async def test_the_files_are_closed_when_the_connection_ends(self):
        from twisted.python.failure import Failure

        await self.open("d")
        fd = self.connection.resources["filesystem"].open["d"].fd
        os.fstat(fd)
        self.connection.connectionLost(Failure(ConnectionError()))
        self.assertRaises(OSError, os.fstat, fd)


class HandleLifetimeTests(unittest.SynchronousTestCase):
    """
    Thread work on a handle cannot be stopped, so a handle's file stays
    open until the work that uses it has ended.
    """

    def setUp(self):
        self.fd = os.open(os.devnull, os.O_RDONLY)

    def assertOpen(self, fd: int) -> None:
        os.fstat(fd)

    def assertClosed(self, fd: int) -> None:
        self.assertRaises(OSError, os.fstat, fd)

    def test_closing_waits_for_running_work(self):
        from execserver.filesystem import _Handle

        handle = _Handle(self.fd)
        handle.acquire()
        handle.close()
        self.assertOpen(self.fd)
        handle.release()
        self.assertClosed(self.fd)

    def test_an_open_that_ends_after_its_connection_closes_its_file(self):
        from execserver.filesystem import _Handles

        handles = _Handles()
        handles.opening.add("h")
        handles.end()
        handles.opened("h", self.fd)
        self.assertClosed(self.fd)
        self.assertEqual((handles.open, handles.opening), ({}, set()))

    def test_a_cancelled_answer_leaves_the_work_running(self):
        from twisted.internet.defer import CancelledError, Deferred

        from execserver.filesystem import _answer

        work = Deferred()
        ended = []
        work.addBoth(ended.append)
        answer = _answer(work)
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        work.callback("done")
        self.assertEqual(ended, ["done"])
        os.close(self.fd)


class ResponsivenessTests(unittest.TestCase):
    """
    Against our real server: filesystem work never holds up other
    connections, and a read of any allowed size gets its answer.
    """

    timeout = 120

    async def test_a_200_mib_read_does_not_stall_other_connections(self):
        from tests import support

        directory = os.path.realpath(self.mktemp())
        os.makedirs(directory)
        big = os.path.join(directory, "big")
        with open(big, "wb") as f:
            f.truncate(200 * 1024 * 1024)
        server = await support.start_server("ours")
        self.addCleanup(lambda: defer.ensureDeferred(server.stop()))
        reader = await support.connect(server.url)
        other = await support.connect(server.url)
        self.addCleanup(reader.close)
        self.addCleanup(other.close)
        # The answer is a 280 MB message; the client's default limit is lower.
        reader.transport.protocol.maxMessagePayloadSize = 0
        reader.transport.protocol.maxFramePayloadSize = 0
        for queue in (reader, other):
            queue.send({"id": 0, "method": "initialize", "params": {"clientName": "t"}})
            await queue.response(0)
            queue.send({"method": "initialized"})

        reader.send({"id": 1, "method": "fs/readFile", "params": {"path": paths.from_host_path(big)}})
        read_done = reader.response(1, timeout=support.EVENT_TIMEOUT * 3)
        answered_during_the_read = 0
        while not read_done.called:
            other.send({"id": 2, "method": "environment/status"})
            self.assertEqual((await other.response(2))["result"], {"status": "ready"})
            if not read_done.called:
                answered_during_the_read += 1
        reply = await read_done
        self.assertEqual(len(reply["result"]["dataBase64"]), 4 * (200 * 1024 * 1024 // 3 + 1))
        # The reader's request went out first; by the third answer on the
        # other connection the read was certainly under way.
        self.assertGreaterEqual(answered_during_the_read, 3)


class InPlaceReadTests(FsTestCase):
    """
    A small file in the page cache is read on the reactor thread
    (L{nowait}); any other goes to the thread pool.
    """

    def setUp(self):
        super().setUp()
        self.pooled = []
        run_blocking = self.server.run_blocking

        def recording(function, *args, **kwargs):
            self.pooled.append(args[0] if function is filesystem._as_rpc_errors else function)
            return run_blocking(function, *args, **kwargs)

        self.patch(self.server, "run_blocking", recording)

    async def test_a_small_cached_file_is_read_in_place(self):
        skip_unless_read_in_place(self.root)
        write(self.path("f"), b"contents")
        self.assertEqual(await self.result("fs/readFile", {"path": self.uri("f")}),
                         {"dataBase64": b64(b"contents")})
        self.assertEqual(self.pooled, [])

    async def test_other_reads_go_to_the_pool(self):
        write(self.path("big"), b"x" * (nowait.INLINE_READ_BYTES + 1))
        write(self.path("f"), b"contents")
        for params in ({"path": self.uri("big")},
                       {"path": self.uri("f"), "followSymlinks": False},
                       {"path": self.uri("missing")}):
            await self.call("fs/readFile", params)
        self.assertEqual(self.pooled, [filesystem._read_file_in_place] * 3)

    async def test_errors_keep_their_texts(self):
        os.mkfifo(self.path("fifo"))
        await self.assertError("fs/readFile", {"path": self.uri("missing")}, *NOT_FOUND)
        for path in (self.path("fifo"), self.root):
            await self.assertError("fs/readFile", {"path": paths.from_host_path(path)}, -32600,
                                   f"path `{path}` is not a file")


class SharedReadBufferTests(FsTestCase):
    """
    Reads in place take turns to use one buffer (L{filesystem.SharedReadBuffer}).
    """

    async def test_contents_around_the_buffer_sizes_come_back_whole_each_time(self):
        mib = 1024 * 1024
        for size in (0, 1, nowait.INLINE_READ_BYTES + 1, mib - 1, mib, mib + 1, 3 * mib):
            contents = os.urandom(size)
            write(self.path("f"), contents)
            for _ in range(2):
                self.assertEqual(await self.result("fs/readFile", {"path": self.uri("f")}),
                                 {"dataBase64": b64(contents)}, size)

    def test_a_read_while_the_buffer_is_lent_reads_into_fresh_memory(self):
        shared = filesystem.SharedReadBuffer(1024)
        write(self.path("f"), b"contents")
        with shared.lent() as first, shared.lent() as second:
            self.assertIsNone(second(8))
            self.assertEqual(fsops.read_file(self.path("f").encode(), True, second), b"contents")
            view = fsops.read_file(self.path("f").encode(), True, first)
            self.assertIsInstance(view, memoryview)
            self.assertEqual(bytes(view), b"contents")

    def test_files_from_the_limit_on_read_into_fresh_memory(self):
        shared = filesystem.SharedReadBuffer(1024)
        with shared.lent() as buffer_for:
            self.assertIsNone(buffer_for(1024))
            self.assertGreater(len(buffer_for(1023)), 1023)

    def test_a_file_that_outgrows_the_buffer_is_read_to_its_end(self):
        contents = os.urandom(25)
        write(self.path("f"), contents)
        self.assertEqual(fsops.read_file(self.path("f").encode(), True, lambda size: bytearray(10)),
                         contents)

    def test_released_when_memory_is_given_back_unless_lent(self):
        shared = filesystem.SharedReadBuffer(1024)
        with shared.lent() as buffer_for:
            kept = buffer_for(10)
            shared.release()
            self.assertIs(buffer_for(10), kept)
        shared.release()
        with shared.lent() as buffer_for:
            self.assertIsNot(buffer_for(10), kept)
        self.assertIn(filesystem._read_buffer.release, memory._idle_releases)


class SerializedInThePoolTests(FsTestCase):
    """
    The answers that may be megabytes (a file's base64, a walk's entries)
    are serialized in the thread pool, not on the reactor thread.
    """

    def serializer_records_its_thread(self, name: str) -> list:
        threads = []
        serialize = getattr(filesystem, name)

        def recording(result):
            threads.append(threading.current_thread())
            return serialize(result)

        self.patch(filesystem, name, recording)
        return threads

    async def test_read_file(self):
        threads = self.serializer_records_its_thread("_file_contents")
        # Larger than what is read in place (see InPlaceReadTests).
        contents = os.urandom(nowait.INLINE_READ_BYTES + 1)
        write(self.path("f"), contents)
        self.assertEqual(await self.result("fs/readFile", {"path": self.uri("f")}),
                         {"dataBase64": b64(contents)})
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())

    async def test_walk(self):
        threads = self.serializer_records_its_thread("walk_json")
        write(self.path("f"), b"")
        result = await self.result("fs/walk", {"path": self.uri(), "options": WALK})
        self.assertEqual(result["entries"], [{"path": self.uri("f"), "kind": "file"}])
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.main_thread())


class WalkJsonTests(unittest.TestCase):
    def test_a_walk_result_serializes_as_the_generic_encoder_would(self):
        # fsops.walk gives its entries as two lists.
        paths = ["file:///a/plain", 'file:///a/"quoted"\\back\u00e9\u2028\x01']
        kinds = ["file", "directory"]
        errors = [{"path": "file:///a/x", "message": "Permission denied (os error 13)"}]
        raw = filesystem.walk_json({"paths": paths, "kinds": kinds, "errors": errors, "truncated": True})
        self.assertEqual(b"".join(raw.parts), wirejson.dumps({
            "entries": [{"path": path, "kind": kind} for path, kind in zip(paths, kinds)],
            "errors": errors,
            "truncated": True,
        }))
        empty = filesystem.walk_json({"paths": [], "kinds": [], "errors": [], "truncated": False})
        self.assertEqual(b"".join(empty.parts), wirejson.dumps({"entries": [], "errors": [], "truncated": False}))
