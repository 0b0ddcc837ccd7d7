"""
Managed networking against the reference: with C{enforceManagedNetwork}, a
sandboxed child has a network namespace of its own whose only way out is a
bridge to the proxies its environment names on this host's loopback; the
proxy variables are rewritten to the bridge's ports. A real forward proxy
and origin (tests/httpserver.py) run in the test process.
"""

from __future__ import annotations

import base64
import sys

from tests import support
from tests.httpserver import ForwardProxy, Origin
from tests.interop import InteropTestCase
from tests.test_interop_sandbox import DISABLED, SYSCALLS, external, run, sh, workspace

PROXY_PROBE = str(support.PROJECT_ROOT / "tests" / "data" / "proxyprobe.py")


def routed(proxy_port: int, **extra) -> dict:
    """
    process/start params that enforce managed networking with the proxy on
    C{proxy_port}.
    """
    params = {"enforceManagedNetwork": True,
              "managedNetwork": {"loopbackPorts": [proxy_port], "allowLocalBinding": False}}
    params.update(extra)
    return params


def proxy_env(proxy_port: int, **variables) -> dict:
    return {"PATH": "/usr/bin:/bin", **variables}


async def failure(peer, process_id: str, sandbox: dict, env: dict, **extra) -> None:
    """
    Start a child that cannot be routed; record how it ended and the
    reason it gave (the reference's helper panics, ours says only that).
    """
    params = {"processId": process_id, "argv": sh("echo ran"), "cwd": peer.uri(), "tty": False,
              "env": env, "sandbox": sandbox}
    params.update(extra)
    await peer.call("process/start", params, label=f"start {process_id}")
    output, exited, closed = b"", None, False
    while not closed:
        message = await peer.queue.notification(lambda m: m["params"].get("processId") == process_id)
        if message["method"] == "process/output":
            output += base64.b64decode(message["params"]["chunk"])
        elif message["method"] == "process/exited":
            exited = message["params"]
        closed = message["method"] == "process/closed"
    reason = output.decode().partition("failed to prepare host proxy routing bridge: ")[2].split("\n")[0]
    peer.record(f"{process_id} failed", {"exitCode": exited["exitCode"],
                                         "sandboxDenied": exited["sandboxDenied"], "reason": reason})


class ManagedNetworkInteropTests(InteropTestCase):
    async def setUp(self):
        self.proxy = await ForwardProxy().start()
        self.addCleanup(self.proxy.stop)
        self.origin = await Origin().start()
        self.addCleanup(self.origin.stop)

    def probe_argv(self) -> list[str]:
        return [sys.executable, "-I", PROXY_PROBE, str(self.proxy.port_number), str(self.origin.port_number)]

    async def test_only_the_proxies_are_reachable(self):
        """
        The variables that name the proxy point at bridges (one per proxy),
        the others are kept; through them the origin answers, directly
        nothing is reachable, and no Unix socket can be made.
        """
        port = self.proxy.port_number
        env = proxy_env(port, HTTP_PROXY=f"http://127.0.0.1:{port}", https_proxy=f"http://localhost:{port}/",
                        HTTPS_PROXY=f"127.0.0.1:{port}", ALL_PROXY=f"socks5h://127.0.0.1:{port}",
                        NO_PROXY="example.org", http_proxy=f"http://user:pw@127.0.0.1:{port}/p?q=1",
                        YARN_HTTP_PROXY="http://example.com:3128", pip_proxy=f"http://127.0.0.1:{port}",
                        NPM_CONFIG_PROXY=f"http://[::1]:{port}")

        async def scenario(peer):
            await peer.handshake()
            for network in ("restricted", "enabled"):
                await run(peer, network, self.probe_argv(), workspace(peer, network), env=env, **routed(port))

        await self.compare(scenario)

    async def test_every_sandbox_kind_gets_the_namespace(self):
        """
        Even a disabled sandbox, or one that does not restrict the file
        system, runs in the namespace; the file system stays as writable as
        the profile says.
        """
        port = self.proxy.port_number
        env = proxy_env(port, HTTP_PROXY=f"http://127.0.0.1:{port}", HTTPS_PROXY=f"http://127.0.0.1:{port}")
        unrestricted = {"permissions": {"type": "managed", "network": "restricted",
                                        "file_system": {"type": "unrestricted"}},
                        "windowsSandboxLevel": "disabled"}

        async def scenario(peer):
            await peer.handshake()
            for name, sandbox in (("disabled", DISABLED), ("external", external("enabled")),
                                  ("unrestricted", unrestricted), ("workspace", workspace(peer))):
                script = (f"touch {peer.path(name)} && echo wrote; grep -c . /proc/net/tcp;"
                          f" {' '.join(self.probe_argv())} | grep -A3 reach")
                await run(peer, name, sh(script), sandbox, env=env, **routed(port))
            # Without a sandbox nothing changes.
            await run(peer, "none", sh("env | grep -i _proxy | sed 's/[0-9]*$/N/'"), None, env=env,
                      **routed(port))

        await self.compare(scenario)

    async def test_the_filter_allows_only_ip_sockets(self):
        port = self.proxy.port_number
        env = proxy_env(port, HTTP_PROXY=f"http://127.0.0.1:{port}")

        async def scenario(peer):
            await peer.handshake()
            await run(peer, "workspace", [sys.executable, SYSCALLS], workspace(peer), env=env, **routed(port))
            await run(peer, "disabled", [sys.executable, SYSCALLS], DISABLED, env=env, **routed(port))

        await self.compare(scenario)

    async def test_a_terminal_child_is_routed(self):
        port = self.proxy.port_number
        env = proxy_env(port, HTTP_PROXY=f"http://127.0.0.1:{port}", HTTPS_PROXY=f"http://127.0.0.1:{port}")

        async def scenario(peer):
            await peer.handshake()
            await run(peer, "pty", self.probe_argv(), workspace(peer), env=env, tty=True, **routed(port))

        await self.compare(scenario)

    async def test_children_that_cannot_be_routed_fail(self):
        """
        No proxy variable, no proxy on the loopback, or a proxy outside the
        loopback ports: the child starts and exits with 101.
        """
        port = self.proxy.port_number

        async def scenario(peer):
            await peer.handshake()
            sandbox = workspace(peer)
            await failure(peer, "no-variables", sandbox, proxy_env(port), **routed(port))
            await failure(peer, "not-loopback", sandbox,
                          proxy_env(port, HTTP_PROXY="http://example.com:3128"), **routed(port))
            await failure(peer, "outside", sandbox,
                          proxy_env(port, HTTP_PROXY=f"http://127.0.0.1:{port + 1}"), **routed(port))
            await failure(peer, "no-facts", sandbox, proxy_env(port), enforceManagedNetwork=True)

        await self.compare(scenario)

    async def test_the_facts_are_checked(self):
        async def scenario(peer):
            await peer.handshake()
            for name, facts in (("big", {"loopbackPorts": [70000]}), ("list", [1]), ("string", "s"),
                                ("empty-list", []), ("extra", {"loopbackPorts": [], "other": 1})):
                params = {"processId": name, "argv": ["/bin/true"], "cwd": peer.uri(), "tty": False,
                          "env": {}, "sandbox": None, "managedNetwork": facts}
                reply = await peer.call("process/start", params, label=f"start {name}")
                if "result" in reply:
                    await peer.process_events(name)

        await self.compare(scenario)
