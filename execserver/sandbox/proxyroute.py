"""
Managed networking's routes: which of a child's proxy variables name a proxy
on this host's loopback, and what they must say inside the child's network
namespace, where that proxy is reached through a bridge on a new loopback
port.

The rules are the reference's (0.169.0, probed; docs/reference/sandbox.md
§9): only the variables of L{PROXY_ENV_KEYS}, spelled exactly so; a value
without a scheme is read as C{http://}; only C{localhost} and C{127.0.0.1}
are loopback hosts; a variable naming anything else is left alone. The
rewritten value keeps scheme, user, path, query and fragment, with host
C{127.0.0.1} and the bridge's port.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import SplitResult, urlsplit

#: The variables that are routed, in exactly this spelling.
PROXY_ENV_KEYS = frozenset((
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY", "WS_PROXY", "WSS_PROXY",
    "YARN_HTTP_PROXY", "YARN_HTTPS_PROXY",
    "NPM_CONFIG_HTTP_PROXY", "NPM_CONFIG_HTTPS_PROXY", "NPM_CONFIG_PROXY",
    "BUNDLE_HTTP_PROXY", "BUNDLE_HTTPS_PROXY", "PIP_PROXY",
    "DOCKER_HTTP_PROXY", "DOCKER_HTTPS_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "ws_proxy", "wss_proxy",
    "npm_config_http_proxy", "npm_config_https_proxy", "npm_config_proxy",
))

#: The hosts that count as this host's loopback (compared without case).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")

#: Where the bridge connects for every loopback host.
LOOPBACK_ADDRESS = "127.0.0.1"

#: Schemes whose URLs always have a host and a path (WHATWG "special"
#: schemes), with the port that is not written out.
SPECIAL_SCHEME_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}

#: A proxy's port when its URL names none (or its scheme's default).
DEFAULT_PROXY_PORTS = {"https": 443, "socks5": 1080, "socks5h": 1080, "socks4": 1080, "socks4a": 1080}
DEFAULT_PROXY_PORT = 80

#: The reference's reasons, after "failed to prepare host proxy routing bridge: ".
NO_PROXY_VARIABLES = "managed proxy mode requires proxy environment variables"
NO_LOOPBACK_ENDPOINT = "managed proxy mode requires parseable loopback proxy endpoints"
OUTSIDE_CONTEXT = "proxy endpoint is outside the managed sandbox context"

#: Characters a URL's path, query and fragment carry percent-encoded.
_ENCODED = {
    "path": ' "<>`{}',
    "query": ' "<>#',
    "fragment": ' "<>`',
}


class RouteError(Exception):
    """
    The child cannot be routed; the message is the reference's reason.
    """


@dataclass(frozen=True)
class Route:
    """
    One variable: the proxy it names (an index into L{Routes.endpoints}),
    and its value inside the sandbox as the text around the bridge's port.
    """

    key: str
    endpoint: int
    before_port: str
    after_port: str


@dataclass(frozen=True)
class Routes:
    """
    The proxies to bridge (loopback ports of this host, each bridged once)
    and the variables that name them.
    """

    endpoints: tuple[int, ...]
    routes: tuple[Route, ...]


def _percent_encode(text: str, characters: str) -> str:
    return "".join(f"%{ord(c):02X}" if c in characters or ord(c) < 0x20 else c for c in text)


def _normalized_host(host: str, special: bool) -> str:
    """
    The host as a URL parser would keep it: an IPv4 address of a special
    scheme in its dotted form (C{127.1} is C{127.0.0.1}), names of a
    special scheme in lower case.
    """
    if not special:
        return host
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return host.lower()


def _parse(value: str) -> tuple[SplitResult, str, bool] | None:
    """
    The URL a proxy variable names, its scheme (lower case), and whether it
    was written with one; None if it is no URL with a host.
    """
    had_scheme = "://" in value
    candidate = value if had_scheme else "http://" + value
    try:
        parts = urlsplit(candidate)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        return None
    if any(c.isspace() for c in parts.netloc):
        return None
    return parts, scheme, had_scheme


def loopback_port(value: str) -> int | None:
    """
    The port of this host's loopback that a proxy variable's value names,
    or None if it names no proxy there.
    """
    parsed = _parse(value)
    if parsed is None:
        return None
    parts, scheme, _ = parsed
    special = scheme in SPECIAL_SCHEME_PORTS
    host = parts.hostname if special else _raw_host(parts)
    host = _normalized_host(host, special)
    if host.lower() not in LOOPBACK_HOSTS:
        return None
    port = parts.port
    if port is None or port == SPECIAL_SCHEME_PORTS.get(scheme):
        port = DEFAULT_PROXY_PORTS.get(scheme, DEFAULT_PROXY_PORT)
    return port or None


def _raw_host(parts: SplitResult) -> str:
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.partition(":")[0]


def rewritten(value: str) -> tuple[str, str]:
    """
    A proxy variable's value with host C{127.0.0.1} and a new port, as the
    text before and after that port.
    """
    parts, scheme, had_scheme = _parse(value.strip())
    userinfo = parts.netloc.rpartition("@")[0]
    before = f"{scheme}://" + (userinfo + "@" if userinfo else "") + LOOPBACK_ADDRESS + ":"
    path = _percent_encode(parts.path, _ENCODED["path"])
    if not path and scheme in SPECIAL_SCHEME_PORTS:
        path = "/"
    after = path
    # urlsplit drops an empty query or fragment; the URL keeps its marks.
    if parts.query or "?" in value:
        after += "?" + _percent_encode(parts.query, _ENCODED["query"])
    if parts.fragment or "#" in value:
        after += "#" + _percent_encode(parts.fragment, _ENCODED["fragment"])
    if not had_scheme and before.startswith("http://"):
        before = before[len("http://"):]
    if not value.endswith("/") and "?" not in value and "#" not in value and after.endswith("/"):
        after = after[:-1]
    return before, after


def plan_routes(env: dict[str, str], loopback_ports: Iterable[int] = ()) -> Routes:
    """
    The routes of a child with environment C{env}; C{loopback_ports}, if
    any, are the only ports a routed proxy may listen on.

    @raise RouteError: no variable names a proxy on this host's loopback,
        or one names a port outside C{loopback_ports}.
    """
    allowed = set(loopback_ports)
    found: list[tuple[str, int]] = []
    configured = False
    for key in sorted(env):
        if key not in PROXY_ENV_KEYS:
            continue
        value = env[key].strip()
        if not value:
            continue
        configured = True
        port = loopback_port(value)
        if port is not None:
            found.append((key, port))
    if not found:
        raise RouteError(NO_LOOPBACK_ENDPOINT if configured else NO_PROXY_VARIABLES)
    if allowed and any(port not in allowed for _, port in found):
        raise RouteError(OUTSIDE_CONTEXT)
    endpoints: list[int] = []
    routes = []
    for key, port in found:
        if port not in endpoints:
            endpoints.append(port)
        before, after = rewritten(env[key])
        routes.append(Route(key, endpoints.index(port), before, after))
    return Routes(tuple(endpoints), tuple(routes))
