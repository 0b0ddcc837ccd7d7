"""
Applying a confinement plan: a child wrapped in bubblewrap (with the seccomp
filter handed to it as a descriptor), or run in place under the filter.

L{Sandboxing} holds this executor's settings (which bubblewrap, whether
children get their own PID namespace) and finds out once whether it can
enforce a sandbox here at all; when it cannot, a sandbox that restricts
anything fails with a message naming what is missing. It never runs such a
child unconfined.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from twisted.logger import Logger

from execserver.sandbox import policy, proxyroute, seccomp
from execserver.sandbox.bridge import ProxyBridge
from execserver.sandbox.policy import UNCONFINED, Plan

log = Logger()

__all__ = ["UNCONFINED", "Launch", "SandboxConfig", "SandboxUnavailable", "Sandboxing", "configure"]

#: What C{process/start} answers for a sandboxed child on Linux.
SANDBOX_TYPE = "linuxSeccomp"

#: The reference's refusal, followed by what is missing here.
CANNOT_ENFORCE = "sandbox intent cannot be enforced on this executor"

#: How long the one-off check that bubblewrap works may take.
CHECK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SandboxConfig:
    """
    How this executor sandboxes: the bubblewrap program (a path, or None
    to find C{bwrap} on C{PATH}) and whether children get their own PID
    namespace (C{--linux-sandbox-pid-namespace isolate|inherit}).
    """

    bwrap: str | None = None
    pid_namespace: bool = True


class SandboxUnavailable(Exception):
    """
    This executor cannot enforce a restrictive sandbox; the message says why.
    """


class _MountTargets:
    """
    Mount points that bubblewrap makes on the host for masks of names that
    did not exist. Each is removed once no running child relies on it, if
    it is still the empty directory or file bubblewrap left. A child relies
    on every stand-in of its plan, also those a concurrent child's
    bubblewrap made before this child's plan was drawn up: the kernel
    detaches a mount when its mount point is removed on the host, so
    removing it under a running child would unmask the name for it.
    """

    def __init__(self) -> None:
        self._users: dict[bytes, int] = {}
        #: Stand-ins that bubblewrap made for our children.
        self._made: set[bytes] = set()
        # The file system helper runs in the thread pool.
        self._lock = threading.Lock()

    def acquire(self, plan: Plan) -> None:
        with self._lock:
            self._made.update(plan.created)
            for target in _relied_on(plan):
                self._users[target] = self._users.get(target, 0) + 1

    def release(self, plan: Plan) -> None:
        with self._lock:
            for target in _relied_on(plan):
                count = self._users.get(target, 0) - 1
                if count > 0:
                    self._users[target] = count
                    continue
                self._users.pop(target, None)
                if target in self._made:
                    self._made.discard(target)
                    _remove_empty(target)


def _relied_on(plan: Plan) -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(plan.created + plan.stand_ins))


def _remove_empty(path: bytes) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        elif os.path.isfile(path) and os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass  # in use again, or no longer ours to remove


#: What a child under managed networking runs first, in its sandbox.
NET_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netlaunch.py")

#: The system's shared libraries and their loader, which our interpreter needs.
SYSTEM_LIBRARIES = ("/lib", "/lib64", "/usr/lib", "/usr/lib64")


def _runtime_paths() -> tuple[bytes, ...]:
    """
    What our file system helper needs to run where the root is not
    readable: the interpreter, its library, this package and the system's
    shared libraries.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = {
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.prefix),
        os.path.dirname(os.path.realpath(sys.executable)),
        package_root,
        *SYSTEM_LIBRARIES,
    }
    return tuple(sorted(os.fsencode(path) for path in found))


class Sandboxing:
    """
    This executor's sandboxing: settings, the check that it works, and the
    bookkeeping of running sandboxed children.
    """

    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:
        self.config = config
        self._bwrap: str | None = None
        self._problem: str | None = None
        self._checked = False
        self._supports_argv0 = False
        self.targets = _MountTargets()
        self.runtime_paths = _runtime_paths()

    def configure(self, config: SandboxConfig) -> None:
        self.config = config
        self._checked = False

    def host(self, helper: bool = False) -> policy.Host:
        """
        This executor's facts; C{helper} if the child is our file system
        helper, which needs its runtime.
        """
        tmpdir = os.environ.get("TMPDIR")
        return policy.Host(
            uid=os.getuid(),
            temporary_directories=(os.fsencode(tmpdir),) if tmpdir and tmpdir.startswith("/") else (),
            pid_namespace=self.config.pid_namespace,
            runtime_paths=self.runtime_paths if helper else (),
        )

    def problem(self) -> str | None:
        """
        Why restrictive sandboxes cannot be enforced here, or None if they can.
        Checked once: bubblewrap must be found and able to make a user
        namespace, and libseccomp must build our filters.
        """
        if not self._checked:
            self._problem = self._check()
            self._checked = True
            if self._problem is not None:
                log.warn("sandboxing unavailable: {problem}", problem=self._problem)
        return self._problem

    def _check(self) -> str | None:
        try:
            for kind in policy.Seccomp:
                seccomp.program(kind)
        except seccomp.SeccompUnavailable as e:
            return str(e)
        configured = self.config.bwrap
        bwrap = shutil.which(configured) if configured else shutil.which("bwrap")
        if bwrap is None:
            if configured:
                return f"bubblewrap was not found at {configured}"
            return "bubblewrap (bwrap) was not found on PATH; install the bubblewrap package"
        try:
            result = subprocess.run(
                [bwrap, "--ro-bind", "/", "/", "--unshare-user", "--unshare-pid",
                 "--unshare-ipc", "--unshare-net", "--die-with-parent", "--", "/bin/true"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                timeout=CHECK_TIMEOUT_SECONDS,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bubblewrap ({bwrap}) cannot be run: {e}"
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", "replace").strip()
            return f"bubblewrap ({bwrap}) cannot create a sandbox (user namespaces unavailable?): {detail}"
        self._bwrap = bwrap
        # --argv0 came with bubblewrap 0.9; without it a sandboxed child's
        # argv[0] is its program.
        usage = subprocess.run([bwrap, "--help"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._supports_argv0 = b"--argv0" in usage.stdout
        return None

    @property
    def available(self) -> bool:
        return self.problem() is None

    def require(self) -> str:
        """
        The bubblewrap program to use.

        @raise SandboxUnavailable: naming what is missing.
        """
        problem = self.problem()
        if problem is not None:
            raise SandboxUnavailable(f"{CANNOT_ENFORCE}: {problem}")
        return self._bwrap

    def plan(self, sandbox: dict, restrictive: bool, helper: bool = False,
             managed_network: dict | None = None) -> Plan:
        """
        How to confine a child (our file system helper if C{helper}); with
        C{managed_network}, a child that reaches only its proxies.

        @raise SandboxUnavailable: if the plan needs what this host lacks.
        """
        # Under managed networking our launcher runs first, in the sandbox.
        runtime = helper or managed_network is not None
        plan = policy.plan(sandbox, restrictive, self.host(runtime), managed_network=managed_network)
        if plan.wrap:
            self.require()
        elif plan.seccomp is not None:
            try:
                seccomp.program(plan.seccomp)
            except seccomp.SeccompUnavailable as e:
                raise SandboxUnavailable(f"{CANNOT_ENFORCE}: {e}") from None
        return plan

    def launch(self, plan: Plan, program: str, argv: list[str], executable: str,
               env: dict[str, str] | None = None) -> "Launch":
        """
        What to exec to run C{program} with C{argv} under C{plan} (in place,
        C{executable} is the program found on the child's PATH; C{env} is
        the child's environment, which names its proxies under managed
        networking); the caller closes the launch's descriptors once the
        child has started, and starts its bridge, if any.
        """
        if not plan.wrap:
            install = seccomp.installer(plan.seccomp) if plan.seccomp is not None else None
            return Launch(argv, executable, (), install)
        bwrap = self.require()
        fds: list[int] = []
        bridge = None

        def empty_file() -> int:
            fd = os.memfd_create("empty", os.MFD_CLOEXEC)
            fds.append(fd)
            return fd

        try:
            command = [bwrap, *policy.bwrap_arguments(plan, empty_file)]
            if plan.proxied:
                inner, bridge = _net_launcher(plan, env or {}, fds)
                command += ["--", *inner, program, *argv]
            else:
                if plan.seccomp is not None:
                    fd = seccomp.program_fd(plan.seccomp)
                    fds.append(fd)
                    command += [b"--seccomp", b"%d" % fd]
                if argv[0] != program and self._supports_argv0:
                    command += ["--argv0", argv[0]]
                # bubblewrap finds a bare name on the child's PATH inside the sandbox.
                command += ["--", program, *argv[1:]]
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Launch(command, bwrap, tuple(fds), None, bridge)


def _net_launcher(plan: Plan, env: dict[str, str], fds: list[int]) -> tuple[list, ProxyBridge | None]:
    """
    The command that starts a child under managed networking inside its
    sandbox (L{execserver.sandbox.netlaunch}), and the bridge to its
    proxies; or, if its environment names no proxy it may reach, a command
    that fails as the reference's does. Descriptors the child inherits are
    added to C{fds}.
    """
    try:
        routes = proxyroute.plan_routes(env, plan.loopback_ports)
    except proxyroute.RouteError as e:
        spec: dict = {"error": str(e)}
        bridge = None
    else:
        filter_fd = seccomp.program_fd(plan.seccomp)
        fds.append(filter_fd)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control = theirs.detach()
        fds.append(control)
        bridge = ProxyBridge(ours, routes.endpoints)
        spec = {
            "control": control,
            "seccomp": filter_fd,
            "endpoints": len(routes.endpoints),
            "routes": [[r.key, r.endpoint, r.before_port, r.after_port] for r in routes.routes],
            "lcCtype": env.get("LC_CTYPE"),
        }
    # -S: no site packages, -I: nothing from the child's PYTHON* variables.
    return [sys.executable, "-I", "-S", NET_LAUNCHER, json.dumps(spec)], bridge


@dataclass
class Launch:
    """
    The program to exec (bubblewrap, or the child itself), the descriptors
    it must inherit, what to run in the child before exec, and the bridge
    to its proxies.
    """

    argv: list
    executable: str
    pass_fds: tuple[int, ...]
    before_exec: Callable[[], None] | None
    #: Managed networking's host end, to start once the child has started.
    bridge: ProxyBridge | None = None

    def close(self) -> None:
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = ()


#: This executor's sandboxing; the service configures it from its options.
sandboxing = Sandboxing()


def configure(config: SandboxConfig) -> None:
    sandboxing.configure(config)
