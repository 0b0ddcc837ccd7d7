"""
fs/* under a restrictive sandbox against the reference: file access obeys
the same confinement as a sandboxed process's, with the same answers.
"""

from __future__ import annotations

import base64
import os

from tests.interop import InteropTestCase, interop
from tests.test_interop_sandbox import entry, host_listing, managed, special, workspace


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _files(peer) -> None:
    os.makedirs(peer.path("w", "sub"), exist_ok=True)
    os.makedirs(peer.path("r"), exist_ok=True)
    for name, data in (("r/file", b"read me\n"), ("w/secret.pem", b"key\n"), ("w/sub/inner", b"in\n")):
        with open(peer.path(*name.split("/")), "wb") as f:
            f.write(data)


WALK = {"maxDepth": 2, "maxDirectories": 10, "maxEntries": 100, "followDirectorySymlinks": False}


async def _matrix(peer, name: str, sandbox: dict) -> None:
    """
    Every kind of fs request, inside and outside what C{sandbox} grants.
    """
    calls = [
        ("fs/writeFile", {"path": peer.uri("w", "a.txt"), "dataBase64": b64(b"A")}),
        ("fs/writeFile", {"path": peer.uri("out.txt"), "dataBase64": b64(b"A")}),
        ("fs/writeFile", {"path": peer.uri("w", ".git", "x"), "dataBase64": b64(b"A")}),
        ("fs/readFile", {"path": peer.uri("w", "a.txt")}),
        ("fs/readFile", {"path": peer.uri("r", "file")}),
        ("fs/readFile", {"path": peer.uri("r", "nosuch")}),
        ("fs/readFile", {"path": peer.uri("w", "secret.pem")}),
        ("fs/readFile", {"path": "file:///etc/hostname"}),
        ("fs/getMetadata", {"path": peer.uri("r", "file")}),
        ("fs/getMetadata", {"path": peer.uri("w", ".git")}),
        ("fs/createDirectory", {"path": peer.uri("w", ".git")}),
        ("fs/readDirectory", {"path": peer.uri("w")}),
        ("fs/readDirectory", {"path": peer.uri("w", "sub")}),
        ("fs/writeFile", {"path": peer.uri("w", "sub", "new"), "dataBase64": b64(b"A")}),
        ("fs/createDirectory", {"path": peer.uri("newdir")}),
        ("fs/createDirectory", {"path": peer.uri("w", "newdir")}),
        ("fs/remove", {"path": peer.uri("w", "newdir")}),
        ("fs/remove", {"path": peer.uri("r", "file")}),
        ("fs/copy", {"sourcePath": peer.uri("r", "file"), "destinationPath": peer.uri("w", "copy"),
                     "recursive": False}),
        ("fs/copy", {"sourcePath": peer.uri("r", "file"), "destinationPath": peer.uri("copy"),
                     "recursive": False}),
        ("fs/canonicalize", {"path": peer.uri("r", "..", "r", "file")}),
        ("fs/walk", {"path": peer.uri("w"), "options": WALK}),
        ("fs/open", {"handleId": f"{name}-r", "path": peer.uri("r", "file")}),
        ("fs/open", {"handleId": f"{name}-w", "path": peer.uri("w", "replaced"), "mode": "replace"}),
        ("fs/open", {"handleId": f"{name}-o", "path": peer.uri("outside"), "mode": "replace"}),
    ]
    for method, params in calls:
        target = (params.get("path") or params.get("sourcePath")).replace(peer.uri(), "<workdir>")
        reply = await peer.call(method, dict(params, sandbox=sandbox), record=False)
        if method == "fs/getMetadata" and "result" in reply:
            reply = {"isDirectory": reply["result"]["isDirectory"], "size": reply["result"]["size"]}
        peer.record(f"{name} {method} {target}", reply)
    read = await peer.call("fs/readBlock", {"handleId": f"{name}-r", "offset": 0, "len": 100},
                           record=False)
    peer.record(f"{name} readBlock", read.get("result", read.get("error")))
    await peer.call("fs/writeBlock", {"handleId": f"{name}-w", "offset": 0, "chunk": b64(b"block")},
                    label=f"{name} writeBlock")
    for suffix in ("r", "w", "o"):
        await peer.call("fs/close", {"handleId": f"{name}-{suffix}"}, record=False)


async def a_workspace_profile(peer):
    await peer.handshake()
    _files(peer)
    await _matrix(peer, "workspace", workspace(peer))
    host_listing(peer)
    host_listing(peer, "w")


async def a_minimal_profile(peer):
    await peer.handshake()
    _files(peer)
    await _matrix(peer, "minimal", managed([entry(special("minimal"), "read"),
                                            entry(peer.uri("w"), "write")], cwd=peer.uri()))
    host_listing(peer)
    host_listing(peer, "w")


async def deny_entries(peer):
    await peer.handshake()
    _files(peer)
    sandbox = managed([
        entry(special("root"), "read"),
        entry(peer.uri("w"), "write"),
        entry(peer.uri("w", "sub"), "deny"),
        {"path": {"type": "glob_pattern", "pattern": "**/*.pem"}, "access": "deny"},
    ], cwd=peer.uri("w"))
    await _matrix(peer, "deny", sandbox)
    host_listing(peer, "w")


async def a_read_only_profile(peer):
    await peer.handshake()
    _files(peer)
    await _matrix(peer, "read-only", managed([entry(special("root"), "read")], cwd=peer.uri()))
    host_listing(peer)


class SandboxedFilesystemInteropTests(InteropTestCase):
    test_a_workspace_profile = interop(a_workspace_profile)
    test_a_minimal_profile = interop(a_minimal_profile)
    test_deny_entries = interop(deny_entries)
    test_a_read_only_profile = interop(a_read_only_profile)
