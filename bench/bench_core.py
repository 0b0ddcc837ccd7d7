"""
Core benchmarks, ours against the reference in one run:

* round trip: process/start of /bin/true until its process/closed (p50, p90)
* throughput: stdout of `head -c 64MiB /dev/zero`, bytes delivered through
  process/output notifications, and the server's CPU seconds per MiB
* concurrency: execs per second with 20 connections each running /bin/true
  back to back

    python bench/bench_core.py [--rounds N] [--mib N] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pybase64  # noqa: E402

from twisted.internet import defer  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from bench import common  # noqa: E402

TRUE = {"argv": ["/bin/true"], "cwd": "file:///", "env": {}, "tty": False}


async def exec_true(client: common.Client, process_id: str) -> None:
    closed = Deferred()

    def on_notification(message):
        if message["method"] == "process/closed" and message["params"]["processId"] == process_id:
            closed.callback(None)

    client.on_notification = on_notification
    await client.call("process/start", {"processId": process_id, **TRUE})
    await closed


async def round_trips(url: str, rounds: int) -> list[float]:
    client = await common.connect(url)
    times = []
    for n in range(rounds):
        started = common.now()
        await exec_true(client, f"rt-{n}")
        times.append(common.now() - started)
    client.close()
    return times


async def throughput(server: common.Server, mib: int) -> tuple[float, float]:
    """
    @return: (MiB per second, server CPU seconds per MiB)
    """
    client = await common.connect(server.url)
    total = mib * 1024 * 1024
    received = 0
    closed = Deferred()

    def on_notification(message):
        nonlocal received
        method = message["method"]
        if method == "process/output":
            received += len(pybase64.b64decode(message["params"]["chunk"]))
        elif method == "process/closed":
            closed.callback(None)

    client.on_notification = on_notification
    cpu_before = server.cpu_seconds()
    started = common.now()
    await client.call("process/start", {
        "processId": "stream", "argv": ["head", "-c", str(total), "/dev/zero"],
        "cwd": "file:///", "env": {"PATH": "/usr/bin:/bin"}, "tty": False})
    await closed
    elapsed = common.now() - started
    cpu = server.cpu_seconds() - cpu_before
    client.close()
    if received != total:
        raise RuntimeError(f"{server.kind}: received {received} of {total} bytes")
    return mib / elapsed, cpu / mib


async def concurrency(url: str, connections: int, seconds: float) -> float:
    clients = [await common.connect(url) for _ in range(connections)]
    deadline = common.now() + seconds
    counts = [0] * connections

    async def loop(index: int, client: common.Client) -> None:
        while common.now() < deadline:
            await exec_true(client, f"c{index}-{counts[index]}")
            counts[index] += 1

    started = common.now()
    await defer.gatherResults([defer.ensureDeferred(loop(i, c)) for i, c in enumerate(clients)])
    elapsed = common.now() - started
    for client in clients:
        client.close()
    return sum(counts) / elapsed


async def main(args) -> str:
    servers = {kind: common.Server(kind) for kind in ("reference", "ours")}
    try:
        results = {}
        for kind, server in servers.items():
            await round_trips(server.url, 20)  # warm up
            times = await round_trips(server.url, args.rounds)
            rate, cpu = await throughput(server, args.mib)
            execs = await concurrency(server.url, 20, args.seconds)
            results[kind] = {
                "p50": common.median(times) * 1000,
                "p90": common.percentile(times, 0.9) * 1000,
                "rate": rate, "cpu": cpu, "execs": execs,
            }
    finally:
        for server in servers.values():
            server.stop()
    ref, ours = results["reference"], results["ours"]
    rows = [
        common.Row("start→closed round trip p50", "ms", ref["p50"], ours["p50"], "≤ 0.25x", "lower"),
        common.Row("start→closed round trip p90", "ms", ref["p90"], ours["p90"], "-", "lower"),
        common.Row(f"stdout throughput, {args.mib} MiB", "MiB/s", ref["rate"], ours["rate"], "≥ 1.0x", "higher"),
        common.Row("server CPU per MiB streamed", "ms/MiB", ref["cpu"] * 1000, ours["cpu"] * 1000, "reported", "lower"),
        common.Row("execs/s, 20 connections", "1/s", ref["execs"], ours["execs"], "≥ 1.0x", "higher"),
    ]
    return common.report("Core benchmark (bench/bench_core.py)", rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    common.run(lambda: main(args))
