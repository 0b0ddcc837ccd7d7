"""
Remote mode's cost: our harness (the client library over RelayConnector)
against the reference executor behind our rendezvous, compared with the
same client over a local WebSocket to the reference, in one run.

* round trip: process/start of /bin/true until process/closed (p50, p90)
* throughput: stdout of `head -c 32MiB /dev/zero` delivered to the client,
  with the CPU seconds per MiB of the harness (this process), of the
  executor and, through the relay, of the rendezvous; the medians of
  several transfers, alternating between the two paths

The rendezvous runs in its own process (twistd execserver-rendezvous).

    python bench/bench_relay.py [--rounds N] [--mib N] [--transfers N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402

from bench import common, floor, remote  # noqa: E402
from execserver.client import ExecServerClient, WebSocketConnector  # noqa: E402

ENVIRONMENT_ID = "bench"


async def connected(connector) -> ExecServerClient:
    client = ExecServerClient(connector, reactor)
    await client.connect()
    return client


async def main(args) -> str:
    machine = await floor.measure()
    local = common.Server("reference")
    relay = remote.Relay([ENVIRONMENT_ID])
    executor = relay.add_executor("reference", ENVIRONMENT_ID)
    try:
        modes = {
            "ws": (await connected(WebSocketConnector(reactor, local.url)),
                   {"executor": local.popen.pid}),
            "relay": (await relay.client(ENVIRONMENT_ID),
                      {"executor": executor.pid, "rendezvous": relay.rendezvous.pid}),
        }
        results = {mode: await remote.round_trips(client, args.rounds)
                   for mode, (client, _) in modes.items()}
        transfers = {mode: [] for mode in modes}
        for _ in range(args.transfers):  # alternating, so both see the same machine
            for mode, (client, pids) in modes.items():
                transfers[mode].append(await remote.transfer(client, args.mib, pids))
        for mode, (client, _) in modes.items():
            results[mode].update(remote.medians(transfers[mode]))
            client.close()
    finally:
        local.stop()
        relay.stop()
    ws, relay = results["ws"], results["relay"]
    rows = [
        common.Row("start→closed round trip p50", "ms", ws["p50"], relay["p50"], "reported", "lower"),
        common.Row("start→closed round trip p90", "ms", ws["p90"], relay["p90"], "reported", "lower"),
        common.Row(f"stdout throughput, {args.mib} MiB", "MiB/s", ws["rate"], relay["rate"],
                   "reported", "higher"),
        common.Row("harness CPU per MiB", "ms/MiB", ws["harness_cpu"], relay["harness_cpu"],
                   "reported", "lower"),
        common.Row("executor CPU per MiB", "ms/MiB", ws["executor_cpu"], relay["executor_cpu"],
                   "reported", "lower"),
    ]
    table = common.report("Relay benchmark (bench/bench_relay.py): our harness, reference executor",
                          rows, columns=("local WebSocket", "relay"))
    return floor.appended(table + f"\n\nrendezvous CPU per MiB: {relay['rendezvous_cpu']:.3g} ms/MiB "
                          f"(medians of {args.transfers} transfers)", machine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--transfers", type=int, default=7)
    args = parser.parse_args()
    common.run(lambda: main(args))
