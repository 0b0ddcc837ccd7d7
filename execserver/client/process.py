"""
Process handles: a started process's events, delivered in sequence order,
each exactly once.

Every event of a process (an output chunk, the exit, the close) carries the
next number of one per-process sequence. Notifications normally arrive in
that order, but not always as a whole: output can arrive before the
C{process/start} response, and after a reconnect the events produced while
the client was away are only readable through C{process/read}. The
L{Sequencer} merges both sources: it buffers what arrives early, drops what
was already delivered, and lets events through only when every smaller
sequence number has been accounted for.

The gap rule. A C{process/read} reply lists the retained output chunks after
the client's last delivered number C{d}, and C{nextSeq}, the process's next
number. Every number in C{d+1 .. nextSeq-1} is exactly one event. Those that
are neither in the reply nor already buffered can only be the exit, the
close, or output the server no longer retains. The exit and the close
happen at most once each, and the reply says whether they have happened
(C{exited}, C{closed}); the client knows whether it already saw them. So:

    unexplained = (numbers not seen) - (exit/close events that happened
                                        but were not seen)

If C{unexplained} is zero the unseen numbers are exactly the missed exit and
close, in that order (the close is always last), and the events are
delivered with those numbers. If it is positive, that much output fell out
of the server's replay window: the handle fails with L{OutputLost} and the
client's other processes are unaffected. A negative count contradicts the
protocol (L{ProtocolViolation}).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from execserver import rpc
from execserver.client.encoding import decode_base64
from execserver.client.errors import (
    ClientError,
    ConnectionDropped,
    OutputLost,
    ProcessLost,
    ProtocolViolation,
    RemoteError,
)

if TYPE_CHECKING:
    from execserver.client.core import ExecServerClient

log = Logger()

OUTPUT = "output"
EXITED = "exited"
CLOSED = "closed"

#: Handle states.
STARTING = "starting"
RUNNING = "running"
DONE = "closed"
FAILED = "failed"


class IProcessReceiver(Interface):
    """
    Receives one process's events, in sequence order, each exactly once.
    C{processClosed} or C{processFailed} comes last, and only one of them.
    """

    def attached(handle: "ProcessHandle") -> None:
        """
        Called once, before any event, with the handle; a receiver that
        cannot keep up pauses it (it is an L{IPushProducer}).
        """

    def outputReceived(stream: str, data: bytes) -> None:
        """
        A chunk of output; C{stream} is C{stdout}, C{stderr} or C{pty}.
        """

    def processExited(exit_code: int) -> None:
        """
        The process exited. More output may follow (from children that
        still hold the output open), then the close.
        """

    def processClosed() -> None:
        """
        The process exited and all its output has been delivered.
        """

    def processFailed(reason: Failure) -> None:
        """
        The handle cannot follow the process any more (the connection could
        not be recovered, its output fell out of the replay window...).
        """


@implementer(IProcessReceiver)
class OutputCollector:
    """
    Keeps everything in memory: the default receiver.
    """

    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []
        self.exit_code: int | None = None
        self.closed = False
        self.failure: Failure | None = None

    def attached(self, handle: "ProcessHandle") -> None:
        pass

    def output(self, stream: str | None = None) -> bytes:
        """
        All output so far, of one stream or of all of them.
        """
        return b"".join(data for name, data in self.chunks if stream in (None, name))

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.chunks.append((stream, data))

    def processExited(self, exit_code: int) -> None:
        self.exit_code = exit_code

    def processClosed(self) -> None:
        self.closed = True

    def processFailed(self, reason: Failure) -> None:
        self.failure = reason


class Observer:
    """
    A result that many may wait for: each C{wait()} gets its own Deferred, so
    a failure nobody waits for is not reported as unhandled.
    """

    def __init__(self) -> None:
        self._result: Any = None
        self._done = False
        self._waiters: list[Deferred] = []

    @property
    def done(self) -> bool:
        return self._done

    def wait(self) -> Deferred:
        if self._done:
            if isinstance(self._result, Failure):
                return fail(self._result)
            return succeed(self._result)
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter

    def fire(self, result: Any) -> None:
        if self._done:
            return
        self._done = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


class Sequencer:
    """
    One process's events in sequence order, each let through once (the gap
    rule is in the module docstring).

    Events are tuples: C{(OUTPUT, stream, data)} (the decoded bytes),
    C{(EXITED, exit_code, sandbox_denied)}, C{(CLOSED,)}.

    @ivar delivered: every event up to this number has been let through.
    """

    def __init__(self) -> None:
        self.delivered = 0
        self._pending: dict[int, tuple] = {}
        self.exit_seen = False
        self.close_seen = False

    @property
    def gap(self) -> bool:
        """
        Events are buffered behind one that has not arrived.
        """
        return bool(self._pending) and (self.delivered + 1) not in self._pending

    def accept(self, seq: int, event: tuple) -> list[tuple]:
        """
        Take one event; return those that can now be delivered, in order.
        """
        if seq == self.delivered + 1 and not self._pending:
            self.delivered = seq
            self._note(event)
            return [event]
        if seq <= self.delivered or seq in self._pending:
            return []
        self._pending[seq] = event
        self._note(event)
        return self._take()

    def _note(self, event: tuple) -> None:
        kind = event[0]
        if kind is EXITED:
            self.exit_seen = True
        elif kind is CLOSED:
            self.close_seen = True

    def _take(self) -> list[tuple]:
        ready = []
        pending = self._pending
        seq = self.delivered + 1
        while seq in pending:
            ready.append(pending.pop(seq))
            seq += 1
        self.delivered = seq - 1
        return ready

    def apply_read(self, process_id: str, result: dict) -> list[tuple]:
        """
        Merge a C{process/read} reply (read without C{maxBytes}, after some
        number not above L{delivered}); return the events that can now be
        delivered.

        @raise OutputLost: output this client never received is gone.
        @raise ProtocolViolation: the reply cannot be reconciled.
        """
        first = self.delivered + 1
        next_seq = result["nextSeq"]
        pending = self._pending
        for chunk in result["chunks"]:
            seq = chunk["seq"]
            if seq >= first and seq not in pending:
                pending[seq] = (OUTPUT, chunk["stream"], decode_base64(chunk["chunk"]))
        known = sum(1 for seq in pending if first <= seq < next_seq)
        unseen = max(0, next_seq - first) - known
        missing_exit = bool(result["exited"]) and not self.exit_seen
        missing_close = bool(result["closed"]) and not self.close_seen
        expected = missing_exit + missing_close
        if unseen > expected:
            first_missing = first
            while first_missing in pending:
                first_missing += 1
            raise OutputLost(process_id, first_missing, unseen - expected)
        if unseen < expected:
            raise ProtocolViolation(
                f"process/read of {process_id} reports an exit or close that has no "
                f"sequence number between {first} and {next_seq - 1}"
            )
        if expected:
            slots = [seq for seq in range(first, next_seq) if seq not in pending]
            if missing_exit:
                pending[slots.pop(0)] = (EXITED, result["exitCode"], bool(result.get("sandboxDenied")))
                self.exit_seen = True
            if missing_close:
                pending[slots.pop(0)] = (CLOSED,)
                self.close_seen = True
        return self._take()


@implementer(IPushProducer)
class ProcessHandle:
    """
    A process started through an L{ExecServerClient}.

    Events go to C{receiver} (an L{IProcessReceiver}; by default an
    L{OutputCollector}, available as C{handle.receiver}). A receiver that
    cannot keep up calls L{pauseProducing}: the client then stops reading
    from the server, which in turn stops reading the process's output.
    """

    def __init__(self, client: "ExecServerClient", process_id: str, receiver=None) -> None:
        self._client = client
        self.process_id = process_id
        self.receiver = receiver if receiver is not None else OutputCollector()
        self.state = STARTING
        self.exit_code: int | None = None
        self.sandbox_denied = False
        #: From the process/start reply; None if the server did not say.
        self.sandbox_type: str | None = None
        self.failure: Failure | None = None
        self._sequencer = Sequencer()
        self._ready: deque[tuple] = deque()
        self._paused = False
        self._delivering = False
        self._catching_up = False
        #: Arrived since the last acknowledgement: bytes (roughly, from
        #: the base64 length) and events.
        self._unacked_bytes = 0
        self._unacked_events = 0
        self._exited = Observer()
        self._closed = Observer()
        self.receiver.attached(self)

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.process_id!r} {self.state}>"

    @property
    def delivered_seq(self) -> int:
        """
        Every event up to this sequence number has been delivered, or is
        queued for a paused receiver.
        """
        return self._sequencer.delivered

    def when_exited(self) -> Deferred:
        """
        Fires with the exit code when the exit is delivered.
        """
        return self._exited.wait()

    def when_closed(self) -> Deferred:
        """
        Fires with the exit code once everything has been delivered.
        """
        return self._closed.wait()

    # Requests

    def write(self, data: bytes) -> Deferred:
        """
        Write to the process's stdin, once, even across reconnects.

        @return: fires with the server's status (C{accepted},
            C{stdinClosed}, C{unknownProcess}, C{starting}).
        """
        return self._client.write_process(self.process_id, data)

    def close_stdin(self) -> Deferred:
        """
        End the process's stdin after the writes made before (our server's
        C{process/closeStdin}); safe to repeat.

        @return: fires with None, or fails with L{RemoteError} -32601 from
            a server that cannot close a process's stdin (the reference).
        """
        return self._client.close_process_stdin(self.process_id)

    def signal(self, signal: str = "interrupt") -> Deferred:
        return self._client.signal_process(self.process_id, signal)

    def terminate(self) -> Deferred:
        """
        @return: fires with whether the process was still running.
        """
        return self._client.terminate_process(self.process_id)

    # IPushProducer

    def pauseProducing(self) -> None:
        if not self._paused and self.state in (STARTING, RUNNING):
            self._paused = True
            self._client._pause_reading(self)

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._client._resume_reading(self)
            self._flush()

    def stopProducing(self) -> None:
        self.resumeProducing()

    # Driven by the client

    def _event(self, seq: int, event: tuple) -> None:
        if self.state is DONE or self.state is FAILED:
            return
        ready = self._sequencer.accept(seq, event)
        if ready:
            self._arrived(ready)
            self._ready.extend(ready)
            self._flush()
        if self._sequencer.gap:
            self.catch_up()

    def _started(self, result: dict) -> None:
        if self.state is STARTING:
            self.state = RUNNING
        self.sandbox_type = result.get("sandboxType")
        if self._sequencer.gap:
            self.catch_up()

    def catch_up(self) -> None:
        """
        Read what was missed: everything after the last delivered event, in
        one C{process/read} without C{maxBytes} (so that a server holding a
        detached session's output knows it has been read).
        """
        if self._catching_up or self.state is not RUNNING:
            return
        self._catching_up = True
        # afterSeq acknowledges what was delivered.
        self._unacked_bytes = self._unacked_events = 0
        reading = self._client._internal_request(
            "process/read", {"processId": self.process_id, "afterSeq": self._sequencer.delivered}
        )
        reading.addCallbacks(self._read_done, self._read_failed)

    def _read_done(self, result: dict) -> None:
        self._catching_up = False
        self._apply_read(result)

    def _apply_read(self, result: dict) -> None:
        if self.state is DONE or self.state is FAILED:
            return
        try:
            ready = self._sequencer.apply_read(self.process_id, result)
        except ClientError as e:
            self._fail(e)
            return
        if ready:
            self._arrived(ready)
            self._ready.extend(ready)
            self._flush()
        if self._sequencer.gap:
            self.catch_up()

    def _arrived(self, events: list[tuple]) -> None:
        """
        Count what arrived, and acknowledge it when it is enough.
        """
        every = self._client.ack_every
        if every is None:
            return
        self._unacked_events += len(events)
        for event in events:
            if event[0] is OUTPUT:
                self._unacked_bytes += len(event[2])
        if self._unacked_bytes >= every[0] or self._unacked_events >= every[1]:
            self._unacked_bytes = self._unacked_events = 0
            self._client._acknowledge(self.process_id, self._sequencer.delivered)

    def _read_failed(self, reason: Failure) -> None:
        self._catching_up = False
        if reason.check(ConnectionDropped):
            # The client catches every process up again once it has resumed.
            return
        self._fail(self._read_error(reason))

    def _read_error(self, reason: Failure) -> Exception:
        error = reason.value
        if isinstance(error, RemoteError) and error.code == rpc.INVALID_REQUEST:
            return ProcessLost(
                f"the server no longer knows process {self.process_id}: {error.message}"
            )
        return error

    def _start_failed(self, reason: Failure) -> None:
        self._fail(reason.value)

    def _flush(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            ready = self._ready
            while ready and not self._paused and self.state is not FAILED:
                self._dispatch(ready.popleft())
        finally:
            self._delivering = False

    def _dispatch(self, event: tuple) -> None:
        kind = event[0]
        receiver = self.receiver
        try:
            if kind is OUTPUT:
                receiver.outputReceived(event[1], event[2])
            elif kind is EXITED:
                self.exit_code = event[1]
                self.sandbox_denied = event[2]
                receiver.processExited(event[1])
                self._exited.fire(event[1])
            else:
                self._finish()
                receiver.processClosed()
                self._closed.fire(self.exit_code)
        except Exception:
            log.failure("receiver of process {process_id} failed", process_id=self.process_id)

    def _finish(self) -> None:
        self.state = DONE
        self._unpause()
        self._client._forget(self)

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._client._resume_reading(self)

    def _fail(self, error: Exception) -> None:
        if self.state is DONE or self.state is FAILED:
            return
        self.state = FAILED
        self.failure = Failure(error)
        self._ready.clear()
        self._unpause()
        self._client._forget(self)
        try:
            self.receiver.processFailed(self.failure)
        except Exception:
            log.failure("receiver of process {process_id} failed", process_id=self.process_id)
        self._exited.fire(self.failure)
        self._closed.fire(self.failure)
