"""
Client benchmark: `execserver-client exec` of a command printing 256 MiB
against the raw benchmark client (bench/raw.py), both on our server, in
one run, with the machine's floor (bench/floor.py).

* raw: the raw client of bench/raw.py counts the decoded bytes of every
  process/output notification, from process/start to process/closed (as
  bench_core.py's throughput); the lean JSON client of bench/common.py is
  measured the same way and reported beside it.
* cli: `python -m execserver.client.cli exec -- head -c N /dev/zero` with its
  stdout on /dev/null. "streaming" is its wall time minus the median of
  three runs of `exec -- true` in the same round (interpreter start,
  connect and handshake); "end to end" is the whole wall time.

Rounds alternate between the two so both see the same machine; the median
of each is reported.

    python bench/bench_client.py [--mib N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import protocol, reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402

from bench import bench_core, common, floor  # noqa: E402


class _Run(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.stderr = b""
        self.ended = Deferred()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


async def run_cli(url: str, command: list[str]) -> float:
    """
    Run C{execserver-client exec -- command} with its output to /dev/null
    (so no third process competes for the CPU); its wall time in seconds.
    """
    run = _Run()
    argv = [sys.executable, "-m", "execserver.client.cli", "--url", url, "exec", "--", *command]
    env = dict(os.environ, PYTHONPATH=str(common.ROOT))
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        started = common.now()
        reactor.spawnProcess(run, argv[0], argv, env=env, childFDs={0: "w", 1: null, 2: "r"})
        code = await run.ended
        elapsed = common.now() - started
    finally:
        os.close(null)
    if code != 0:
        raise RuntimeError(f"cli: exit {code}: {run.stderr.decode(errors='replace')}")
    return elapsed


async def cli_throughput(url: str, mib: int) -> tuple[float, float]:
    """
    @return: (streaming MiB/s, end-to-end MiB/s). Streaming leaves out what
        a run of C{true} costs (interpreter start, connect, handshake), as
        the raw client's figure leaves out its connection.
    """
    baseline = common.median([await run_cli(url, ["true"]) for _ in range(3)])
    whole = await run_cli(url, ["head", "-c", str(mib * 1024 * 1024), "/dev/zero"])
    return mib / (whole - baseline), mib / whole


async def main(args) -> str:
    machine = await floor.measure()
    server = common.Server("ours")
    try:
        raw, json_client, streaming, end_to_end = [], [], [], []
        await bench_core.raw_throughput(server, 8)  # warm up
        for _ in range(args.rounds):
            raw.append((await bench_core.raw_throughput(server, args.mib))[0])
            json_client.append((await bench_core.throughput(server, args.mib))[0])
            rate, whole = await cli_throughput(server.url, args.mib)
            streaming.append(rate)
            end_to_end.append(whole)
    finally:
        server.stop()
    raw_rate = common.median(raw)
    rows = [
        common.Row(f"exec streaming, {args.mib} MiB", "MiB/s", raw_rate,
                   common.median(streaming), "≥ 0.9x", "higher"),
        common.Row(f"exec end to end, {args.mib} MiB", "MiB/s", raw_rate,
                   common.median(end_to_end), "reported", "higher"),
        common.Row(f"JSON client (bench/common.py), {args.mib} MiB", "MiB/s", raw_rate,
                   common.median(json_client), "reported", "higher"),
    ]
    table = common.report("Client benchmark (bench/bench_client.py), on our server", rows,
                          columns=("raw client", "exec"))
    detail = (f"\nraw MiB/s per round: {', '.join(f'{r:.1f}' for r in raw)}"
              f"\nJSON client MiB/s per round: {', '.join(f'{r:.1f}' for r in json_client)}"
              f"\ncli streaming MiB/s per round: {', '.join(f'{r:.1f}' for r in streaming)}"
              f"\ncli end-to-end MiB/s per round: {', '.join(f'{r:.1f}' for r in end_to_end)}")
    return floor.appended(table + detail, machine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    common.run(lambda: main(args))
