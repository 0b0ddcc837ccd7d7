"""
The audit trail: one structured log event for each thing an operator may
need to account for later, in the C{execserver.audit} namespace.

    connection.open / connection.close     connection, peer
    session.create / session.resume        session, connection
    session.detach / session.expire        session
    process.start                          session, process, argv0, cwd, tty, sandbox
    process.exit                           session, process, exit_code
    fs.write / fs.remove / fs.copy / fs.mkdir
                                           connection, path (and destination)

Every event carries its name in the C{audit} field. Never environment
values, file contents, headers or bodies: only what identifies the actor and
the object. With C{twistd --logger execserver.audit.json_observer} the whole
log is written as JSON lines (to the file named by C{$EXECSERVER_JSON_LOG},
or to stderr).

While an L{AuditBatches} service runs, events are handed to the log
observers in batches, at most L{BATCH_SECONDS} after they happened and
with the time they happened: an observer's work for one event (twistd's
text observer formats its time and text, and writes a line) cost the
server about 50 us of CPU when done as each event happens, between other
work, and about 15 us when done for many events in a row. A server core
records two events for every process it starts.
"""

from __future__ import annotations

import os
import sys
import time

from twisted.application import service
from twisted.logger import FileLogObserver, ILogObserver, Logger, LogLevel, eventAsJSON

log = Logger(namespace="execserver.audit")

#: The text of each event in ordinary (text) logs.
_FORMATS = {
    "connection.open": "connection {connection} opened from {peer}",
    "connection.close": "connection {connection} closed",
    "session.create": "session {session} created on connection {connection}",
    "session.resume": "session {session} resumed on connection {connection}",
    "session.detach": "session {session} detached",
    "session.expire": "session {session} expired",
    "process.start": "process {process!r} of session {session} started: {argv0!r} in {cwd!r}"
                     " (tty: {tty}, sandbox: {sandbox})",
    "process.exit": "process {process!r} of session {session} exited with {exit_code}",
    "fs.write": "connection {connection} wrote {path!r}",
    "fs.remove": "connection {connection} removed {path!r}",
    "fs.copy": "connection {connection} copied {path!r} to {destination!r}",
    "fs.mkdir": "connection {connection} created directory {path!r}",
}

#: Variable naming the file that json_observer writes to.
JSON_LOG_VARIABLE = "EXECSERVER_JSON_LOG"


#: The longest an event waits to be logged while batches are on.
BATCH_SECONDS = 0.1

#: The most events held: one more, and they are logged at once.
BATCH_EVENTS = 1000


def record(event: str, **fields) -> None:
    """
    Log one audit event (a name of L{_FORMATS}) with its fields: now, or
    with the current batch while an L{AuditBatches} runs. On the reactor
    thread only (the batch's timer is the reactor's).
    """
    _batches.hold(event, fields)


def _emit(when: float, event: str, fields: dict) -> None:
    """
    Hand one event that happened at C{when} to the log observers.

    The text is rendered here, by C{str.format}, and logged as a format
    with no fields left: Twisted's own rendering (C{string.Formatter}, in
    Python) took most of an event's cost. The fields stay in the event for
    structured observers.
    """
    text = _FORMATS[event].format_map(fields)
    log.observer(dict(
        fields, audit=event, log_logger=log, log_level=LogLevel.info,
        log_namespace=log.namespace, log_source=None,
        log_format=text.replace("{", "{{").replace("}", "}}"), log_time=when))


class _Batches:
    """
    The events held for the next batch, and when it is due (L{AuditBatches}
    turns it on and off).
    """

    def __init__(self) -> None:
        self._reactor = None
        self._held: list[tuple[float, str, dict]] = []
        self._due = None

    def hold(self, event: str, fields: dict) -> None:
        if self._reactor is None:
            _emit(time.time(), event, fields)
            return
        self._held.append((self._reactor.seconds(), event, fields))
        if len(self._held) >= BATCH_EVENTS:
            self.flush()
        elif self._due is None:
            self._due = self._reactor.callLater(BATCH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._due is not None and self._due.active():
            self._due.cancel()
        self._due = None
        held, self._held = self._held, []
        for when, event, fields in held:
            _emit(when, event, fields)

    def turn_on(self, reactor) -> None:
        self._reactor = reactor

    def turn_off(self) -> None:
        self.flush()
        self._reactor = None


_batches = _Batches()


class AuditBatches(service.Service):
    """
    While running, audit events are logged in batches (see the module
    docstring); when stopped, what is held is logged and events are logged
    as they happen again. Added before the services whose stopping records
    events (connections closing), so that it stops after them.
    """

    def __init__(self, reactor) -> None:
        self._reactor = reactor

    def startService(self) -> None:
        super().startService()
        _batches.turn_on(self._reactor)

    def stopService(self) -> None:
        super().stopService()
        _batches.turn_off()


def json_observer() -> ILogObserver:
    """
    For C{twistd --logger}: every log event (audit and other) as a JSON
    line.
    """
    path = os.environ.get(JSON_LOG_VARIABLE)
    out = open(path, "a", encoding="utf-8") if path else sys.stderr
    # One JSON object per line (Twisted's own JSON observer starts each
    # record with a record separator instead).
    return FileLogObserver(out, lambda event: eventAsJSON(event) + "\n")
