"""
fs/watchMissing and fs/missingChanged against the reference: the same
watches on the same trees, the same answers and notifications.

A case either fires (the scenario waits for the notification) or stays
quiet: then a later request with a higher watch id, which ends the watch,
is the barrier, and the transcript says whether a notification came before
its answer. The change happened before the barrier was sent, so a server
that fires on it has it queued long before.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.interop import InteropTestCase, interop

METHOD = "fs/watchMissing"


def touch(path: str) -> None:
    with open(path, "a"):
        pass


def append(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")


class Watches:
    """
    One connection's watches, numbered upwards as the reference requires.
    """

    def __init__(self, peer) -> None:
        self.peer = peer
        self.watch_id = 0

    async def watch(self, label: str, missing: list[str], present: str | None = None) -> bool:
        self.watch_id += 1
        params = {"watchId": self.watch_id, "missing": missing}
        if present is not None:
            params["present"] = present
        reply = await self.peer.call(METHOD, params, label=label)
        return reply["result"]["watching"]

    def _of(self, watch_id: int):
        return lambda m: m.get("method") == "fs/missingChanged" and m["params"]["watchId"] == watch_id

    async def fired(self, label: str) -> None:
        await self.peer.queue.notification(self._of(self.watch_id))
        self.peer.record(label, "fired")

    async def quiet(self, label: str) -> None:
        watched = self.watch_id
        await self.watch(f"{label}: barrier", [self.peer.uri("barrier-never-created")])
        before = [m for m in self.peer.queue.messages if self._of(watched)(m)]
        self.peer.record(label, "fired" if before else "quiet")


def fresh(peer, *directories: str) -> None:
    root = peer.path("t")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    for directory in directories:
        os.makedirs(os.path.join(root, directory))


async def params_and_gating(peer):
    good = {"watchId": 1, "missing": [peer.uri("nope")]}
    await peer.call(METHOD, {"watchId": "x", "missing": []}, label="bad params first")
    await peer.call(METHOD, good, label="then the gate")
    await peer.call("initialize", {"clientName": "interop"}, record=False)
    await peer.call(METHOD, good, label="before initialized")
    peer.send({"method": "initialized", "params": {}})
    for shape in (None, "x", 5, [], {}, [1], [1, []], [1, [], None], [1, [], None, None],
                  {"watchId": 1}, {"missing": []}):
        await peer.call(METHOD, shape, label=f"params {shape!r}")
    for value in ("x", -1, 1.5, 2**64, None, True):
        await peer.call(METHOD, {"watchId": value, "missing": []}, label=f"watchId {value!r}")
    for value in (None, "x", [5], ["rel"], ["/abs"], ["http://x/y"], ["file:///tmp?q"]):
        await peer.call(METHOD, {"watchId": 1, "missing": value}, label=f"missing {value!r}")
    for value in (5, "rel", [], ["file:///tmp"]):
        await peer.call(METHOD, {"watchId": 1, "missing": [], "present": value}, label=f"present {value!r}")


async def ids(peer):
    """
    One watch per connection; only a higher id replaces it.
    """
    await peer.handshake()
    fresh(peer)
    w = Watches(peer)
    await peer.call(METHOD, {"watchId": 0, "missing": [peer.uri("t", "a")]}, label="id 0 is never above")
    await w.watch("first", [peer.uri("t", "a")])
    await peer.call(METHOD, {"watchId": 1, "missing": [peer.uri("t", "b")]}, label="same id")
    await peer.call(METHOD, {"watchId": 0, "missing": [peer.uri("t", "b")]}, label="lower id")
    touch(peer.path("t", "b"))
    touch(peer.path("t", "a"))
    await w.fired("the first watch is still the one")
    await peer.call(METHOD, {"watchId": 1, "missing": [peer.uri("t", "c")]}, label="its id, once fired")
    await w.watch("replaced", [peer.uri("t", "c")])
    await w.watch("by another", [peer.uri("t", "d")])
    touch(peer.path("t", "c"))
    await w.quiet("the replaced watch")
    for label, missing in (("nothing missing", []), ("a foreign path", ["file:///C:/x"]),
                           ("an existing path", [peer.uri("t")])):
        await w.watch(f"{label}: watch", [peer.uri("t", "e")])
        await w.watch(f"{label}: replaced", missing)
        touch(peer.path("t", "e"))
        os.remove(peer.path("t", "e"))
        await w.quiet(f"{label} still ends the watch")
    other = await peer.reconnect()
    await other.handshake()
    await other.call(METHOD, {"watchId": 1, "missing": [peer.uri("t", "f")]}, label="ids are per connection")
    touch(peer.path("t", "f"))
    await other.queue.notification(lambda m: m.get("method") == "fs/missingChanged")
    other.record("the other connection's watch", "fired")
    w.watch_id = 2**64 - 2
    await w.watch("the largest id", [peer.uri("t", "g")])
    await peer.call(METHOD, {"watchId": 2**64 - 1, "missing": [peer.uri("t", "h")]}, label="then nothing")


async def what_fires(peer):
    """
    Changes of the missing paths, their ancestors and C{present}; not of
    their siblings, and not opens, reads or closes.
    """
    await peer.handshake()
    w = Watches(peer)
    t = lambda *parts: peer.path("t", *parts)
    u = lambda *parts: peer.uri("t", *parts)
    cases = [
        ("create the path", (), [u("m")], None, lambda: touch(t("m")), True),
        ("mkdir the path", (), [u("m")], None, lambda: os.mkdir(t("m")), True),
        ("a dangling symlink at the path", (), [u("m")], None, lambda: os.symlink("/nonexistent", t("m")), True),
        ("rename onto the path", ("d",), [u("m")], None, lambda: os.rename(t("d"), t("m")), True),
        ("create a sibling", (), [u("m")], None, lambda: touch(t("s")), False),
        ("rename a sibling", ("d",), [u("m")], None, lambda: os.rename(t("d"), t("e")), False),
        ("remove a sibling", ("d",), [u("m")], None, lambda: os.rmdir(t("d")), False),
        ("chmod the deepest ancestor", (), [u("m")], None, lambda: os.chmod(t(), 0o700), True),
        ("utime the deepest ancestor", (), [u("m")], None, lambda: os.utime(t()), True),
        ("list the deepest ancestor", (), [u("m")], None, lambda: os.listdir(t()), False),
        ("create a missing ancestor", (), [u("a", "b", "c")], None, lambda: os.mkdir(t("a")), True),
        ("create a sibling of a missing ancestor", (), [u("a", "b", "c")], None, lambda: os.mkdir(t("aa")), False),
        ("the next ancestor", ("a",), [u("a", "b", "c")], None, lambda: os.mkdir(t("a", "b")), True),
        ("beside the next ancestor", ("a",), [u("a", "b", "c")], None, lambda: touch(t("a", "x")), False),
        ("the second of two paths", ("d1", "d2"), [u("d1", "x"), u("d2", "y")], None,
         lambda: touch(t("d2", "y")), True),
        ("rename an ancestor away", ("a",), [u("a", "m")], None, lambda: os.rename(t("a"), t("z")), True),
        ("present file read", ("p",), [u("m")], u("p", "f"), lambda: open(t("p", "f")).read(), False),
        ("present file opened for writing", ("p",), [u("m")], u("p", "f"), lambda: open(t("p", "f"), "a").close(), False),
        ("present file written", ("p",), [u("m")], u("p", "f"), lambda: append(t("p", "f")), True),
        ("present file chmod", ("p",), [u("m")], u("p", "f"), lambda: os.chmod(t("p", "f"), 0o600), True),
        ("present file removed", ("p",), [u("m")], u("p", "f"), lambda: os.remove(t("p", "f")), True),
        ("present file renamed", ("p",), [u("m")], u("p", "f"), lambda: os.rename(t("p", "f"), t("p", "g")), True),
        ("present dir gets a child", ("p",), [u("m")], u("p"), lambda: touch(t("p", "c")), False),
        ("present dir utime", ("p",), [u("m")], u("p"), lambda: os.utime(t("p")), True),
        ("present dir removed", ("p",), [u("m")], u("p"), lambda: os.rmdir(t("p")), True),
        ("ancestor of present chmod", ("p/q",), [u("m")], u("p", "q"), lambda: os.chmod(t("p"), 0o700), True),
        ("present's sibling", ("p",), [u("m")], u("p", "f"), lambda: touch(t("p", "other")), False),
    ]
    for label, directories, missing, present, change, fires in cases:
        fresh(peer, *directories)
        if present is not None and present.endswith("/f"):
            touch(t("p", "f"))
        await w.watch(f"{label}: watch", missing, present)
        change()
        if fires:
            await w.fired(label)
        else:
            await w.quiet(label)
    fresh(peer)
    await w.watch("once: watch", [u("m"), u("n")])
    touch(t("m"))
    await w.fired("once: first change")
    touch(t("n"))
    await w.quiet("once: no second notification")


async def what_is_watchable(peer):
    """
    The answers for paths that exist, are not directories, lie on file
    systems inotify does not serve, or exceed the limits.
    """
    await peer.handshake()
    fresh(peer, "real", "d", "deep")
    t = lambda *parts: peer.path("t", *parts)
    u = lambda *parts: peer.uri("t", *parts)
    os.symlink(t("real"), t("link"))
    os.symlink("/nonexistent", t("dangling"))
    touch(t("file"))
    w = Watches(peer)
    cases = {
        "an existing path": [u("file")],
        "the root": ["file:///"],
        "an existing and a missing path": [u("file"), u("m")],
        "below a file": [u("file", "x")],
        "below a symlink to a directory": [u("link", "x")],
        "twice the same path": [u("m"), u("m")],
        "a trailing slash": [u("m") + "/"],
        "dot segments": [u("d", "..", "m")],
        "an encoded slash": [u() + "/a%2Fb"],
        "a foreign path": ["file:///C:/x"],
        "a host": ["file://host/x"],
        "under /proc": ["file:///proc/nonexistent"],
        "under /sys": ["file:///sys/nonexistent"],
        "under /proc/self": ["file:///proc/self/nonexistent"],
        "under /dev/shm": ["file:///dev/shm/execserver-nonexistent"],
        "64 paths": [u(f"m{i}") for i in range(64)],
        "65 paths": [u(f"m{i}") for i in range(65)],
        "65 times one path": [u("m")] * 65,
        "64 components": ["file://" + "/b" * 64],
        "65 components": ["file://" + "/b" * 65],
    }
    for label, missing in cases.items():
        await w.watch(label, missing)
    presents = {
        "present file": u("file"), "present directory": u("real"), "present missing": u("nope"),
        "present symlink": u("link"), "present dangling symlink": u("dangling"),
        "present under /proc": "file:///proc/cpuinfo", "present /proc": "file:///proc",
        "present root": "file:///",
    }
    for label, present in presents.items():
        await w.watch(label, [u("m")], present)
    # Directories watched: "/", the work directory's ancestors, "t", "deep",
    # then one per missing path, and "real" for the present file.
    touch(t("real", "f"))
    spare = 64 - len(peer.path("t", "deep").split("/"))
    for i in range(spare + 1):
        os.mkdir(t("deep", f"d{i}"))
    for count in (spare - 1, spare, spare + 1):
        missing = [u("deep", f"d{i}", "x") for i in range(count)]
        await w.watch(f"{count} more directories", missing)
        await w.watch(f"{count} more directories and a present file", missing, u("real", "f"))


def _private_mounts(kind: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private"]


def _mount(peer, *args: str) -> None:
    """
    Mount or unmount in the server's own mount namespace: a change to the
    host's table would fire every watch of every test running beside this
    one, on both servers.
    """
    namespace = f"--mount=/proc/{peer.server.pid}/ns/mnt"
    subprocess.run(["nsenter", namespace, *args], check=True, capture_output=True)


async def mount_changes(peer):
    """
    A mount or unmount anywhere fires the watch.
    """
    await peer.handshake()
    fresh(peer, "mnt")
    w = Watches(peer)
    target = peer.path("t", "mnt")
    await w.watch("watch", [peer.uri("t", "m")])
    _mount(peer, "mount", "-t", "tmpfs", "none", target)
    try:
        await w.fired("a mount")
        await w.watch("watch again", [peer.uri("t", "m")])
    finally:
        _mount(peer, "umount", target)
    await w.fired("an unmount")


class WatchMissingTests(InteropTestCase):
    test_params_and_gating = interop(params_and_gating)
    test_ids = interop(ids)
    test_what_fires = interop(what_fires)
    test_what_is_watchable = interop(what_is_watchable)


class MountTests(InteropTestCase):
    if os.geteuid() != 0:
        skip = "mounting a file system needs root"

    test_mount_changes = interop(mount_changes, wrapper=_private_mounts)
