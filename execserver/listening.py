"""
Where a server listens: C{--listen} (and C{--interface}/C{--port}) turned
into a Twisted endpoint description for C{serverFromString}.

    ws://IP:PORT      the reference's form: an IPv4 address, or an IPv6
                      one in brackets, and a decimal port
    stdio, stdio://   newline-delimited JSON on stdin/stdout
    unix:PATH[:...]   a Twisted endpoint description: a UNIX socket,
    systemd:...       a socket passed by systemd (LISTEN_FDS), or
    tcp:... tcp6:...  TCP with Twisted's options

Every error is the reference's text where it has one.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address

STDIO = "stdio"
#: Endpoint types passed to serverFromString as they are.
ENDPOINT_PREFIXES = ("tcp:", "tcp6:", "unix:", "systemd:")
#: How many connections the kernel may hold for us before we accept them.
#: Twisted's default is 50 (the reference listens with 128): a burst of a
#: few hundred clients connecting at once overflowed it, and the kernel
#: dropped their SYNs, which a client retries only after 1, 3, 7... s.
LISTEN_BACKLOG = 1024
#: Endpoint types whose socket we create, and so whose backlog we choose.
_BACKLOG_PREFIXES = ("tcp:", "tcp6:", "unix:")

_WEBSOCKET_URL = re.compile(r"ws://(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<ipv4>[0-9.]+)):(?P<port>[0-9]+)")


class ListenError(Exception):
    """
    C{--listen} names nothing we can listen on; the message says why.
    """


@dataclass(frozen=True)
class ListenTarget:
    """
    @ivar description: for C{serverFromString}, or L{STDIO}.
    @ivar where: how errors name it (C{127.0.0.1:8765}, C{[::1]:0}, the
        endpoint description).
    @ivar address: the IP address asked for, when the target names one.
    """

    description: str
    where: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @property
    def stdio(self) -> bool:
        return self.description == STDIO


def tcp_target(host: str, port: int) -> ListenTarget:
    """
    Listen on C{host} (an IP address) and C{port}.
    """
    address = ipaddress.ip_address(host)
    if address.version == 6:
        escaped = str(address).replace(":", "\\:")
        return ListenTarget(f"tcp6:{port}:interface={escaped}", f"[{address}]:{port}", address)
    return ListenTarget(f"tcp:{port}:interface={address}", f"{address}:{port}", address)


def parse_listen(listen: str) -> ListenTarget:
    """
    @raise ListenError: C{listen} is not a form we know.
    """
    if listen in (STDIO, "stdio://"):
        return ListenTarget(STDIO, STDIO)
    if _endpoint_description(listen):
        return ListenTarget(listen, listen)
    if not listen.startswith("ws://"):
        raise ListenError(
            f"unsupported --listen URL `{listen}`; expected `ws://IP:PORT` or `stdio` "
            f"(or a Twisted endpoint: {', '.join(p + '...' for p in ENDPOINT_PREFIXES)})")
    invalid = ListenError(f"invalid websocket --listen URL `{listen}`; expected `ws://IP:PORT`")
    match = _WEBSOCKET_URL.fullmatch(listen)
    if match is None:
        raise invalid
    try:
        if match["ipv6"] is not None:
            host = str(ipaddress.IPv6Address(match["ipv6"]))
        else:
            host = str(ipaddress.IPv4Address(match["ipv4"]))
    except ValueError:
        raise invalid from None
    port = int(match["port"])
    if port > 65535:
        raise invalid
    return tcp_target(host, port)


def parse_admin_listen(listen: str) -> ListenTarget:
    """
    Where the admin listener listens: C{http://IP:PORT} or a Twisted
    endpoint description.

    @raise ListenError: C{listen} is neither.
    """
    if _endpoint_description(listen):
        return ListenTarget(listen, listen)
    if listen.startswith("http://"):
        try:
            target = parse_listen("ws://" + listen.removeprefix("http://"))
        except ListenError:
            pass
        else:
            return target
    raise ListenError(f"invalid --admin-listen `{listen}`; expected `http://IP:PORT` "
                      f"or a Twisted endpoint ({', '.join(p + '...' for p in ENDPOINT_PREFIXES)})")


def _endpoint_description(listen: str) -> bool:
    """
    Whether C{listen} is a Twisted endpoint description of a kind we pass
    on (C{unix:PATH}, but not a URL such as C{tcp://...}).
    """
    return listen.startswith(ENDPOINT_PREFIXES) and not listen.partition(":")[2].startswith("//")


def with_backlog(description: str) -> str:
    """
    C{description} with L{LISTEN_BACKLOG} as its backlog, unless it names
    one (or its socket is made by someone else: systemd).
    """
    if not description.startswith(_BACKLOG_PREFIXES) or "backlog=" in description:
        return description
    return f"{description}:backlog={LISTEN_BACKLOG}"


def is_local(address) -> bool:
    """
    Whether a listening port's address (C{IListeningPort.getHost()}) can only
    be reached from this host: a loopback address or a UNIX socket.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        ip = ipaddress.ip_address(address.host.split("%")[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        return (mapped or ip).is_loopback
    return True


def url_of(address, scheme: str = "ws") -> str:
    """
    The URL a client uses to reach a listening port: C{ws://IP:PORT}, or
    C{unix:PATH} for a UNIX socket.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{scheme}://{host}:{address.port}"
    return f"unix:{address.name.decode() if isinstance(address.name, bytes) else address.name}"
