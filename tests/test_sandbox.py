"""
Sandboxed processes and fs/* on our server: a sandboxed child cannot
escape, and a host that cannot sandbox says so instead of running anything
unconfined.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from execserver import environment, paths
from execserver.sandbox import runner
from tests import support
from tests.support import attach, build_exec_server, handshake, send, start_params


def special(kind: str) -> dict:
    return {"type": "special", "value": {"kind": kind}}


def workspace(root: str, network: str = "restricted") -> dict:
    return {
        "permissions": {"type": "managed", "network": network, "file_system": {"type": "restricted", "entries": [
            {"path": special("root"), "access": "read"},
            {"path": {"type": "path", "path": paths.from_host_path(root)}, "access": "write"},
        ]}},
        "windowsSandboxLevel": "disabled",
    }


class SandboxTestCase(unittest.TestCase):
    def setUp(self):
        self.server = build_exec_server(self)
        self.connection, self.transport = attach(self.server)
        handshake(self.connection, self.transport)
        self._ids = 100
        self.root = os.path.realpath(support.scratch_directory(self, "execserver-sandbox-"))
        self.w = os.path.join(self.root, "w")
        os.mkdir(self.w)

    def call(self, method, params):
        self._ids += 1
        send(self.connection, {"id": self._ids, "method": method, "params": params})
        return self.transport.reply(self._ids)

    async def run_sandboxed(self, process_id: str, script: str, sandbox: dict | None = None,
                            shell: str = "/bin/sh") -> tuple[str, int]:
        params = start_params(process_id, [shell, "-c", script],
                              sandbox=sandbox or workspace(self.w), cwd=paths.from_host_path(self.root))
        reply = await self.call("process/start", params)
        self.assertEqual(reply.get("result"), {"processId": process_id, "sandboxType": "linuxSeccomp"}, reply)
        await self.transport.closed_event(process_id)
        (exited,) = [m for m in self.transport.events(process_id) if m["method"] == "process/exited"]
        return self.transport.output(process_id).decode(), exited["params"]["exitCode"]


class EscapeTests(SandboxTestCase):
    async def test_no_writes_outside_the_writable_roots(self):
        outside = os.path.join(self.root, "outside")
        os.mkdir(outside)
        os.symlink(outside, os.path.join(self.w, "link"))
        output, _ = await self.run_sandboxed("w", "; ".join([
            f"echo x > {self.w}/link/through-link",
            f"echo x > {outside}/direct",
            f"mv {self.w} {self.root}/moved",
            f"ln {self.root}/../hard {self.w}/hard 2>/dev/null",
            f"mkdir -p {self.w}/m && mount -t tmpfs none {self.w}/m",
            f"echo x > /proc/1/root{outside}/via-proc",
            "echo done",
        ]))
        self.assertIn("done", output)
        self.assertEqual(os.listdir(outside), [])
        self.assertEqual(sorted(os.listdir(self.root)), ["outside", "w"])

    async def test_no_signals_to_processes_outside_the_sandbox(self):
        host = subprocess.Popen(["sleep", "60"])
        self.addCleanup(host.wait)
        self.addCleanup(host.kill)
        output, _ = await self.run_sandboxed("s", f"kill -TERM {host.pid} 2>&1; kill -KILL -1 2>&1; echo done")
        self.assertIn("No such process", output)
        self.assertIsNone(host.poll())

    async def test_no_network_when_restricted(self):
        connections = []

        class Count(protocol.Protocol):
            def connectionMade(self):
                connections.append(self)
                self.transport.loseConnection()

        factory = protocol.Factory.forProtocol(Count)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        unix_path = os.path.join(self.root, "host.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_path)
        listener.listen(1)
        self.addCleanup(listener.close)
        output, _ = await self.run_sandboxed("n", "; ".join([
            f"(exec 3<>/dev/tcp/127.0.0.1/{number}) 2>&1 && echo tcp-connected",
            f"python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect(\"{unix_path}\")' 2>&1"
            " | tail -1",
            "echo done",
        ]), shell="/bin/bash")
        self.assertNotIn("tcp-connected", output)
        self.assertIn("Operation not permitted", output)
        self.assertIn("done", output)
        self.assertEqual(connections, [])
        listener.setblocking(False)
        self.assertRaises(BlockingIOError, listener.accept)

    async def test_terminate_ends_every_process_of_the_sandbox(self):
        # Until the orphan's argv[0] is the marker: before its exec, the
        # forked shell's command line holds the marker too, inside the script.
        script = ("(exec -a execserver-orphan sleep 60) &"
                  " until tr '\\0' '\\n' < /proc/$!/cmdline 2>/dev/null | head -n 1"
                  " | grep -qx execserver-orphan; do :; done; echo started; sleep 60")
        reply = await self.call("process/start", start_params("t", ["/bin/bash", "-c", script],
                                                              sandbox=workspace(self.w)))
        self.assertIn("result", reply)
        await self.transport.wait_for(lambda m: m.get("method") == "process/output"
                                      and b"started" in base64.b64decode(m["params"]["chunk"]))
        orphan = _find_process(b"execserver-orphan")
        self.assertIsNotNone(orphan)
        await self.call("process/terminate", {"processId": "t"})
        await self.transport.closed_event("t")
        await support.process_gone(orphan)


def _find_process(marker: bytes) -> int | None:
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().startswith(marker + b"\0"):
                    return int(name)
        except OSError:
            continue
    return None


class UnavailableTests(SandboxTestCase):
    def setUp(self):
        super().setUp()
        self.patch(runner, "sandboxing", runner.Sandboxing(runner.SandboxConfig(bwrap="/nonexistent/bwrap")))

    async def test_a_restrictive_sandbox_is_refused_naming_what_is_missing(self):
        reply = await self.call("process/start", start_params("p", ["/bin/true"], sandbox=workspace(self.w)))
        self.assertEqual(reply["error"], {
            "code": -32602,
            "message": "sandbox intent cannot be enforced on this executor: "
                       "bubblewrap was not found at /nonexistent/bwrap",
        })
        reply = await self.call("fs/writeFile", {"path": paths.from_host_path(os.path.join(self.w, "f")),
                                                 "dataBase64": "", "sandbox": workspace(self.w)})
        self.assertEqual(reply["error"]["code"], -32600)
        self.assertEqual(os.listdir(self.w), [])

    async def test_sandboxes_that_need_no_bubblewrap_still_run(self):
        external = {"permissions": {"type": "external", "network": "restricted"},
                    "windowsSandboxLevel": "disabled"}
        reply = await self.call("process/start", start_params(
            "e", ["/bin/sh", "-c", "grep Seccomp: /proc/self/status"], sandbox=external))
        self.assertEqual(reply["result"]["sandboxType"], "linuxSeccomp")
        await self.transport.closed_event("e")
        self.assertIn(b"Seccomp:\t2", self.transport.output("e"))

    def test_environment_info_tells_what_can_be_enforced(self):
        capabilities = environment.environment_info()["capabilities"]
        self.assertFalse(capabilities["sandboxedFileStreaming"])
        self.assertFalse(capabilities["linuxRootWritePreservesDevices"])


class AvailableTests(unittest.TestCase):
    def test_environment_info_tells_what_can_be_enforced(self):
        self.assertIsNone(runner.sandboxing.problem())
        capabilities = environment.environment_info()["capabilities"]
        self.assertTrue(capabilities["sandboxedFileStreaming"])
        self.assertTrue(capabilities["linuxRootWritePreservesDevices"])


class StreamingTests(SandboxTestCase):
    async def test_files_opened_in_a_sandbox_stream(self):
        sandbox = {"permissions": {"type": "managed", "network": "restricted", "file_system": {
            "type": "restricted", "entries": [{"path": special("minimal"), "access": "read"},
                                              {"path": {"type": "path", "path": paths.from_host_path(self.w)},
                                               "access": "write"}]}},
            "windowsSandboxLevel": "disabled"}
        target = paths.from_host_path(os.path.join(self.w, "f"))
        reply = await self.call("fs/open", {"handleId": "h", "path": target, "mode": "replace", "sandbox": sandbox})
        self.assertEqual(reply["result"], {"handleId": "h"})
        await self.call("fs/writeBlock", {"handleId": "h", "offset": 0, "chunk": base64.b64encode(b"abc").decode()})
        await self.call("fs/close", {"handleId": "h"})
        reply = await self.call("fs/open", {"handleId": "r", "path": target, "sandbox": sandbox})
        reply = await self.call("fs/readBlock", {"handleId": "r", "offset": 0, "len": 10})
        self.assertEqual(reply["result"], {"chunk": base64.b64encode(b"abc").decode(), "eof": True})


class _Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"echo:" + data)


class StandInTests(SandboxTestCase):
    """
    Stand-ins that bubblewrap makes on the host for missing protected names
    stay while any child relies on them.
    """

    async def start_waiting(self, process_id: str, then: str) -> None:
        """
        Start a sandboxed child that says it is ready, waits for a line on
        its stdin, then runs C{then}.
        """
        params = start_params(process_id, ["/bin/sh", "-c", f"echo ready; read x; {then}"],
                              sandbox=workspace(self.w), cwd=paths.from_host_path(self.w), pipeStdin=True)
        reply = await self.call("process/start", params)
        self.assertIn("result", reply)
        await self.transport.wait_for(lambda m: m.get("method") == "process/output"
                                      and m["params"]["processId"] == process_id)

    async def go(self, process_id: str) -> None:
        await self.call("process/write", {"processId": process_id, "writeId": "1",
                                          "chunk": base64.b64encode(b"go\n").decode()})
        await self.transport.closed_event(process_id)

    async def test_a_stand_in_outlives_the_child_whose_sandbox_made_it(self):
        await self.start_waiting("first", "true")
        # The first child's bubblewrap made .git on the host; the second
        # child's plan finds it there.
        self.assertTrue(os.path.isdir(os.path.join(self.w, ".git")))
        await self.start_waiting("second", "mkdir .git/hooks; echo rc=$?")
        await self.go("first")
        self.assertTrue(os.path.isdir(os.path.join(self.w, ".git")))
        await self.go("second")
        self.assertEqual(self.transport.output("second"),
                         b"ready\nmkdir: cannot create directory '.git/hooks': Read-only file system\nrc=1\n")
        self.assertEqual(sorted(os.listdir(self.w)), [])


class ManagedNetworkTests(SandboxTestCase):
    async def test_a_missing_program_fails_as_under_bubblewrap(self):
        """
        Our launcher runs the command, and reports a failed exec as
        bubblewrap does elsewhere (docs/compatibility.md).
        """
        params = start_params("m", ["no-such-program-e2e"], sandbox=workspace(self.w, "enabled"),
                              env={"PATH": "/usr/bin:/bin", "HTTP_PROXY": "http://127.0.0.1:3128"},
                              enforceManagedNetwork=True,
                              managedNetwork={"loopbackPorts": [3128], "allowLocalBinding": False})
        reply = await self.call("process/start", params)
        self.assertEqual(reply["result"], {"processId": "m", "sandboxType": "linuxSeccomp"})
        await self.transport.closed_event("m")
        (exited,) = [m for m in self.transport.events("m") if m["method"] == "process/exited"]
        self.assertEqual(exited["params"]["exitCode"], 1)
        self.assertEqual(self.transport.output("m", "stderr"),
                         b"bwrap: execvp no-such-program-e2e: No such file or directory\n")

    async def test_without_a_pid_namespace_the_bridge_works_too(self):
        """
        With C{--linux-sandbox-pid-namespace inherit} the child is routed
        the same way: the bridge lives in the server, not in the sandbox.
        """
        self.patch(runner, "sandboxing", runner.Sandboxing(runner.SandboxConfig(pid_namespace=False)))
        echo = reactor.listenTCP(0, protocol.Factory.forProtocol(_Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        port = echo.getHost().port
        client = (
            "import os, socket\n"
            "bridge = int(os.environ['ALL_PROXY'].rsplit(':', 1)[1])\n"
            "s = socket.create_connection(('127.0.0.1', bridge))\n"
            "s.sendall(b'ping'); print(s.recv(100).decode(), bridge != %d)\n" % port
        )
        params = start_params("m", [sys.executable, "-I", "-c", client], sandbox=workspace(self.w),
                              env={"ALL_PROXY": f"socks5h://127.0.0.1:{port}"}, enforceManagedNetwork=True)
        reply = await self.call("process/start", params)
        self.assertEqual(reply["result"], {"processId": "m", "sandboxType": "linuxSeccomp"})
        await self.transport.closed_event("m")
        self.assertEqual(self.transport.output("m"), b"echo:ping True\n")

    async def test_managed_network_facts_alone_change_nothing(self):
        params = start_params("m", ["/bin/true"], sandbox=workspace(self.w),
                              managedNetwork={"loopbackPorts": [8080], "allowLocalBinding": False})
        reply = await self.call("process/start", params)
        self.assertEqual(reply["result"], {"processId": "m", "sandboxType": "linuxSeccomp"})
        await self.transport.closed_event("m")


class PidNamespaceTests(SandboxTestCase):
    async def test_children_can_share_the_hosts_pid_namespace(self):
        self.patch(runner, "sandboxing", runner.Sandboxing(runner.SandboxConfig(pid_namespace=False)))
        output, _ = await self.run_sandboxed("p", f"kill -0 {os.getpid()} && echo host-visible; test $$ -ne 2 && echo host-pid")
        self.assertEqual(output, "host-visible\nhost-pid\n")

    async def test_by_default_children_have_their_own(self):
        output, _ = await self.run_sandboxed("p", f"kill -0 {os.getpid()} 2>/dev/null || echo host-invisible; echo $$")
        self.assertEqual(output, "host-invisible\n2\n")


class CommandLineTests(unittest.TestCase):
    """
    The server's sandbox options reach its sandboxing.
    """

    timeout = 60

    async def sandboxed_pid(self, *args: str) -> str:
        server = await support.start_server("ours", list(args))
        self.addCleanup(lambda: defer.ensureDeferred(server.stop()))
        queue = await support.connect(server.url)
        self.addCleanup(queue.close)
        queue.send({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
        await queue.response(1)
        queue.send({"method": "initialized"})
        root = os.path.realpath(support.scratch_directory(self, "execserver-sandbox-"))
        queue.send({"id": 2, "method": "process/start", "params": start_params(
            "p", ["/bin/sh", "-c", "echo $$"], sandbox=workspace(root),
            cwd=paths.from_host_path(root))})
        reply = await queue.response(2)
        if "error" in reply:
            return reply["error"]["message"]
        output = await queue.notification(lambda m: m["method"] == "process/output")
        return base64.b64decode(output["params"]["chunk"]).decode().strip()

    async def test_pid_namespace_inherit(self):
        self.assertNotEqual(await self.sandboxed_pid("--linux-sandbox-pid-namespace", "inherit"), "2")

    async def test_pid_namespace_isolate_is_the_default(self):
        self.assertEqual(await self.sandboxed_pid(), "2")

    async def test_bwrap_names_the_program(self):
        missing = "/nonexistent/bwrap"
        message = await self.sandboxed_pid("--bwrap", missing)
        self.assertTrue(message.startswith("sandbox intent cannot be enforced on this executor: "),
                        message)
        self.assertIn(missing, message)
