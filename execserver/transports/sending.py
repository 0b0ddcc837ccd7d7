"""
Handing bytes to the kernel at once, when nothing is queued ahead of them.

Twisted queues every write and sends it on the reactor's next turn, after
telling epoll to watch for room and before telling it to stop: two
C{epoll_ctl} calls and one more turn per write. For a message that is
ready now on a socket with nothing queued, L{send_now} makes one
C{sendmsg} of all its parts instead (no copy of a large payload either),
and queues, in order and in place, only what the kernel did not take.
"""

from __future__ import annotations

import os

from twisted.internet import tcp

#: The most buffers one sendmsg takes (Linux: 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX")


def send_now(transport, parts: tuple[bytes, ...] | list[bytes]) -> bool:
    """
    Send C{parts} on a plain TCP connection whose write buffer is empty;
    what the kernel does not take is queued without a copy. False, having
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
    for index, part in enumerate(parts):
        if sent < len(part):
            # Twisted's buffer takes what is left in place, no copy: the
            # part the kernel stopped in, from where it stopped, then the
            # parts after it.
            transport.dataBuffer, transport.offset = part, sent
            if index + 1 < len(parts):
                transport.writeSequence(parts[index + 1:])
            else:
                transport.startWriting()
            break
        sent -= len(part)
    return True
