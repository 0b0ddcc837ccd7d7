"""
Sandboxed process/start against the reference: the same confinement, seen
from inside the child and from the host, and the same answers.

Differences we keep on purpose (docs/compatibility.md) are specified in
tests/test_sandbox.py instead.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.web import resource, server

from tests import support
from tests.interop import InteropTestCase, interop

SYSCALLS = str(support.PROJECT_ROOT / "tests" / "data" / "syscalls.py")


def special(kind: str, **value) -> dict:
    return {"type": "special", "value": dict(kind=kind, **value)}


def entry(where, access: str) -> dict:
    path = {"type": "path", "path": where} if isinstance(where, str) else where
    return {"path": path, "access": access}


def managed(entries: list, network: str = "restricted", **extra) -> dict:
    context = {
        "permissions": {"type": "managed", "network": network,
                        "file_system": {"type": "restricted", "entries": entries}},
        "windowsSandboxLevel": "disabled",
    }
    context.update(extra)
    return context


def workspace(peer, network: str = "restricted") -> dict:
    """
    codex's workspace-write: read everything, write the workspace C{w}.
    """
    os.makedirs(peer.path("w"), exist_ok=True)
    return managed([entry(special("root"), "read"), entry(peer.uri("w"), "write")], network,
                   cwd=peer.uri())


DISABLED = {"permissions": {"type": "disabled"}, "windowsSandboxLevel": "disabled"}


def external(network: str) -> dict:
    return {"permissions": {"type": "external", "network": network}, "windowsSandboxLevel": "disabled"}


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


async def run(peer, process_id: str, argv: list[str], sandbox: dict | None, **extra) -> dict:
    params = {"processId": process_id, "argv": argv, "cwd": peer.uri(), "tty": False,
              "env": {"PATH": "/usr/bin:/bin"}, "sandbox": sandbox}
    params.update(extra)
    reply = await peer.call("process/start", params, label=f"start {process_id}")
    if "error" in reply:
        return reply
    return await peer.process_events(process_id)


async def exit_of(peer, process_id: str) -> dict:
    """
    The C{process/exited} params of a process, once it has closed, without
    recording its events.
    """
    exited = None
    while True:
        message = await peer.queue.notification(lambda m: m["params"].get("processId") == process_id)
        if message["method"] == "process/exited":
            exited = message["params"]
        if message["method"] == "process/closed":
            return exited


def host_listing(peer, *parts: str) -> None:
    peer.record(f"host listing of {'/'.join(parts)}", sorted(os.listdir(peer.path(*parts))))


async def writes_inside_and_outside_writable_roots(peer):
    await peer.handshake()
    await run(peer, "write", sh(
        f"touch {peer.path('w', 'ok')} && echo okw; touch {peer.path('denied')}; echo rc=$?; exit 1"
    ), workspace(peer))
    host_listing(peer)
    host_listing(peer, "w")


async def protected_names_are_masked(peer):
    await peer.handshake()
    sandbox = workspace(peer)
    w = peer.path("w")
    await run(peer, "missing", sh(
        f"ls -a {w}; git init -q {w}; touch {w}/.git/x; mkdir {w}/.agents/y; touch {w}/.codex/z;"
        f" touch {w}/.aws/credentials; rmdir {w}/.agents; echo end"
    ), sandbox)
    # Mount points made for missing names are gone again.
    host_listing(peer, "w")
    os.makedirs(peer.path("w", ".git"))
    os.makedirs(peer.path("w", ".codex"))
    for name in (".git/HEAD", ".codex/config.toml", ".aws"):
        with open(peer.path("w", *name.split("/")), "w") as f:
            f.write(name + "\n")
    await run(peer, "existing", sh(
        f"ls -a {w} {w}/.git {w}/.codex; cat {w}/.git/HEAD {w}/.codex/config.toml {w}/.aws;"
        f" echo x > {w}/.git/HEAD; echo x > {w}/.aws; rm {w}/.aws; echo end"
    ), sandbox)
    host_listing(peer, "w")


async def a_read_only_profile_writes_nowhere(peer):
    await peer.handshake()
    with open(peer.path("file"), "w") as f:
        f.write("content\n")
    sandbox = managed([entry(special("root"), "read")], cwd=peer.uri())
    await run(peer, "ro", sh(
        f"cat {peer.path('file')}; echo more >> {peer.path('file')}; mkdir {peer.path('d')}; echo end"
    ), sandbox)
    await run(peer, "tmp", sh("touch /tmp/execserver-sandbox-probe; echo rc=$?"), sandbox)
    host_listing(peer)


async def deny_entries_hide_paths(peer):
    await peer.handshake()
    os.makedirs(peer.path("w", "sub"))
    for name in ("w/secret.pem", "w/sub/inner", "w/plain"):
        with open(peer.path(*name.split("/")), "w") as f:
            f.write(name + "\n")
    w = peer.path("w")
    sandbox = managed([
        entry(special("root"), "read"),
        entry(peer.uri("w"), "write"),
        entry(peer.uri("w", "sub"), "deny"),
        entry(peer.uri("w", "never"), "deny"),
        {"path": {"type": "glob_pattern", "pattern": "**/*.pem"}, "access": "deny"},
    ], cwd=peer.uri("w"))
    await run(peer, "deny", sh(
        f"cat {w}/plain; cat {w}/secret.pem; ls {w}/sub; cat {w}/sub/inner; touch {w}/sub/new;"
        f" touch {w}/never; echo end"
    ), sandbox)
    host_listing(peer, "w")


async def read_entries_inside_writable_roots_stay_read_only(peer):
    await peer.handshake()
    os.makedirs(peer.path("w", "docs"))
    sandbox = managed([
        entry(special("root"), "read"),
        entry(peer.uri("w"), "write"),
        entry(peer.uri("w", "docs"), "read"),
    ], cwd=peer.uri())
    await run(peer, "nested", sh(
        f"touch {peer.path('w', 'a')} && echo a; touch {peer.path('w', 'docs', 'b')}; echo end"
    ), sandbox)
    host_listing(peer, "w")


async def a_minimal_profile_sees_only_the_system(peer):
    await peer.handshake()
    os.makedirs(peer.path("w"))
    with open(peer.path("outside"), "w") as f:
        f.write("not granted\n")
    sandbox = managed([entry(special("minimal"), "read"), entry(peer.uri("w"), "write")],
                      cwd=peer.uri())
    await run(peer, "minimal", sh(
        f"test -e /etc/hostname && echo etc; test -e {peer.path()} && echo workdir;"
        f" test -e {peer.path('outside')} || echo no-outside; ls {peer.path()};"
        f" touch {peer.path('w', 'f')} && echo wrote"
    ), sandbox)
    host_listing(peer, "w")


async def missing_writable_roots_are_skipped(peer):
    await peer.handshake()
    sandbox = managed([entry(special("root"), "read"), entry(peer.uri("missing"), "write")],
                      cwd=peer.uri())
    await run(peer, "missing", sh(f"mkdir {peer.path('missing')}; echo rc=$?"), sandbox)
    host_listing(peer)


async def symbolic_project_roots_are_the_workspace_roots(peer):
    await peer.handshake()
    for name in ("a", "b"):
        os.makedirs(peer.path(name))
    sandbox = managed([entry(special("root"), "read"), entry(special("project_roots"), "write")],
                      cwd=peer.uri("a"), workspaceRoots=[peer.uri("b")])
    await run(peer, "roots", sh(
        f"touch {peer.path('a', 'x')}; touch {peer.path('b', 'y')} && echo b; echo end"
    ), sandbox)
    await run(peer, "sub", sh(f"touch {peer.path('b', 's', 'z')} && echo s; echo end"), managed(
        [entry(special("root"), "read"), entry(special("project_roots", subpath="s"), "write")],
        cwd=peer.uri("a"), workspaceRoots=[peer.uri("b")]))
    host_listing(peer, "a")
    host_listing(peer, "b")


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello\n"


def _tcp_probe(port: int) -> list[str]:
    return ["/bin/bash", "-c",
            f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected; echo rc=$?"]


async def _network(peer, port: int):
    await peer.handshake()
    await run(peer, "restricted", _tcp_probe(port), workspace(peer, "restricted"))
    await run(peer, "enabled", _tcp_probe(port), workspace(peer, "enabled"))
    await run(peer, "external-restricted", _tcp_probe(port), external("restricted"))
    await run(peer, "external-enabled", _tcp_probe(port), external("enabled"))


async def the_pid_namespace_is_the_sandboxs_own(peer):
    await peer.handshake()
    await run(peer, "pid", sh(
        f"echo $$; kill -0 1 && echo init; kill -0 {os.getpid()} 2>/dev/null || echo host-invisible;"
        " ls /proc | grep -c '^[0-9]' >/dev/null && echo listed"
    ), workspace(peer))


async def terminal_children_are_sandboxed(peer):
    await peer.handshake()
    await run(peer, "pty", sh(
        f"echo $$; stty size; touch {peer.path('denied')}; touch {peer.path('w', 'ok')} && echo ok; exit 3"
    ), workspace(peer), tty=True)
    host_listing(peer, "w")


async def disabled_runs_unconfined(peer):
    await peer.handshake()
    await run(peer, "disabled", sh(
        f"grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; test $$ -ne 2 && echo host-pid;"
        f" touch {peer.path('d')} && echo wrote"
    ), DISABLED)
    host_listing(peer)


async def external_applies_only_the_network_filter(peer):
    await peer.handshake()
    for network in ("restricted", "enabled"):
        await run(peer, f"external-{network}", sh(
            f"grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; test $$ -ne 2 && echo host-pid;"
            f" touch {peer.path(network)} && echo wrote"
        ), external(network))
    host_listing(peer)


async def a_missing_program_starts_and_fails(peer):
    await peer.handshake()
    for process_id, program in (("absolute", "/nonexistent/program"), ("bare", "nonexistent-program")):
        params = {"processId": process_id, "argv": [program], "cwd": peer.uri(), "tty": False,
                  "env": {"PATH": "/usr/bin:/bin"}, "sandbox": workspace(peer)}
        await peer.call("process/start", params, label=f"start {process_id}")
        exited = await exit_of(peer, process_id)
        # The exit code and text are bubblewrap's for us, a panic of the
        # reference's helper for it (docs/compatibility.md).
        peer.record(f"{process_id} failed", exited["exitCode"] != 0)


SANDBOX_DENIED_CASES = [
    ("keyword-exit1", "echo 'Permission denied'; exit 1"),
    ("no-keyword-exit1", "echo nothing; exit 1"),
    ("keyword-exit0", "echo 'Permission denied'"),
    ("upper-stderr", "echo 'OPERATION NOT PERMITTED' >&2; exit 3"),
    ("seccomp-word", "echo seccomp; exit 1"),
    ("sandbox-word", "echo 'my Sandbox'; exit 1"),
    ("landlock-word", "echo landlock; exit 1"),
    ("failed-to-write", "echo 'failed to write file'; exit 1"),
    ("read-only-word", "echo 'read-only file system'; exit 1"),
    ("keyword-exit2", "echo 'Permission denied'; exit 2"),
    ("keyword-exit126", "echo 'Permission denied'; exit 126"),
    ("exit126", "exit 126"),
    ("exit127", "exit 127"),
    ("sigsys", "kill -SYS $$"),
    ("sigkill", "kill -KILL $$"),
    ("exit159", "exit 159"),
    ("keyword-split", "printf 'Permission de'; sleep 0.2; printf 'nied\\n'; exit 1"),
    # The pause lets both servers read all the output before the exit: the
    # reference judges the output it has read when it sees the exit.
    ("keyword-evicted", "echo 'Permission denied'; head -c 1200000 /dev/zero | tr '\\0' a;"
                        " sleep 1; exit 1"),
    ("real-denial-exit0", "touch /execserver-denied-probe; echo rc=$?"),
]


async def sandbox_denied_matrix(peer):
    await peer.handshake()
    sandbox = workspace(peer)
    for name, script in SANDBOX_DENIED_CASES:
        params = {"processId": name, "argv": sh(script), "cwd": peer.uri(), "tty": False,
                  "env": {"PATH": "/usr/bin:/bin"}, "sandbox": sandbox}
        await peer.call("process/start", params, label=f"start {name}")
        exited = await exit_of(peer, name)
        peer.record(name, {"exitCode": exited["exitCode"], "sandboxDenied": exited["sandboxDenied"]})
        read = await peer.call("process/read", {"processId": name, "afterSeq": 10_000}, record=False)
        peer.record(f"{name} read", read["result"]["sandboxDenied"])
    for name, context in (("none", None), ("disabled", DISABLED), ("external", external("restricted"))):
        await run(peer, f"keyword-{name}", sh("echo 'Permission denied'; exit 1"), context)
        await run(peer, f"sigsys-{name}", sh("kill -SYS $$"), context)


async def the_seccomp_filters_deny_what_the_reference_denies(peer):
    await peer.handshake()
    unrestricted = {"permissions": {"type": "managed", "network": "restricted",
                                    "file_system": {"type": "unrestricted"}},
                    "windowsSandboxLevel": "disabled"}
    for name, context in (("workspace-restricted", workspace(peer)),
                          ("workspace-enabled", workspace(peer, "enabled")),
                          ("unrestricted-restricted", unrestricted),
                          ("external-restricted", external("restricted")),
                          ("disabled", DISABLED)):
        await run(peer, name, [sys.executable, SYSCALLS], context)


class SandboxInteropTests(InteropTestCase):
    test_writes_inside_and_outside_writable_roots = interop(writes_inside_and_outside_writable_roots)
    test_protected_names_are_masked = interop(protected_names_are_masked)
    test_a_read_only_profile_writes_nowhere = interop(a_read_only_profile_writes_nowhere)
    test_deny_entries_hide_paths = interop(deny_entries_hide_paths)
    test_read_entries_inside_writable_roots_stay_read_only = interop(
        read_entries_inside_writable_roots_stay_read_only)
    test_a_minimal_profile_sees_only_the_system = interop(a_minimal_profile_sees_only_the_system)
    test_missing_writable_roots_are_skipped = interop(missing_writable_roots_are_skipped)
    test_symbolic_project_roots_are_the_workspace_roots = interop(
        symbolic_project_roots_are_the_workspace_roots)
    test_the_pid_namespace_is_the_sandboxs_own = interop(the_pid_namespace_is_the_sandboxs_own)
    test_terminal_children_are_sandboxed = interop(terminal_children_are_sandboxed)
    test_disabled_runs_unconfined = interop(disabled_runs_unconfined)
    test_external_applies_only_the_network_filter = interop(external_applies_only_the_network_filter)
    test_a_missing_program_starts_and_fails = interop(a_missing_program_starts_and_fails)
    test_sandbox_denied_matrix = interop(sandbox_denied_matrix)
    test_the_seccomp_filters_deny_what_the_reference_denies = interop(
        the_seccomp_filters_deny_what_the_reference_denies)

    async def test_the_network_is_reachable_only_when_enabled(self):
        """
        A restricted network reaches nothing, not even the host's loopback;
        an enabled one reaches a local HTTP server.
        """
        port = reactor.listenTCP(0, server.Site(_Hello()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        async def scenario(peer):
            await _network(peer, number)

        await self.compare(scenario)
