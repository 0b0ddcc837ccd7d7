"""
Our executor (twistd execserver-remote) against the reference executor
(codex exec-server --remote), both behind our rendezvous in its own
process, driven by the same harness (the client library over
RelayConnector, in this process), in one run:

* round trip: process/start of /bin/true until process/closed (p50, p90)
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
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer  # noqa: E402
from zope.interface import implementer  # noqa: E402

from bench import common, floor, remote  # noqa: E402
from execserver.client import ExecServerClient  # noqa: E402
from execserver.client.process import IProcessReceiver  # noqa: E402

ENV = {"PATH": "/usr/bin:/bin"}
KINDS = ("reference", "ours")

#: Clients connected at once: an executor resets handshakes beyond 32
#: waiting for the registry.
CONNECT_BATCH = 10


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@implementer(IProcessReceiver)
class Counter:
    def __init__(self) -> None:
        self.received = 0

    def attached(self, handle) -> None:
        pass

    def outputReceived(self, stream: str, data: bytes) -> None:
        self.received += len(data)

    def processExited(self, exit_code: int) -> None:
        pass

    def processClosed(self) -> None:
        pass

    def processFailed(self, reason) -> None:
        pass


async def exec_true(client: ExecServerClient) -> None:
    handle = await client.start_process(["/bin/true"], env=ENV)
    await handle.when_closed()


async def round_trips(client: ExecServerClient, rounds: int) -> dict:
    for _ in range(20):  # warm up
        await exec_true(client)
    times = []
    for _ in range(rounds):
        started = common.now()
        await exec_true(client)
        times.append(common.now() - started)
    return {"p50": common.median(times) * 1000, "p90": common.percentile(times, 0.9) * 1000}


async def transfer(client: ExecServerClient, mib: int, pids: dict[str, int]) -> dict:
    """One transfer: MiB/s, and CPU ms per MiB of this process and of C{pids}."""
    total = mib * 1024 * 1024
    counter = Counter()
    cpu_before = {name: remote.cpu_seconds(pid) for name, pid in pids.items()}
    own_before = own_cpu_seconds()
    started = common.now()
    handle = await client.start_process(["head", "-c", str(total), "/dev/zero"], env=ENV,
                                        receiver=counter)
    await handle.when_closed()
    elapsed = common.now() - started
    own = own_cpu_seconds() - own_before
    if counter.received != total:
        raise RuntimeError(f"received {counter.received} of {total} bytes")
    result = {"rate": mib / elapsed, "harness_cpu": own / mib * 1000}
    for name, pid in pids.items():
        result[f"{name}_cpu"] = (remote.cpu_seconds(pid) - cpu_before[name]) / mib * 1000
    return result


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
            await exec_true(client)
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
        results = {kind: await round_trips(clients[kind], args.rounds) for kind in KINDS}
        transfers = {kind: [] for kind in KINDS}
        for _ in range(args.transfers):  # alternating, so both see the same machine
            for kind in KINDS:
                pids = {"executor": executors[kind].pid, "rendezvous": relay.rendezvous.pid}
                transfers[kind].append(await transfer(clients[kind], args.mib, pids))
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
