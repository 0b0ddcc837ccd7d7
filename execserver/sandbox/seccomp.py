"""
The seccomp filters of sandboxed children, compiled to classic BPF with
libseccomp (C{libseccomp.so.2}, which every Debian system has: apt needs
it) through ctypes, so no compiler or extra package is involved.

They deny what the reference's filters deny, with C{EPERM}: with the network
restricted, every socket family but Unix, the socket calls that reach out or
inspect (C{connect}, C{bind}, C{sendto}, ...), ptrace and cross-process
memory access, and io_uring (which can make sockets without C{socket()});
with the network allowed, only VM sockets and io_uring; under managed
networking, every socket family but IPv4 and IPv6 (so no Unix socket reaches
a host service past the network namespace; C{socketpair} stays Unix only),
ptrace, cross-process memory access and io_uring. A filter is compiled once
per kind and then reused for every child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from typing import Callable

from execserver.sandbox.policy import Seccomp

SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_CMP_NE = 1
SCMP_CMP_LT = 2
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
SCMP_CMP_MASKED_EQ = 7

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1

AF_UNIX = socket.AF_UNIX
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
AF_VSOCK = 40

#: Denied outright when the network is restricted.
NETWORK_CALLS = (
    "connect", "accept", "accept4", "bind", "listen", "getpeername", "getsockname",
    "shutdown", "sendto", "sendmmsg", "recvmmsg", "getsockopt", "setsockopt",
)
#: Denied when the network is restricted: looking into other processes.
TRACE_CALLS = ("ptrace", "process_vm_readv", "process_vm_writev")
#: Denied in every filter.
IO_URING_CALLS = ("io_uring_setup", "io_uring_enter", "io_uring_register")


class SeccompUnavailable(Exception):
    """
    libseccomp cannot be loaded or cannot build a filter here.
    """


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_library = None


def _libseccomp():
    global _library
    if _library is None:
        name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
        try:
            library = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise SeccompUnavailable(f"libseccomp cannot be loaded ({e})") from None
        library.seccomp_init.restype = ctypes.c_void_p
        library.seccomp_init.argtypes = [ctypes.c_uint32]
        library.seccomp_release.argtypes = [ctypes.c_void_p]
        library.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
        ]
        library.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        library.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _library = library
    return _library


def _errno_action(number: int) -> int:
    return _SCMP_ACT_ERRNO | (number & 0xFFFF)


def _rules(kind: Seccomp) -> list[tuple[str, list[tuple[int, int, int, int]]]]:
    """
    (syscall, conditions) pairs that fail with EPERM; a condition is
    (argument, operator, value, mask) and all of them must hold.
    """
    rules: list[tuple[str, list]] = [(name, []) for name in IO_URING_CALLS]
    if kind is Seccomp.RESTRICTED:
        rules += [(name, []) for name in TRACE_CALLS + NETWORK_CALLS]
        # Comparing all 64 bits denies more than the kernel's int would let
        # through, never less.
        not_unix = [(0, SCMP_CMP_NE, AF_UNIX, 0)]
        rules += [("socket", not_unix), ("socketpair", not_unix)]
    elif kind is Seccomp.PROXY_ROUTED:
        rules += [(name, []) for name in TRACE_CALLS]
        rules.append(("socketpair", [(0, SCMP_CMP_NE, AF_UNIX, 0)]))
        rules += [("socket", [condition]) for condition in _families_except(AF_INET, AF_INET6)]
    else:
        vsock = [(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, AF_VSOCK)]
        rules += [("socket", vsock), ("socketpair", vsock)]
    return rules


def _families_except(*allowed: int) -> list[tuple[int, int, int, int]]:
    """
    Conditions on the first argument, one per rule, that together match
    every value but C{allowed}: below the smallest, each gap, above the
    largest. (One rule cannot compare an argument twice.) Comparing all 64
    bits matches more than the kernel's int would let through, never less.
    """
    ordered = sorted(allowed)
    conditions = [(0, SCMP_CMP_LT, ordered[0], 0)]
    for low, high in zip(ordered, ordered[1:]):
        conditions += [(0, SCMP_CMP_EQ, value, 0) for value in range(low + 1, high)]
    conditions.append((0, SCMP_CMP_GT, ordered[-1], 0))
    return conditions


def _compile(kind: Seccomp) -> bytes:
    library = _libseccomp()
    context = library.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        # Calls of another ABI (x32, i386) fail as if the kernel had none.
        if library.seccomp_attr_set(context, SCMP_FLTATR_ACT_BADARCH, _errno_action(errno.ENOSYS)) < 0:
            raise SeccompUnavailable("seccomp_attr_set failed")
        action = _errno_action(errno.EPERM)
        for name, conditions in _rules(kind):
            number = library.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a system call on this architecture
            array = (_ArgCmp * max(len(conditions), 1))(*[
                # MASKED_EQ takes (mask, value); the others (value, unused).
                _ArgCmp(arg, op, a, b) for arg, op, a, b in conditions
            ])
            result = library.seccomp_rule_add_array(context, action, number, len(conditions), array)
            if result < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-result)}")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            result = library.seccomp_export_bpf(context, fd)
            if result < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-result)}")
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        library.seccomp_release(context)


_programs: dict[Seccomp, bytes] = {}


def program(kind: Seccomp) -> bytes:
    """
    The BPF program of a filter kind (compiled on first use).

    @raise SeccompUnavailable: if libseccomp cannot build it.
    """
    compiled = _programs.get(kind)
    if compiled is None:
        compiled = _programs[kind] = _compile(kind)
    return compiled


def program_fd(kind: Seccomp) -> int:
    """
    A new descriptor holding the program, for bubblewrap's C{--seccomp}.
    """
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    os.write(fd, program(kind))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


_installers: dict[Seccomp, Callable[[], None]] = {}


def installer(kind: Seccomp) -> Callable[[], None]:
    """
    A function that, called in a child just before exec, sets
    no-new-privileges and installs the filter. Everything it needs is made
    here, in the parent, so the child only makes two system calls.
    """
    install = _installers.get(kind)
    if install is not None:
        return install
    bpf = program(kind)
    buffer = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    seccomp_nr = _libseccomp().seccomp_syscall_resolve_name(b"seccomp")
    prctl, syscall = libc.prctl, libc.syscall
    fprog_pointer = ctypes.byref(fprog)

    def install() -> None:
        if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if syscall(seccomp_nr, SECCOMP_SET_MODE_FILTER, 0, fprog_pointer) != 0:
            raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")

    # The closure keeps the buffer and the program alive.
    install.keep = (buffer, fprog)  # type: ignore[attr-defined]
    _installers[kind] = install
    return install
