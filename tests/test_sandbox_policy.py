"""
The policy -> confinement translation, the sandboxDenied heuristic and the
seccomp filters, on their own (real directories, real children).
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from execserver import paths
from execserver.sandbox import denial, policy, seccomp
from execserver.sandbox.policy import Host, Mount, Seccomp
from tests import support

#: A uid with no codex daemon directory in /tmp.
NO_DAEMON_UID = 4_000_000_001


def special(kind: str, **value) -> dict:
    return {"type": "special", "value": dict(kind=kind, **value)}


def entry(where, access: str) -> dict:
    path = {"type": "path", "path": where} if isinstance(where, str) else where
    return {"path": path, "access": access}


def context(entries=None, network="restricted", permissions=None, **extra) -> dict:
    """
    A decoded sandbox context, with the decoder's defaults.
    """
    if permissions is None:
        permissions = {"type": "managed", "network": network,
                       "file_system": {"type": "restricted", "entries": entries,
                                       "glob_scan_max_depth": None}}
    decoded = {"permissions": permissions, "cwd": None, "policyContext": None, "workspaceRoots": [],
               "temporaryDirectories": None}
    decoded.update(extra)
    return decoded


class PolicyTestCase(unittest.TestCase):
    def setUp(self):
        self.root = os.fsencode(os.path.realpath(support.scratch_directory(self, "execserver-policy-")))
        self.host = Host(uid=NO_DAEMON_UID)

    def path(self, *parts: str) -> bytes:
        return os.path.join(self.root, *[os.fsencode(part) for part in parts])

    def uri(self, *parts: str) -> str:
        return paths.from_host_path(self.path(*parts))

    def make(self, *names: str) -> None:
        for name in names:
            target = self.path(name)
            if name.endswith("/"):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(name.encode())

    def plan(self, sandbox: dict, restrictive: bool = True, host: Host | None = None) -> policy.Plan:
        return policy.plan(sandbox, restrictive, host or self.host)

    def masks(self, root: bytes) -> list[Mount]:
        return [Mount("tmpfs", root + b"/" + name, policy.MASK_PERMS) for name in policy.PROTECTED_NAMES]


class ModeTests(PolicyTestCase):
    def test_disabled_is_unconfined(self):
        plan = self.plan(context(permissions={"type": "disabled"}), restrictive=False)
        self.assertEqual(plan, policy.UNCONFINED)
        self.assertFalse(plan.confined)

    def test_external_applies_only_the_network_filter(self):
        restricted = self.plan(context(permissions={"type": "external", "network": "restricted"}), False)
        self.assertEqual((restricted.wrap, restricted.seccomp), (False, Seccomp.RESTRICTED))
        enabled = self.plan(context(permissions={"type": "external", "network": "enabled"}), False)
        self.assertEqual(enabled, policy.UNCONFINED)

    def test_full_disk_write_runs_in_place(self):
        sandbox = context([entry(special("root"), "write")])
        self.assertEqual(self.plan(sandbox, restrictive=False),
                         policy.Plan(wrap=False, seccomp=Seccomp.RESTRICTED))
        self.assertEqual(self.plan(context([entry(special("root"), "write")], "enabled"), False),
                         policy.UNCONFINED)

    def test_a_restricted_file_system_is_wrapped(self):
        restricted = self.plan(context([entry(special("root"), "read")]))
        self.assertEqual((restricted.wrap, restricted.seccomp, restricted.unshare_net),
                         (True, Seccomp.RESTRICTED, True))
        enabled = self.plan(context([entry(special("root"), "read")], "enabled"))
        self.assertEqual((enabled.wrap, enabled.seccomp, enabled.unshare_net),
                         (True, Seccomp.NO_VSOCK, False))


class ManagedNetworkTests(PolicyTestCase):
    """
    Enforced managed networking wraps every context in a network namespace
    of its own, under the proxy-routed filter.
    """

    FACTS = {"loopbackPorts": [3128], "allowLocalBinding": False}

    def managed(self, sandbox: dict, restrictive: bool) -> policy.Plan:
        return policy.plan(sandbox, restrictive, self.host, managed_network=self.FACTS)

    def test_an_unrestricted_file_system_is_bound_whole_and_writable(self):
        for permissions in ({"type": "disabled"}, {"type": "external", "network": "enabled"},
                            {"type": "managed", "network": "restricted",
                             "file_system": {"type": "unrestricted"}}):
            plan = self.managed(context(permissions=permissions), restrictive=False)
            self.assertEqual(
                (plan.wrap, plan.seccomp, plan.unshare_net, plan.mounts, plan.proxied, plan.loopback_ports),
                (True, Seccomp.PROXY_ROUTED, True, policy.WHOLE_HOST_MOUNTS, True, (3128,)),
            )

    def test_a_restricted_file_system_keeps_its_mounts(self):
        self.make("w/")
        sandbox = context([entry(special("root"), "read"), entry(self.uri("w"), "write")], "enabled")
        plain = self.plan(sandbox)
        managed = self.managed(sandbox, restrictive=True)
        self.assertEqual(managed.mounts, plain.mounts)
        self.assertEqual((managed.seccomp, managed.unshare_net, managed.proxied),
                         (Seccomp.PROXY_ROUTED, True, True))


class MountTests(PolicyTestCase):
    def test_a_workspace_is_bound_writable_with_its_protected_names(self):
        self.make("w/.git/HEAD", "w/.codex/", "w/.aws")
        with open(self.path("w", ".aws"), "wb"):
            pass  # empty
        plan = self.plan(context([entry(special("root"), "read"), entry(self.uri("w"), "write")]))
        w = self.path("w")
        self.assertEqual(list(plan.mounts), [
            Mount("ro-bind", b"/"), Mount("dev", b"/dev"),
            Mount("bind", w),
            Mount("ro-bind", w + b"/.git"),
            Mount("tmpfs", w + b"/.agents", policy.MASK_PERMS),
            Mount("tmpfs", w + b"/.codex", policy.MASK_PERMS),
            Mount("file", w + b"/.aws"),
        ])
        self.assertEqual(plan.created, (w + b"/.agents",))
        self.assertTrue(plan.reads_everything)

    def test_missing_writable_roots_are_skipped(self):
        plan = self.plan(context([entry(special("root"), "read"), entry(self.uri("gone"), "write")]))
        self.assertEqual(list(plan.mounts), [Mount("ro-bind", b"/"), Mount("dev", b"/dev")])

    def test_read_entries_inside_writable_roots_are_rebound_read_only(self):
        self.make("w/docs/")
        plan = self.plan(context([entry(special("root"), "read"), entry(self.uri("w"), "write"),
                                  entry(self.uri("w", "docs"), "read")]))
        self.assertEqual(plan.mounts[-1], Mount("ro-bind", self.path("w", "docs")))

    def test_deny_entries(self):
        self.make("w/sub/", "w/key.pem", "w/deep/a/b/c.pem")
        sandbox = context([
            entry(special("root"), "read"), entry(self.uri("w"), "write"),
            entry(self.uri("w", "sub"), "deny"), entry(self.uri("w", "never"), "deny"),
            entry(self.uri("elsewhere"), "deny"),
            entry({"type": "glob_pattern", "pattern": "**/*.pem"}, "deny"),
        ], cwd=self.uri("w"))
        sandbox["permissions"]["file_system"]["glob_scan_max_depth"] = 3
        plan = self.plan(sandbox)
        # The glob looks three levels deep: deep/a/b/c.pem is beyond it, and
        # a missing path outside every writable root needs no stand-in.
        self.assertEqual(list(plan.mounts[-3:]), [
            Mount("tmpfs", self.path("w", "sub"), policy.DENY_PERMS),
            Mount("file", self.path("w", "never")),
            Mount("file", self.path("w", "key.pem"), policy.DENY_PERMS),
        ])
        self.assertIn(self.path("w", "never"), plan.created)
        self.assertFalse(plan.reads_everything)

    def test_a_minimal_profile_starts_from_an_empty_root(self):
        self.make("w/")
        plan = self.plan(context([entry(special("minimal"), "read"), entry(self.uri("w"), "write")]))
        system = [path for path in policy.MINIMAL_READ_PATHS if os.path.exists(path)]
        self.assertEqual(list(plan.mounts[:2]), [Mount("tmpfs", b"/"), Mount("dev", b"/dev")])
        self.assertEqual([mount.path for mount in plan.mounts if mount.op == "ro-bind"],
                         sorted(system + [self.path("w")]))
        self.assertEqual(plan.granted, tuple(sorted(system + [self.path("w")])))

    def test_only_the_helper_sees_our_runtime(self):
        self.make("w/")
        sandbox = context([entry(self.uri("w"), "write")])
        runtime = Host(uid=NO_DAEMON_UID, runtime_paths=(self.path("runtime"),))
        self.make("runtime/python")
        self.assertIn(Mount("ro-bind", self.path("runtime")), self.plan(sandbox, host=runtime).mounts)
        self.assertNotIn(Mount("ro-bind", self.path("runtime")), self.plan(sandbox).mounts)
        plan = self.plan(sandbox, host=runtime)
        self.assertTrue(policy.hidden_runtime(plan, self.path("runtime", "python")))
        self.assertFalse(policy.hidden_runtime(plan, self.path("w", "f")))

    def test_project_roots_are_the_workspace_roots(self):
        self.make("a/", "b/s/")
        sandbox = context([entry(special("root"), "read"), entry(special("project_roots", subpath="s"), "write")],
                          cwd=self.uri("a"), workspaceRoots=[self.uri("b")])
        self.assertIn(Mount("bind", self.path("b", "s")), self.plan(sandbox).mounts)
        without_roots = context([entry(special("root"), "read"),
                                 entry(special("project_roots", subpath=None), "write")], cwd=self.uri("a"))
        self.assertEqual([m for m in self.plan(without_roots).mounts if m.op == "bind"], [])

    def test_temporary_directories(self):
        self.make("t1/", "t2/")
        sandbox = context([entry(special("root"), "read"), entry(special("tmpdir"), "write")])
        host = Host(uid=NO_DAEMON_UID, temporary_directories=(self.path("t1"),))
        self.assertIn(Mount("bind", self.path("t1")), self.plan(sandbox, host=host).mounts)
        sandbox["temporaryDirectories"] = [self.uri("t2")]
        binds = [m for m in self.plan(sandbox, host=host).mounts if m.op == "bind"]
        self.assertEqual(binds, [Mount("bind", self.path("t2"))])

    def test_the_codex_daemon_directory_is_hidden(self):
        uid = NO_DAEMON_UID + 1
        daemon = policy.DAEMON_DIRECTORY.format(uid=uid)
        os.mkdir(daemon)
        self.addCleanup(os.rmdir, daemon)
        plan = self.plan(context([entry(special("root"), "read")]), host=Host(uid=uid))
        self.assertIn(Mount("tmpfs", os.fsencode(daemon), policy.DENY_PERMS), plan.mounts)

    def test_a_writable_root_preserves_devices(self):
        sandbox = context([entry(special("root"), "write"), entry(self.uri(), "read")])
        mounts = list(self.plan(sandbox).mounts)
        self.assertEqual(mounts[2:5], [Mount("bind", b"/"), Mount("dev", b"/dev"),
                                       Mount("bind-try", b"/dev/shm")])


class ArgumentTests(PolicyTestCase):
    def test_bubblewrap_arguments(self):
        self.make("w/.git/HEAD", "w/.agents/x", "w/.codex/x", "w/.aws/x", "w/key")
        plan = self.plan(context([entry(special("root"), "read"), entry(self.uri("w"), "write"),
                                  entry(self.uri("w", "key"), "deny")]))
        fds = iter(range(7, 100))
        w = self.path("w")
        self.assertEqual(policy.bwrap_arguments(plan, lambda: next(fds)), [
            b"--new-session", b"--die-with-parent",
            b"--ro-bind", b"/", b"/", b"--dev", b"/dev",
            b"--bind", w, w,
            *[arg for name in policy.PROTECTED_NAMES
              for arg in (b"--ro-bind", w + b"/" + name, w + b"/" + name)],
            b"--perms", b"000", b"--ro-bind-data", b"7", w + b"/key",
            b"--unshare-user", b"--unshare-pid", b"--unshare-ipc", b"--unshare-net",
            b"--proc", b"/proc", b"--cap-drop", b"ALL",
        ])

    def test_an_inherited_pid_namespace(self):
        plan = self.plan(context([entry(special("root"), "read")], "enabled"),
                         host=Host(uid=NO_DAEMON_UID, pid_namespace=False))
        arguments = policy.bwrap_arguments(plan, lambda: 0)
        self.assertNotIn(b"--unshare-pid", arguments)
        self.assertNotIn(b"--proc", arguments)
        self.assertNotIn(b"--unshare-net", arguments)


class GlobTests(PolicyTestCase):
    def test_patterns(self):
        self.make("a.pem", "d/b.pem", "d/e/c.pem", "d/e/f/g.pem", "d/x.txt", ".h/i.pem")
        found = policy.expand_glob("**/*.pem", self.root, policy.DEFAULT_GLOB_SCAN_DEPTH)
        self.assertEqual(found, sorted(self.path(name) for name in
                                       ("a.pem", "d/b.pem", "d/e/c.pem", "d/e/f/g.pem", ".h/i.pem")))
        self.assertEqual(policy.expand_glob("**/*.pem", self.root, 2),
                         sorted(self.path(name) for name in ("a.pem", "d/b.pem", ".h/i.pem")))
        self.assertEqual(policy.expand_glob(os.fsdecode(self.path("d")) + "/?.txt", None, 5),
                         [self.path("d", "x.txt")])
        self.assertEqual(policy.expand_glob("*.pem", None, 5), [])


class DenialTests(unittest.TestCase):
    def test_the_heuristic(self):
        cases = [
            (1, [("stdout", b"Permission denied\n")], True),
            (1, [("stdout", b"nothing\n")], False),
            (0, [("stdout", b"Permission denied\n")], False),
            (3, [("stderr", b"OPERATION NOT PERMITTED")], True),
            (1, [("stdout", b"my Sandbox")], True),
            (2, [("stdout", b"read-only file system")], True),
            (126, [], False),
            (127, [], False),
            (159, [], True),
            (137, [], False),
            (1, [("stdout", b"Permission de"), ("stdout", b"nied")], True),
            (1, [("stdout", b"Permission de"), ("stderr", b"nied")], True),
        ]
        for exit_code, chunks, expected in cases:
            self.assertEqual(denial.likely_denied(exit_code, chunks), expected, (exit_code, chunks))


class SeccompTests(unittest.TestCase):
    def test_programs_compile(self):
        for kind in Seccomp:
            program = seccomp.program(kind)
            self.assertTrue(program)
            self.assertEqual(len(program) % 8, 0)

    def run_filtered(self, kind: Seccomp, code: str) -> str:
        result = subprocess.run([sys.executable, "-I", "-c", code], preexec_fn=seccomp.installer(kind),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=True)
        return result.stdout.strip()

    def test_the_restricted_filter_allows_only_unix_sockets(self):
        code = (
            "import socket\n"
            "for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):\n"
            "    try:\n"
            "        socket.socket(family, socket.SOCK_STREAM).close(); print('ok')\n"
            "    except OSError as e:\n"
            "        print(e.errno)\n"
        )
        self.assertEqual(self.run_filtered(Seccomp.RESTRICTED, code).split(), ["ok", "1", "1"])

    def test_the_open_filter_allows_ip_but_not_vm_sockets(self):
        code = (
            "import socket\n"
            "for family in (socket.AF_INET, 40):\n"
            "    try:\n"
            "        socket.socket(family, socket.SOCK_STREAM).close(); print('ok')\n"
            "    except OSError as e:\n"
            "        print(e.errno)\n"
        )
        self.assertEqual(self.run_filtered(Seccomp.NO_VSOCK, code).split(), ["ok", "1"])

    def test_the_proxy_routed_filter_allows_only_ip_sockets(self):
        code = (
            "import socket\n"
            "for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_NETLINK, 40, 3, 11):\n"
            "    try:\n"
            "        socket.socket(family, socket.SOCK_DGRAM).close(); print('ok')\n"
            "    except OSError as e:\n"
            "        print(e.errno)\n"
            "for end in socket.socketpair(): end.close()\nprint('pair')\n"
        )
        self.assertEqual(self.run_filtered(Seccomp.PROXY_ROUTED, code).split(),
                         ["ok", "ok", "1", "1", "1", "1", "1", "pair"])

    def test_filtered_children_have_no_new_privileges(self):
        code = "print([l for l in open('/proc/self/status') if l.startswith(('Seccomp:', 'NoNewPrivs:'))])"
        output = self.run_filtered(Seccomp.NO_VSOCK, code)
        self.assertIn("Seccomp:\\t2", output)
        self.assertIn("NoNewPrivs:\\t1", output)
