"""
The C{fs/*} methods: whole-file reads and writes, directories, metadata,
removal, copies, canonical paths, bounded walks, and file handles for
streamed reads (C{fs/open}, C{fs/readBlock}) and writes (C{fs/open} with
C{mode: "replace"}, C{fs/writeBlock}).

Each request does its filesystem work in one function of L{fsops} that runs
in the server's thread pool; the reactor thread only decodes, checks and
answers. Under a sandbox that restricts file system access the function runs
in a helper process confined by that sandbox instead (L{fshelper}).
Errors carry the reference's codes and texts: OS errors as
C{<strerror> (os error N)} (see L{oserrors}), the others as the reference
words them. Where the reference would lose data or block the connection, we
refuse with an error instead (see C{docs/filesystem.md}).
"""

from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from json.encoder import encode_basestring
from typing import Any, Callable, Iterator

import pybase64
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from execserver import fshelper, fsops, nowait, oserrors
from execserver import params as P
from execserver import audit, memory, paths, rpc, sandbox, wirejson
from execserver.sandbox import runner
from execserver.sandbox import policy
from execserver.sandbox.policy import Plan
from execserver.server import Method, ServerConnection

FAMILY = "filesystem"

#: fs/readBlock and fs/writeBlock move at most this much at once.
MAX_BLOCK_BYTES = fsops.MAX_BLOCK_BYTES
#: Open file handles per connection.
MAX_HANDLES = 128
#: Handle ids are chosen by the client, at most this long in UTF-8.
MAX_HANDLE_ID_BYTES = 32
#: The largest fs/walk limits a client may ask for.
MAX_WALK_DEPTH = 64
MAX_WALK_DIRECTORIES = 10_000
MAX_WALK_ENTRIES = 50_000
#: File offsets are signed 64-bit numbers.
MAX_FILE_OFFSET = 2**63 - 1


PathUri = sandbox.PathUri


def _path(name: str = "path") -> P.Field:
    return P.Field(name, PathUri)


def _follow() -> P.Field:
    return P.Field("followSymlinks", P.Optional(P.Bool()), default=None)


def _sandbox() -> P.Field:
    return P.Field("sandbox", P.Optional(sandbox.SandboxContext))


ReadFileParams = P.Struct("WireFsReadFileParams", [_path(), _follow(), _sandbox()])

WriteFileParams = P.Struct("WireFsWriteFileParams", [
    _path(), P.Field("dataBase64", P.String()), _follow(), _sandbox(),
])

CreateDirectoryParams = P.Struct("WireFsCreateDirectoryParams", [
    _path(), P.Field("recursive", P.Optional(P.Bool())), _follow(), _sandbox(),
])

GetMetadataParams = P.Struct("WireFsGetMetadataParams", [_path(), _follow(), _sandbox()])

ReadDirectoryParams = P.Struct("WireFsReadDirectoryParams", [_path(), _sandbox()])

RemoveParams = P.Struct("WireFsRemoveParams", [
    _path(), P.Field("recursive", P.Optional(P.Bool())), P.Field("force", P.Optional(P.Bool())),
    _follow(), _sandbox(),
])

CopyParams = P.Struct("WireFsCopyParams", [
    _path("sourcePath"), _path("destinationPath"), P.Field("recursive", P.Bool()), _sandbox(),
])

CanonicalizeParams = P.Struct("WireFsCanonicalizeParams", [_path(), _sandbox()])

WalkOptions = P.Struct("WalkOptions", [
    P.Field("maxDepth", P.Int("usize")),
    P.Field("maxDirectories", P.Int("usize")),
    P.Field("maxEntries", P.Int("usize")),
    P.Field("followDirectorySymlinks", P.Bool()),
    P.Field("pruneHiddenDirectories", P.Bool(), default=False),
])

WalkParams = P.Struct("WireFsWalkParams", [_path(), P.Field("options", WalkOptions), _sandbox()])

OpenParams = P.Struct("WireFsOpenParams", [
    P.Field("handleId", P.String()),
    _path(),
    P.Field("mode", P.Enum("FsOpenMode", ["read", "replace"]), default="read"),
    _sandbox(),
])

ReadBlockParams = P.Struct("FsReadBlockParams", [
    P.Field("handleId", P.String()),
    P.Field("offset", P.Int("u64")),
    P.Field("len", P.Int("usize")),
])

WriteBlockParams = P.Struct("FsWriteBlockParams", [
    P.Field("handleId", P.String()),
    P.Field("offset", P.Int("u64")),
    P.Field("chunk", P.Base64()),
])

CloseParams = P.Struct("FsCloseParams", [P.Field("handleId", P.String())])


def _host_path(uri: str) -> bytes:
    try:
        return paths.to_host_path(uri)
    except paths.ForeignPathError as e:
        raise rpc.invalid_request(str(e)) from None


def _confinement(restrictive: bool, context: dict | None) -> Plan | None:
    """
    The sandbox a restrictive context asks for, or None to work in place.

    @raise rpc.RpcError: if this executor cannot enforce it.
    """
    if not restrictive:
        return None
    try:
        return runner.sandboxing.plan(context, True, helper=True)
    except runner.SandboxUnavailable as e:
        raise rpc.invalid_request(str(e)) from None


# File handles


class _Handle:
    """
    One open file of a connection. The descriptor is closed once the handle
    is closed and no read or write on it is still running.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.busy = 0
        self.closed = False

    def acquire(self) -> int:
        self.busy += 1
        return self.fd

    def release(self) -> None:
        self.busy -= 1
        self._maybe_close()

    def close(self) -> None:
        self.closed = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.closed and self.busy == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Handles:
    """
    A connection's open files by client-chosen id; all closed when the
    connection ends.
    """

    def __init__(self) -> None:
        self.open: dict[str, _Handle] = {}
        #: Ids whose fs/open is still running.
        self.opening: set[str] = set()
        self.ended = False

    def count(self) -> int:
        return len(self.open) + len(self.opening)

    def opened(self, handle_id: str, fd: int) -> None:
        """
        An fs/open finished; a connection that ended meanwhile does not get
        the file.
        """
        self.opening.discard(handle_id)
        handle = _Handle(fd)
        if self.ended:
            handle.close()
        else:
            self.open[handle_id] = handle

    def end(self) -> None:
        self.ended = True
        handles, self.open = self.open, {}
        for handle in handles.values():
            handle.close()

    def drop(self, handle_id: str, handle: _Handle) -> None:
        if self.open.get(handle_id) is handle:
            del self.open[handle_id]
        handle.close()


def _answer(work: Deferred) -> Deferred:
    """
    The answer of C{work} for the server. When the connection ends, the
    server cancels the answer; the work in the thread pool cannot be
    stopped, so it runs on and its callbacks still release what it holds.
    """
    answer = Deferred()

    def forward(result: Any) -> None:
        if answer.called:
            return
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    work.addBoth(forward)
    return answer


def _handles(connection: ServerConnection) -> _Handles:
    handles = connection.resources.get(FAMILY)
    if handles is None:
        handles = connection.resources[FAMILY] = _Handles()
        connection.onClose(handles.end)
    return handles


def _check_handle_id(handle_id: str) -> None:
    if len(handle_id.encode("utf-8")) > MAX_HANDLE_ID_BYTES:
        raise rpc.invalid_request(f"file handle ID must not exceed {MAX_HANDLE_ID_BYTES} bytes")


def _unknown_handle(handle_id: str) -> rpc.RpcError:
    return rpc.not_found(f"unknown file handle `{handle_id}`")


class SharedReadBuffer:
    """
    One buffer that the pool's file reads (fs/readFile in place,
    fs/readBlock) take turns to read into; a read that finds it lent reads
    into fresh memory, as all did before. Fresh memory costs a page fault
    per 4 KiB, about as much here as the read itself: for a 16 MiB file,
    4096 faults. The buffer grows to the largest read, up to L{limit}, and
    goes when memory is given back (L{memory.give_back}, once the server is
    idle).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._buffer: bytearray | None = None

    @contextmanager
    def lent(self) -> Iterator[Callable[[int], bytearray | None]]:
        """
        A C{buffer_for(size)}, good in this block: the buffer when it is
        free and more than C{size} bytes fit, else None.
        """
        taken = self._lock.acquire(blocking=False)

        def buffer_for(size: int) -> bytearray | None:
            if not taken or size >= self.limit:
                return None
            if self._buffer is None or len(self._buffer) <= size:
                self._buffer = bytearray(min(self.limit, -(-(size + 1) // _MIB) * _MIB))
            return self._buffer

        try:
            yield buffer_for
        finally:
            if taken:
                self._lock.release()

    def release(self) -> None:
        """Let go of the buffer, unless it is lent."""
        if self._lock.acquire(blocking=False):
            self._buffer = None
            self._lock.release()


_MIB = 1024 * 1024
#: Reads of less than this use the shared buffer.
SHARED_READ_BYTES = 32 * _MIB
_read_buffer = SharedReadBuffer(SHARED_READ_BYTES)
memory.release_when_idle(_read_buffer.release)


def read_block(fd: int, offset: int, length: int) -> rpc.RawJson:
    if offset > MAX_FILE_OFFSET:
        raise OSError(errno.EINVAL, "Invalid argument")
    with _read_buffer.lent() as buffer_for:
        buffer = buffer_for(length)
        view = memoryview(bytearray(length) if buffer is None else buffer)[:length]
        got = 0
        while got < length:
            read = os.preadv(fd, [view[got:]], offset + got)
            if not read:
                break
            got += read
        return rpc.RawJson(
            b'{"chunk":"', pybase64.b64encode(view[:got]),
            b'","eof":true}' if got < length else b'","eof":false}',
        )


def write_block(fd: int, offset: int, data: bytes) -> dict:
    fsops.write_all(fd, data, offset)
    return {}


# Handlers (reactor thread)


def _blocking(connection: ServerConnection, function: Callable, *args,
              finish: Callable[[Any], Any] | None = None) -> Deferred:
    """
    Run C{function(*args)} in the thread pool, and C{finish} on its result
    there too (the serializing of a large answer: on the reactor thread it
    would hold up every connection).
    """
    return connection.server.run_blocking(_as_rpc_errors, function, args, finish)


def _as_rpc_errors(function: Callable, args: tuple,
                   finish: Callable[[Any], Any] | None) -> Any:
    try:
        result = function(*args)
    except OSError as e:
        raise oserrors.to_rpc_error(e) from None
    return result if finish is None else finish(result)


def _operation(connection: ServerConnection, plan: Plan | None, op: str, *args,
               where: tuple[bytes, ...] = (),
               finish: Callable[[Any], Any] | None = None) -> Deferred:
    """
    Run L{fsops} function C{op} in the thread pool, and C{finish} on its
    result: in place, or in a helper confined by C{plan}. The helper also
    sees its own runtime (the interpreter and this package); there a path
    of C{where} that the profile does not grant is missing, as it would be
    for a child.
    """
    reading = op in _READS or (op == "open_file" and args[1] == "read")
    if _reads_in_place(plan, reading):
        done = _blocking(connection, getattr(fsops, op), *args, finish=finish)
    elif any(policy.hidden_runtime(plan, path) for path in where):
        if op == "remove" and args[2]:
            return _blocking(connection, dict)  # forced: nothing to remove
        return _blocking(connection, _invisible)
    else:
        done = _blocking(connection, fshelper.call, runner.sandboxing, plan, op, list(args),
                         finish=finish)
    if not reading:
        done.addCallback(_audited, connection, _AUDIT_EVENTS.get(op, "fs.write"), where)
    return done


def _reads_in_place(plan: Plan | None, reading: bool) -> bool:
    # As in the reference: what the profile lets anyone read is read in
    # place.
    return plan is None or (plan.reads_everything and reading)


#: The audit event of each operation that changes files (fs/open for
#: writing is an fs.write).
_AUDIT_EVENTS = {"remove": "fs.remove", "copy": "fs.copy", "create_directory": "fs.mkdir"}


def _audited(result: Any, connection: ServerConnection, event: str,
             where: tuple[bytes, ...]) -> Any:
    fields = {"path": os.fsdecode(where[0])}
    if len(where) > 1:
        fields["destination"] = os.fsdecode(where[1])
    audit.record(event, connection=connection.id, **fields)
    return result


#: The operations that only read (and fs/open in read mode).
_READS = frozenset(("read_file", "get_metadata", "read_directory", "canonicalize", "walk"))


def _invisible() -> None:
    raise FileNotFoundError(errno.ENOENT, "No such file or directory")


def _checked(p: dict) -> tuple[bytes, Plan | None]:
    """
    Check the sandbox and the path of C{p}, in the reference's order: the
    host path, and the confinement (None: none).
    """
    restrictive = sandbox.restricts(p["sandbox"])
    path = _host_path(p["path"])
    return path, _confinement(restrictive, p["sandbox"])


def _at_path(connection: ServerConnection, p: dict, op: str, *args,
             finish: Callable[[Any], Any] | None = None) -> Deferred:
    """
    Check the sandbox and the path, then run C{op(path, *args)} and
    C{finish} on its result.
    """
    path, plan = _checked(p)
    return _operation(connection, plan, op, path, *args, where=(path,), finish=finish)


def _file_contents(data: bytes | memoryview) -> rpc.RawJson:
    return rpc.RawJson(b'{"dataBase64":"', pybase64.b64encode(data), b'"}')


def _read_file_in_place(path: bytes, follow: bool) -> rpc.RawJson:
    with _read_buffer.lent() as buffer_for:
        return _file_contents(fsops.read_file(path, follow, buffer_for))


def handle_read_file(connection: ServerConnection, p: dict) -> Deferred:
    follow = p["followSymlinks"] is not False
    path, plan = _checked(p)
    if not _reads_in_place(plan, reading=True):
        return _operation(connection, plan, "read_file", path, follow, where=(path,),
                          finish=_file_contents)
    if follow:
        # A small file in the page cache is read at once; the pool reads
        # everything else (and gives every error).
        data = nowait.read_small(path)
        if data is not None:
            return succeed(_file_contents(data))
    return _blocking(connection, _read_file_in_place, path, follow)


def handle_write_file(connection: ServerConnection, p: dict) -> Deferred:
    try:
        data = P.decode_base64(p["dataBase64"])
    except P.DecodeError as e:
        raise rpc.invalid_request(f"fs/writeFile requires valid base64 dataBase64: {e}") from None
    return _at_path(connection, p, "write_file", data, p["followSymlinks"] is not False)


def handle_create_directory(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, "create_directory",
                    p["recursive"] is not False, p["followSymlinks"] is not False)


def handle_get_metadata(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, "get_metadata", p["followSymlinks"] is not False)


def handle_read_directory(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, "read_directory")


def handle_remove(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, "remove", p["recursive"] is not False,
                    p["force"] is not False, p["followSymlinks"] is not False)


def handle_copy(connection: ServerConnection, p: dict) -> Deferred:
    restrictive = sandbox.restricts(p["sandbox"])
    source = _host_path(p["sourcePath"])
    destination = _host_path(p["destinationPath"])
    plan = _confinement(restrictive, p["sandbox"])
    return _operation(connection, plan, "copy", source, destination, p["recursive"],
                      where=(source, destination))


def handle_canonicalize(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, "canonicalize")


def handle_walk(connection: ServerConnection, p: dict) -> Deferred:
    restrictive = sandbox.restricts(p["sandbox"])
    options = p["options"]
    limits = (options["maxDepth"], options["maxDirectories"], options["maxEntries"])
    if options["maxDirectories"] == 0 or options["maxEntries"] == 0:
        raise rpc.invalid_request("filesystem walk limits must be greater than zero")
    if any(limit > maximum for limit, maximum in
           zip(limits, (MAX_WALK_DEPTH, MAX_WALK_DIRECTORIES, MAX_WALK_ENTRIES))):
        raise rpc.invalid_request(
            "filesystem walk limits exceed maximums: "
            f"depth={MAX_WALK_DEPTH}, directories={MAX_WALK_DIRECTORIES}, entries={MAX_WALK_ENTRIES}"
        )
    root = _host_path(p["path"])
    plan = _confinement(restrictive, p["sandbox"])
    return _operation(connection, plan, "walk", p["path"], root, options,
                      where=(root,), finish=walk_json)


#: The end of a walk entry's JSON, for each kind.
_WALK_KINDS = {"file": ',"kind":"file"}', "directory": ',"kind":"directory"}'}


def walk_json(result: dict) -> rpc.RawJson:
    """
    An fs/walk result (from L{fsops.walk}: its entries as two lists)
    serialized as L{wirejson.dumps} would serialize the answer, about four
    times faster: its entries (tens of thousands) all have one shape.
    """
    entries = ",".join(['{"path":' + encode_basestring(path) + _WALK_KINDS[kind]
                        for path, kind in zip(result["paths"], result["kinds"])])
    return rpc.RawJson(b'{"entries":[', entries.encode("utf-8"), b'],"errors":',
                       wirejson.dumps(result["errors"]), b',"truncated":',
                       wirejson.dumps(result["truncated"]), b"}")


def handle_open(connection: ServerConnection, p: dict) -> Deferred:
    handle_id = p["handleId"]
    _check_handle_id(handle_id)
    handles = _handles(connection)
    if handle_id in handles.open or handle_id in handles.opening:
        raise rpc.invalid_request(f"file handle `{handle_id}` already exists")
    if handles.count() >= MAX_HANDLES:
        raise rpc.invalid_request(f"at most {MAX_HANDLES} file handles may be open per connection")
    restrictive = sandbox.restricts(p["sandbox"])
    path = _host_path(p["path"])
    plan = _confinement(restrictive, p["sandbox"])
    handles.opening.add(handle_id)

    def opened(fd: int) -> dict:
        handles.opened(handle_id, fd)
        return {"handleId": handle_id}

    def failed(failure: Failure) -> Failure:
        handles.opening.discard(handle_id)
        return failure

    return _answer(_operation(connection, plan, "open_file", path, p["mode"], where=(path,)).addCallbacks(opened, failed))


def handle_read_block(connection: ServerConnection, p: dict) -> Deferred:
    handle_id = p["handleId"]
    _check_handle_id(handle_id)
    if not 1 <= p["len"] <= MAX_BLOCK_BYTES:
        raise rpc.invalid_request(f"file read block length must be between 1 and {MAX_BLOCK_BYTES}")
    handles = _handles(connection)
    handle = handles.open.get(handle_id)
    if handle is None:
        raise _unknown_handle(handle_id)

    def failed(failure: Failure) -> Failure:
        # As in the reference, a failed read closes the handle.
        handles.drop(handle_id, handle)
        return failure

    work = _blocking(connection, read_block, handle.acquire(), p["offset"], p["len"])
    return _answer(work.addErrback(failed).addBoth(_released, handle))


def handle_write_block(connection: ServerConnection, p: dict) -> Deferred:
    handle_id = p["handleId"]
    _check_handle_id(handle_id)
    data = p["chunk"]
    if not 1 <= len(data) <= MAX_BLOCK_BYTES:
        raise rpc.invalid_request(f"file write block length must be between 1 and {MAX_BLOCK_BYTES}")
    if p["offset"] + len(data) > MAX_FILE_OFFSET:
        raise rpc.invalid_request("file write range exceeds the signed 64-bit file offset limit")
    handle = _handles(connection).open.get(handle_id)
    if handle is None:
        raise _unknown_handle(handle_id)
    work = _blocking(connection, write_block, handle.acquire(), p["offset"], data)
    return _answer(work.addBoth(_released, handle))


def _released(result: Any, handle: _Handle) -> Any:
    handle.release()
    return result


def handle_close(connection: ServerConnection, p: dict) -> dict:
    handle_id = p["handleId"]
    _check_handle_id(handle_id)
    handles = _handles(connection)
    handle = handles.open.get(handle_id)
    if handle is not None:
        handles.drop(handle_id, handle)
    return {}


METHODS = {
    "fs/readFile": Method(FAMILY, ReadFileParams, handle_read_file),
    "fs/writeFile": Method(FAMILY, WriteFileParams, handle_write_file),
    "fs/createDirectory": Method(FAMILY, CreateDirectoryParams, handle_create_directory),
    "fs/getMetadata": Method(FAMILY, GetMetadataParams, handle_get_metadata),
    "fs/readDirectory": Method(FAMILY, ReadDirectoryParams, handle_read_directory),
    "fs/remove": Method(FAMILY, RemoveParams, handle_remove),
    "fs/copy": Method(FAMILY, CopyParams, handle_copy),
    "fs/canonicalize": Method(FAMILY, CanonicalizeParams, handle_canonicalize),
    "fs/walk": Method(FAMILY, WalkParams, handle_walk),
    "fs/open": Method(FAMILY, OpenParams, handle_open),
    "fs/readBlock": Method(FAMILY, ReadBlockParams, handle_read_block),
    "fs/writeBlock": Method(FAMILY, WriteBlockParams, handle_write_block),
    "fs/close": Method(FAMILY, CloseParams, handle_close),
}
