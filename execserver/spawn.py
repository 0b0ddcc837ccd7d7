"""
Child processes on the reactor: spawn, stream output, feed stdin, reap.

Each child runs in a new session (so its whole process group can be
signalled) with either three pipes or a pseudo-terminal. The exit is
observed through a pidfd, which becomes readable exactly when the child
exits and lets us reap it without SIGCHLD handlers or races with other
reapers. Pipe-mode children are started with C{subprocess}'s C{vfork} path,
which is much cheaper than forking a large Python process; PTY children need
a controlling terminal, which only code running in the child can set up (as
do pipe children that must not inherit a signal the server ignores).

Children are started by the C function that C{subprocess.Popen} calls
(L{_fork_exec}), without a C{Popen} around it (whose set-up in Python cost
about 20 us per start), and reaped through their pidfd.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import signal
import struct
import subprocess
import termios
import _posixsubprocess
import _signal
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.internet import abstract, error, main
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet
from twisted.python.failure import Failure

#: Bytes asked for per read of a child's output. Each read becomes one
#: process/output notification: near 128 KiB of base64, a message is still
#: cheap for every client to frame and parse. Just under 96 KiB, so that
#: the base64 string (with Python's header) stays under the allocator's
#: mmap threshold (L{execserver.memory.MMAP_THRESHOLD_BYTES}) and comes from
#: the heap, reused, instead of as fresh pages: 32 page faults and an
#: mmap/munmap pair less per chunk.
READ_SIZE = 96 * 1024 - 48

#: What one wake-up of a reader takes at most, in reads of L{READ_SIZE}: a
#: fast writer then costs one pass of the reactor per batch, not per read.
READ_BATCH_BYTES = 1024 * 1024

#: Linux's default pipe buffer: a read this large found the pipe full.
DEFAULT_PIPE_BYTES = 64 * 1024

#: The kernel buffer a pipe gets once its child has filled the default one
#: (F_SETPIPE_SZ): the writer keeps going while we are busy elsewhere, and
#: each wake-up finds a batch. Only busy writers get it, since every user's
#: pipe buffers count against a limit.
BUSY_PIPE_BYTES = 1024 * 1024

#: Window size of a new PTY, as the reference sets it.
PTY_ROWS = 24
PTY_COLUMNS = 80

#: How long a terminal is still read after its session leader exited: the
#: kernel moves what the child wrote to our side of the terminal in the
#: background. A background job that keeps the terminal open is cut off
#: then, so the terminal ends with its session (as in the reference).
PTY_LINGER_SECONDS = 0.2

#: Signals a pipe child gets back with their default action when the server
#: itself was started with them ignored (as C{nohup} or a shell's C{&} start
#: it). The reference handles these itself, and exec resets handled signals.
PIPE_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)

#: The same under a terminal, where the reference resets these in the child,
#: so that Ctrl-C and a hangup reach the program.
PTY_DEFAULT_SIGNALS = (
    signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGALRM,
)


@dataclass(frozen=True)
class ChildSpec:
    executable: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    pipe_stdin: bool
    #: Descriptors the child inherits (a sandbox's filter and data).
    pass_fds: tuple[int, ...] = ()
    #: Runs in the child just before exec (a sandbox's seccomp filter).
    before_exec: Callable[[], None] | None = None


class ChildHandler(Protocol):
    def childOutput(self, stream: str, data: bytes) -> None: ...

    def childStreamEnded(self, stream: str) -> None: ...

    def childExited(self, exit_code: int) -> None: ...


def _exit_code(status: os.waitid_result) -> int:
    """
    A reaped child's exit code; one killed by signal N reports 128 + N, as
    a shell would.
    """
    if status.si_code == os.CLD_EXITED:
        return status.si_status
    return 128 + status.si_status


def _reap(pidfd: int) -> os.waitid_result | None:
    """
    Reap the child of C{pidfd} if it has exited; None while it runs.
    """
    return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)


def _fork_exec(spec: ChildSpec, stdin: int, stdout: int, stderr: int, preexec_fn) -> int:
    """
    Start C{spec} in a new session with the given descriptors as its
    standard streams, as C{subprocess.Popen} would with C{close_fds},
    C{start_new_session} and C{restore_signals}: its pid.

    @raise OSError: the program could not be started (the child's error).
    @raise subprocess.SubprocessError: C{preexec_fn} failed.
    """
    executable = os.fsencode(spec.executable)
    if os.path.dirname(executable):
        executables = (executable,)
    else:
        executables = tuple(os.path.join(os.fsencode(directory), executable)
                            for directory in os.get_exec_path(spec.env))
    env = [os.fsencode(key) + b"=" + os.fsencode(value) for key, value in spec.env.items()]
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _posixsubprocess.fork_exec(
                spec.argv, executables, True, tuple(sorted((*spec.pass_fds, error_write))),
                spec.cwd, env, stdin, -1, -1, stdout, -1, stderr, error_read, error_write,
                True, True, -1, None, None, None, -1, preexec_fn, True)
        finally:
            os.close(error_write)
        # The child's end closes when it execs; before that, it writes what
        # failed ("OSError:<errno in hex>:..." or a preexec_fn's), in parts.
        report = b""
        while part := os.read(error_read, 50000):
            report += part
    finally:
        os.close(error_read)
    if not report:
        return pid
    os.waitpid(pid, 0)
    kind, number, message = report.split(b":", 2)
    if kind == b"OSError":
        number = int(number, 16)
        raise OSError(number, os.strerror(number))
    raise subprocess.SubprocessError(message.decode(errors="replace"))


def _ignored(signals: tuple[signal.Signals, ...]) -> tuple[signal.Signals, ...]:
    """
    Those of C{signals} this server ignores, and so its children would too.
    """
    # signal.getsignal's answer, without its conversion to an enum member
    # (a few microseconds per signal, on every start).
    return tuple(signum for signum in signals if _signal.getsignal(signum) == signal.SIG_IGN)


@functools.cache
def _dev_null() -> int:
    """
    A descriptor of /dev/null for children's stdin, opened once: children
    only ever read it.
    """
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def _defaults_restorer(signals: tuple[signal.Signals, ...]):
    """
    Code for the child, before exec, that gives C{signals} their default
    action; None when none of them is ignored, so that the child can be
    started with the cheaper vfork.
    """
    if not signals:
        return None

    def restore() -> None:
        for signum in signals:
            signal.signal(signum, signal.SIG_DFL)

    return restore


def _start_terminal_session() -> None:
    for signum in PTY_DEFAULT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _in_child(*steps: Callable[[], None] | None) -> Callable[[], None] | None:
    """
    One C{preexec_fn} running C{steps} in order, or None when there are
    none (so the cheap vfork path stays in use).
    """
    steps = tuple(step for step in steps if step is not None)
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def run() -> None:
        for step in steps:
            step()

    return run


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


class _OutputReader(abstract.FileDescriptor):
    """
    Reads one output stream of a child until EOF.
    """

    #: Whether the descriptor is a pipe that may be given L{BUSY_PIPE_BYTES}.
    grows = True

    def __init__(self, reactor, fd: int, stream: str, child: "Child") -> None:
        super().__init__(reactor)
        self.connected = 1
        self.fd = fd
        self.stream = stream
        self.child = child
        #: Set once we know the stream is over (end of file, an error, or
        #: we ended it); a loss reported otherwise is checked first.
        self.over = False

    def fileno(self) -> int:
        return self.fd

    def doRead(self):
        budget = READ_BATCH_BYTES
        while budget > 0:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return None
            except OSError as e:
                self.over = True
                # A PTY master reports EIO once every slave side is closed.
                if e.errno == errno.EIO:
                    return main.CONNECTION_DONE
                return e
            if not data:
                self.over = True
                return main.CONNECTION_DONE
            self.child.handler.childOutput(self.stream, data)
            if len(data) < DEFAULT_PIPE_BYTES or self.fd < 0 or self.child._paused:
                # Drained (or ended, or paused by what we delivered).
                return None
            if self.grows:
                self.grows = False
                _grow_pipe(self.fd)
            budget -= len(data)
        return None

    def drain(self) -> bool:
        """
        Read whatever is buffered now, without waiting; True at EOF.
        """
        while self.fd >= 0:
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.child.handler.childOutput(self.stream, data)
        return True

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if not self.over and self.fd >= 0 and not self.drain():
            # The reactor dropped us over a hang-up that was not ours (an
            # event for an earlier holder of this descriptor number): the
            # stream is still open. Closing it would hang up a terminal.
            self.disconnected = 0
            self.connected = 1
            self.child._resumeAfterSpuriousLoss(self)
            return
        self.over = True
        self.child._readerLost(self)


def _grow_pipe(fd: int) -> None:
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, BUSY_PIPE_BYTES)
    except OSError:
        # Over the user's limit of pipe buffers (or above the system's
        # largest pipe): the default buffer still works.
        pass


def _close_later(reactor, fd: int, then=None) -> None:
    """
    Close a descriptor that was registered with the reactor once the current
    poll batch is handled, then call C{then}. Closed at once, its number
    could go to a new descriptor (a new child's pipe or pidfd, a new
    connection) that would then receive the events this batch still holds
    for the old one.
    """

    def close() -> None:
        os.close(fd)
        if then is not None:
            then()

    reactor.callLater(0, close)


def _end(reader: "_OutputReader") -> None:
    reader.over = True
    reader.stopReading()
    reader.connectionLost(Failure(main.CONNECTION_DONE))


def _write_some(fd: int, data: bytes):
    """
    FileDescriptor.writeSomeData for a non-blocking descriptor: the bytes
    written, or the error that ends the writer.
    """
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as e:
        return e


class _InputWriter(abstract.FileDescriptor):
    """
    Writes to a child's stdin; bytes are queued and written in order.
    """

    def __init__(self, reactor, fd: int) -> None:
        super().__init__(reactor)
        self.connected = 1
        self.fd = fd
        #: Set when we drop it ourselves (L{abort}).
        self.aborted = False

    def fileno(self) -> int:
        return self.fd

    def writeSomeData(self, data: bytes):
        # Errors (the child closed its stdin or died) end the writer; the
        # reference ignores errors writing to the pipe.
        return _write_some(self.fd, data)

    def abort(self) -> None:
        """
        Close at once, dropping what is still queued: nobody will read it.
        """
        if not self.disconnected:
            self.aborted = True
            self.stopWriting()
            self.connectionLost(Failure(main.CONNECTION_LOST))

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if (reason.check(error.ConnectionLost) and not self.aborted
                and self.fd >= 0 and not _hung_up(self.fd)):
            # The reactor dropped us over a hang-up that was not ours (an
            # event for an earlier holder of this descriptor number): the
            # child's stdin is still open.
            self.disconnected = 0
            self.connected = 1
            self.startWriting()
            return
        # Unwritten bytes are never written now; a child that never read
        # them must not keep them in memory.
        self.dataBuffer = b""
        self._tempDataBuffer = []
        self._tempDataLen = 0
        if self.fd >= 0:
            _close_later(self.reactor, self.fd)
            self.fd = -1


def _hung_up(fd: int) -> bool:
    """
    Whether the other end of a pipe or terminal is gone, asked of the
    kernel rather than believed from an event.
    """
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP | select.POLLNVAL)
               for _, events in poller.poll(0))


class _PtyMaster(_OutputReader):
    """
    The master side of a PTY carries output and input on one descriptor.
    """

    grows = False

    def writeSomeData(self, data: bytes):
        return _write_some(self.fd, data)


class _ExitWatcher(abstract.FileDescriptor):
    """
    Becomes readable when the child exits.

    The reactor may hand it an event that was meant for an earlier holder
    of its descriptor number, or drop it over one; neither may lose the
    exit, so the child's state is checked rather than the event believed.
    """

    def __init__(self, reactor, pidfd: int, child: "Child") -> None:
        super().__init__(reactor)
        self.connected = 1
        self.pidfd = pidfd
        self.child = child

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self):
        if self.pidfd >= 0:
            self._check()
        return None

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self.pidfd >= 0 and not self._check():
            self.disconnected = 0
            self.startReading()

    def _check(self) -> bool:
        """
        Reap the child and report its exit if it has exited.
        """
        status = _reap(self.pidfd)
        if status is None:
            return False
        self._close()
        self.child._exited(_exit_code(status))
        return True

    def stop(self) -> os.waitid_result | None:
        """
        Stop watching; the child's status if it could be reaped now.
        """
        try:
            return _reap(self.pidfd)
        finally:
            self._close()

    def _close(self) -> None:
        self.stopReading()
        pidfd, self.pidfd = self.pidfd, -1
        # Its own event is being handled (or none is wanted any more): no
        # other event for this number can be pending, so it may be closed
        # at once.
        os.close(pidfd)


class Child:
    """
    A running child: its pid, its output readers, its stdin, and its exit.
    """

    def __init__(self, reactor: IReactorFDSet, spec: ChildSpec, handler: ChildHandler):
        self.reactor = reactor
        self.spec = spec
        self.handler = handler
        self.readers: list[_OutputReader] = []
        self.stdin: abstract.FileDescriptor | None = None
        self.pid = -1
        #: Known once the child has been reaped.
        self.exit_code: int | None = None
        #: Fires with the exit code once the child has been reaped and every
        #: stream of it has ended (its descriptor closed).
        self.finished: Deferred = Deferred()
        self._watcher: _ExitWatcher | None = None
        self._paused = False
        #: A terminal whose slave sides are all closed, kept open until the
        #: session leader has exited (L{_readerLost}).
        self._hung_up_terminal: _PtyMaster | None = None
        self._linger = None

    def start(self) -> None:
        """
        @raise OSError: the child could not be started.
        """
        if self.spec.tty:
            self._start_pty()
        else:
            self._start_pipes()
        self._watcher = _ExitWatcher(self.reactor, os.pidfd_open(self.pid), self)
        self._watcher.startReading()
        for reader in self.readers:
            reader.startReading()

    def _spawn(self, stdin: int, stdout: int, stderr: int, setup=None) -> None:
        spec = self.spec
        self.pid = _fork_exec(spec, stdin, stdout, stderr, _in_child(setup, spec.before_exec))

    def _start_pipes(self) -> None:
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        if self.spec.pipe_stdin:
            in_read, in_write = os.pipe2(os.O_CLOEXEC)
        else:
            in_read, in_write = _dev_null(), -1
        try:
            self._spawn(in_read, out_write, err_write,
                        setup=_defaults_restorer(_ignored(PIPE_DEFAULT_SIGNALS)))
        except BaseException:
            for fd in (out_read, err_read, in_write):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            os.close(out_write)
            os.close(err_write)
            if in_write >= 0:
                # The stdin pipe's read end; the shared /dev/null stays open.
                os.close(in_read)
        for fd in (out_read, err_read):
            _set_nonblocking(fd)
        self.readers = [
            _OutputReader(self.reactor, out_read, "stdout", self),
            _OutputReader(self.reactor, err_read, "stderr", self),
        ]
        if in_write >= 0:
            _set_nonblocking(in_write)
            self.stdin = _InputWriter(self.reactor, in_write)

    def _start_pty(self) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", PTY_ROWS, PTY_COLUMNS, 0, 0))
        os.set_inheritable(master, False)
        try:
            self._spawn(slave, slave, slave, setup=_start_terminal_session)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        _set_nonblocking(master)
        pty = _PtyMaster(self.reactor, master, "pty", self)
        self.readers = [pty]
        self.stdin = pty

    def write(self, data: bytes) -> bool:
        """
        Queue bytes for the child's stdin; False if there is no stdin.
        """
        if self.stdin is None or self.stdin.disconnected:
            return False
        if self.stdin.disconnecting and not self.spec.tty:
            return False
        self.stdin.write(data)
        return True

    def close_stdin(self) -> None:
        """
        End the child's stdin (a pipe) once the queued bytes are written.
        """
        if isinstance(self.stdin, _InputWriter):
            self.stdin.loseConnection()

    def _abort_stdin(self) -> None:
        if isinstance(self.stdin, _InputWriter):
            self.stdin.abort()

    def signal_group(self, signum: int) -> None:
        """
        Signal the child's whole process group.

        @raise OSError: if the group cannot be signalled.
        """
        os.killpg(self.pid, signum)

    def kill(self) -> None:
        """
        SIGKILL the process group and stop reading its output: the streams end
        even if a stray descendant outside the group still holds them open.
        """
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._abort_stdin()
        for reader in list(self.readers):
            reader.drain()
            _end(reader)

    def abandon(self) -> None:
        """
        Stop waiting for a child whose exit was never observed: reap it if it
        is a zombie, and stop watching it.
        """
        if self.finished.called or self._watcher.pidfd < 0:
            return
        status = self._watcher.stop()
        if status is not None:
            self.exit_code = _exit_code(status)

    def pauseProducing(self) -> None:
        self._paused = True
        for reader in self.readers:
            reader.stopReading()

    def resumeProducing(self) -> None:
        self._paused = False
        for reader in self.readers:
            if reader.fd >= 0:
                reader.startReading()

    def _resumeAfterSpuriousLoss(self, reader: _OutputReader) -> None:
        if not self._paused:
            reader.startReading()
        if isinstance(reader, _PtyMaster):
            # It may have terminal input queued (nothing to write stops it).
            reader.startWriting()

    def _readerLost(self, reader: _OutputReader) -> None:
        if reader not in self.readers or reader.fd < 0:
            return
        if isinstance(reader, _PtyMaster):
            self.stdin = None
            if self.exit_code is None:
                # Every slave side is closed, but the session leader has
                # not exited yet (it closes its descriptors first): closing
                # the master now would hang up its terminal and kill it with
                # SIGHUP. The master is closed once the leader has exited.
                self._hung_up_terminal = reader
                return
            if self._linger is not None and self._linger.active():
                self._linger.cancel()
            self._linger = None
        fd, reader.fd = reader.fd, -1
        # The stream ends once its descriptor is closed, so that whoever
        # learns of the end (process/closed) finds nothing left open.
        _close_later(self.reactor, fd, lambda: self._streamEnded(reader))

    def _streamEnded(self, reader: _OutputReader) -> None:
        self.readers.remove(reader)
        self.handler.childStreamEnded(reader.stream)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.exit_code is not None and not self.readers and not self.finished.called:
            # A finished child stays known for a while (80 s once closed):
            # it keeps its pid and exit code, not the bulk of how it ran.
            self._watcher = None
            self.finished.callback(self.exit_code)

    def _exited(self, exit_code: int) -> None:
        self.exit_code = exit_code
        # Output written before the exit is recorded before the exit; pipes
        # end when every holder is gone, a terminal soon after its leader.
        for reader in list(self.readers):
            if reader.drain():
                _end(reader)
        if self._hung_up_terminal is not None:
            terminal, self._hung_up_terminal = self._hung_up_terminal, None
            self._readerLost(terminal)
        if self.spec.tty and any(reader.fd >= 0 for reader in self.readers):
            self._linger = self.reactor.callLater(PTY_LINGER_SECONDS, self._end_terminal)
        # Later writes are accepted and dropped (as in the reference); what
        # is still queued goes the same way instead of waiting for a reader
        # that may never come.
        self._abort_stdin()
        self.handler.childExited(self.exit_code)
        self._maybe_finish()

    def _end_terminal(self) -> None:
        self._linger = None
        for reader in list(self.readers):
            reader.drain()
            _end(reader)
