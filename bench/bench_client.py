"""
Client benchmark: `execserver-client exec` of a command printing 64 MiB
against the raw benchmark client (bench/common.py), both on our server, in
one run.

* raw: the lean JSON-RPC client of bench/common.py counts the decoded bytes
  of every process/output notification, from process/start to
  process/closed (as bench_core.py's throughput).
* cli: `python -m execserver.client.cli exec -- head -c N /dev/zero` with its
  stdout on a pipe this benchmark drains and counts. "streaming" is timed
  from the first byte to the end of the output; "end to end" from spawning
  the command line to its exit (interpreter start, connect and handshake
  included).

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

from bench import bench_core, common  # noqa: E402


class _Drain(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.first_byte: float | None = None
        self.last_byte: float | None = None
        self.stderr = b""
        self.ended = Deferred()

    def outReceived(self, data: bytes) -> None:
        now = common.now()
        if self.first_byte is None:
            self.first_byte = now
        self.last_byte = now
        self.received += len(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)


async def cli_throughput(url: str, mib: int) -> tuple[float, float]:
    """
    @return: (streaming MiB/s, end-to-end MiB/s)
    """
    total = mib * 1024 * 1024
    drain = _Drain()
    argv = [sys.executable, "-m", "execserver.client.cli", "--url", url,
            "exec", "--", "head", "-c", str(total), "/dev/zero"]
    env = dict(os.environ, PYTHONPATH=str(common.ROOT))
    started = common.now()
    reactor.spawnProcess(drain, argv[0], argv, env=env, childFDs={0: "w", 1: "r", 2: "r"})
    code = await drain.ended
    ended = common.now()
    if code != 0 or drain.received != total:
        raise RuntimeError(f"cli: exit {code}, {drain.received} of {total} bytes: "
                           f"{drain.stderr.decode(errors='replace')}")
    return mib / (drain.last_byte - drain.first_byte), mib / (ended - started)


async def main(args) -> str:
    server = common.Server("ours")
    try:
        raw, streaming, end_to_end = [], [], []
        await bench_core.throughput(server, 8)  # warm up
        for _ in range(args.rounds):
            raw.append((await bench_core.throughput(server, args.mib))[0])
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
    ]
    table = common.report("Client benchmark (bench/bench_client.py), on our server", rows,
                          columns=("raw client", "exec"))
    detail = (f"\nraw MiB/s per round: {', '.join(f'{r:.1f}' for r in raw)}"
              f"\ncli streaming MiB/s per round: {', '.join(f'{r:.1f}' for r in streaming)}"
              f"\ncli end-to-end MiB/s per round: {', '.join(f'{r:.1f}' for r in end_to_end)}")
    return table + detail


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    common.run(lambda: main(args))
