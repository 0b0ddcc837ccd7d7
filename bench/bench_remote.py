"""
Our executor (twistd execserver-remote) against the reference executor
(codex exec-server --remote), both behind our rendezvous in its own
process, driven by the same harness (the client library over
RelayConnector, in this process), in one run:

* round trip: process/start of /bin/true until process/closed (p50, p90),
  after C{common.WARM_UP_ROUNDS} unmeasured ones
* throughput: stdout of `head -c 32MiB /dev/zero` delivered to the harness;
  the medians of several transfers, alternating between the executors,
  with the CPU time per MiB of the harness, the executor and the
  rendezvous
* concurrency: 50 streams on the executor's one socket (50 clients), each
  running /bin/true in a loop; the total execs/s

    python bench/bench_remote.py [--rounds N] [--mib N] [--transfers N] [--streams N] [--seconds S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402

from bench import common, floor, remote  # noqa: E402
from execserver.client import ExecServerClient  # noqa: E402

KINDS = ("reference", "ours")

#: Clients connected at once: an executor resets handshakes beyond 32
#: waiting for the registry.
CONNECT_BATCH = 10


async def concurrency(relay: remote.Relay, environment_id: str, streams: int,
                      seconds: float) -> float:
    clients: list[ExecServerClient] = []
    while len(clients) < streams:
        batch = min(CONNECT_BATCH, streams - len(clients))
        clients += await defer.gatherResults([
            defer.ensureDeferred(relay.client(environment_id, attempts=1)) for _ in range(batch)])
    counts = [0] * streams
    deadline = common.now() + seconds

    async def loop(index: int, client: ExecServerClient) -> None:
        while common.now() < deadline:
            await remote.exec_true(client)
            counts[index] += 1

    started = common.now()
    await defer.gatherResults([defer.ensureDeferred(loop(n, client))
                               for n, client in enumerate(clients)])
    elapsed = common.now() - started
    for client in clients:
        client.close()
    return sum(counts) / elapsed


async def main(args) -> str:
    machine = await floor.measure()
    relay = remote.Relay(list(KINDS))
    executors = {kind: relay.add_executor(kind, kind) for kind in KINDS}
    try:
        clients = {kind: await relay.client(kind) for kind in KINDS}
        results = {kind: await remote.round_trips(clients[kind], args.rounds) for kind in KINDS}
        transfers = {kind: [] for kind in KINDS}
        for _ in range(args.transfers):  # alternating, so both see the same machine
            for kind in KINDS:
                pids = {"executor": executors[kind].pid, "rendezvous": relay.rendezvous.pid}
                transfers[kind].append(await remote.transfer(clients[kind], args.mib, pids))
        for kind in KINDS:
            clients[kind].close()
            results[kind].update({key: common.median([t[key] for t in transfers[kind]])
                                  for key in transfers[kind][0]})
            results[kind]["execs"] = await concurrency(relay, kind, args.streams, args.seconds)
    finally:
        relay.stop()
    ref, ours = results["reference"], results["ours"]
    rows = [
        common.Row("start→closed round trip p50", "ms", ref["p50"], ours["p50"], "≤ 0.25x", "lower"),
        common.Row("start→closed round trip p90", "ms", ref["p90"], ours["p90"], "-", "lower"),
        common.Row(f"stdout throughput, {args.mib} MiB", "MiB/s", ref["rate"], ours["rate"],
                   "≥ 1.0x", "higher"),
        common.Row(f"execs/s, {args.streams} streams on one executor socket", "1/s",
                   ref["execs"], ours["execs"], "≥ 1.0x", "higher"),
        common.Row("executor CPU per MiB", "ms/MiB", ref["executor_cpu"], ours["executor_cpu"],
                   "reported", "lower"),
        common.Row("harness CPU per MiB", "ms/MiB", ref["harness_cpu"], ours["harness_cpu"],
                   "reported", "lower"),
        common.Row("rendezvous CPU per MiB relayed", "ms/MiB", ref["rendezvous_cpu"],
                   ours["rendezvous_cpu"], "reported", "lower"),
    ]
    return floor.appended(common.report(
        "Remote executor benchmark (bench/bench_remote.py): same harness and rendezvous, "
        f"medians of {args.transfers} transfers", rows), machine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--transfers", type=int, default=5)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    common.run(lambda: main(args))
