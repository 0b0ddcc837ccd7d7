"""
The suite's scenarios: what a coding agent does with its tools, grouped so
that one codex run covers one area.
"""

from __future__ import annotations

import struct
import zlib

from tests.codex.compare import PTY_MISSING_CWD, PTY_SIGNAL_EXIT
from tests.codex.scenario import Scenario, apply_patch, exec_command, view_image, write_stdin


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """
    A PNG of one colour, so the suite needs no image files.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))


COMMANDS = Scenario(
    name="commands",
    files={"sub/file.txt": b"in sub\n"},
    turns=(
        (
            exec_command("stdout", "printf 'one\\ntwo\\n'", expect=["exited with code 0", "one\ntwo"]),
            exec_command("stderr", "echo problem >&2; exit 3", expect=["exited with code 3", "problem"]),
            exec_command("both streams", "echo out; echo err >&2; exit 1", unordered=True,
                         expect=["exited with code 1", "out", "err"]),
            exec_command("not found", "no-such-command-e2e", expect=["exited with code 127"]),
            exec_command("killed", "kill -TERM $$", expect=["exited with code 143"]),
            exec_command("workdir", "pwd; cat file.txt", workdir="sub", expect=["<scratch>/work/sub"]),
            exec_command("missing workdir", "pwd", workdir="/nonexistent-e2e"),
            exec_command("no login shell", "echo $0; shopt -q login_shell || echo not login",
                         login=False, expect=["not login"]),
            exec_command("stdin is empty", "cat; echo end", expect=["end"]),
            exec_command("invalid utf-8", "printf 'a\\377\\376b\\n'"),
            exec_command("unicode", "echo héllo; printf 'x\\n' > 'sp ace ü.txt'; ls",
                         expect=["héllo", "sp ace ü.txt"]),
            exec_command("background job", "(sleep 1; echo job) & echo leader", login=False,
                         expect=["leader\njob"]),
            exec_command("other shell", "echo $0", shell="/bin/sh"),
        ),
        # Large, but within the reference's 1 MiB replay window: beyond it,
        # the reference drops output when codex reads slower than the
        # command writes (a loaded machine), and the counts would differ
        # by chance (ours keeps it all; docs/compatibility.md).
        (
            exec_command("large", "seq 1 150000", max_output_tokens=300,
                         expect=["truncated output", "\n149999\n"]),
            exec_command("long line", "head -c 1000000 /dev/zero | tr '\\0' x; echo end",
                         max_output_tokens=300, expect=["xxxx", "end"]),
        ),
    ),
)


#: How long codex waits for output of a process that keeps running. Output
#: the process writes at once must be in by then, even on a loaded machine;
#: the commands that depend on it run without a login shell, whose start-up
#: files alone can take a third of a second.
YIELD_MS = 1500

TERMINAL = Scenario(
    name="terminal",
    turns=(
        (
            exec_command("start", "echo ready; while read -r line; do echo \"got:$line\"; done",
                         tty=True, login=False, yield_time_ms=YIELD_MS,
                         expect=["ready", "Process running"]),
            exec_command("slow", "echo early; sleep 4; echo late", login=False,
                         yield_time_ms=YIELD_MS, expect=["early", "Process running"]),
            exec_command("size", "stty size; tty >/dev/null && echo is a tty", tty=True,
                         expect=["24 80", "is a tty"]),
            exec_command("background job", "(sleep 1; echo job) & echo leader", tty=True,
                         login=False, expect=["leader", "exited with code 0"]),
            exec_command("cat", "cat", tty=True, login=False, yield_time_ms=YIELD_MS,
                         expect=["Process running"]),
            exec_command("exit code", "exit 7", tty=True, expect=["exited with code 7"]),
            exec_command("killed", "kill -KILL $$", tty=True, accept=[PTY_SIGNAL_EXIT],
                         expect=["Process exited"]),
            exec_command("missing workdir", "pwd", tty=True, workdir="/nonexistent-e2e",
                         accept=[PTY_MISSING_CWD]),
        ),
        (
            write_stdin("line", "start", "hello\n", yield_time_ms=YIELD_MS, expect=["got:hello"]),
            write_stdin("ctrl-d", "cat", "abc\n\x04", yield_time_ms=20000,
                        expect=["abc\r\nabc\r\n", "exited with code 0"]),
            write_stdin("poll", "slow", "", yield_time_ms=20000, expect=["late", "exited with code 0"]),
        ),
        (
            write_stdin("ctrl-c", "start", "\x03", yield_time_ms=20000, accept=[PTY_SIGNAL_EXIT],
                        expect=["^C", "Process exited"]),
        ),
        (
            exec_command("large", "seq 1 100000", tty=True, max_output_tokens=300,
                         expect=["truncated output", "\n99999\r\n"]),
        ),
    ),
)


_PATCHED = b"alpha\nbeta\ngamma\n"

FILES = Scenario(
    name="files",
    files={
        "update.txt": _PATCHED,
        "crlf.txt": b"one\r\ntwo\r\n",
        "delete.txt": b"remove me\n",
        "move.txt": b"moving\n",
        "red.png": _png(4, 3, (255, 0, 0)),
    },
    turns=(
        (apply_patch("add update delete", (
            "*** Add File: added.txt\n+new file\n+second line\n"
            "*** Add File: nested/dir/deep.txt\n+deep\n"
            "*** Update File: update.txt\n@@\n alpha\n-beta\n+BETA\n"
            "*** Delete File: delete.txt\n"
        ), expect=["Success", "A added.txt", "M update.txt", "D delete.txt"]),),
        (apply_patch("crlf", "*** Update File: crlf.txt\n@@\n-two\n+TWO\n", expect=["Success"]),),
        (apply_patch("move", "*** Update File: move.txt\n*** Move to: moved.txt\n@@\n-moving\n+moved\n",
                     expect=["Success"]),),
        (apply_patch("missing file", "*** Update File: missing.txt\n@@\n-x\n+y\n",
                     expect=["missing.txt"]),),
        (apply_patch("context mismatch", "*** Update File: update.txt\n@@\n-no such line\n+z\n",
                     expect=["update.txt"]),),
        (apply_patch("delete missing", "*** Delete File: missing.txt\n", expect=["missing.txt"]),),
        (exec_command("result", "ls -R; cat added.txt update.txt moved.txt nested/dir/deep.txt; od -c crlf.txt",
                      expect=["BETA", "moved", "T   W   O  \\r  \\n"]),),
        (
            view_image("image", "red.png", expect=["data:image/png;base64,"]),
            view_image("missing image", "missing.png", expect=["missing.png"]),
            view_image("not an image", "update.txt"),
            view_image("directory", "nested"),
        ),
    ),
)

def _sandbox_commands(port: int) -> tuple:
    """
    Commands that show a sandbox: writes inside the workspace and outside
    it (C{..} is the run's scratch directory), the network (a server on
    this host's loopback, C{port}) and a terminal.
    """
    return (
        exec_command("write inside", "echo hi > inside.txt && cat inside.txt", login=False),
        exec_command("write outside", "touch ../outside.txt; echo rc=$?", login=False, unordered=True,
                     expect=["Read-only file system", "rc=1"]),
        exec_command("network", f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected; echo rc=$?",
                     login=False, unordered=True, expect=["Operation not permitted", "rc=1"]),
        exec_command("terminal", "touch inside-tty; echo rc=$?; touch ../outside-tty; echo rc=$?",
                     tty=True, login=False, expect=["Read-only file system"]),
    )


def workspace_write(port: int) -> Scenario:
    """
    codex's C{workspace-write}: commands and patches write the workspace
    and nothing else; a patch through a symbolic link that leads out of it
    is refused by the exec-server's sandbox, not by codex.
    """
    return Scenario(
        name="workspace-write",
        files={"update.txt": _PATCHED, "delete.txt": b"remove me\n"},
        turns=(
            (*_sandbox_commands(port),
             exec_command("protected name", "mkdir .git/hooks; echo rc=$?", login=False, unordered=True,
                          expect=["Read-only file system", "rc=1"]),
             exec_command("link out", "ln -s .. up && echo linked", login=False, expect=["linked"])),
            (apply_patch("patch", (
                "*** Add File: nested/added.txt\n+new file\n"
                "*** Update File: update.txt\n@@\n alpha\n-beta\n+BETA\n"
                "*** Delete File: delete.txt\n"
            ), expect=["Success", "A nested/added.txt", "M update.txt", "D delete.txt"]),),
            (apply_patch("patch through link", "*** Add File: up/escaped.txt\n+x\n",
                         expect=["Failed to write file"]),),
            (exec_command("result", "ls . nested ..; cat inside.txt update.txt nested/added.txt",
                          login=False, expect=["BETA", "inside-tty"]),),
        ),
    )


def read_only(port: int) -> Scenario:
    """
    codex's C{read-only}: nothing is written, and codex itself refuses
    patches before they reach the exec-server.
    """
    return Scenario(
        name="read-only",
        files={"update.txt": _PATCHED},
        turns=(
            (*_sandbox_commands(port),
             exec_command("protected name", "mkdir .git; echo rc=$?", login=False, unordered=True,
                          expect=["Read-only file system", "rc=1"])),
            (apply_patch("patch", "*** Update File: update.txt\n@@\n alpha\n-beta\n+BETA\n",
                         expect=["writing is blocked by read-only sandbox"]),),
            (exec_command("result", "ls; cat update.txt", login=False, expect=["beta"]),),
        ),
    )


SCENARIOS = (COMMANDS, TERMINAL, FILES)
