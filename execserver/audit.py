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
"""

from __future__ import annotations

import os
import sys

from twisted.logger import FileLogObserver, ILogObserver, Logger, eventAsJSON

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


def record(event: str, **fields) -> None:
    """
    Log one audit event (a name of L{_FORMATS}) with its fields.

    The text is rendered here, by C{str.format}, and logged as a format
    with no fields left: Twisted's own rendering (C{string.Formatter}, in
    Python) took most of an event's cost, and the server records two for
    every process it starts. The fields stay in the event for structured
    observers.
    """
    text = _FORMATS[event].format_map(fields)
    log.info(text.replace("{", "{{").replace("}", "}}"), audit=event, **fields)


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
