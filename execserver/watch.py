"""
C{fs/watchMissing} and its C{fs/missingChanged} notification: tell a client,
once, that paths it found missing may have appeared.

The rules are the reference's (docs/reference/methods.md):

 - A connection has at most one watch. A request with a C{watchId} above
   every id the connection used before ends the current watch and tries to
   start a new one; any other request is answered C{watching: false} and
   changes nothing.
 - Every directory from C{/} down to each missing path's deepest existing
   ancestor is watched with inotify (not recursively), and so are the
   ancestors of C{present}, an existing path whose changes count too. The
   watch fires on any change (not an open, read or close) that names one
   of those directories, a missing path, an ancestor of one, or
   C{present}; and on any change of the mount table.
 - It cannot start (C{watching: false}) when there is nothing missing, a
   missing path exists, C{present} does not exist or is a symbolic link,
   an ancestor is not a directory or lies on a file system inotify does not
   serve reliably, or a limit is exceeded.
 - It fires once, then ends; it also ends with its connection.
"""

from __future__ import annotations

import ctypes
import os
import select
import stat
import struct
from typing import Any

from twisted.internet import inotify
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from execserver import params as P
from execserver import paths, sandbox
from execserver.server import Method, ServerConnection

log = Logger()

FAMILY = "filesystem"
NOTIFICATION = "fs/missingChanged"

#: At most this many missing paths per watch.
MAX_MISSING_PATHS = 64
#: At most this many directories watched per watch.
MAX_WATCHED_DIRECTORIES = 64
#: Paths deeper than this many components are not watched.
MAX_PATH_COMPONENTS = 64
#: The file systems (statfs magic numbers) whose directories are watched:
#: ext2/3/4, tmpfs, overlayfs, xfs and btrfs.
WATCHABLE_FILE_SYSTEMS = frozenset({0xEF53, 0x01021994, 0x794C7630, 0x58465342, 0x9123683E})
#: Its readers are told (EPOLLPRI) when a mount or unmount happens.
MOUNT_TABLE = b"/proc/self/mounts"

#: The changes that count; opens, reads and closes do not.
_CHANGES = (inotify.IN_MODIFY | inotify.IN_ATTRIB | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO
            | inotify.IN_CREATE | inotify.IN_DELETE | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF)

WatchMissingParams = P.Struct("FsWatchMissingParams", [
    P.Field("watchId", P.Int("u64")),
    P.Field("missing", P.Seq(sandbox.PathUri)),
    P.Field("present", P.Optional(sandbox.PathUri)),
])


class Unwatchable(Exception):
    """
    The paths cannot be watched as asked; the answer is C{watching: false}.
    """


_libc = ctypes.CDLL(None, use_errno=True)
_STATFS_SIZE = 256


def file_system_type(path: bytes) -> int:
    """
    The statfs magic number of the file system C{path} is on.

    @raise OSError: as statfs fails.
    """
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(path, buffer) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    # f_type is the first member, a native long.
    return struct.unpack_from("=q", buffer.raw)[0] & 0xFFFFFFFF


@implementer(IReadDescriptor)
class MountChanges:
    """
    Readable once the mount table changes: an epoll instance that waits for
    the mount table's priority event, polled by the reactor.
    """

    def __init__(self, changed) -> None:
        self.changed = changed
        self._table = os.open(MOUNT_TABLE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._epoll = select.epoll()
            self._epoll.register(self._table, select.EPOLLPRI | select.EPOLLERR)
        except BaseException:
            os.close(self._table)
            raise

    def fileno(self) -> int:
        return self._epoll.fileno()

    def doRead(self) -> None:
        # The reactor's own check of the epoll instance consumed the event:
        # being readable at all means the table changed.
        self._epoll.poll(0)
        self.changed()

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "MountChanges"

    def close(self) -> None:
        if self._table >= 0:
            self._epoll.close()
            os.close(self._table)
            self._table = -1


class MissingWatch:
    """
    One armed watch: the inotify instance on its directories, the mount
    table, and the paths whose changes fire it.
    """

    def __init__(self, reactor, fire) -> None:
        self.reactor = reactor
        self.fire = fire
        self.interesting: set[bytes] = set()
        self.directories: dict[bytes, None] = {}
        self.notifier: inotify.INotify | None = None
        self.mounts: MountChanges | None = None
        self.reading = False
        self.stopped = False

    # Arming runs in the thread pool: nothing here touches the reactor.

    def arm(self, missing: list[bytes], present: bytes | None) -> None:
        """
        Watch every directory on the way to C{missing} and C{present}, then
        check that the missing paths are still missing: a path that appears
        meanwhile is either found here or reported by a watch.

        @raise Unwatchable: if the paths cannot be watched as asked.
        """
        try:
            self.notifier = inotify.INotify(self.reactor)
        except inotify.INotifyError as e:
            raise Unwatchable(f"no inotify instance: {e}") from None
        try:
            self.mounts = MountChanges(self._changed)
        except OSError as e:
            log.info("mount changes unavailable for missing-path watch: {error}", error=e)
        for path in missing:
            self._watch_ancestors(path)
            if _lstat(path) is not None:
                raise Unwatchable("a missing path exists")
            self.interesting.add(path)
        if present is not None:
            self._watch_ancestors(present)
            status = _lstat(present)
            if status is None or stat.S_ISLNK(status.st_mode):
                raise Unwatchable("the present path is missing or a symbolic link")
            self.interesting.add(present)

    def _watch_ancestors(self, path: bytes) -> None:
        parts = path.split(b"/")[1:] if path != b"/" else []
        if len(parts) > MAX_PATH_COMPONENTS:
            raise Unwatchable("the path is too deep")
        ancestors = [b"/"] + [b"/" + b"/".join(parts[:end]) for end in range(1, len(parts))]
        self.interesting.update(ancestors)
        for directory in ancestors:
            if directory in self.directories:
                continue
            status = _lstat(directory)
            if status is None:
                return
            if not stat.S_ISDIR(status.st_mode):
                raise Unwatchable("an ancestor is not a directory")
            try:
                kind = file_system_type(directory)
            except OSError as e:
                raise Unwatchable(f"statfs failed: {e}") from None
            if kind not in WATCHABLE_FILE_SYSTEMS:
                raise Unwatchable(f"file system {kind:#x} is not watched")
            if len(self.directories) >= MAX_WATCHED_DIRECTORIES:
                raise Unwatchable("too many directories")
            try:
                self.notifier.watch(FilePath(directory), _CHANGES, callbacks=[self._event])
            except inotify.INotifyError as e:
                raise Unwatchable(f"inotify_add_watch failed: {e}") from None
            self.directories[directory] = None

    # The rest runs on the reactor thread.

    def start(self) -> None:
        self.reading = True
        self.notifier.startReading()
        if self.mounts is not None:
            self.reactor.addReader(self.mounts)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.mounts is not None:
            if self.reading:
                self.reactor.removeReader(self.mounts)
            self.mounts.close()
        if self.notifier is not None:
            self.notifier.loseConnection()

    def _event(self, ignored: Any, filepath: FilePath, mask: int) -> None:
        if mask & ~inotify.IN_IGNORED and filepath.path in self.interesting:
            self._changed()

    def _changed(self) -> None:
        if not self.stopped:
            self.stop()
            self.fire()


def _lstat(path: bytes) -> os.stat_result | None:
    """
    The path's own status, or C{None} if it does not exist.

    @raise Unwatchable: if it cannot be told.
    """
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unwatchable(f"lstat failed: {e}") from None


class ConnectionWatches:
    """
    A connection's current watch and the highest watch id it has used.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.current: MissingWatch | None = None
        self.ended = False

    def supersede(self, watch_id: int) -> bool:
        """
        Whether C{watch_id} may replace the current watch; if so, the
        current one ends.
        """
        if watch_id <= self.generation:
            return False
        self.generation = watch_id
        self.cancel()
        return True

    def cancel(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None

    def end(self) -> None:
        self.ended = True
        self.cancel()


def _watches(connection: ServerConnection) -> ConnectionWatches:
    watches = connection.resources.get(__name__)
    if watches is None:
        watches = connection.resources[__name__] = ConnectionWatches()
        connection.onClose(watches.end)
    return watches


def _host_paths(p: dict) -> tuple[list[bytes], bytes | None]:
    try:
        missing = [paths.to_host_path(uri) for uri in p["missing"]]
        present = None if p["present"] is None else paths.to_host_path(p["present"])
    except paths.ForeignPathError:
        raise Unwatchable("a path is not on this host") from None
    return missing, present


def watch_missing(connection: ServerConnection, p: dict) -> Any:
    watches = _watches(connection)
    watch_id = p["watchId"]
    if not watches.supersede(watch_id):
        return {"watching": False}
    try:
        if not p["missing"] or len(p["missing"]) > MAX_MISSING_PATHS:
            raise Unwatchable("no missing paths, or too many")
        missing, present = _host_paths(p)
    except Unwatchable as e:
        log.debug("fs/watchMissing {watchId} not watching: {reason}", watchId=watch_id, reason=e)
        return {"watching": False}
    watch = MissingWatch(connection.reactor,
                         lambda: connection.notify(NOTIFICATION, {"watchId": watch_id}))
    answer: Deferred = Deferred()

    def armed(result: Any) -> None:
        if isinstance(result, Failure):
            watch.stop()
            if not result.check(Unwatchable):
                log.failure("fs/watchMissing {watchId} failed", result, watchId=watch_id)
            watching = False
        elif watches.ended or watches.generation != watch_id:
            # The connection ended, or a later request took over, meanwhile.
            watch.stop()
            watching = False
        else:
            watch.start()
            watches.current = watch
            watching = True
        if not answer.called:
            answer.callback({"watching": watching})

    # The armed watch is kept or stopped even if the answer is cancelled.
    connection.server.run_blocking(watch.arm, missing, present).addBoth(armed)
    return answer


METHODS = {
    "fs/watchMissing": Method(FAMILY, WatchMissingParams, watch_missing),
}
