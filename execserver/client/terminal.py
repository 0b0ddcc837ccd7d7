"""
Our own stdin, stdout, stderr and terminal, as the command line uses them.

L{OutputWriter} writes process output straight to a file descriptor while
it accepts data, with no buffering or copying on the way, and queues only
what the descriptor refuses. While too much is queued it pauses its
producer (the process handle), which stops the client reading from the
server: a slow reader of our stdout slows the remote process down instead
of filling our memory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import termios
import tty
from collections import deque
from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReadDescriptor, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

#: Queued bytes above which the writer pauses its producer...
HIGH_WATER_BYTES = 512 * 1024
#: ...and below which it resumes it.
LOW_WATER_BYTES = 128 * 1024

#: Bytes asked for per read of our stdin.
READ_BYTES = 64 * 1024


class _NonBlocking:
    """
    Sets O_NONBLOCK on a descriptor and puts the old flags back on restore:
    the descriptor may be shared with the shell that started us.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)

    def restore(self) -> None:
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)
        except OSError:
            pass


#: The pipe buffer we ask for when our output is a pipe: a stream of
#: megabytes a second through the default 64 KiB would cost a context switch
#: per 64 KiB on both sides.
PIPE_BUFFER_BYTES = 1024 * 1024


def _widen_pipe(fd: int) -> None:
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
    except OSError:
        # Not ours to insist: a smaller limit (pipe-max-size) just means
        # more switches.
        pass


@implementer(IWriteDescriptor, IConsumer)
class OutputWriter:
    """
    Writes to a file descriptor without blocking the reactor.

    @ivar error: set when the descriptor failed (e.g. EPIPE); later writes
        are dropped.
    """

    def __init__(self, reactor, fd: int, on_error: Callable[[OSError], None] | None = None) -> None:
        self.reactor = reactor
        self.fd = fd
        _widen_pipe(fd)
        self._mode = _NonBlocking(fd)
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._writing = False
        self._producer = None
        self._producer_paused = False
        self._drained: list[Deferred] = []
        self._on_error = on_error
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        if not self._queue:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError as e:
                self._failed(e)
                return
            if written == len(data):
                return
            view = memoryview(data)[written:]
        else:
            view = memoryview(data)
        self._queue.append(view)
        self._queued += len(view)
        if not self._writing:
            self._writing = True
            self.reactor.addWriter(self)
        if self._queued > HIGH_WATER_BYTES and self._producer is not None and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()

    def drained(self) -> Deferred:
        """
        Fires once everything written so far has reached the descriptor (or
        it failed).
        """
        if not self._queue or self.error is not None:
            return succeed(None)
        waiter = Deferred()
        self._drained.append(waiter)
        return waiter

    def room(self) -> Deferred | None:
        """
        None while the queue is short, else a Deferred that fires once it
        has drained: for writers that pull (file streaming).
        """
        if self._queued > HIGH_WATER_BYTES:
            return self.drained()
        return None

    def restore(self) -> None:
        """
        Give the descriptor its original blocking mode back.
        """
        self._mode.restore()

    # IConsumer

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self._producer = producer
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self._producer = None

    # IWriteDescriptor

    def doWrite(self) -> None:
        queue = self._queue
        while queue:
            view = queue[0]
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                break
            except OSError as e:
                self._failed(e)
                return
            self._queued -= written
            if written < len(view):
                queue[0] = view[written:]
                break
            queue.popleft()
        if not queue:
            self._stop_writing()
            self._fire_drained()
        if self._producer_paused and self._queued < LOW_WATER_BYTES:
            self._producer_paused = False
            if self._producer is not None:
                self._producer.resumeProducing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def _fire_drained(self) -> None:
        waiters, self._drained = self._drained, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, error: OSError) -> None:
        self.error = error
        self._queue.clear()
        self._queued = 0
        self._stop_writing()
        self._fire_drained()
        if self._producer_paused and self._producer is not None:
            self._producer_paused = False
            self._producer.resumeProducing()
        if self._on_error is not None:
            self._on_error(error)

    def fileno(self) -> int:
        return self.fd

    def connectionLost(self, reason: Failure) -> None:
        self._failed(OSError(errno.EPIPE, str(reason.value)))

    def logPrefix(self) -> str:
        return f"fd-{self.fd}"


@implementer(IReadDescriptor, IPushProducer)
class InputReader:
    """
    Reads a file descriptor (our stdin) and hands each piece on; pausing it
    stops reading.
    """

    def __init__(self, reactor, fd: int, on_data: Callable[[bytes], None],
                 on_end: Callable[[], None]) -> None:
        self.reactor = reactor
        self.fd = fd
        self._mode = _NonBlocking(fd)
        self._on_data = on_data
        self._on_end = on_end
        self._reading = False
        self._paused = False
        self.ended = False

    def start(self) -> None:
        self._update()

    def restore(self) -> None:
        self.stop()
        self._mode.restore()

    def stop(self) -> None:
        self.ended = True
        self._update()

    def _update(self) -> None:
        reading = not self._paused and not self.ended
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.reactor.addReader(self)
            else:
                self.reactor.removeReader(self)

    def pauseProducing(self) -> None:
        self._paused = True
        self._update()

    def resumeProducing(self) -> None:
        self._paused = False
        self._update()

    def stopProducing(self) -> None:
        self.stop()

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            self._on_end()
            return
        self._on_data(data)

    def fileno(self) -> int:
        return self.fd

    def connectionLost(self, reason: Failure) -> None:
        if not self.ended:
            self.stop()
            self._on_end()

    def logPrefix(self) -> str:
        return f"fd-{self.fd}"


class RawTerminal:
    """
    Puts a terminal in raw mode (every key, Ctrl-C included, goes to the
    remote terminal) and restores it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setraw(fd)

    def restore(self) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        except termios.error:
            pass
