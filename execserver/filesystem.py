"""
The C{fs/*} methods: whole-file reads and writes, directories, metadata,
removal, copies, canonical paths, bounded walks, and file handles for
streamed reads (C{fs/open}, C{fs/readBlock}) and writes (C{fs/open} with
C{mode: "replace"}, C{fs/writeBlock}).

Each request does its filesystem work in one function that runs in the
server's thread pool; the reactor thread only decodes, checks and answers.
Errors carry the reference's codes and texts: OS errors as
C{<strerror> (os error N)} (see L{oserrors}), the others as the reference
words them. Where the reference would lose data or block the connection, we
refuse with an error instead (see C{docs/filesystem.md}).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import shutil
import stat
from typing import Any, Callable

import pybase64
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from execserver import oserrors
from execserver import params as P
from execserver import paths, rpc, sandbox
from execserver.server import Method, ServerConnection

FAMILY = "filesystem"

#: fs/readFile refuses files larger than this.
MAX_READ_FILE_BYTES = 512 * 1024 * 1024
#: fs/readBlock and fs/writeBlock move at most this much at once.
MAX_BLOCK_BYTES = 1024 * 1024
#: Open file handles per connection.
MAX_HANDLES = 128
#: Handle ids are chosen by the client, at most this long in UTF-8.
MAX_HANDLE_ID_BYTES = 32
#: fs/readDirectory refuses directories with more entries than this.
MAX_DIRECTORY_ENTRIES = 50_000
#: The largest fs/walk limits a client may ask for.
MAX_WALK_DEPTH = 64
MAX_WALK_DIRECTORIES = 10_000
MAX_WALK_ENTRIES = 50_000
#: fs/walk stops when its answer would cost more than this, counting each
#: entry as its URI plus WALK_ITEM_COST (and each error as its URI and
#: message plus WALK_ITEM_COST).
WALK_RESPONSE_BUDGET = 4 * 1024 * 1024
WALK_ITEM_COST = 64
#: File offsets are signed 64-bit numbers.
MAX_FILE_OFFSET = 2**63 - 1

#: What fs/readFile reads at a time once the announced size has been read
#: (files in /proc announce 0).
_READ_CHUNK = 64 * 1024

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


def _enforce(restriction: str | None) -> None:
    if restriction is not None:
        raise rpc.invalid_request(restriction)


# Blocking helpers. Everything below up to the handlers runs in the thread
# pool and raises OSError or RpcError.


def _not_a_file(path: bytes) -> rpc.RpcError:
    return rpc.invalid_request(f"path `{paths.display(path)}` is not a file")


_NOT_REGULAR = "path is not a regular file"
_NOT_AN_ENTRY = "path must name an entry"
_SYMLINK_IN_PATH = "path contains a symbolic link"


def _too_large() -> rpc.RpcError:
    return rpc.invalid_request(f"file is too large to read: limit is {MAX_READ_FILE_BYTES} bytes")


def _join(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name


def _open_parent(path: bytes) -> tuple[int, bytes]:
    """
    Reach the parent directory of C{path} one component at a time without
    following a symbolic link anywhere, and return its descriptor (only
    good for C{*at} calls) and the last name.
    """
    if path == b"/":
        raise rpc.invalid_request(_NOT_AN_ENTRY)
    *parents, name = path[1:].split(b"/")
    fd = os.open(b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parents:
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _open_no_follow(path: bytes, flags: int, mode: int = 0o666) -> int:
    parent, name = _open_parent(path)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    total = 0
    want = max(size, _READ_CHUNK)
    while True:
        chunk = os.read(fd, min(want, MAX_READ_FILE_BYTES + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_READ_FILE_BYTES:
            raise _too_large()
        want = _READ_CHUNK
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        if offset is None:
            written = os.write(fd, view)
        else:
            written = os.pwrite(fd, view, offset)
            offset += written
        view = view[written:]


def _realpath(path: bytes) -> bytes:
    """
    The canonical path, as the kernel resolves it (C{realpath(3)}).
    """
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return os.readlink(b"/proc/self/fd/%d" % fd)
    finally:
        os.close(fd)


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _Timestamp), ("stx_btime", _Timestamp),
        ("stx_ctime", _Timestamp), ("stx_mtime", _Timestamp),
        ("spare", ctypes.c_uint64 * 18),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_BASIC_STATS_AND_BTIME = 0x7FF | 0x800
_STATX_BTIME = 0x800


def _statx_no_follow(directory: int, name: bytes) -> _Statx:
    """
    C{statx(2)} of C{name} in C{directory} itself, with its birth time.
    """
    result = _Statx()
    if _libc.statx(directory, name, _AT_SYMLINK_NOFOLLOW, _STATX_BASIC_STATS_AND_BTIME,
                   ctypes.byref(result)) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


def _millis(seconds: int, nanoseconds: int) -> int:
    return seconds * 1000 + nanoseconds // 1_000_000


def _create_dir_all(path: bytes) -> None:
    """
    C{mkdir -p} as Rust's C{fs::create_dir_all}: an existing directory (or
    a symbolic link to one) is fine, anything else in the way is an error.
    """
    try:
        os.mkdir(path)
        return
    except FileNotFoundError:
        pass
    except OSError:
        if os.path.isdir(path):
            return
        raise
    parent = os.path.dirname(path)
    if parent == path:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    _create_dir_all(parent)
    try:
        os.mkdir(path)
    except OSError:
        if not os.path.isdir(path):
            raise


# The operations


def read_file(path: bytes, follow: bool) -> rpc.RawJson:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags) if follow else _open_no_follow(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_file(path) if follow else rpc.invalid_request(_NOT_REGULAR)
        if info.st_size > MAX_READ_FILE_BYTES:
            raise _too_large()
        data = _read_all(fd, info.st_size)
    finally:
        os.close(fd)
    return rpc.RawJson(b'{"dataBase64":"', pybase64.b64encode(data), b'"}')


def write_file(path: bytes, data: bytes, follow: bool) -> dict:
    # Opening without blocking means a FIFO without a reader fails at once
    # (ENXIO) instead of holding the connection until someone reads it.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags, 0o666) if follow else _open_no_follow(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
        elif not follow or not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
            raise rpc.invalid_request(_NOT_REGULAR)
        _write_all(fd, data)
    finally:
        os.close(fd)
    return {}


def create_directory(path: bytes, recursive: bool, follow: bool) -> dict:
    if follow:
        if recursive:
            _create_dir_all(path)
        else:
            os.mkdir(path)
        return {}
    if not recursive:
        if path == b"/":
            raise rpc.internal_error("directory already exists")
        parent, name = _open_parent(path)
        try:
            os.mkdir(name, dir_fd=parent)
        finally:
            os.close(parent)
        return {}
    fd = os.open(b"/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    parts = path[1:].split(b"/") if path != b"/" else []
    try:
        for part in parts:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile by someone else; open it below
                child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return {}


def get_metadata(path: bytes, follow: bool) -> dict:
    if follow:
        info = os.stat(path)
        is_symlink = stat.S_ISLNK(os.lstat(path).st_mode)
        modified = info.st_mtime_ns // 1_000_000
        return _metadata(info.st_mode, is_symlink, info.st_size, 0, max(modified, 0))
    if path == b"/":
        info = os.stat(path)
        return _metadata(info.st_mode, False, info.st_size, 0, info.st_mtime_ns // 1_000_000)
    parent, name = _open_parent(path)
    try:
        info = _statx_no_follow(parent, name)
    finally:
        os.close(parent)
    if stat.S_ISLNK(info.stx_mode):
        raise rpc.invalid_request(_SYMLINK_IN_PATH)
    created = 0
    if info.stx_mask & _STATX_BTIME:
        created = _millis(info.stx_btime.tv_sec, info.stx_btime.tv_nsec)
    modified = _millis(info.stx_mtime.tv_sec, info.stx_mtime.tv_nsec)
    return _metadata(info.stx_mode, False, info.stx_size, created, modified)


def _metadata(mode: int, is_symlink: bool, size: int, created: int, modified: int) -> dict:
    return {
        "isDirectory": stat.S_ISDIR(mode),
        "isFile": stat.S_ISREG(mode),
        "isSymlink": is_symlink,
        "size": size,
        "createdAtMs": created,
        "modifiedAtMs": modified,
    }


def read_directory(path: bytes) -> dict:
    entries = []
    count = 0
    with os.scandir(path) as listing:
        for entry in listing:
            try:
                if entry.is_symlink():
                    mode = os.stat(entry.path).st_mode
                    is_dir, is_file = stat.S_ISDIR(mode), stat.S_ISREG(mode)
                else:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue  # a broken link, or a type that cannot be learned
            count += 1
            if count <= MAX_DIRECTORY_ENTRIES:
                entries.append({
                    "fileName": entry.name.decode("utf-8", "replace"),
                    "isDirectory": is_dir,
                    "isFile": is_file,
                })
    if count > MAX_DIRECTORY_ENTRIES:
        raise rpc.internal_error(
            f"fs/readDirectory returned {count} entries; limit is {MAX_DIRECTORY_ENTRIES}"
        )
    return {"entries": entries}


def remove(path: bytes, recursive: bool, force: bool, follow: bool) -> dict:
    try:
        if follow:
            _remove_following(path, recursive)
        else:
            _remove_no_follow(path, recursive)
    except FileNotFoundError:
        if not force:
            raise
    return {}


def _remove_following(path: bytes, recursive: bool) -> None:
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        os.unlink(path)
    elif not recursive:
        os.rmdir(path)
    elif path == b"/":
        # Refused, as rmdir("/") is: removing everything is never meant.
        raise OSError(errno.EBUSY, "Resource busy")
    else:
        parent = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            shutil.rmtree(os.path.basename(path), dir_fd=parent)
        finally:
            os.close(parent)


def _remove_no_follow(path: bytes, recursive: bool) -> None:
    parent, name = _open_parent(path)
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            raise rpc.invalid_request(_SYMLINK_IN_PATH)
        if not stat.S_ISDIR(mode):
            os.unlink(name, dir_fd=parent)
        elif recursive:
            # Python's rmtree with a directory descriptor never follows a
            # link, so the tree is removed without leaving it.
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


_COPY_KINDS = "fs/copy only supports regular files, directories, and symlinks"


def copy(source: bytes, destination: bytes, recursive: bool) -> dict:
    mode = os.lstat(source).st_mode
    if stat.S_ISDIR(mode):
        if not recursive:
            raise rpc.invalid_request(
                "fs/copy requires recursive: true when sourcePath is a directory"
            )
        if _within(_resolve_existing(destination), _realpath(source)):
            raise rpc.invalid_request(
                "fs/copy cannot copy a directory to itself or one of its descendants"
            )
        _copy_tree(source, destination)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), destination)
    elif stat.S_ISREG(mode):
        _copy_file(source, destination)
    else:
        raise rpc.invalid_request(_COPY_KINDS)
    return {}


def _resolve_existing(path: bytes) -> bytes:
    """
    C{path} with its longest existing prefix canonicalized.
    """
    rest = []
    while True:
        try:
            resolved = _realpath(path)
            break
        except FileNotFoundError:
            path, name = os.path.split(path)
            rest.append(name)
    for name in reversed(rest):
        resolved = _join(resolved, name)
    return resolved


def _within(path: bytes, directory: bytes) -> bool:
    return path == directory or path.startswith(directory.rstrip(b"/") + b"/")


def _copy_tree(source: bytes, destination: bytes) -> None:
    """
    Copy a directory's contents into C{destination} (made if missing, merged
    if present): files with their modes, directories made afresh, symbolic
    links recreated with the same text; anything else is left out.
    """
    _create_dir_all(destination)
    stack = [(destination, os.scandir(source))]
    try:
        while stack:
            to_dir, listing = stack[-1]
            entry = next(listing, None)
            if entry is None:
                listing.close()
                stack.pop()
                continue
            from_path, to_path = entry.path, _join(to_dir, entry.name)
            if entry.is_dir(follow_symlinks=False):
                _create_dir_all(to_path)
                stack.append((to_path, os.scandir(from_path)))
            elif entry.is_symlink():
                os.symlink(os.readlink(from_path), to_path)
            elif entry.is_file(follow_symlinks=False):
                _copy_file(from_path, to_path)
    finally:
        for _, listing in stack:
            listing.close()


_COPY_TO_ITSELF = "fs/copy cannot copy a file to itself"


def _copy_file(source: bytes, destination: bytes) -> None:
    """
    Copy a regular file's bytes and mode bits, as Rust's C{fs::copy} does,
    except that the destination is never opened in a way that blocks and a
    file is never copied onto itself (which would empty it).
    """
    source_fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        source_info = os.fstat(source_fd)
        if not stat.S_ISREG(source_info.st_mode):
            raise rpc.invalid_request(_COPY_KINDS)
        mode = stat.S_IMODE(source_info.st_mode)
        target = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                         mode)
        try:
            target_info = os.fstat(target)
            regular = stat.S_ISREG(target_info.st_mode)
            if regular:
                if (target_info.st_dev, target_info.st_ino) == (source_info.st_dev, source_info.st_ino):
                    raise rpc.invalid_request(_COPY_TO_ITSELF)
                os.set_blocking(target, True)
                os.ftruncate(target, 0)
            elif not (stat.S_ISCHR(target_info.st_mode) or stat.S_ISBLK(target_info.st_mode)):
                raise rpc.invalid_request(_NOT_REGULAR)
            _copy_bytes(source_fd, target, regular)
            if regular:
                os.fchmod(target, mode)
        finally:
            os.close(target)
    finally:
        os.close(source_fd)


def _copy_bytes(source: int, target: int, regular: bool) -> None:
    if regular:
        try:
            while os.copy_file_range(source, target, MAX_BLOCK_BYTES * 64):
                pass
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
    while True:
        chunk = os.read(source, MAX_BLOCK_BYTES)
        if not chunk:
            return
        _write_all(target, chunk)


def canonicalize(path: bytes) -> dict:
    return {"path": paths.from_host_path(_realpath(path))}


def walk(root_uri: str, root: bytes, options: dict) -> dict:
    """
    List a tree breadth-first within limits, as the reference does: names
    sorted bytewise in each directory; symbolic links to files never listed,
    to directories listed and entered only when following them; every
    examined name counts toward C{maxEntries} (broken links are not
    examined); the answer stops growing at L{WALK_RESPONSE_BUDGET}.
    """
    follow = options["followDirectorySymlinks"]
    result = {"entries": [], "errors": [], "truncated": False}
    if not stat.S_ISDIR(os.stat(root).st_mode):
        return result
    if not follow and stat.S_ISLNK(os.lstat(root).st_mode):
        return result
    walker = _Walker(options, result)
    try:
        walker.run(root_uri, root)
    except _WalkFull:
        result["truncated"] = True
    return result


class _WalkFull(Exception):
    """
    The walk has examined as much as it may.
    """


class _Walker:
    def __init__(self, options: dict, result: dict) -> None:
        self.max_depth = options["maxDepth"]
        self.max_directories = options["maxDirectories"]
        self.max_entries = options["maxEntries"]
        self.follow = options["followDirectorySymlinks"]
        self.prune_hidden = options["pruneHiddenDirectories"]
        self.entries = result["entries"]
        self.errors = result["errors"]
        self.result = result
        self.examined = 0
        self.used = 0
        self.directories = 1
        self.visited: set[bytes] = set()
        self.queue: collections.deque = collections.deque()

    def run(self, root_uri: str, root: bytes) -> None:
        if self.follow:
            self.visited.add(_realpath(root))
        self.queue.append((root_uri, root, 0))
        while self.queue:
            uri, path, depth = self.queue.popleft()
            try:
                listing = _listing(path)
            except OSError as e:
                self._error(uri, e)
                continue
            self._walk_directory(uri, path, depth, listing)

    def _walk_directory(self, uri: str, path: bytes, depth: int, listing: list) -> None:
        base = uri[:-1] if uri.endswith("/") else uri
        prefix = path.rstrip(b"/") + b"/"
        # Once one entry of a directory could be stat'ed, the directory is
        # searchable and the types the listing gave are as good as a stat.
        types_known = False
        for name, entry, link_mode in listing:
            if self.examined >= self.max_entries:
                raise _WalkFull()
            self.examined += 1
            real_path = prefix + name
            segment = paths.literal_segment(name) if base != "file://" else None
            if segment is not None:
                child, child_path = base + "/" + segment, real_path
            else:
                child = paths.child_uri(uri, name)
                # For a name the URI cannot spell, the reference finds the
                # entry again through its URI, which names something else.
                child_path = real_path if paths.names_host_path(name) else paths.to_host_path(child)
            try:
                if child_path != real_path:
                    mode = os.stat(child_path).st_mode
                elif link_mode is not None:
                    mode = link_mode
                elif types_known:
                    mode = _DIRECTORY if entry.is_dir(follow_symlinks=False) else (
                        _FILE if entry.is_file(follow_symlinks=False) else 0)
                else:
                    mode = os.stat(real_path).st_mode
                    types_known = True
            except OSError as e:
                self._error(child, e)
                continue
            if link_mode is not None and not (self.follow and stat.S_ISDIR(mode)):
                continue
            if stat.S_ISDIR(mode):
                kind = "directory"
            elif stat.S_ISREG(mode):
                kind = "file"
            else:
                continue
            self._spend(len(child) + WALK_ITEM_COST)
            self.entries.append({"path": child, "kind": kind})
            if kind == "directory":
                self._enqueue(child, child_path, depth, name)

    def _enqueue(self, uri: str, path: bytes, depth: int, name: bytes) -> None:
        if depth >= self.max_depth or (self.prune_hidden and name.startswith(b".")):
            return
        if self.follow:
            try:
                identity = _realpath(path)
            except OSError:
                identity = path
            if identity in self.visited:
                return
        if self.directories >= self.max_directories:
            self.result["truncated"] = True
            return
        self.directories += 1
        if self.follow:
            self.visited.add(identity)
        self.queue.append((uri, path, depth + 1))

    def _error(self, uri: str, error: OSError) -> None:
        message = oserrors.describe(error)
        self._spend(len(uri) + len(message) + WALK_ITEM_COST)
        self.errors.append({"path": uri, "message": message})

    def _spend(self, cost: int) -> None:
        if self.used + cost > WALK_RESPONSE_BUDGET:
            raise _WalkFull()
        self.used += cost


_DIRECTORY = stat.S_IFDIR
_FILE = stat.S_IFREG


def _listing(path: bytes) -> list[tuple[bytes, os.DirEntry, int | None]]:
    """
    A directory's entries sorted by name, without broken symbolic links;
    each with its target's mode if it is a link.
    """
    listing = []
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                link_mode = entry.stat().st_mode if entry.is_symlink() else None
            except OSError:
                continue
            listing.append((entry.name, entry, link_mode))
    listing.sort(key=lambda item: item[0])
    return listing


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


def open_file(path: bytes, mode: str) -> int:
    if mode == "read":
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o666)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _not_a_file(path)
        os.set_blocking(fd, True)
        if mode == "replace":
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_block(fd: int, offset: int, length: int) -> rpc.RawJson:
    if offset > MAX_FILE_OFFSET:
        raise OSError(errno.EINVAL, "Invalid argument")
    chunks = []
    got = 0
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return rpc.RawJson(
        b'{"chunk":"', pybase64.b64encode(data), b'","eof":true}' if got < length else b'","eof":false}',
    )


def write_block(fd: int, offset: int, data: bytes) -> dict:
    _write_all(fd, data, offset)
    return {}


# Handlers (reactor thread)


def _blocking(connection: ServerConnection, function: Callable, *args) -> Deferred:
    return connection.server.run_blocking(_as_rpc_errors, function, *args)


def _as_rpc_errors(function: Callable, *args) -> Any:
    try:
        return function(*args)
    except OSError as e:
        raise oserrors.to_rpc_error(e) from None


def _at_path(connection: ServerConnection, p: dict, function: Callable, *args) -> Deferred:
    """
    Check the sandbox and the path, in the reference's order, then run
    C{function(path, *args)} in the thread pool.
    """
    restriction = sandbox.restriction(p["sandbox"])
    path = _host_path(p["path"])
    _enforce(restriction)
    return _blocking(connection, function, path, *args)


def handle_read_file(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, read_file, p["followSymlinks"] is not False)


def handle_write_file(connection: ServerConnection, p: dict) -> Deferred:
    try:
        data = P.decode_base64(p["dataBase64"])
    except P.DecodeError as e:
        raise rpc.invalid_request(f"fs/writeFile requires valid base64 dataBase64: {e}") from None
    return _at_path(connection, p, write_file, data, p["followSymlinks"] is not False)


def handle_create_directory(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, create_directory,
                    p["recursive"] is not False, p["followSymlinks"] is not False)


def handle_get_metadata(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, get_metadata, p["followSymlinks"] is not False)


def handle_read_directory(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, read_directory)


def handle_remove(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, remove, p["recursive"] is not False,
                    p["force"] is not False, p["followSymlinks"] is not False)


def handle_copy(connection: ServerConnection, p: dict) -> Deferred:
    restriction = sandbox.restriction(p["sandbox"])
    source = _host_path(p["sourcePath"])
    destination = _host_path(p["destinationPath"])
    _enforce(restriction)
    return _blocking(connection, copy, source, destination, p["recursive"])


def handle_canonicalize(connection: ServerConnection, p: dict) -> Deferred:
    return _at_path(connection, p, canonicalize)


def handle_walk(connection: ServerConnection, p: dict) -> Deferred:
    restriction = sandbox.restriction(p["sandbox"])
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
    _enforce(restriction)
    return _blocking(connection, walk, p["path"], root, options)


def handle_open(connection: ServerConnection, p: dict) -> Deferred:
    handle_id = p["handleId"]
    _check_handle_id(handle_id)
    handles = _handles(connection)
    if handle_id in handles.open or handle_id in handles.opening:
        raise rpc.invalid_request(f"file handle `{handle_id}` already exists")
    if handles.count() >= MAX_HANDLES:
        raise rpc.invalid_request(f"at most {MAX_HANDLES} file handles may be open per connection")
    restriction = sandbox.restriction(p["sandbox"])
    path = _host_path(p["path"])
    _enforce(restriction)
    handles.opening.add(handle_id)

    def opened(fd: int) -> dict:
        handles.opened(handle_id, fd)
        return {"handleId": handle_id}

    def failed(failure: Failure) -> Failure:
        handles.opening.discard(handle_id)
        return failure

    return _answer(_blocking(connection, open_file, path, p["mode"]).addCallbacks(opened, failed))


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
