"""
File helpers: typed C{fs/*} calls, and streamed reads and writes.

Paths are C{file:} URIs on the wire; every helper also takes an absolute
path on the server's host (C{str} or C{bytes}) and converts it.

Streamed reads use C{fs/open} and C{fs/readBlock}; streamed writes use
C{fs/open} with C{mode: "replace"} and C{fs/writeBlock} (servers that
advertise the C{fileWriteStreaming} capability). File handles belong to the
connection: when it drops, the server closes them, so a stream in progress
fails with L{HandleLost} instead of silently reading another file.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pybase64
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed

from execserver import paths
from execserver.client.encoding import decode_base64
from execserver.client.errors import HandleLost

if TYPE_CHECKING:
    from execserver.client.core import ExecServerClient
    from execserver.client.rpc import RpcConnection

#: The largest block C{fs/readBlock} and C{fs/writeBlock} accept.
MAX_BLOCK_BYTES = 1024 * 1024


def as_uri(path: str | bytes) -> str:
    """
    A C{file:} URI, given one or an absolute host path.
    """
    if isinstance(path, str) and path.startswith("file:"):
        return path
    if not (path.startswith(b"/") if isinstance(path, bytes) else path.startswith("/")):
        raise ValueError(f"expected an absolute path or a file: URI, got {path!r}")
    return paths.from_host_path(path)


@dataclass(frozen=True)
class Metadata:
    is_directory: bool
    is_file: bool
    is_symlink: bool
    size: int
    created_at_ms: int
    modified_at_ms: int

    @classmethod
    def from_wire(cls, result: dict) -> "Metadata":
        return cls(result["isDirectory"], result["isFile"], result["isSymlink"], result["size"],
                   result["createdAtMs"], result["modifiedAtMs"])


@dataclass(frozen=True)
class DirectoryEntry:
    file_name: str
    is_directory: bool
    is_file: bool


class FileSystem:
    """
    The C{fs/*} methods of one client (C{client.fs}).
    """

    def __init__(self, client: "ExecServerClient") -> None:
        self._client = client

    def read_file(self, path, follow_symlinks: bool = True) -> Deferred:
        """
        @return: fires with the whole file (up to the server's 512 MiB limit).
        """
        reading = self._client.call("fs/readFile", {
            "path": as_uri(path), "followSymlinks": follow_symlinks,
        })
        return reading.addCallback(lambda result: decode_base64(result["dataBase64"]))

    def write_file(self, path, data: bytes, follow_symlinks: bool = True) -> Deferred:
        return self._client.call("fs/writeFile", {
            "path": as_uri(path),
            "dataBase64": pybase64.b64encode_as_string(data),
            "followSymlinks": follow_symlinks,
        })

    def create_directory(self, path, recursive: bool = True) -> Deferred:
        return self._client.call("fs/createDirectory", {"path": as_uri(path), "recursive": recursive})

    def get_metadata(self, path, follow_symlinks: bool = True) -> Deferred:
        """
        @return: fires with a L{Metadata}.
        """
        getting = self._client.call("fs/getMetadata", {
            "path": as_uri(path), "followSymlinks": follow_symlinks,
        })
        return getting.addCallback(Metadata.from_wire)

    def read_directory(self, path) -> Deferred:
        """
        @return: fires with a list of L{DirectoryEntry}, in the server's order.
        """
        reading = self._client.call("fs/readDirectory", {"path": as_uri(path)})
        return reading.addCallback(lambda result: [
            DirectoryEntry(entry["fileName"], entry["isDirectory"], entry["isFile"])
            for entry in result["entries"]
        ])

    def remove(self, path, recursive: bool = True, force: bool = True) -> Deferred:
        return self._client.call("fs/remove", {
            "path": as_uri(path), "recursive": recursive, "force": force,
        })

    def copy(self, source, destination, recursive: bool = False) -> Deferred:
        return self._client.call("fs/copy", {
            "sourcePath": as_uri(source), "destinationPath": as_uri(destination),
            "recursive": recursive,
        })

    def canonicalize(self, path) -> Deferred:
        """
        @return: fires with the canonical C{file:} URI.
        """
        return self._client.call("fs/canonicalize", {"path": as_uri(path)}).addCallback(
            lambda result: result["path"])

    def walk(self, path, max_depth: int, max_directories: int, max_entries: int,
             follow_directory_symlinks: bool = False,
             prune_hidden_directories: bool = False) -> Deferred:
        """
        @return: fires with the raw reply (C{entries}, C{errors}, C{truncated}).
        """
        return self._client.call("fs/walk", {
            "path": as_uri(path),
            "options": {
                "maxDepth": max_depth, "maxDirectories": max_directories,
                "maxEntries": max_entries,
                "followDirectorySymlinks": follow_directory_symlinks,
                "pruneHiddenDirectories": prune_hidden_directories,
            },
        })

    def open(self, path, mode: str = "read") -> Deferred:
        """
        Open a file handle on the current connection.

        @param mode: C{read}, or C{replace} (truncate, then write blocks).
        @return: fires with a L{FileHandle}.
        """
        handle_id = uuid.uuid4().hex
        params: dict[str, Any] = {"handleId": handle_id, "path": as_uri(path)}
        if mode != "read":
            params["mode"] = mode
        link = self._client._link
        opening = self._client.call("fs/open", params)
        return opening.addCallback(lambda _: FileHandle(self._client, handle_id, link))

    def stream(self, path, write: Callable[[bytes], Deferred | None],
               block_size: int = MAX_BLOCK_BYTES) -> Deferred:
        """
        Read a file block by block, handing each to C{write} (which may
        return a Deferred to hold the next block back).

        @return: fires with the number of bytes read.
        """
        return ensureDeferred(self._stream(path, write, block_size))

    async def _stream(self, path, write, block_size: int) -> int:
        handle = await self.open(path)
        offset = 0
        try:
            while True:
                chunk, eof = await handle.read_block(offset, block_size)
                if chunk:
                    offset += len(chunk)
                    waiting = write(chunk)
                    if waiting is not None:
                        await waiting
                if eof or not chunk:
                    break
        except BaseException:
            handle.close().addErrback(lambda _: None)
            raise
        await handle.close()
        return offset

    def write_stream(self, path, read: Callable[[], Deferred]) -> Deferred:
        """
        Replace a file with what C{read} yields (each call fires with the
        next bytes, or C{b""} at the end), one C{fs/writeBlock} at a time.

        @return: fires with the number of bytes written.
        """
        return ensureDeferred(self._write_stream(path, read))

    async def _write_stream(self, path, read) -> int:
        handle = await self.open(path, mode="replace")
        offset = 0
        try:
            while True:
                data = await read()
                if not data:
                    break
                for start in range(0, len(data), MAX_BLOCK_BYTES):
                    block = data[start:start + MAX_BLOCK_BYTES]
                    await handle.write_block(offset, block)
                    offset += len(block)
        except BaseException:
            handle.close().addErrback(lambda _: None)
            raise
        await handle.close()
        return offset


class FileHandle:
    """
    An open file handle. It lives as long as the connection it was opened
    on; after a reconnect every request on it fails with L{HandleLost}.
    """

    def __init__(self, client: "ExecServerClient", handle_id: str,
                 link: "RpcConnection | None") -> None:
        self._client = client
        self.handle_id = handle_id
        self._link = link

    def _lost(self) -> bool:
        return self._client._link is not self._link

    def _call(self, method: str, params: dict) -> Deferred:
        if self._lost():
            return fail(HandleLost(
                f"file handle {self.handle_id} was closed by the server when its "
                "connection was lost"
            ))
        return self._client.call(method, params)

    def read_block(self, offset: int, length: int = MAX_BLOCK_BYTES) -> Deferred:
        """
        @return: fires with C{(data, eof)}.
        """
        reading = self._call("fs/readBlock", {
            "handleId": self.handle_id, "offset": offset, "len": length,
        })
        return reading.addCallback(
            lambda result: (decode_base64(result["chunk"]), result["eof"]))

    def write_block(self, offset: int, data: bytes) -> Deferred:
        return self._call("fs/writeBlock", {
            "handleId": self.handle_id, "offset": offset,
            "chunk": pybase64.b64encode_as_string(data),
        })

    def close(self) -> Deferred:
        """
        Close the handle (nothing to do if its connection is gone).
        """
        if self._lost():
            return succeed({})
        return self._client.call("fs/close", {"handleId": self.handle_id})
