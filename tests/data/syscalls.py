"""
Run inside a sandbox: try the system calls a seccomp filter may deny and
print, as JSON, what each one gave (ok, or the error's name). Calls are
made with arguments that cannot succeed in a harmful way.
"""

import ctypes
import errno
import json
import os

libc = ctypes.CDLL(None, use_errno=True)
NUMBERS = {
    "socket": 41, "socketpair": 53, "connect": 42, "accept": 43, "accept4": 288, "bind": 49,
    "listen": 50, "getsockname": 51, "getpeername": 52, "shutdown": 48, "sendto": 44,
    "recvfrom": 45, "sendmsg": 46, "recvmsg": 47, "sendmmsg": 307, "recvmmsg": 299,
    "getsockopt": 55, "setsockopt": 54, "ptrace": 101, "process_vm_readv": 310,
    "process_vm_writev": 311, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "bpf": 321, "keyctl": 250, "personality": 135,
}


def call(name, *args):
    ctypes.set_errno(0)
    result = libc.syscall(NUMBERS[name], *[ctypes.c_long(a) for a in args])
    return "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


results = {}
for family in (1, 2, 10, 16, 17, 40):
    for kind in (1, 2):
        results[f"socket({family},{kind})"] = call("socket", family, kind, 0)
pair = (ctypes.c_int * 2)()
results["socketpair(AF_UNIX)"] = "ok" if libc.socketpair(1, 1, 0, pair) == 0 else "failed"
results["socketpair(AF_INET)"] = call("socketpair", 2, 1, 0, 0)
fd = pair[0]
for name in ("connect", "accept", "accept4", "bind", "listen", "getpeername", "getsockname",
             "shutdown", "getsockopt", "setsockopt"):
    results[name] = call(name, fd, 0, 0, 0, 0)
results["sendto"] = call("sendto", fd, 0, 0, 0, 0, 0)
results["recvfrom"] = call("recvfrom", fd, 0, 0, 0x40, 0, 0)
results["sendmsg"] = call("sendmsg", fd, 0, 0)
results["recvmsg"] = call("recvmsg", fd, 0, 0x40)
results["sendmmsg"] = call("sendmmsg", fd, 0, 0, 0)
results["recvmmsg"] = call("recvmmsg", fd, 0, 0, 0x40, 0)
results["ptrace(TRACEME)"] = call("ptrace", 0, 0, 0, 0)
results["process_vm_readv"] = call("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0)
results["process_vm_writev"] = call("process_vm_writev", os.getpid(), 0, 0, 0, 0, 0)
results["io_uring_setup"] = call("io_uring_setup", 1, 0)
results["io_uring_enter"] = call("io_uring_enter", -1, 0, 0, 0, 0, 0)
results["io_uring_register"] = call("io_uring_register", -1, 0, 0, 0)
results["bpf"] = call("bpf", 0, 0, 0)
results["keyctl"] = call("keyctl", 0, 0, 0, 0, 0)
results["personality"] = call("personality", 0xFFFFFFFF)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
for field in ("Seccomp", "NoNewPrivs", "CapEff"):
    results[field] = status[field].strip()
print(json.dumps(results, sort_keys=True))
