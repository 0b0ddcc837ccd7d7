"""
Managed processes: one per client-chosen process id within a session.

Every event of a process (an output chunk, the exit, the close) takes the
next number of one per-process sequence starting at 1. The same numbered log
feeds both the C{process/*} notifications and C{process/read}, so a client
that missed notifications (a detached session, a reconnect) catches up by
reading from the last sequence number it saw.

The log keeps a replay window of the newest output. While nobody can be
reading it (the session is detached), it holds on to everything instead:
once the window is full we stop reading the child's output, so the child
waits on its pipe rather than the reconnecting client losing output (the
reference drops it). The hold ends when the client has read the process up
to its newest chunk, or L{CATCH_UP_SECONDS} after the session was resumed.

A client that acknowledges what it has received (our extension, see
L{execserver.extensions}) loses nothing on any path: its log never evicts
output that is not acknowledged, whether the session is attached or not,
and once L{MAX_UNACKNOWLEDGED_BYTES} of such output wait, so does the child.
What was in flight when a connection dropped (in socket buffers, in a
relay) is therefore always there to be read again.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import pybase64
from twisted.internet.defer import Deferred

from execserver import audit, memory, rpc, wirejson
from execserver.sandbox import denial
from execserver.spawn import Child, ChildSpec

if TYPE_CHECKING:
    from execserver.session import Session

#: The replay window of one process: oldest chunks are dropped beyond these.
MAX_RETAINED_BYTES = 1024 * 1024
MAX_RETAINED_CHUNKS = 50_000

#: A client that acknowledges output may have this much of it unacknowledged
#: before the child waits: room for what is in flight between two
#: acknowledgements, beyond the replay window that a resumed client reads.
MAX_UNACKNOWLEDGED_BYTES = 2 * MAX_RETAINED_BYTES
MAX_UNACKNOWLEDGED_CHUNKS = MAX_RETAINED_CHUNKS

#: A closed process stays readable this long, then its id is free again
#: (80 s in the reference binary, measured from process/closed).
CLOSED_RETENTION_SECONDS = 80.0

#: How many accepted write ids a process remembers, to drop retried writes.
REMEMBERED_WRITE_IDS = 4096

#: How long a resumed session's held output waits for the client to catch up.
CATCH_UP_SECONDS = 5.0


class OutputLog:
    """
    The sequence-numbered events of one process and its replay window.
    """

    def __init__(self) -> None:
        self.next_seq = 1
        self.exit_code: int | None = None
        self.closed = False
        self._seqs: list[int] = []
        #: Chunks from index C{_start} on are retained; the slots before it
        #: are evicted (None) until the lists are compacted.
        self._chunks: list[tuple[int, str, bytes] | None] = []
        #: How many bytes were recorded before each chunk (parallel to
        #: C{_chunks}): unacknowledged bytes are a subtraction away.
        self._offsets: list[int] = []
        self._recorded_bytes = 0
        self._start = 0
        self._retained_bytes = 0
        #: While set, nothing is evicted (see the module docstring).
        self.holding = False
        #: Set while the session's client acknowledges output: then only
        #: events up to C{acknowledged} may be evicted, and L{holding} is
        #: moot.
        self.acknowledging = False
        self.acknowledged = 0

    @property
    def exited(self) -> bool:
        return self.exit_code is not None

    @property
    def full(self) -> bool:
        return (
            self._retained_bytes >= MAX_RETAINED_BYTES
            or len(self._chunks) - self._start >= MAX_RETAINED_CHUNKS
        )

    @property
    def stalled(self) -> bool:
        """
        Whether reading the child must wait: the window is full of output
        that may not be evicted (held for a client that is away, or not
        acknowledged by a client that acknowledges).
        """
        if not self.acknowledging:
            return self.holding and self.full
        index = self._first_unacknowledged()
        if index == len(self._chunks):
            return False
        return (self._recorded_bytes - self._offsets[index] >= MAX_UNACKNOWLEDGED_BYTES
                or len(self._chunks) - index >= MAX_UNACKNOWLEDGED_CHUNKS)

    def _first_unacknowledged(self) -> int:
        return max(bisect.bisect_right(self._seqs, self.acknowledged), self._start)

    def set_acknowledging(self, acknowledging: bool) -> None:
        """
        Follow the connection that resumed the session: a client that does
        not acknowledge gets the ordinary replay window.
        """
        self.acknowledging = acknowledging
        self._evict()

    def acknowledge(self, seq: int) -> None:
        """
        The client has every event up to C{seq}; they may be evicted.
        """
        seq = min(seq, self.next_seq - 1)
        if seq > self.acknowledged:
            self.acknowledged = seq
            self._evict()

    @property
    def newest_seq(self) -> int:
        """
        The sequence number of the newest retained chunk, 0 if none.
        """
        return self._seqs[-1] if len(self._seqs) > self._start else 0

    def release(self) -> None:
        self.holding = False
        self._evict()

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    def record_output(self, stream: str, data: bytes) -> int:
        seq = self._take_seq()
        self._seqs.append(seq)
        self._chunks.append((seq, stream, data))
        self._offsets.append(self._recorded_bytes)
        self._recorded_bytes += len(data)
        self._retained_bytes += len(data)
        self._evict()
        return seq

    def record_exit(self, exit_code: int) -> int:
        self.exit_code = exit_code
        return self._take_seq()

    def record_close(self) -> int:
        self.closed = True
        return self._take_seq()

    def _evict(self) -> None:
        chunks = self._chunks
        if self.acknowledging:
            evictable = self._first_unacknowledged()
        elif self.holding:
            return
        else:
            evictable = len(chunks)
        while self._start < evictable and (
            self._retained_bytes > MAX_RETAINED_BYTES
            or len(chunks) - self._start > MAX_RETAINED_CHUNKS
        ):
            self._retained_bytes -= len(chunks[self._start][2])
            # Let go of the data now, not at the next compaction: the log
            # holds no more output than its window.
            chunks[self._start] = None
            self._start += 1
        if self._start > 1024 and self._start * 2 > len(chunks):
            del chunks[: self._start]
            del self._seqs[: self._start]
            del self._offsets[: self._start]
            self._start = 0

    def clear(self) -> None:
        """
        Let go of the retained output: nobody can read it any more. (A
        process and its session refer to each other; without this their
        output would wait for the cycle collector, which an idle server
        does not run.)
        """
        memory.released(self._retained_bytes)
        self._chunks = [None] * len(self._chunks)
        self._start = len(self._chunks)
        self._retained_bytes = 0

    def retained(self) -> list[tuple[str, bytes]]:
        """
        The (stream, data) of every retained chunk, oldest first.
        """
        return [(stream, data) for _, stream, data in self._chunks[self._start:]]

    def chunks_after(self, after_seq: int, max_bytes: int | None) -> list[tuple[int, str, bytes]]:
        """
        Retained chunks after C{after_seq}, within the byte budget: the first
        chunk always, later ones only while the total stays within it.
        """
        index = max(bisect.bisect_right(self._seqs, after_seq), self._start)
        if max_bytes is None:
            return self._chunks[index:]
        taken = []
        total = 0
        for chunk in self._chunks[index:]:
            if taken and total + len(chunk[2]) > max_bytes:
                break
            taken.append(chunk)
            total += len(chunk[2])
            if total >= max_bytes:
                break
        return taken


class WriteIds:
    """
    The last L{REMEMBERED_WRITE_IDS} accepted write ids, oldest forgotten first.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        # Made at the first write: most processes never get one, and a
        # closed process is kept for 80 s.
        self._ids: OrderedDict[str, None] | None = None

    def __contains__(self, write_id: str) -> bool:
        return self._ids is not None and write_id in self._ids

    def add(self, write_id: str) -> None:
        if self._ids is None:
            self._ids = OrderedDict()
        self._ids[write_id] = None
        if len(self._ids) > REMEMBERED_WRITE_IDS:
            self._ids.popitem(last=False)


def _output_notification(process_id_json: bytes, seq: int, stream: str,
                         data: bytes) -> tuple[bytes, bytes, bytes]:
    # The hot path of streaming: base64 needs no JSON escaping, so the
    # message is assembled without re-scanning the payload, and its parts
    # go to the transport unjoined (the WebSocket sends them vectored).
    return (
        b'{"method":"process/output","params":{"processId":%s,"seq":%d,"stream":"%s","chunk":"'
        % (process_id_json, seq, stream.encode("ascii")),
        pybase64.b64encode(data),
        b'"}}',
    )


class ManagedProcess:
    """
    A child process owned by a session, and the log of its events.
    """

    def __init__(self, session: "Session", process_id: str, spec: ChildSpec,
                 sandboxed: bool = False) -> None:
        self.session = session
        self.process_id = process_id
        self._process_id_json = wirejson.dumps(process_id)
        self.spec = spec
        self.log = OutputLog()
        self.log.acknowledging = session.acknowledging
        self.write_ids = WriteIds()
        self.child = Child(session.reactor, spec, self)
        self._waiters: list[Deferred] = []
        self._reading = True
        #: Set by process/terminate: stdin is gone for good.
        self.terminated = False
        #: Set by process/closeStdin: later writes report C{stdinClosed}.
        self.stdin_closed = False
        #: Whether a sandbox was asked for; then a failure may be judged a
        #: sandbox denial.
        self.sandboxed = sandboxed
        self.sandbox_denied = False

    def start(self) -> None:
        """
        @raise OSError: the program could not be started.
        """
        self.child.start()
        # process/closed goes out once what the child held is let go of:
        # the callbacks added to its end before this one.
        self.child.finished.addBoth(self._flush)
        guardian = self.session.registry.guardian
        if guardian is not None:
            pid = self.child.pid
            guardian.watch(pid)
            self.child.finished.addCallback(lambda _: guardian.forget(pid))
        self.update_reading()

    def update_reading(self) -> None:
        """
        Read the child's output unless the connection is backed up or the
        replay window is full of output that may not be evicted.
        """
        reading = not self.session.paused and not self.log.stalled
        if reading != self._reading:
            self._reading = reading
            if reading:
                self.child.resumeProducing()
            else:
                self.child.pauseProducing()

    def hold(self) -> None:
        self.log.holding = True
        self.update_reading()

    def release(self) -> None:
        if self.log.holding:
            self.log.release()
            self.update_reading()

    def acknowledge(self, seq: int) -> None:
        self.log.acknowledge(seq)
        self.update_reading()

    def set_acknowledging(self, acknowledging: bool) -> None:
        self.log.set_acknowledging(acknowledging)
        self.update_reading()

    # ChildHandler

    def childOutput(self, stream: str, data: bytes) -> None:
        seq = self.log.record_output(stream, data)
        self.session.deliver(_output_notification(self._process_id_json, seq, stream, data))
        if self.log.stalled:
            self.update_reading()
        self._wake()

    def childStreamEnded(self, stream: str) -> None:
        self._maybe_close()

    def childExited(self, exit_code: int) -> None:
        if self.sandboxed:
            self.sandbox_denied = denial.likely_denied(exit_code, self.log.retained())
        seq = self.log.record_exit(exit_code)
        self.session.deliver(
            b'{"method":"process/exited","params":{"processId":%s,"seq":%d,"exitCode":%d,'
            b'"sandboxDenied":%s}}'
            % (self._process_id_json, seq, exit_code, b"true" if self.sandbox_denied else b"false"))
        self._maybe_close()
        audit.record("process.exit", session=self.session.id, process=self.process_id,
                     exit_code=exit_code)

    def _maybe_close(self) -> None:
        """
        Record the close once the exit is known and every stream has ended,
        then wake readers: a long poll woken here sees the whole state.
        """
        if not self.log.closed and self.log.exited and not self.child.readers:
            seq = self.log.record_close()
            self.session.retain_closed(self)
            self.session.deliver(b'{"method":"process/closed","params":{"processId":%s,"seq":%d}}'
                                 % (self._process_id_json, seq))
        self._wake()

    def _flush(self, result: Any) -> Any:
        # process/closed, what a caller waits for, was delivered just
        # before the child's end: it goes now, not at the end of the
        # reactor's turn.
        self.session.flush()
        return result

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def changed(self) -> Deferred:
        """
        Fires at the next event of this process.
        """
        waiter = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(waiter)
        return waiter

    @property
    def running(self) -> bool:
        return not self.log.exited

    def snapshot(self, after_seq: int, max_bytes: int | None) -> dict[str, Any]:
        """
        The C{process/read} result for this moment. A client that has now
        been given everything retained has caught up: held output may go.
        """
        log = self.log
        chunks = log.chunks_after(after_seq, max_bytes)
        last_given = chunks[-1][0] if chunks else after_seq
        if log.holding and self.session.connection is not None and last_given >= log.newest_seq:
            self.release()
        if max_bytes is not None and chunks:
            next_seq = chunks[-1][0] + 1
        else:
            next_seq = log.next_seq
        return {
            "chunks": [
                {"seq": seq, "stream": stream, "chunk": pybase64.b64encode_as_string(data)}
                for seq, stream, data in chunks
            ],
            "nextSeq": next_seq,
            "exited": log.exited,
            "exitCode": log.exit_code,
            "closed": log.closed,
            "failure": None,
            "sandboxDenied": self.sandbox_denied,
        }

    def write(self, data: bytes, write_id: str) -> str:
        """
        Queue bytes for stdin, once per write id. After a natural exit the
        bytes are discarded but accepted, as in the reference; after
        process/terminate the write fails.
        """
        if not self.spec.tty and not self.spec.pipe_stdin:
            return "stdinClosed"
        if write_id in self.write_ids:
            return "accepted"
        if self.terminated:
            raise rpc.internal_error("failed to write to process stdin")
        if self.stdin_closed:
            return "stdinClosed"
        self.child.write(data)
        self.write_ids.add(write_id)
        return "accepted"

    def close_stdin(self) -> None:
        """
        End the child's stdin after the bytes already written (our
        extension, C{process/closeStdin}). Closing what is closed, or was
        never piped, succeeds: the request can be sent again safely.
        """
        if self.spec.tty:
            raise rpc.invalid_request(
                f"process {self.process_id} runs under a terminal: its stdin cannot be "
                "closed; write the terminal's end-of-file character (Ctrl-D) instead"
            )
        self.stdin_closed = True
        self.child.close_stdin()

    def terminate(self) -> bool:
        """
        Kill the process group and end its output streams.

        The reference leaves a group alone once its leader has exited, so a
        background job holding the output open can never be ended; we kill
        it too, so that terminate always leads to process/closed.

        @return: whether the leader was still running.
        """
        running = self.running
        if not self.log.closed:
            self.terminated = True
            self.child.kill()
        return running

    def discard(self) -> Deferred:
        """
        Forget the process (its session ended), killing it if it still runs.

        @return: fires once the child has been reaped and its streams have ended.
        """
        if self.running:
            self.child.kill()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return self.child.finished.addBoth(self._forgotten)

    def _forgotten(self, result: Any) -> Any:
        self.log.clear()
        return result

    def evicted(self) -> None:
        """
        The process left its session: its output can no longer be read.
        """
        self.log.clear()
