"""
The translation of a decoded sandbox context into a confinement plan: which
parts of the file system a child sees and how (bubblewrap mounts), which
namespaces it gets, and which seccomp filter it runs under.

Pure apart from looking at the file system through the C{kind_of} function
it is given: what exists decides what can be bound, masked or skipped, as
in the reference (see C{docs/reference/sandbox.md}).
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable

from execserver import paths

#: Names inside a writable root that the child cannot change, whether or
#: not they exist: what has content stays readable, an empty or missing one
#: is replaced by an empty read-only directory (or file).
PROTECTED_NAMES = (b".git", b".agents", b".codex", b".aws")

#: What the C{minimal} special path lets a child read on Linux.
MINIMAL_READ_PATHS = (b"/bin", b"/etc", b"/lib", b"/lib64", b"/sbin", b"/usr")

#: The directory of a local codex app-server's sockets; a sandboxed child
#: must not reach them, so it is hidden wherever it is visible.
DAEMON_DIRECTORY = "/tmp/codex-daemon-{uid}"

#: How deep a glob pattern's C{**} looks when the profile does not say.
DEFAULT_GLOB_SCAN_DEPTH = 64

#: Permissions of a masking directory and of a denied path's stand-in.
MASK_PERMS = "555"
DENY_PERMS = "000"


class Kind(enum.Enum):
    MISSING = "missing"
    DIRECTORY = "directory"
    OTHER = "other"
    #: An empty directory or empty regular file (for protected names).
    EMPTY_DIRECTORY = "empty directory"
    EMPTY_FILE = "empty file"


def kind_of(path: bytes, look_inside: bool = False) -> Kind:
    """
    What C{path} is on this host, following symbolic links as bubblewrap's
    mounts do; with C{look_inside}, whether it is empty too.
    """
    try:
        info = os.stat(path)
    except OSError:
        return Kind.MISSING
    if stat.S_ISDIR(info.st_mode):
        if look_inside:
            try:
                with os.scandir(path) as entries:
                    if next(entries, None) is None:
                        return Kind.EMPTY_DIRECTORY
            except OSError:
                pass
        return Kind.DIRECTORY
    if look_inside and stat.S_ISREG(info.st_mode) and info.st_size == 0:
        return Kind.EMPTY_FILE
    return Kind.OTHER


class Seccomp(enum.Enum):
    """
    The seccomp filters a child can run under (see L{execserver.sandbox.seccomp}).
    """

    #: No network: only Unix sockets can be made, and no socket call that
    #: reaches out works; no ptrace, no io_uring.
    RESTRICTED = "restricted"
    #: Network allowed, but no VM sockets and no io_uring.
    NO_VSOCK = "no-vsock"
    #: Managed networking: the child's own network namespace, where only
    #: Internet sockets can be made (no Unix sockets that could reach the
    #: host's services); no ptrace, no io_uring.
    PROXY_ROUTED = "proxy-routed"


@dataclass(frozen=True)
class Host:
    """
    What the translation needs to know about this executor.
    """

    uid: int
    #: What the C{tmpdir} special path names when the context does not list
    #: its temporary directories.
    temporary_directories: tuple[bytes, ...] = ()
    #: Give the child its own PID namespace (and /proc).
    pid_namespace: bool = True
    #: Read-only paths a child needs where the root is not readable (the
    #: interpreter and package of our file system helper).
    runtime_paths: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Mount:
    """
    One bubblewrap mount operation. C{op} is one of: C{ro-bind}, C{bind},
    C{tmpfs} (a directory), C{file} (an empty read-only file), C{dev},
    C{bind-try}. C{perms} applies to C{tmpfs} and C{file}; a read-only
    C{tmpfs} is remounted read-only after it is made.
    """

    op: str
    path: bytes
    perms: str | None = None


@dataclass(frozen=True)
class Plan:
    """
    How to confine a child: under bubblewrap (C{mounts}, namespaces) or not
    at all, and with which seccomp filter (if any).
    """

    wrap: bool
    seccomp: Seccomp | None
    mounts: tuple[Mount, ...] = ()
    unshare_net: bool = False
    pid_namespace: bool = True
    #: Paths that bubblewrap will create on the host as mount points (they
    #: do not exist now); they are removed again when the child is gone.
    created: tuple[bytes, ...] = field(default=())
    #: Every stand-in the mounts rely on (the protected names of writable
    #: roots, placeholders of denied paths), whether or not it exists now:
    #: one that a concurrent child's bubblewrap made must outlive this child.
    stand_ins: tuple[bytes, ...] = field(default=())
    #: Where the root is not readable: the paths the profile grants. Our
    #: file system helper also sees its runtime, which it must not serve.
    granted: tuple[bytes, ...] | None = None
    #: What of our runtime the child sees beyond what the profile grants.
    runtime: tuple[bytes, ...] = ()
    #: The profile lets the child read everything (the root, nothing denied).
    reads_everything: bool = False
    #: Managed networking: the child reaches only the proxies its
    #: environment names, through a bridge (L{execserver.sandbox.bridge}).
    proxied: bool = False
    #: The loopback ports a proxy may listen on; empty allows any.
    loopback_ports: tuple[int, ...] = ()

    @property
    def confined(self) -> bool:
        return self.wrap or self.seccomp is not None


UNCONFINED = Plan(wrap=False, seccomp=None)

#: What a child under managed networking sees of a file system its profile
#: does not restrict: all of it, writable, with a /dev of its own.
WHOLE_HOST_MOUNTS = (Mount("bind", b"/"), Mount("dev", b"/dev"), Mount("bind-try", b"/dev/shm"))


def _under(path: bytes, root: bytes) -> bool:
    return root == b"/" or path == root or path.startswith(root.rstrip(b"/") + b"/")


def _join(root: bytes, subpath: str | None) -> bytes:
    if not subpath:
        return root
    return paths.normalize(root.rstrip(b"/") + b"/" + subpath.encode("utf-8", "surrogateescape"))


def context_cwd(sandbox: dict) -> str | None:
    cwd = sandbox["cwd"]
    if cwd is None and sandbox["policyContext"] is not None:
        cwd = sandbox["policyContext"]["cwd"]
    return cwd


def _workspace_roots(sandbox: dict) -> list[bytes]:
    uris = list(sandbox["workspaceRoots"])
    if sandbox["policyContext"] is not None:
        uris.extend(sandbox["policyContext"]["workspaceRoots"])
    roots = []
    for uri in uris:
        root = paths.to_host_path(uri)
        if root not in roots:
            roots.append(root)
    return roots


def _special_paths(value: dict, sandbox: dict, host: Host) -> list[bytes]:
    kind = value["kind"]
    if kind == "root":
        return [b"/"]
    if kind == "minimal":
        return list(MINIMAL_READ_PATHS)
    if kind == "project_roots":
        # Symbolic workspace roots are the ones the context names, as this
        # executor's paths.
        return [_join(root, value["subpath"]) for root in _workspace_roots(sandbox)]
    if kind == "tmpdir":
        listed = sandbox["temporaryDirectories"]
        if listed is not None:
            return [paths.to_host_path(uri) for uri in listed]
        return list(host.temporary_directories)
    if kind == "slash_tmp":
        return [b"/tmp"]
    return []  # unknown: a path this executor does not know


def _glob_regex(pattern: str) -> re.Pattern:
    """
    A glob as a regular expression over C{/}-separated paths: C{**/} spans
    any number of directories, C{*} and C{?} stay within one name.
    """
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def expand_glob(pattern: str, cwd: bytes | None, max_depth: int) -> list[bytes]:
    """
    The existing paths a glob pattern names, at most C{max_depth} levels
    below its fixed prefix; a relative pattern is relative to C{cwd}.
    """
    if not pattern.startswith("/"):
        if cwd is None:
            return []
        pattern = os.fsdecode(cwd).rstrip("/") + "/" + pattern
    parts = pattern.split("/")
    fixed = []
    for part in parts[1:]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    base = "/" + "/".join(fixed)
    if len(fixed) == len(parts) - 1:
        return [os.fsencode(base)] if os.path.lexists(base) else []
    regex = _glob_regex(pattern)
    found = []
    stack = [(base, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            full = directory.rstrip("/") + "/" + entry.name
            if regex.match(full):
                found.append(os.fsencode(full))
            if depth + 1 < max_depth and entry.is_dir(follow_symlinks=False):
                stack.append((full, depth + 1))
    return sorted(found)


def _entry_paths(entry: dict, sandbox: dict, host: Host, cwd: bytes | None, depth: int) -> list[bytes]:
    where = entry["path"]
    if where["type"] == "path":
        return [paths.to_host_path(where["path"])]
    if where["type"] == "special":
        return _special_paths(where["value"], sandbox, host)
    return expand_glob(where["pattern"], cwd, depth)


def _unique(items: Iterable[bytes]) -> list[bytes]:
    seen: list[bytes] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def network_restricted(permissions: dict) -> bool:
    return permissions.get("network") == "restricted"


def plan(sandbox: dict, restrictive: bool, host: Host,
         kind: Callable[..., Kind] = kind_of, managed_network: dict | None = None) -> Plan:
    """
    The confinement a sandbox context asks for.

    C{restrictive} says whether the context restricts file system access
    (L{execserver.sandbox.schema.restricts}); only then is the child
    wrapped in bubblewrap. Otherwise it runs in place, under the network
    filter if the network is restricted.

    With C{managed_network} (the request enforces managed networking; its
    C{managedNetwork}, possibly empty) every context, even a disabled one,
    is wrapped: the child gets a network namespace of its own whose only
    way out is the bridge to the proxies its environment names.
    """
    permissions = sandbox["permissions"]
    proxied = managed_network is not None
    loopback_ports = tuple(managed_network["loopbackPorts"]) if proxied else ()
    if proxied and not restrictive:
        return Plan(
            wrap=True, seccomp=Seccomp.PROXY_ROUTED, mounts=WHOLE_HOST_MOUNTS, unshare_net=True,
            pid_namespace=host.pid_namespace, reads_everything=True, proxied=True,
            loopback_ports=loopback_ports,
        )
    if permissions["type"] == "disabled":
        return UNCONFINED
    restricted_net = network_restricted(permissions)
    if not restrictive:
        return Plan(wrap=False, seccomp=Seccomp.RESTRICTED) if restricted_net else UNCONFINED
    file_system = permissions["file_system"]
    cwd_uri = context_cwd(sandbox)
    cwd = paths.to_host_path(cwd_uri) if cwd_uri is not None else None
    depth = file_system["glob_scan_max_depth"] or DEFAULT_GLOB_SCAN_DEPTH
    reads: list[bytes] = []
    writes: list[bytes] = []
    denies: list[bytes] = []
    denying = False
    for entry in file_system["entries"]:
        denying = denying or entry["access"] == "deny"
        targets = _entry_paths(entry, sandbox, host, cwd, depth)
        {"read": reads, "write": writes, "deny": denies}[entry["access"]].extend(targets)
    mounts, created, stand_ins, granted = _mounts(_unique(reads), _unique(writes), _unique(denies), host, kind)
    if proxied:
        seccomp = Seccomp.PROXY_ROUTED
    else:
        seccomp = Seccomp.RESTRICTED if restricted_net else Seccomp.NO_VSOCK
    return Plan(
        wrap=True,
        seccomp=seccomp,
        mounts=tuple(mounts),
        unshare_net=restricted_net or proxied,
        pid_namespace=host.pid_namespace,
        created=tuple(created),
        stand_ins=tuple(stand_ins),
        granted=granted,
        runtime=host.runtime_paths if granted is not None else (),
        reads_everything=granted is None and not denying,
        proxied=proxied,
        loopback_ports=loopback_ports,
    )


def _mounts(reads: list[bytes], writes: list[bytes], denies: list[bytes], host: Host,
            kind: Callable[..., Kind]) -> tuple[list[Mount], list[bytes], list[bytes], tuple[bytes, ...] | None]:
    mounts: list[Mount] = []
    created: list[bytes] = []
    stand_ins: list[bytes] = []
    daemon = os.fsencode(DAEMON_DIRECTORY.format(uid=host.uid))
    daemon_exists = kind(daemon) is Kind.DIRECTORY
    writes = sorted(path for path in writes if kind(path) is Kind.DIRECTORY)
    root_readable = b"/" in reads or b"/" in writes

    def hide_daemon(under: bytes) -> None:
        if daemon_exists and _under(daemon, under):
            mounts.append(Mount("tmpfs", daemon, DENY_PERMS))

    granted = None
    if root_readable:
        mounts += [Mount("ro-bind", b"/"), Mount("dev", b"/dev")]
        hide_daemon(b"/")
    else:
        granted = tuple(sorted(path for path in _unique(reads + writes) if kind(path) is not Kind.MISSING))
        visible = sorted(_unique(list(granted) + [
            path for path in host.runtime_paths if kind(path) is not Kind.MISSING
        ]))
        mounts += [Mount("tmpfs", b"/"), Mount("dev", b"/dev")]
        mounts += [Mount("ro-bind", path) for path in visible]
    for root in writes:
        mounts.append(Mount("bind", root))
        if root == b"/":
            mounts += [Mount("dev", b"/dev"), Mount("bind-try", b"/dev/shm")]
        hide_daemon(root)
        for name in PROTECTED_NAMES:
            protected = root.rstrip(b"/") + b"/" + name
            stand_ins.append(protected)
            what = kind(protected, look_inside=True)
            if what is Kind.MISSING:
                created.append(protected)
            if what in (Kind.MISSING, Kind.EMPTY_DIRECTORY):
                mounts.append(Mount("tmpfs", protected, MASK_PERMS))
            elif what is Kind.EMPTY_FILE:
                mounts.append(Mount("file", protected))
            else:
                mounts.append(Mount("ro-bind", protected))
    for path in reads:
        if path != b"/" and any(_under(path, root) and path != root for root in writes) \
                and kind(path) is not Kind.MISSING:
            mounts.append(Mount("ro-bind", path))
    for path in denies:
        what = kind(path)
        if what is Kind.DIRECTORY:
            mounts.append(Mount("tmpfs", path, DENY_PERMS))
        elif what is Kind.OTHER:
            mounts.append(Mount("file", path, DENY_PERMS))
        elif any(_under(path, root) for root in writes) and kind(os.path.dirname(path)) is Kind.DIRECTORY:
            # Keep it from being made: an empty read-only file stands there.
            created.append(path)
            stand_ins.append(path)
            mounts.append(Mount("file", path))
    return mounts, _unique(created), _unique(stand_ins), granted


def hidden_runtime(plan: Plan, path: bytes) -> bool:
    """
    Whether C{path} is visible to C{plan}'s child only because it is part
    of our runtime, not because the profile grants it.
    """
    return any(_under(path, runtime) for runtime in plan.runtime) and not any(
        _under(path, root) for root in plan.granted or ()
    )


def bwrap_arguments(plan: Plan, file_fd: Callable[[], int]) -> list[bytes]:
    """
    The bubblewrap options of C{plan} (everything before C{--}).
    C{file_fd} gives a fresh descriptor of empty content for each empty
    read-only file.
    """
    args: list[bytes] = [b"--new-session", b"--die-with-parent"]
    for mount in plan.mounts:
        path = mount.path
        if mount.op == "ro-bind":
            args += [b"--ro-bind", path, path]
        elif mount.op == "bind":
            args += [b"--bind", path, path]
        elif mount.op == "bind-try":
            args += [b"--bind-try", path, path]
        elif mount.op == "dev":
            args += [b"--dev", path]
        elif mount.op == "tmpfs":
            if mount.perms is not None:
                args += [b"--perms", mount.perms.encode()]
            args += [b"--tmpfs", path]
            if path != b"/":
                args += [b"--remount-ro", path]
        elif mount.op == "file":
            if mount.perms is not None:
                args += [b"--perms", mount.perms.encode()]
            args += [b"--ro-bind-data", b"%d" % file_fd(), path]
    args += [b"--unshare-user"]
    if plan.pid_namespace:
        args += [b"--unshare-pid"]
    args += [b"--unshare-ipc"]
    if plan.unshare_net:
        args += [b"--unshare-net"]
    if plan.pid_namespace:
        args += [b"--proc", b"/proc"]
    args += [b"--cap-drop", b"ALL"]
    return args
