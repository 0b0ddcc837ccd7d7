"""
C{sandboxDenied}: the reference's guess whether a sandboxed process failed
because the sandbox refused it something. It is a heuristic on the exit
code and the output the process still retains, and we reproduce it as the
binary behaves, surprises included (a C{disabled} sandbox counts, and so
does any output that mentions the word "sandbox").
"""

from __future__ import annotations

import signal
from typing import Iterable

#: Words whose presence (any case) in a failed process's output counts as
#: a denial.
KEYWORDS = (
    "operation not permitted",
    "permission denied",
    "read-only file system",
    "seccomp",
    "sandbox",
    "landlock",
    "failed to write file",
)

#: Exit codes that, without a keyword, are the program's own failure
#: (shell misuse, not executable, not found).
QUICK_REJECT_EXIT_CODES = frozenset((2, 126, 127))

#: A child killed by the seccomp filter's SIGSYS.
SIGSYS_EXIT_CODE = 128 + signal.SIGSYS


def _mentions_keyword(data: bytes) -> bool:
    text = data.decode("utf-8", "replace").lower()
    return any(keyword in text for keyword in KEYWORDS)


def likely_denied(exit_code: int, chunks: Iterable[tuple[str, bytes]]) -> bool:
    """
    Whether a sandboxed process that exited with C{exit_code}, having
    C{chunks} (stream, data) of output retained, was probably denied by
    its sandbox. Each stream is searched, and so is all output in order.
    """
    if exit_code == 0:
        return False
    streams: dict[str, list[bytes]] = {}
    everything: list[bytes] = []
    for stream, data in chunks:
        streams.setdefault(stream, []).append(data)
        everything.append(data)
    sections = [b"".join(parts) for parts in streams.values()]
    if len(streams) > 1:
        sections.append(b"".join(everything))
    if any(_mentions_keyword(section) for section in sections):
        return True
    if exit_code in QUICK_REJECT_EXIT_CODES:
        return False
    return exit_code == SIGSYS_EXIT_CODE
