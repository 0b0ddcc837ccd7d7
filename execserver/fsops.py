"""
The blocking file system operations behind the C{fs/*} methods, without
Twisted: the server runs them in its thread pool, and the sandboxed file
system helper (L{execserver.fshelper}) runs them inside a sandbox.

Each raises C{OSError} or an L{rpc.RpcError} with the reference's text.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import operator
import os
import shutil
import stat
from typing import Callable

from execserver import oserrors, paths, rpc

#: fs/readFile refuses files larger than this.
MAX_READ_FILE_BYTES = 512 * 1024 * 1024
#: fs/copy moves at most this much per read when it cannot copy in the kernel.
MAX_BLOCK_BYTES = 1024 * 1024
#: fs/readDirectory refuses directories with more entries than this.
MAX_DIRECTORY_ENTRIES = 50_000
#: fs/walk stops when its answer would cost more than this, counting each
#: entry as its URI plus WALK_ITEM_COST (and each error as its URI and
#: message plus WALK_ITEM_COST).
WALK_RESPONSE_BUDGET = 4 * 1024 * 1024
WALK_ITEM_COST = 64

#: What fs/readFile reads at a time once the announced size has been read
#: (files in /proc announce 0).
_READ_CHUNK = 64 * 1024


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


def _read_all(fd: int, size: int, total: int = 0) -> bytes:
    chunks = []
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


def _read_into(fd: int, buffer: bytearray) -> bytes | memoryview:
    """
    Read C{fd} to its end into C{buffer}: a view of what was read, or the
    bytes read when the file outgrew the buffer meanwhile.
    """
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        got = os.readv(fd, [view[filled:]])
        if not got:
            return view[:filled]
        filled += got
    return bytes(view) + _read_all(fd, 0, total=filled)


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
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


def read_file(path: bytes, follow: bool,
              buffer_for: Callable[[int], bytearray | None] | None = None) -> bytes | memoryview:
    """
    The contents of a regular file. C{buffer_for(size)} may lend a buffer
    of more than C{size} bytes to read into, to be used again later: the
    contents are then a view of it, good until it is returned.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags) if follow else _open_no_follow(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_a_file(path) if follow else rpc.invalid_request(_NOT_REGULAR)
        if info.st_size > MAX_READ_FILE_BYTES:
            raise _too_large()
        buffer = buffer_for(info.st_size) if buffer_for is not None else None
        data = _read_all(fd, info.st_size) if buffer is None else _read_into(fd, buffer)
    finally:
        os.close(fd)
    return data


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
        write_all(fd, data)
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
        write_all(target, chunk)


def canonicalize(path: bytes) -> dict:
    return {"path": paths.from_host_path(_realpath(path))}


def walk(root_uri: str, root: bytes, options: dict) -> dict:
    """
    List a tree breadth-first within limits, as the reference does: names
    sorted bytewise in each directory; symbolic links to files never listed,
    to directories listed and entered only when following them; every
    examined name counts toward C{maxEntries} (broken links are not
    examined); the answer stops growing at L{WALK_RESPONSE_BUDGET}.

    The entries come as two lists, C{paths} (URIs) and C{kinds}
    (C{"file"} or C{"directory"}): a dict or a tuple per entry would be
    tens of thousands of objects for the cycle collector, which then ran
    about ten times per walk, now and then a full pass over the server's
    heap (30 to 70 ms).
    """
    follow = options["followDirectorySymlinks"]
    result = {"paths": [], "kinds": [], "errors": [], "truncated": False}
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
        self.paths = result["paths"]
        self.kinds = result["kinds"]
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

    def _walk_directory(self, uri: str, path: bytes, depth: int, listing: list[os.DirEntry]) -> None:
        base = uri[:-1] if uri.endswith("/") else uri
        prefix = path.rstrip(b"/") + b"/"
        # Once one entry of a directory could be stat'ed, the directory is
        # searchable and the types the listing gave are as good as a stat.
        done = 0
        types_known = False
        while done < len(listing) and not types_known:
            types_known = self._examine(uri, base, prefix, depth, listing[done], False)
            done += 1
        if done < len(listing):
            done = self._walk_plain(uri, base, prefix, depth, listing, done)
        for entry in listing[done:]:
            self._examine(uri, base, prefix, depth, entry, True)

    def _examine(self, uri: str, base: str, prefix: bytes, depth: int, entry: os.DirEntry,
                 types_known: bool) -> bool:
        """
        Walk one entry of a directory; whether its types are now known.
        """
        try:
            link_mode = entry.stat().st_mode if entry.is_symlink() else None
        except OSError:
            return types_known  # a broken link
        if self.examined >= self.max_entries:
            raise _WalkFull()
        self.examined += 1
        name = entry.name
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
            return types_known
        if link_mode is not None and not (self.follow and stat.S_ISDIR(mode)):
            return types_known
        if stat.S_ISDIR(mode):
            kind = "directory"
        elif stat.S_ISREG(mode):
            kind = "file"
        else:
            return types_known
        self._spend(len(child) + WALK_ITEM_COST)
        self.paths.append(child)
        self.kinds.append(kind)
        if kind == "directory":
            self._enqueue(child, child_path, depth, name)
        return types_known

    def _walk_plain(self, uri: str, base: str, prefix: bytes, depth: int,
                    listing: list[os.DirEntry], start: int) -> int:
        """
        Walk the rest of a directory whose types are known from C{start}
        on, its plain files and directories without a call per entry for
        the limits and the URI; where it stopped. It stops at once when a
        name needs encoding or a limit could be reached in the directory,
        and wherever that becomes possible: L{_examine} walks what is left.
        """
        if base == "file://" or self.examined + len(listing) - start > self.max_entries:
            return start
        segments = paths.literal_segments([entry.name for entry in listing[start:]])
        if segments is None:
            return start
        child_prefix = base + "/"
        item_cost = len(child_prefix) + WALK_ITEM_COST
        names_left = sum(map(len, segments))
        if self.used + len(segments) * item_cost + names_left > WALK_RESPONSE_BUDGET:
            return start
        uris, kinds = self.paths, self.kinds
        run = 0  # where the current run of plain entries began
        listed = len(uris)  # the entries listed before it
        for entry, segment in zip(listing[start:], segments):
            try:
                if entry.is_file(follow_symlinks=False):
                    uris.append(child_prefix + segment)
                    kinds.append("file")
                    continue
                if entry.is_dir(follow_symlinks=False):
                    child = child_prefix + segment
                    uris.append(child)
                    kinds.append("directory")
                    self._enqueue(child, prefix + entry.name, depth, entry.name)
                    continue
            except OSError:
                pass
            # Anything else (a link, another type, an error) one by one; an
            # error costs more than its entry's share of the bound.
            index = run + len(uris) - listed
            names_left -= self._settle(segments[run:index], item_cost) + len(segment)
            self._examine(uri, base, prefix, depth, entry, True)
            run = index + 1
            listed = len(uris)
            if self.used + (len(segments) - run) * item_cost + names_left > WALK_RESPONSE_BUDGET:
                return start + run
        self._settle(segments[run:], item_cost)
        return len(listing)

    def _settle(self, run: list[str], item_cost: int) -> int:
        """
        Count a run of entries that L{_walk_plain} listed; the length of its
        names.
        """
        names = sum(map(len, run))
        self.examined += len(run)
        self.used += len(run) * item_cost + names
        return names

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
_NAME = operator.attrgetter("name")


def _listing(path: bytes) -> list[os.DirEntry]:
    """
    A directory's entries sorted by name.
    """
    with os.scandir(path) as entries:
        return sorted(entries, key=_NAME)


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
