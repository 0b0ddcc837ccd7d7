"""
Remote mode for the benchmarks: our rendezvous (C{twistd
execserver-rendezvous}) in its own process, so that its CPU time is
neither the harness's nor an executor's, and executors registered behind
it, each under its own environment id; and what the remote benchmarks
measure through our client library: round trips and transfers.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import reactor
from twisted.internet.task import deferLater
from zope.interface import implementer

from bench import common
from execserver.client import ConnectFailed, ExecServerClient
from execserver.client.process import IProcessReceiver
from execserver.remote.harness import RelayConnector

TOKEN = "bench-remote-token"

def _twistd(log: str) -> list[str]:
    """
    twistd, logging to the file C{log} (never /dev/null: twistd rotates its
    log file once it has written 1 MB to it, by renaming it).
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={log}"]


def cpu_seconds(pid: int) -> float:
    """CPU time of all the threads of C{pid} (not its children)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def _environment(home: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8", "PYTHONPATH": str(common.ROOT), "CODEX_HOME": home}


class Relay:
    """The rendezvous, and the executors registered behind it by environment id."""

    def __init__(self, environment_ids: list[str]) -> None:
        # Not under /tmp, where the reference cannot make its helper aliases.
        self.home = tempfile.mkdtemp(prefix="execserver-bench-remote-", dir="/var/tmp")
        tokens = os.path.join(self.home, "tokens")
        with open(tokens, "w") as f:
            f.writelines(f"{environment_id} {TOKEN}\n" for environment_id in environment_ids)
        self.rendezvous = subprocess.Popen(
            [*_twistd(os.path.join(self.home, "rendezvous.log")), "execserver-rendezvous",
             "--tokens", tokens,
             "--listen", "tcp:0:interface=127.0.0.1"],
            env=_environment(self.home), cwd=self.home, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.registry_url = self.rendezvous.stdout.readline().decode().strip()
        if not self.registry_url.startswith("http://"):
            raise RuntimeError("the rendezvous did not start")
        self.executors: dict[str, subprocess.Popen] = {}

    def add_executor(self, kind: str, environment_id: str) -> subprocess.Popen:
        """Start C{kind} ("reference" or "ours") as the executor of C{environment_id}."""
        remote = ["--remote", self.registry_url, "--environment-id", environment_id,
                  "--registration-bearer-stdin"]
        if kind == "reference":
            argv = [common.reference_binary(), "exec-server", *remote]
        else:
            argv = [*_twistd(os.path.join(self.home, f"{environment_id}.log")),
                    "execserver-remote", *remote]
        executor = subprocess.Popen(argv, env=_environment(self.home), cwd=self.home,
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        executor.stdin.write(TOKEN.encode() + b"\n")
        executor.stdin.close()
        self.executors[environment_id] = executor
        return executor

    async def client(self, environment_id: str, attempts: int = 50) -> ExecServerClient:
        """A connected client; retried while the executor is still registering."""
        connector = RelayConnector(reactor, self.registry_url, environment_id, TOKEN)
        for attempt in range(attempts):
            client = ExecServerClient(connector, reactor)
            try:
                await client.connect()
                return client
            except ConnectFailed:
                if attempt == attempts - 1:
                    raise
                await deferLater(reactor, 0.2, lambda: None)

    def stop(self) -> None:
        for process in (*self.executors.values(), self.rendezvous):
            process.terminate()
            process.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


#: The environment of the benchmarked commands.
ENV = {"PATH": "/usr/bin:/bin"}


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
    for _ in range(common.WARM_UP_ROUNDS):
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
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
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
        result[f"{name}_cpu"] = (cpu_seconds(pid) - cpu_before[name]) / mib * 1000
    return result


def medians(results: list[dict]) -> dict:
    return {key: common.median([result[key] for result in results]) for key in results[0]}
