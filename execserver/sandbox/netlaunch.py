"""
The first program of a sandboxed child under managed networking; it runs
inside the sandbox, in the child's own network namespace:

    python -I -S netlaunch.py SPEC PROGRAM ARGV...

It opens one listening socket per proxy on the namespace's loopback, hands
each to the server over the control socket (L{execserver.sandbox.bridge}
accepts on it and relays to the proxy), points the proxy variables at those
ports, installs the seccomp filter and execs the command. C{SPEC} is JSON:
C{control} and C{seccomp} (inherited descriptors), C{endpoints} (how many
proxies), C{routes} (C{[variable, endpoint, text before the port, text
after it]}) and C{lcCtype} (the child's C{LC_CTYPE}, which the interpreter
may have changed at start-up), or only C{error}: the reason the child
cannot be routed, reported as the reference's helper reports it, with exit
status 101.

It imports nothing of the package and only the standard library, so that
it starts fast and sees nothing the sandbox hides.
"""

import ctypes
import json
import os
import socket
import sys

#: Exit status when the child cannot be routed (the reference's helper panics).
ROUTING_FAILED = 101
#: Exit status when the command cannot be run (bubblewrap's).
EXEC_FAILED = 1

LISTEN_BACKLOG = 128
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _listen() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(LISTEN_BACKLOG)
    return listener


def _install_filter(fd: int) -> None:
    with os.fdopen(fd, "rb") as f:
        program = f.read()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def main(argv: list) -> None:
    spec = json.loads(argv[1])
    program, command = argv[2], argv[3:]
    if spec.get("error"):
        sys.stderr.write(f"sandbox: failed to prepare host proxy routing bridge: {spec['error']}\n")
        sys.exit(ROUTING_FAILED)
    ports = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=spec["control"]) as control:
        for _ in range(spec["endpoints"]):
            with _listen() as listener:
                ports.append(listener.getsockname()[1])
                socket.send_fds(control, [b"L"], [listener.fileno()])
    env = dict(os.environ)
    env.pop("LC_CTYPE", None)
    if spec["lcCtype"] is not None:
        env["LC_CTYPE"] = spec["lcCtype"]
    for key, endpoint, before, after in spec["routes"]:
        env[key] = f"{before}{ports[endpoint]}{after}"
    _install_filter(spec["seccomp"])
    try:
        os.execvpe(program, command, env)
    except OSError as e:
        sys.stderr.write(f"bwrap: execvp {program}: {e.strerror}\n")
        sys.exit(EXEC_FAILED)


if __name__ == "__main__":
    main(sys.argv)
