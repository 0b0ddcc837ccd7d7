"""
What is random by nature in the tool outputs codex reports, replaced by
placeholders: the only place where outputs are made comparable.

    Chunk ID: 3f9a1c                      -> Chunk ID: <chunk>
    Wall time: 1.0013 seconds             -> Wall time: <wall>
    Process running with session ID 41263 -> ... session ID <session-0>
    /var/tmp/execserver-codex-ours-ws-x1/  -> <scratch>/

Sessions are numbered in order of appearance, so that an output that names
the session of an earlier call still says which one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.codex.scenario import ToolCall

_CHUNK_ID = re.compile(r"^Chunk ID: [0-9a-f]+$", re.MULTILINE)
_WALL_TIME = re.compile(r"^Wall time: [0-9.]+ seconds$", re.MULTILINE)
_SESSION_ID = re.compile(r"(session ID )(\d+)")


def as_text(output: Any) -> str:
    """
    A C{function_call_output}'s output as text: content items (an image) as
    JSON.
    """
    if isinstance(output, str):
        return output
    return json.dumps(output, sort_keys=True)


def normalize_outputs(outputs: dict[str, Any], calls: list[ToolCall], scratch: str) -> dict[str, str]:
    """
    The outputs of C{calls}, in call order, with the random parts replaced.
    """
    sessions: dict[str, str] = {}

    def session(match: re.Match) -> str:
        number = sessions.setdefault(match.group(2), f"<session-{len(sessions)}>")
        return match.group(1) + number

    normalized = {}
    for call in calls:
        if call.label not in outputs:
            continue
        text = as_text(outputs[call.label]).replace(scratch, "<scratch>")
        text = _CHUNK_ID.sub("Chunk ID: <chunk>", text)
        text = _WALL_TIME.sub("Wall time: <wall>", text)
        text = _SESSION_ID.sub(session, text)
        normalized[call.label] = text
    return normalized


def comparable(call: ToolCall, text: str) -> str:
    """
    What is compared of a normalized output: the output itself, or the
    sorted list of its words for a call whose output interleaves two
    streams (L{ToolCall.unordered}).
    """
    return " ".join(sorted(text.split())) if call.unordered else text
