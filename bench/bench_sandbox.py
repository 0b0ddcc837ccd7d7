"""
Sandboxed exec benchmarks, ours against the reference in one run, with
codex's workspace-write profile (read everything, write one directory,
no network):

* round trip: process/start of /bin/true until its process/closed (p50, p90)
* concurrency: sandboxed execs per second with 20 connections each running
  /bin/true back to back
* file system: a sandboxed fs/writeFile of one byte into the workspace,
  request to reply (p50, p90)

    python bench/bench_sandbox.py [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from bench import common, floor  # noqa: E402


def workspace_write(directory: str) -> dict:
    return {
        "permissions": {"type": "managed", "network": "restricted", "file_system": {
            "type": "restricted", "entries": [
                {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                {"path": {"type": "path", "path": "file://" + directory}, "access": "write"},
            ]}},
        "windowsSandboxLevel": "disabled",
        "cwd": "file://" + directory,
    }


async def exec_true(client: common.Client, process_id: str, params: dict) -> None:
    closed = Deferred()

    def on_notification(message):
        if message["method"] == "process/closed" and message["params"]["processId"] == process_id:
            closed.callback(None)

    client.on_notification = on_notification
    reply = await client.call("process/start", {"processId": process_id, **params})
    if "error" in reply:
        raise RuntimeError(f"process/start failed: {reply['error']}")
    await closed


async def round_trips(url: str, rounds: int, params: dict) -> list[float]:
    client = await common.connect(url)
    times = []
    for n in range(rounds):
        started = common.now()
        await exec_true(client, f"rt-{n}", params)
        times.append(common.now() - started)
    client.close()
    return times


async def write_file_round_trips(url: str, rounds: int, directory: str) -> list[float]:
    client = await common.connect(url)
    params = {"path": "file://" + directory + "/bench.txt", "dataBase64": "QQ==",
              "sandbox": workspace_write(directory)}
    times = []
    for _ in range(rounds):
        started = common.now()
        reply = await client.call("fs/writeFile", params)
        if "error" in reply:
            raise RuntimeError(f"fs/writeFile failed: {reply['error']}")
        times.append(common.now() - started)
    client.close()
    return times


async def concurrency(url: str, connections: int, seconds: float, params: dict) -> float:
    clients = [await common.connect(url) for _ in range(connections)]
    deadline = common.now() + seconds
    counts = [0] * connections

    async def loop(index: int, client: common.Client) -> None:
        while common.now() < deadline:
            await exec_true(client, f"c{index}-{counts[index]}", params)
            counts[index] += 1

    started = common.now()
    await defer.gatherResults([defer.ensureDeferred(loop(i, c)) for i, c in enumerate(clients)])
    elapsed = common.now() - started
    for client in clients:
        client.close()
    return sum(counts) / elapsed


async def main(args) -> str:
    machine = await floor.measure()
    directory = os.path.realpath(tempfile.mkdtemp(prefix="execserver-bench-sandbox-", dir="/var/tmp"))
    params = {"argv": ["/bin/true"], "cwd": "file://" + directory, "env": {}, "tty": False,
              "sandbox": workspace_write(directory)}
    servers = {kind: common.Server(kind) for kind in ("reference", "ours")}
    try:
        results = {}
        for kind, server in servers.items():
            await round_trips(server.url, 10, params)  # warm up
            times = await round_trips(server.url, args.rounds, params)
            execs = await concurrency(server.url, 20, args.seconds, params)
            await write_file_round_trips(server.url, 5, directory)  # warm up
            writes = await write_file_round_trips(server.url, args.rounds, directory)
            results[kind] = {"p50": common.median(times) * 1000,
                             "p90": common.percentile(times, 0.9) * 1000, "execs": execs,
                             "write p50": common.median(writes) * 1000,
                             "write p90": common.percentile(writes, 0.9) * 1000}
    finally:
        for server in servers.values():
            server.stop()
    ref, ours = results["reference"], results["ours"]
    rows = [
        common.Row("sandboxed /bin/true round trip p50", "ms", ref["p50"], ours["p50"], "≤ 0.5x", "lower"),
        common.Row("sandboxed /bin/true round trip p90", "ms", ref["p90"], ours["p90"], "-", "lower"),
        common.Row("sandboxed execs/s, 20 connections", "1/s", ref["execs"], ours["execs"], "≥ 1.0x", "higher"),
        common.Row("sandboxed fs/writeFile p50", "ms", ref["write p50"], ours["write p50"], "-", "lower"),
        common.Row("sandboxed fs/writeFile p90", "ms", ref["write p90"], ours["write p90"], "-", "lower"),
    ]
    return floor.appended(common.report("Sandbox benchmark (bench/bench_sandbox.py)", rows), machine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    common.run(lambda: main(args))
