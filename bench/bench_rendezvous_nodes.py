"""
The rendezvous on several nodes (Redis) against one node (in memory): N
executors (ours, twistd execserver-remote) with M streams (clients) each,
every client calling environment/info in a loop (one request and one reply
frame per round trip) for S seconds, in three layouts:

* one node: one twistd execserver-rendezvous, in-memory store;
* two nodes, direct: two nodes sharing a redis-server, the executors
  registered on both alternately, each harness sent to its executor's node;
* two nodes, forwarded: the same, but each node sends harnesses to the
  other node's address, which forwards them back (one more hop each way).

Reported: relayed frames/s (both ways), round-trip p50 and p99, and the p99
added per extra hop (forwarded minus direct, halved: a round trip crosses
the extra hop twice).

    python bench/bench_rendezvous_nodes.py [--executors N] [--streams M] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from bench import common, remote  # noqa: E402
from execserver.client import ConnectFailed, ExecServerClient  # noqa: E402
from execserver.remote.harness import RelayConnector  # noqa: E402

#: Clients connected at once: an executor resets handshakes beyond 32
#: waiting for the registry.
CONNECT_BATCH = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Layout:
    """Rendezvous processes (and redis-server), and executors behind them."""

    def __init__(self, name: str, environment_ids: list[str], nodes: int, forwarded: bool) -> None:
        self.name = name
        self.home = tempfile.mkdtemp(prefix="execserver-bench-nodes-", dir="/var/tmp")
        tokens = os.path.join(self.home, "tokens")
        with open(tokens, "w") as f:
            f.writelines(f"{e} {remote.TOKEN}\n" for e in environment_ids)
        self.processes: list[subprocess.Popen] = []
        store: list[str] = []
        if nodes > 1:
            redis_port = free_port()
            self._spawn([shutil.which("redis-server") or "/usr/bin/redis-server",
                         "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", self.home])
            store = ["--store", f"redis://127.0.0.1:{redis_port}/0"]
        ports = [free_port() for _ in range(nodes)]
        self.registry_urls = []
        for index, port in enumerate(ports):
            own = f"ws://127.0.0.1:{port}"
            cluster = []
            if store:
                other = f"ws://127.0.0.1:{ports[(index + 1) % nodes]}" if forwarded else own
                cluster = [*store, "--node-id", f"n{index}", "--node-url", other,
                           "--peer-url", own]
            node = self._spawn([*remote._TWISTD, "execserver-rendezvous", "--tokens", tokens,
                                "--listen", f"tcp:{port}:interface=127.0.0.1", *cluster],
                               stdout=subprocess.PIPE)
            url = node.stdout.readline().decode().strip()
            if not url.startswith("http://"):
                raise RuntimeError("a rendezvous node did not start")
            self.registry_urls.append(url)
        for index, environment_id in enumerate(environment_ids):
            registry = self.registry_urls[index % nodes]
            executor = self._spawn([*remote._TWISTD, "execserver-remote", "--remote", registry,
                                    "--environment-id", environment_id,
                                    "--registration-bearer-stdin"], stdin=subprocess.PIPE)
            executor.stdin.write(remote.TOKEN.encode() + b"\n")
            executor.stdin.close()

    def _spawn(self, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        process = subprocess.Popen(argv, env=remote._environment(self.home), cwd=self.home,
                                   stderr=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        return process

    async def client(self, index: int, environment_id: str) -> ExecServerClient:
        """A client whose registry is another node than its executor's (when there are two)."""
        registry = self.registry_urls[(index + 1) % len(self.registry_urls)]
        connector = RelayConnector(reactor, registry, environment_id, remote.TOKEN)
        for attempt in range(100):
            client = ExecServerClient(connector, reactor)
            try:
                await client.connect()
                return client
            except ConnectFailed:
                if attempt == 99:
                    raise
                await deferLater(reactor, 0.1, lambda: None)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


async def measure(layout: Layout, environment_ids: list[str], streams: int,
                  seconds: float) -> dict[str, float]:
    clients = []
    pairs = [(i, e) for i, e in enumerate(environment_ids) for _ in range(streams)]
    for start in range(0, len(pairs), CONNECT_BATCH):
        clients += await defer.gatherResults([defer.ensureDeferred(layout.client(i, e))
                                              for i, e in pairs[start:start + CONNECT_BATCH]])
    latencies: list[float] = []
    deadline = common.now() + seconds

    async def loop(client: ExecServerClient) -> None:
        while common.now() < deadline:
            began = common.now()
            await client.environment_info()
            latencies.append(common.now() - began)

    began = common.now()
    await defer.gatherResults([defer.ensureDeferred(loop(c)) for c in clients])
    elapsed = common.now() - began
    for client in clients:
        client.close()
    return {"frames": 2 * len(latencies) / elapsed,
            "p50": common.percentile(latencies, 0.5) * 1000,
            "p99": common.percentile(latencies, 0.99) * 1000}


async def main(args) -> str:
    environment_ids = [f"env-{n}" for n in range(args.executors)]
    results = {}
    for name, nodes, forwarded in (("one node", 1, False), ("two nodes, direct", 2, False),
                                   ("two nodes, forwarded", 2, True)):
        layout = Layout(name, environment_ids, nodes, forwarded)
        try:
            results[name] = await measure(layout, environment_ids, args.streams, args.seconds)
        finally:
            layout.stop()
    lines = [f"{args.executors} executors x {args.streams} streams, {args.seconds:g} s each", "",
             "| layout | frames/s | round trip p50 (ms) | round trip p99 (ms) |",
             "| --- | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['frames']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |")
    hop = (results["two nodes, forwarded"]["p99"] - results["two nodes, direct"]["p99"]) / 2
    lines += ["", f"p99 added per extra hop (forwarded - direct, / 2): {hop:.2f} ms"]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--executors", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    common.run(lambda: main(parser.parse_args()))
