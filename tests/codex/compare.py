"""
Comparing what codex reported through our server with what it reported
through the reference, with the deliberate differences of
C{docs/compatibility.md} accepted explicitly, call by call.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from tests.codex.normalize import comparable
from tests.codex.runner import CodexRun


@dataclass(frozen=True)
class Difference:
    """
    A documented difference between the servers, as it shows in one output:
    where the reference's output matches C{reference} and ours matches
    C{ours}, both become C{placeholder}.

    @ivar doc: the entry of C{docs/compatibility.md} that explains it.
    """

    doc: str
    reference: re.Pattern
    ours: re.Pattern
    placeholder: str

    def accept(self, reference: str, ours: str) -> tuple[str, str]:
        if self.reference.search(reference) and self.ours.search(ours):
            return (self.reference.sub(self.placeholder, reference),
                    self.ours.sub(self.placeholder, ours))
        return reference, ours


#: docs/compatibility.md: "Signal deaths under a terminal report 128+N, as
#: in pipe mode. The reference reports exit code 1 for every signal death of
#: a PTY child."
PTY_SIGNAL_EXIT = Difference(
    doc="Signal deaths under a terminal report 128+N",
    reference=re.compile(r"^Process exited with code 1$", re.MULTILINE),
    ours=re.compile(r"^Process exited with code (129|1[3-5][0-9])$", re.MULTILINE),
    placeholder="Process exited with code <signal death under a terminal>",
)


#: docs/compatibility.md: "A terminal child's working directory must exist.
#: The reference silently runs a PTY child in the home directory when cwd
#: does not exist"; we refuse to start it, and codex reports the error.
PTY_MISSING_CWD = Difference(
    doc="A terminal child's working directory must exist",
    reference=re.compile(r"\AChunk ID: .*\nProcess exited with code 0\n.*\Z", re.DOTALL),
    ours=re.compile(r"\Aexec_command failed: .*No such file or directory \(os error 2\).*\Z",
                    re.DOTALL),
    placeholder="<a terminal in a missing directory>",
)


def differences(reference: CodexRun, ours: CodexRun) -> list[str]:
    """
    Every call whose output through our server differs from the reference's,
    as a unified diff, after the call's accepted differences.
    """
    found = []
    for call in reference.scenario.calls():
        expected = reference.normalized.get(call.label, "<no output>")
        actual = ours.normalized.get(call.label, "<no output>")
        for difference in call.accept:
            expected, actual = difference.accept(expected, actual)
        if comparable(call, expected) != comparable(call, actual):
            diff = "\n".join(difflib.unified_diff(
                expected.splitlines(), actual.splitlines(),
                f"{reference.target.name}", f"{ours.target.name}", lineterm=""))
            found.append(f"{call.label!r}:\n{diff}")
    return found
