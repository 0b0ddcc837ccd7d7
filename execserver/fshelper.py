"""
The sandboxed file system helper: one C{fs/*} operation run in a child
process inside the sandbox its request carried, so that file access obeys
the same confinement as a sandboxed process's.

The server (L{call}) starts the helper under bubblewrap, writes one request
to its stdin and reads one reply from its stdout, both JSON:

    {"op": "read_file", "args": [{"bytes": "<base64>"}, true]}
    {"result": ...} | {"os_error": [errno, "text"]} | {"rpc_error": [code, "message"]}

Byte strings travel as C{{"bytes": base64}}. C{open_file} answers with the
open descriptor itself, sent over the Unix socket the helper gets as
a descriptor named on its command line.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
from typing import Any

from execserver import fsops, rpc

#: The operations the helper runs, by name.
OPERATIONS = (
    "read_file", "write_file", "create_directory", "get_metadata", "read_directory",
    "remove", "copy", "canonicalize", "walk", "open_file",
)

#: How much of the helper's stderr a failure reports.
MAX_ERROR_TEXT = 2000


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return base64.b64decode(value["bytes"])
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


def serve(request: bytes, channel: socket.socket | None) -> bytes:
    """
    Run one request and return the reply (the helper's whole job).
    """
    message = json.loads(request)
    op = message["op"]
    if op not in OPERATIONS:
        return json.dumps({"rpc_error": [rpc.INTERNAL_ERROR, f"unknown helper operation {op}"]}).encode()
    try:
        result = getattr(fsops, op)(*_decode(message["args"]))
    except rpc.RpcError as e:
        return json.dumps({"rpc_error": [e.code, e.message]}).encode()
    except OSError as e:
        return json.dumps({"os_error": [e.errno or 0, e.strerror or ""]}).encode()
    if op == "open_file":
        socket.send_fds(channel, [b"f"], [result])
        os.close(result)
        result = None
    return json.dumps({"result": _encode(result)}).encode()


def main(channel_fd: int) -> None:
    request = sys.stdin.buffer.read()
    # Named in full: finding the family out would ask getsockopt, which
    # the restricted filter denies.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=channel_fd) as channel:
        sys.stdout.buffer.write(serve(request, channel))
    sys.stdout.flush()


def _import_path() -> list[str]:
    """
    Where the helper finds this package and what it imports: the server's
    own module path, so the helper needs no site initialisation.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = [package_root]
    for entry in sys.path:
        # Path hooks (an editable install's finder) and the empty entry
        # (the working directory) are not directories the helper can use.
        if entry and os.path.isabs(entry) and entry not in found:
            found.append(entry)
    return found


def helper_command(channel_fd: int) -> list[str]:
    """
    How to run the helper with this interpreter and this package, whatever
    the sandbox's environment; C{channel_fd} is its end of the socket that
    carries opened files back.
    """
    code = (
        f"import sys; sys.path[:0] = {_import_path()!r}; "
        f"from execserver.fshelper import main; main({channel_fd})"
    )
    # The interpreter as started (a virtual environment's own), so that the
    # helper imports what the server imports. -I: nothing from the
    # environment or the user's site; -S: no site initialisation at all
    # (a third of the helper's start-up), as the path is given.
    return [sys.executable, "-I", "-S", "-c", code]


def call(sandboxing, plan, op: str, args: list) -> Any:
    """
    Run C{op} in a helper confined by C{plan} (through C{sandboxing}, a
    L{runner.Sandboxing}) and return its result: blocking, for the server's
    thread pool.

    @raise OSError: or L{rpc.RpcError}, as the operation failed.
    """
    # Imported here: the helper, which imports this module, never needs it.
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sandboxing.targets.acquire(plan)
    try:
        try:
            command = helper_command(theirs.fileno())
            launch = sandboxing.launch(plan, command[0], command, command[0])
            try:
                process = subprocess.Popen(
                    launch.argv,
                    executable=launch.executable,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(*launch.pass_fds, theirs.fileno()),
                    preexec_fn=launch.before_exec,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    cwd="/",
                )
            finally:
                launch.close()
        finally:
            theirs.close()
        out, err = process.communicate(json.dumps({"op": op, "args": _encode(args)}).encode())
        fd = _received_fd(ours) if op == "open_file" else None
    finally:
        ours.close()
        sandboxing.targets.release(plan)
    try:
        reply = json.loads(out)
    except ValueError:
        detail = err.decode("utf-8", "replace").strip()[-MAX_ERROR_TEXT:]
        raise rpc.internal_error(
            f"sandboxed filesystem helper failed (exit {process.returncode}): {detail}"
        ) from None
    if "os_error" in reply:
        number, text = reply["os_error"]
        raise OSError(number, text)
    if "rpc_error" in reply:
        code, message = reply["rpc_error"]
        raise rpc.RpcError(code, message)
    if op == "open_file":
        if fd is None:
            raise rpc.internal_error("sandboxed filesystem helper did not pass the file back")
        return fd
    return _decode(reply["result"])


def _received_fd(channel: socket.socket) -> int | None:
    channel.setblocking(False)
    try:
        _, fds, _, _ = socket.recv_fds(channel, 1, 1)
    except (BlockingIOError, OSError):
        return None
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if fds else None
