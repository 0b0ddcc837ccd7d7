"""
Giving memory back to the system after load (glibc's allocator).

Python gets everything over 512 bytes from malloc, and glibc's malloc,
left as it starts, keeps what the server frees after a flood: a buffer of
128 KiB or more is mmapped (and unmapped when freed) only until the first
such buffer is freed, after which the threshold climbs to the size of that
buffer (up to 32 MiB), so later messages and file contents come from the
heap and leave holes there; each thread of the pool may get an arena of
its own, with its own free memory; and free memory below the top of a heap
is never returned. Floods of big messages left the server holding hundreds
of MiB it had freed (docs/reliability.md has the figures). So:

* the mmap threshold is fixed at L{MMAP_THRESHOLD_BYTES}: big buffers are
  always mmapped, and unmapped when freed;
* the threads share at most L{ARENA_MAX} arenas;
* once the server is idle (it used less than L{IDLE_CPU_FRACTION} of a
  core over the last L{TRIM_INTERVAL_SECONDS}) after some work, or after
  closed processes let go of their output (L{released}: the replay windows
  of processes that were retained for 80 s go when the server may have
  been idle for a long time, at almost no CPU cost), the cycle collector
  runs and C{malloc_trim(0)} returns the free pages of every arena. Python
  collects cycles only as it allocates, so an idle server would otherwise
  keep the connections and sessions that ended last (objects that refer to
  each other) for good.

On other C libraries (musl) the allocator is left alone; the collection
still runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from typing import Callable

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: Buffers from this size on are mmapped. Output moves in chunks of 64 KiB
#: (87 KiB as base64), which stay below it and come from the heap.
MMAP_THRESHOLD_BYTES = 128 * 1024
#: Arenas the threads share (glibc's default is 8 per core).
ARENA_MAX = 2
#: How often the server looks whether it is idle.
TRIM_INTERVAL_SECONDS = 10.0
#: Idle: less CPU than this fraction of the interval was used in it...
IDLE_CPU_FRACTION = 0.02
#: ...after at least this much CPU time of work since memory was last given
#: back (a server that stays idle has nothing new to give back), or after
#: at least this much output was let go of.
WORK_CPU_SECONDS = 0.05
RELEASED_BYTES = 1024 * 1024

#: Output let go of since the trimmer last looked (L{released}).
_released_bytes = 0

#: What L{give_back} lets go of first (L{release_when_idle}).
_idle_releases: list[Callable[[], None]] = []


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not all(hasattr(libc, symbol) for symbol in ("gnu_get_libc_version", "mallopt",
                                                    "malloc_trim")):
        return None
    return libc


_libc = _glibc()


def tune_allocator() -> bool:
    """
    Fix the mmap threshold and the number of arenas (process-wide; call it
    once, early).

    @return: whether the allocator is glibc's, and took the settings.
    """
    if _libc is None:
        return False
    return bool(_libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and _libc.mallopt(_M_ARENA_MAX, ARENA_MAX))


def freeze_startup_heap() -> None:
    """
    Take what exists once the server has started (modules, classes, its
    services: tens of thousands of objects that live as long as it does)
    out of the cycle collector's sight, after collecting what is already
    garbage. Otherwise every full collection walks all of them again: 30 to
    70 ms each on a busy server, tens of times a minute under load.
    """
    gc.collect()
    gc.freeze()


def released(nbytes: int) -> None:
    """
    C{nbytes} of retained output were let go of: a reason to give memory
    back once the server is idle, whatever CPU that took.
    """
    global _released_bytes
    _released_bytes += nbytes


def take_released() -> int:
    """
    The bytes let go of since the last call.
    """
    global _released_bytes
    nbytes, _released_bytes = _released_bytes, 0
    return nbytes


def trim() -> None:
    """
    Give the free pages of every arena back to the system.
    """
    if _libc is not None:
        _libc.malloc_trim(0)


def release_when_idle(release: Callable[[], None]) -> None:
    """
    Call C{release} (which lets go of memory kept for reuse) each time
    memory is given back.
    """
    _idle_releases.append(release)


def give_back() -> None:
    """
    Let go of what is kept for reuse, free what only the cycle collector
    can, then return the free pages.
    """
    for release in _idle_releases:
        release()
    gc.collect()
    trim()


class IdleTrimmer(service.Service):
    """
    Gives memory back (L{give_back}) when the server turns idle after work;
    see the module docstring.

    @param cpu_time: the process's CPU seconds so far, all threads.
    @param take_released: the bytes of output let go of since it was last
        called (L{take_released}).
    """

    def __init__(self, clock, give_back: Callable[[], None] = give_back,
                 cpu_time: Callable[[], float] = time.process_time,
                 interval: float = TRIM_INTERVAL_SECONDS,
                 take_released: Callable[[], int] = take_released) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._give_back = give_back
        self._cpu_time = cpu_time
        self._take_released = take_released
        self._interval = interval
        self._last = 0.0
        self._worked = 0.0
        self._released = 0

    def startService(self) -> None:
        super().startService()
        self._last = self._cpu_time()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    def _tick(self) -> None:
        recent = self._cpu_time() - self._last
        self._worked += recent
        self._released += self._take_released()
        if recent < self._interval * IDLE_CPU_FRACTION and (
                self._worked >= WORK_CPU_SECONDS or self._released >= RELEASED_BYTES):
            self._give_back()
            self._worked = 0.0
            self._released = 0
        # What giving back cost is not work to clean up after.
        self._last = self._cpu_time()
