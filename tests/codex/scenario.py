"""
Scenarios: which tools the scripted model makes codex call, turn by turn.

A scenario is a list of turns; each turn is the tool calls of one model
response (codex may run the calls of one turn concurrently, so calls whose
order matters go in separate turns). After the last turn the model ends the
conversation with a message. Every call has a label, which is also its
C{call_id}: codex's answer to it, the C{function_call_output}, is recorded
under that label.

An argument may be a L{SessionOf}: the model fills in the session id that
codex reported for an earlier call, which is how C{write_stdin} reaches a
process that C{exec_command} left running.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from tests.codex.compare import Difference


@dataclass(frozen=True)
class SessionOf:
    """
    The unified-exec session id that codex reported for the call C{label}.
    """

    label: str


#: How codex tells the model that a process is still running.
_SESSION_ID = re.compile(r"Process running with session ID (\d+)")


class MissingSession(LookupError):
    """
    A call refers to a session that the referred call's output does not name.
    """


@dataclass(frozen=True)
class ToolCall:
    """
    One C{function_call} the model makes.

    @ivar expect: substrings that the normalized output must contain on every
        server; they keep a scenario from passing when every server fails
        alike (say, codex could not reach any of them).
    @ivar unordered: the output interleaves stdout and stderr. Codex merges
        the two in the order it receives them, and which of two pipes that
        both have data is read first is a race in both servers, so the
        outputs are compared as sorted lists of words (L{expect} is still
        looked for in the output as it came): not of lines, as a
        line can be cut in two by the other stream (C{touch} writes
        C{"touch: "} and its message in two writes; the reference once
        delivered C{"touch: rc=1"} and the message on a line of its own).
    @ivar accept: the documented differences between our server and the
        reference that this output shows.
    """

    label: str
    name: str
    arguments: Mapping[str, Any]
    expect: tuple[str, ...] = ()
    unordered: bool = False
    accept: tuple["Difference", ...] = ()

    def item(self, outputs: Mapping[str, Any]) -> dict:
        """
        The C{function_call} output item, with sessions filled in from the
        C{outputs} recorded so far.
        """
        arguments = {key: self._resolve(value, outputs) for key, value in self.arguments.items()}
        return {
            "type": "function_call",
            "id": f"fc_{self.label}",
            "call_id": self.label,
            "name": self.name,
            "arguments": json.dumps(arguments),
        }

    @staticmethod
    def _resolve(value: Any, outputs: Mapping[str, Any]) -> Any:
        if not isinstance(value, SessionOf):
            return value
        match = _SESSION_ID.search(str(outputs.get(value.label, "")))
        if match is None:
            raise MissingSession(f"no session in the output of {value.label!r}")
        return int(match.group(1))


@dataclass(frozen=True)
class Scenario:
    """
    The turns of one codex run, and the files its working directory starts
    with (paths relative to it).
    """

    name: str
    turns: tuple[tuple[ToolCall, ...], ...]
    files: Mapping[str, bytes] = field(default_factory=dict)
    prompt: str = "Run the scripted tool calls."

    def calls(self) -> list[ToolCall]:
        return [call for turn in self.turns for call in turn]

    def call(self, label: str) -> ToolCall:
        for call in self.calls():
            if call.label == label:
                return call
        raise KeyError(label)


def exec_command(label: str, cmd: str, *, expect=(), unordered: bool = False, accept=(),
                 **arguments: Any) -> ToolCall:
    """
    C{exec_command}: codex runs C{cmd} with the user's shell, C{bash -lc}
    (C{bash -c} with C{login=False}), on pipes unless C{tty=True}.
    """
    return ToolCall(label, "exec_command", {"cmd": cmd, **arguments},
                    tuple(expect), unordered, tuple(accept))


def write_stdin(label: str, session: str, chars: str, *, expect=(), accept=(),
                **arguments: Any) -> ToolCall:
    """
    C{write_stdin} to the process that the call C{session} left running.
    """
    return ToolCall(label, "write_stdin",
                    {"session_id": SessionOf(session), "chars": chars, **arguments},
                    tuple(expect), accept=tuple(accept))


def apply_patch(label: str, patch: str, *, expect=()) -> ToolCall:
    """
    A patch, sent as models send it: an C{exec_command} of an C{apply_patch}
    heredoc, which codex applies itself through the exec-server's C{fs/*}.
    """
    command = f"apply_patch <<'PATCH'\n*** Begin Patch\n{patch}*** End Patch\nPATCH\n"
    return ToolCall(label, "exec_command", {"cmd": command}, tuple(expect))


def view_image(label: str, path: str, *, expect=()) -> ToolCall:
    return ToolCall(label, "view_image", {"path": path}, tuple(expect))
