"""
What the fuzz program's two parts share: fuzzing connections that send
batches ended by a sentinel, and a victim connection beside them whose
answers are checked and timed.

A fuzzer sends a batch and then a sentinel whose answer says that the
server has read the whole batch; a connection the server closes is
opened again; a sentinel that gets no answer within L{STUCK_SECONDS}
counts as a stuck connection, which is then abandoned.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from twisted.internet import defer, reactor, task, threads

from tests.stress import common

#: How long a sentinel may wait before its connection counts as stuck: a
#: bound on a hang, not a timing figure.
STUCK_SECONDS = 60.0
#: The most the fuzzers' scratch tree may hold before it is emptied, and
#: how often it is measured. Fuzzed recursive fs/copy requests copy its
#: directories into each other, each copy taking the earlier ones along:
#: unbounded, a million messages grew it past a gigabyte.
SCRATCH_BOUND_BYTES = 256 * 1024 * 1024
SCRATCH_BOUND_ENTRIES = 20_000
SCRATCH_CHECK_SECONDS = 1.0


@dataclass
class FuzzCounts:
    messages: int = 0
    bytes: int = 0
    batches: int = 0
    #: Batches after which the server closed the connection.
    closed: int = 0
    stuck: int = 0
    connections: int = 0
    #: Connections that could not be opened, and the first reasons.
    refused: int = 0
    refusals: list = field(default_factory=list)

    def refuse(self, error: Exception) -> None:
        self.refused += 1
        if len(self.refusals) < 3:
            self.refusals.append(f"{type(error).__name__}: {error}")

    def add(self, other: "FuzzCounts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Victim:
    """
    Sends one request at a time until stopped, checks each answer, and
    keeps each latency.
    """

    ask: object
    latencies: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stopped: bool = False
    lost: bool = False

    async def run(self) -> None:
        while not self.stopped:
            started = common.now()
            try:
                problem = await self.ask()
            except Exception as e:
                self.wrong.append(f"{type(e).__name__}: {e}")
                self.lost = True
                return
            self.latencies.append(common.now() - started)
            if problem is not None:
                self.wrong.append(problem)

    def figures(self) -> dict:
        return {"requests": len(self.latencies), "wrong": len(self.wrong),
                "wrong_examples": self.wrong[:3], "lost": self.lost,
                "p50_ms": percentile(self.latencies, 50) * 1000,
                "p99_ms": percentile(self.latencies, 99) * 1000,
                "max_ms": max(self.latencies, default=0.0) * 1000}


class ScratchBound:
    """
    Empties the fuzzers' scratch directory whenever it holds more than
    L{SCRATCH_BOUND_BYTES} or L{SCRATCH_BOUND_ENTRIES}, measured every
    L{SCRATCH_CHECK_SECONDS} in a thread (symbolic links are not
    followed). The server meets the emptied tree as a client would meet
    another client's removal: with errors it answers.
    """

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        self.trims = 0
        self._loop = task.LoopingCall(self._check)
        self._stopped: defer.Deferred | None = None

    def start(self) -> None:
        self._stopped = self._loop.start(SCRATCH_CHECK_SECONDS, now=False)

    def stop(self) -> defer.Deferred:
        """
        Stop measuring; fires once a measurement under way has ended.
        """
        self._loop.stop()
        return self._stopped

    def _check(self) -> defer.Deferred:
        return threads.deferToThread(self.trim)

    def trim(self) -> None:
        """
        Measure the tree; empty it if it is over the bound.
        """
        if not _over_bound(self.scratch):
            return
        self.trims += 1
        try:
            entries = list(os.scandir(self.scratch))
        except FileNotFoundError:
            return  # a fuzzed fs/remove took the whole tree meanwhile
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


def _over_bound(top: str) -> bool:
    """
    Whether the tree at C{top} has more entries, or its files more bytes,
    than the bound.
    """
    entries = size = 0
    for directory, directories, files in os.walk(top):
        entries += len(directories) + len(files)
        for name in files:
            try:
                size += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass  # removed meanwhile
        if entries > SCRATCH_BOUND_ENTRIES or size > SCRATCH_BOUND_BYTES:
            return True
    return False


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def alongside(victim: Victim, fuzzers: list) -> None:
    """
    Run the victim until every fuzzer is done.
    """
    running = defer.ensureDeferred(victim.run())
    try:
        await defer.gatherResults([defer.ensureDeferred(f) for f in fuzzers],
                                  consumeErrors=True)
    finally:
        victim.stopped = True
        await running


def confinement_probe(home: str) -> str:
    """
    A path beside C{home} that a confined server cannot write: the fuzz
    programs check that it fails before they fuzz.
    """
    return home.rstrip("/") + "-confinement-probe"


def timeout(d: defer.Deferred, seconds: float = STUCK_SECONDS) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)
