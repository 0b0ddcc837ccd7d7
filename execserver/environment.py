"""
C{environment/info} and C{environment/status}: what this executor host is.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import sys

import execserver
from execserver import params as P
from execserver import paths
from execserver.sandbox import runner
from execserver.server import Method

_KNOWN_SHELLS = {
    "zsh": ("zsh", ["/bin/zsh"]),
    "bash": ("bash", ["/bin/bash", "/usr/bin/bash"]),
    "sh": ("sh", ["/bin/sh"]),
    "pwsh": ("powershell", ["/usr/local/bin/pwsh"]),
    "powershell": ("powershell", ["/usr/local/bin/pwsh"]),
}


def _locate(name: str, preferred: str | None) -> str | None:
    if preferred and os.path.isfile(preferred):
        return preferred
    found = shutil.which(name)
    if found:
        return found
    for fallback in _KNOWN_SHELLS[name][1]:
        if os.path.isfile(fallback):
            return fallback
    return None


def detect_shell() -> dict[str, str]:
    """
    The user's login shell from the password database, else bash or zsh,
    else C{/bin/sh}.
    """
    try:
        login = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        login = ""
    base = os.path.basename(login)
    if base in _KNOWN_SHELLS:
        found = _locate(base, login)
        if found:
            return {"name": _KNOWN_SHELLS[base][0], "path": found}
    for name in ("bash", "zsh"):
        found = _locate(name, None)
        if found:
            return {"name": name, "path": found}
    return {"name": "sh", "path": "/bin/sh"}


#: What this executor offers; the sandboxing ones hold only where
#: sandboxes can be enforced (L{capabilities}).
CAPABILITIES = {
    "networkProxyLaunch": False,
    "networkProxyReviewDomains": False,
    "credentialMasking": False,
    "credentialMaskingCustomProviders": False,
    "capabilityDiscoverySandbox": False,
    "fsWatchMissing": True,
    "capabilityDiscoveryV2": True,
    "environmentConfigRead": True,
    "httpHeaderEnvVars": True,
    "sandboxedFileStreaming": False,
    "fileWriteStreaming": True,
    "shellSnapshotV2": False,
    "windowsMxc": False,
    "linuxRootWritePreservesDevices": False,
    "linuxApprovedRootWritePreservesRestrictions": False,
}


#: Identifies this executor implementation, as the reference's build-time
#: provider id identifies its own build.
PROVIDER_ID = "sha256:" + hashlib.sha256(
    f"execserver {execserver.__version__}".encode()
).hexdigest()


def home_directory() -> str | None:
    """
    The user's home: C{$HOME}, else the password database's; only an
    absolute path counts.
    """
    home = os.environ.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            return None
    return home if home.startswith("/") else None


def _temp_dir(cwd: bytes | None) -> str | None:
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir is None:
        return "/tmp"
    if tmpdir.startswith("/"):
        return tmpdir.rstrip("/") or "/"
    if cwd is None:
        return None
    # An empty TMPDIR names the working directory, as a relative one is
    # relative to it.
    return os.path.join(os.fsdecode(cwd), tmpdir).rstrip("/")


def environment_info() -> dict:
    """
    Computed on every call: the working directory or TMPDIR may change.
    """
    try:
        cwd = os.getcwdb()
    except OSError:
        cwd = None
    home = home_directory()
    temp = _temp_dir(cwd)
    info = {
        "shell": detect_shell(),
        "executorVersion": execserver.__version__,
        "providerId": PROVIDER_ID,
        "cwd": paths.from_host_path(cwd) if cwd is not None else None,
    }
    if home is not None:
        info["userHomeDir"] = paths.from_host_path(home)
    info["platformOs"] = sys.platform
    info["temporaryDirectories"] = (
        [paths.from_host_path(temp)] if os.environ.get("TMPDIR") and temp else []
    )
    if temp is not None:
        info["tempDir"] = paths.from_host_path(temp)
    info["capabilities"] = capabilities()
    return info


def capabilities() -> dict[str, bool]:
    """
    Streaming files opened in a sandbox, and keeping devices usable under a
    writable root, both need bubblewrap here.
    """
    result = dict(CAPABILITIES)
    available = runner.sandboxing.available
    result["sandboxedFileStreaming"] = available
    result["linuxRootWritePreservesDevices"] = available
    return result


def info(connection, params) -> dict:
    return connection.server.environment_info()


def status(connection, params) -> dict:
    return {"status": "ready"}


METHODS = {
    "environment/info": Method("environment info", P.Unit(), info, control=True),
    "environment/status": Method("environment status", P.Unit(), status, control=True),
}
