"""
C{environment/info} and C{environment/status}: what this executor host is.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile

import execserver
from execserver import params as P
from execserver import paths
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


CAPABILITIES = {
    "networkProxyLaunch": False,
    "networkProxyReviewDomains": False,
    "credentialMasking": False,
    "credentialMaskingCustomProviders": False,
    "capabilityDiscoverySandbox": False,
    "fsWatchMissing": False,
    "capabilityDiscoveryV2": False,
    "environmentConfigRead": False,
    "httpHeaderEnvVars": False,
    "sandboxedFileStreaming": False,
    "fileWriteStreaming": False,
    "shellSnapshotV2": False,
    "windowsMxc": False,
    "linuxRootWritePreservesDevices": False,
    "linuxApprovedRootWritePreservesRestrictions": False,
}


def environment_info() -> dict:
    try:
        cwd = paths.from_host_path(os.getcwdb())
    except OSError:
        cwd = None
    home = os.path.expanduser("~")
    tmpdir = os.environ.get("TMPDIR")
    temporary = [paths.from_host_path(os.path.abspath(tmpdir))] if tmpdir else []
    return {
        "shell": detect_shell(),
        "executorVersion": execserver.__version__,
        "cwd": cwd,
        "userHomeDir": paths.from_host_path(home) if home.startswith("/") else None,
        "platformOs": sys.platform,
        "prependPathDirs": [],
        "temporaryDirectories": temporary,
        "tempDir": paths.from_host_path(tempfile.gettempdir()),
        "capabilities": dict(CAPABILITIES),
    }


def info(connection, params) -> dict:
    return connection.server.environment_info()


def status(connection, params) -> dict:
    return {"status": "ready"}


METHODS = {
    "environment/info": Method("environment info", P.Unit(), info, control=True),
    "environment/status": Method("environment status", P.Unit(), status, control=True),
}
