"""
The harness side of the exec-server protocol: a Twisted client library
(L{ExecServerClient}) and the C{execserver-client} command line (L{cli}).

See C{docs/client.md} for usage, the recovery rules and the gap rule.
"""

from execserver.client.connectors import (
    IConnector,
    StdioConnector,
    WebSocketConnector,
)
from execserver.client.core import RECOVERY_SECONDS, REPLAY_POLICY, ExecServerClient
from execserver.client.errors import (
    ClientClosed,
    ClientError,
    ConnectFailed,
    HandleLost,
    OutcomeUnknown,
    OutputLost,
    ProcessLost,
    ProtocolViolation,
    RecoveryFailed,
    RemoteError,
    ServerGoingAway,
    StartNotApplied,
)
from execserver.client.fs import DirectoryEntry, FileHandle, Metadata
from execserver.client.http import BodyFailed, HttpResponse
from execserver.client.process import IProcessReceiver, OutputCollector, ProcessHandle

__all__ = [
    "BodyFailed", "ClientClosed", "ClientError", "ConnectFailed", "DirectoryEntry",
    "ExecServerClient", "FileHandle", "HandleLost", "HttpResponse", "IConnector",
    "IProcessReceiver", "Metadata", "OutcomeUnknown", "OutputCollector", "OutputLost",
    "ProcessHandle", "ProcessLost", "ProtocolViolation",
    "RECOVERY_SECONDS", "REPLAY_POLICY", "RecoveryFailed", "RemoteError", "ServerGoingAway",
    "StartNotApplied",
    "StdioConnector", "WebSocketConnector",
]
