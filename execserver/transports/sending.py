"""
Handing bytes to the kernel at once, when nothing is queued ahead of them.

Twisted queues every write and sends it on the reactor's next turn, after
telling epoll to watch for room and before telling it to stop: two
C{epoll_ctl} calls and one more turn per write. For a message that is
ready now on a socket with nothing queued, L{send_now} makes one
C{sendmsg} of all its parts instead (no copy of a large payload either),
and queues, in order, only what the kernel did not take.
"""

from __future__ import annotations

import os

from twisted.internet import tcp

#: The most buffers one sendmsg takes (Linux: 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def send_now(transport, parts: tuple[bytes, ...] | list[bytes]) -> bool:
    """
    Send C{parts} on a plain TCP connection whose write buffer is empty;
    what the kernel does not take is queued as one buffer. False, having
    done nothing, when anything is queued (order matters), under TLS or on
    another kind of transport, or when the send fails (Twisted then meets
    the error itself and ends the connection its own way).
    """
    if (type(transport) not in (tcp.Server, tcp.Client) or transport.TLS
            or not transport.connected or transport.disconnecting
            or transport._tempDataBuffer or len(transport.dataBuffer) != transport.offset):
        return False
    try:
        sent = transport.socket.sendmsg(parts[:_IOV_MAX])
    except BlockingIOError:
        sent = 0
    except OSError:
        return False
    rest = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
        else:
            rest.append(memoryview(part)[sent:] if sent else part)
            sent = 0
    if rest:
        # One buffer: Twisted sends a lone buffer without copying it again.
        transport.write(b"".join(rest))
    return True
