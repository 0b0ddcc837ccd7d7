"""
Which proxy a request goes through, from the server's environment, as the
reference's client reads it.

C{HTTP_PROXY}/C{http_proxy} serve http URLs, C{HTTPS_PROXY}/C{https_proxy}
https URLs, and C{ALL_PROXY}/C{all_proxy} both when the specific variable
is absent. The upper-case spelling wins when both are set. C{NO_PROXY}
lists exemptions: IP addresses and networks match IP literal hosts only,
names match a host and its subdomains, and C{*} matches every name but no
IP literal. Loopback is not exempt unless listed. Like the reference, we
ignore C{HTTP_PROXY} in a CGI environment (C{REQUEST_METHOD} set), where a
request header could have set it.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import unquote_to_bytes

from execserver.weburl import URL

#: Proxy schemes we can speak; others are recognised so that a request
#: meant for them fails instead of silently going direct.
SPEAKABLE = ("http", "https")
RECOGNISED = SPEAKABLE + ("socks4", "socks4a", "socks5", "socks5h")

_DEFAULT_PORTS = {"http": 80, "https": 443, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}


@dataclass(frozen=True)
class Proxy:
    scheme: str
    host: str
    port: int
    #: The C{Basic ...} credentials for the proxy, if its URL had any.
    authorization: bytes | None = None

    @property
    def hostname(self) -> str:
        return self.host[1:-1] if self.host.startswith("[") else self.host


def parse_proxy(value: str) -> Proxy | None:
    """
    A proxy URL as the environment gives it (C{http://user:pass@host:port},
    or just C{host:port}); C{None} when it cannot be used at all.
    """
    scheme, separator, rest = value.partition("://")
    if not separator:
        scheme, rest = "http", value
    scheme = scheme.lower()
    if scheme not in RECOGNISED:
        return None
    authority = rest
    for stop in "/?#":
        authority = authority.split(stop, 1)[0]
    authorization = None
    if "@" in authority:
        userinfo, authority = authority.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        credentials = unquote_to_bytes(user) + b":" + unquote_to_bytes(password)
        authorization = b"Basic " + base64.b64encode(credentials)
    host, port = _host_port(authority, _DEFAULT_PORTS[scheme])
    if host is None:
        return None
    return Proxy(scheme, host, port, authorization)


def _host_port(authority: str, default_port: int) -> tuple[str | None, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None, 0
        host, rest = authority[:end + 1], authority[end + 1:]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None, 0
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
        if not host or not all(ch.isalnum() or ch in "-._~!$&'()*+,;=%" for ch in host):
            return None, 0
        host = host.lower()
    if not rest:
        return host, default_port
    port_text = rest[1:]
    if not rest.startswith(":") or not port_text.isdigit() or int(port_text) > 65535:
        return None, 0
    return host, int(port_text)


class NoProxy:
    """
    The exemptions of C{NO_PROXY}.
    """

    def __init__(self, value: str) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.domains: list[str] = []
        for part in (part.strip() for part in value.split(",")):
            if not part:
                continue
            try:
                if "/" in part:
                    self.networks.append(ipaddress.ip_network(part, strict=False))
                else:
                    address = ipaddress.ip_address(part)
                    self.networks.append(ipaddress.ip_network(address))
            except ValueError:
                self.domains.append(part.lower())

    def exempts(self, host: str) -> bool:
        host = host[1:-1] if host.startswith("[") else host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return self._domain_matches(host.lower())
        return any(address in network for network in self.networks)

    def _domain_matches(self, host: str) -> bool:
        for domain in self.domains:
            if domain == "*" or host == domain or host == domain.lstrip("."):
                return True
            if host.endswith(domain) and (domain.startswith(".") or host[-len(domain) - 1] == "."):
                return True
        return False


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if name in environ:
            return environ[name]
    return None


class ProxySettings:
    """
    The proxies of one environment, read once (as the reference reads its
    environment once, when its client is built).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        every = _parse_optional(_first(environ, "ALL_PROXY", "all_proxy"))
        http_value = None if "REQUEST_METHOD" in environ else _first(environ, "HTTP_PROXY", "http_proxy")
        self.http = _parse_optional(http_value) or every
        self.https = _parse_optional(_first(environ, "HTTPS_PROXY", "https_proxy")) or every
        self.no_proxy = NoProxy(_first(environ, "NO_PROXY", "no_proxy") or "")

    def proxy_for(self, url: URL) -> Proxy | None:
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None or self.no_proxy.exempts(url.host or ""):
            return None
        return proxy


def _parse_optional(value: str | None) -> Proxy | None:
    return parse_proxy(value) if value else None
