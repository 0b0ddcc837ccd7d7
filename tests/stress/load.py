"""
Load: many concurrent sessions, each running processes, in cycles; the
server's descriptors, zombies, threads, children and RSS after each cycle
and once the sessions have expired. Nothing may grow from cycle to cycle.

In each cycle, C{--sessions} connections are opened at once; each
initializes, reads a file's metadata (the thread pool), runs a process
that prints and one that echoes what is written to it, checks both
outputs, and closes. The connections close without ending their sessions,
so the sessions wait to be resumed and expire 80 s later: the last figure
is taken after that, once the server has had time to give memory back.
With C{--rounds}, cycles and expiry are repeated in the same server: RSS
that grows from one expiry to the next is a leak, RSS that stays is memory
the allocator keeps for reuse.

    python -m tests.stress.load [--sessions N] [--cycles N] [--rounds N] [--reference]
"""

from __future__ import annotations

import argparse
import base64

from twisted.internet import defer

from execserver.memory import TRIM_INTERVAL_SECONDS
from execserver.service import THREADS
from tests.stress import common

#: How long detached sessions and closed processes are kept (both servers).
RETENTION_SECONDS = 80.0


async def session(url: str, number: int) -> None:
    client = await common.connect(url)
    outputs: dict[str, list[bytes]] = {"printer": [], "echo": []}
    closed = {name: defer.Deferred() for name in outputs}

    def on_notification(message):
        params = message.get("params") or {}
        name = params.get("processId")
        if message["method"] == "process/output" and name in outputs:
            outputs[name].append(base64.b64decode(params["chunk"]))
        elif message["method"] == "process/closed" and name in closed:
            closed[name].callback(None)

    client.on_notification = on_notification
    metadata = await client.call("fs/getMetadata", {"path": "file:///"})
    _expect(metadata["result"]["isDirectory"] is True, "fs/getMetadata of /", metadata)
    text = b"session %d\n" % number
    await client.call("process/start", {
        "processId": "printer", "argv": ["sh", "-c", 'printf "session %s\\n" "$1"', "sh",
                                         str(number)],
        "cwd": "file:///", "env": {"PATH": "/usr/bin:/bin"}, "tty": False})
    await client.call("process/start", {
        "processId": "echo", "argv": ["head", "-c", str(len(text))], "cwd": "file:///",
        "env": {"PATH": "/usr/bin:/bin"}, "tty": False, "pipeStdin": True})
    written = await client.call("process/write", {
        "processId": "echo", "chunk": base64.b64encode(text).decode(), "writeId": "w1"})
    _expect(written["result"]["status"] == "accepted", "process/write", written)
    await defer.gatherResults(list(closed.values()))
    for name in outputs:
        _expect(b"".join(outputs[name]) == text, f"output of {name}", outputs[name])
    await client.close()


def _expect(condition: bool, what: str, seen) -> None:
    if not condition:
        raise AssertionError(f"{what}: unexpected {seen!r}")


async def cycle(url: str, sessions: int) -> tuple[int, float]:
    """
    @return: the sessions that failed, and the seconds the cycle took.
    """
    started = common.now()
    results = await defer.DeferredList(
        [defer.ensureDeferred(session(url, number)) for number in range(sessions)],
        consumeErrors=True)
    failures = [result for ok, result in results if not ok]
    for failure in failures[:3]:
        print(f"session failed: {failure.getErrorMessage()}")
    return len(failures), common.now() - started


async def measure(kind: str, sessions: int, cycles: int, idle: bool, rounds: int = 1) -> dict:
    server = common.Server(kind)
    try:
        rows = [("start", 0, 0.0, await common.settle(server.pid, 1.0))]
        for round_number in range(1, rounds + 1):
            prefix = f"round {round_number}, " if rounds > 1 else ""
            for number in range(1, cycles + 1):
                failed, seconds = await cycle(server.url, sessions)
                rows.append((f"{prefix}after cycle {number}", failed, seconds,
                             await common.settle(server.pid, 2.0)))
            if idle:
                # Then the server gives memory back within two intervals.
                await common.sleep(RETENTION_SECONDS + 2 * TRIM_INTERVAL_SECONDS + 2)
                rows.append((f"{prefix}{EXPIRED}", 0, 0.0, common.Resources.of(server.pid)))
        problems = common.log_problems(server.log_text())
        alive = server.alive()
    finally:
        server.stop()
    return {"rows": rows, "log_problems": problems, "alive": alive}


#: The row taken once every session of a round has expired.
EXPIRED = "sessions expired"


def growth(rows) -> dict:
    """
    What grew from the first cycle to the last (fds, threads, children,
    zombies; RSS in MiB). Threads may grow up to the thread pool's bound.
    With several rounds, also how much RSS grew from the first round's
    expiry to the last's: memory that later rounds do not reuse.
    """
    cycles = [row for row in rows[1:] if not row[0].endswith(EXPIRED)]
    first, last = cycles[0][3], cycles[-1][3]
    grew = {"fds": last.fds - first.fds, "threads": last.threads - first.threads,
            "children": last.children - first.children, "zombies": last.zombies,
            "rss_mib": round(last.rss_mib - first.rss_mib, 1)}
    expired = [row[3] for row in rows if row[0].endswith(EXPIRED)]
    if len(expired) > 1:
        grew["rss_mib_between_expiries"] = round(expired[-1].rss_mib - expired[0].rss_mib, 1)
    return grew


async def main(args) -> common.Report:
    command = f"python -m tests.stress.load --sessions {args.sessions} --cycles {args.cycles}"
    if args.rounds > 1:
        command += f" --rounds {args.rounds}"
    if args.reference:
        command += " --reference"
    if not args.idle:
        command += " --no-idle"
    report = common.Report(
        f"Load: {args.sessions} concurrent sessions, {args.cycles} cycles"
        + (f", {args.rounds} rounds" if args.rounds > 1 else ""), command,
        ("server", "when", "failed sessions", "cycle (s)", "RSS (MiB)", "fds", "threads",
         "children", "zombies"))
    kinds = ["ours"] + (["reference"] if args.reference else [])
    ok = True
    for kind in kinds:
        result = await measure(kind, args.sessions, args.cycles, args.idle, args.rounds)
        for when, failed, seconds, resources in result["rows"]:
            report.add(kind, when, failed, round(seconds, 1), round(resources.rss_mib, 1),
                       resources.fds, resources.threads, resources.children, resources.zombies)
        grew = growth(result["rows"])
        failures = sum(row[1] for row in result["rows"])
        report.figures[kind] = {"growth": grew, "failed_sessions": failures,
                                "log_problems": result["log_problems"], "alive": result["alive"]}
        report.notes.append(f"{kind}: from the first cycle to the last: {grew}")
        if result["log_problems"]:
            report.notes.append(f"{kind}: log problems: {result['log_problems'][:5]}")
        if kind == "ours":
            # The thread pool starts its threads as work comes, up to its
            # bound: more threads than that would be growth.
            most_threads = max(row[3].threads for row in result["rows"])
            ok = (failures == 0 and not result["log_problems"] and result["alive"]
                  and grew["fds"] <= 0 and most_threads <= 1 + THREADS
                  and grew["children"] <= 0 and grew["zombies"] == 0)
    report.figures["ok"] = ok
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also load the reference")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the cycles and the wait for expiry this often in one server")
    parser.add_argument("--no-idle", dest="idle", action="store_false",
                        help="do not wait for the sessions to expire")
    return parser


if __name__ == "__main__":
    common.program(parser(), main)
