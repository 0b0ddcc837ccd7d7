"""
OS errors as the reference reports them.

The reference is a static musl binary written in Rust: an OS error displays
as C{<musl strerror text> (os error <errno>)}, and Rust's error kind decides
the JSON-RPC code (NotFound -> -32004; PermissionDenied, InvalidInput ->
-32600; anything else -> -32603).
"""

from __future__ import annotations

import errno

from execserver.rpc import INTERNAL_ERROR, INVALID_REQUEST, NOT_FOUND, RpcError

_MUSL_STRERROR = {
    errno.EILSEQ: "Illegal byte sequence",
    errno.EDOM: "Domain error",
    errno.ERANGE: "Result not representable",
    errno.ENOTTY: "Not a tty",
    errno.EACCES: "Permission denied",
    errno.EPERM: "Operation not permitted",
    errno.ENOENT: "No such file or directory",
    errno.ESRCH: "No such process",
    errno.EEXIST: "File exists",
    errno.EOVERFLOW: "Value too large for data type",
    errno.ENOSPC: "No space left on device",
    errno.ENOMEM: "Out of memory",
    errno.EBUSY: "Resource busy",
    errno.EINTR: "Interrupted system call",
    errno.EAGAIN: "Resource temporarily unavailable",
    errno.ESPIPE: "Invalid seek",
    errno.EXDEV: "Cross-device link",
    errno.EROFS: "Read-only file system",
    errno.ENOTEMPTY: "Directory not empty",
    errno.ECONNRESET: "Connection reset by peer",
    errno.ETIMEDOUT: "Operation timed out",
    errno.ECONNREFUSED: "Connection refused",
    errno.EHOSTDOWN: "Host is down",
    errno.EHOSTUNREACH: "Host is unreachable",
    errno.EADDRINUSE: "Address in use",
    errno.EPIPE: "Broken pipe",
    errno.EIO: "I/O error",
    errno.ENXIO: "No such device or address",
    errno.ENOTBLK: "Block device required",
    errno.ENODEV: "No such device",
    errno.ENOTDIR: "Not a directory",
    errno.EISDIR: "Is a directory",
    errno.ETXTBSY: "Text file busy",
    errno.ENOEXEC: "Exec format error",
    errno.EINVAL: "Invalid argument",
    errno.E2BIG: "Argument list too long",
    errno.ELOOP: "Symbolic link loop",
    errno.ENAMETOOLONG: "Filename too long",
    errno.ENFILE: "Too many open files in system",
    errno.EMFILE: "No file descriptors available",
    errno.EBADF: "Bad file descriptor",
    errno.ECHILD: "No child process",
    errno.EFAULT: "Bad address",
    errno.EFBIG: "File too large",
    errno.EMLINK: "Too many links",
    errno.ENOLCK: "No locks available",
    errno.EDEADLK: "Resource deadlock would occur",
    errno.ENOTRECOVERABLE: "State not recoverable",
    errno.EOWNERDEAD: "Previous owner died",
    errno.ECANCELED: "Operation canceled",
    errno.ENOSYS: "Function not implemented",
    errno.ENOMSG: "No message of desired type",
    errno.EIDRM: "Identifier removed",
    errno.ENOSTR: "Device not a stream",
    errno.ENODATA: "No data available",
    errno.ETIME: "Device timeout",
    errno.ENOSR: "Out of streams resources",
    errno.ENOLINK: "Link has been severed",
    errno.EPROTO: "Protocol error",
    errno.EBADMSG: "Bad message",
    errno.EBADFD: "File descriptor in bad state",
    errno.ENOTSOCK: "Not a socket",
    errno.EDESTADDRREQ: "Destination address required",
    errno.EMSGSIZE: "Message too large",
    errno.EPROTOTYPE: "Protocol wrong type for socket",
    errno.ENOPROTOOPT: "Protocol not available",
    errno.EPROTONOSUPPORT: "Protocol not supported",
    errno.ESOCKTNOSUPPORT: "Socket type not supported",
    errno.ENOTSUP: "Not supported",
    errno.EPFNOSUPPORT: "Protocol family not supported",
    errno.EAFNOSUPPORT: "Address family not supported by protocol",
    errno.EADDRNOTAVAIL: "Address not available",
    errno.ENETDOWN: "Network is down",
    errno.ENETUNREACH: "Network unreachable",
    errno.ENETRESET: "Connection reset by network",
    errno.ECONNABORTED: "Connection aborted",
    errno.ENOBUFS: "No buffer space available",
    errno.EISCONN: "Socket is connected",
    errno.ENOTCONN: "Socket not connected",
    errno.ESHUTDOWN: "Cannot send after socket shutdown",
    errno.EALREADY: "Operation already in progress",
    errno.EINPROGRESS: "Operation in progress",
    errno.ESTALE: "Stale file handle",
    errno.EREMOTEIO: "Remote I/O error",
    errno.EDQUOT: "Quota exceeded",
    errno.ENOMEDIUM: "No medium found",
    errno.EMEDIUMTYPE: "Wrong medium type",
    errno.EMULTIHOP: "Multihop attempted",
    errno.ENOKEY: "Required key not available",
    errno.EKEYEXPIRED: "Key has expired",
    errno.EKEYREVOKED: "Key has been revoked",
    errno.EKEYREJECTED: "Key was rejected by service",
}

_INVALID_REQUEST_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EINVAL})


def strerror(number: int) -> str:
    return _MUSL_STRERROR.get(number, "No error information")


def describe(error: OSError) -> str:
    """
    C{No such file or directory (os error 2)}.
    """
    number = error.errno or 0
    return f"{strerror(number)} (os error {number})"


def error_code(number: int) -> int:
    if number == errno.ENOENT:
        return NOT_FOUND
    if number in _INVALID_REQUEST_ERRNOS:
        return INVALID_REQUEST
    return INTERNAL_ERROR


def to_rpc_error(error: OSError) -> RpcError:
    """
    The reference's JSON-RPC error for a filesystem OS error.
    """
    return RpcError(error_code(error.errno or 0), describe(error))
