"""
Memory given back after floods: the server's RSS before, after each flood
and once it is idle again, with the allocator tuned (execserver.memory) and
as glibc leaves it, in one run.

A flood is, at once on C{--connections} connections: big fs/writeFile
requests and fs/readFile answers (base64 strings of several MiB, decoded
in the thread pool), big malformed messages (diagnosed in the thread
pool), and processes streaming output into their replay windows. The
processes are terminated and the connections closed after each flood, and
the sessions end with them (a client that asked nothing else would see
them expire 80 s later; here the last request of each is a terminate and
the connection then closes, and the closed processes stay readable for
80 s, so the idle figure is taken after that).

Then stdin: C{--stdin-mib} MiB written to a child that never reads its
stdin, the RSS with that queued, and a few seconds after the child is
terminated (the reference frees it then).

    python -m tests.stress.memory [--floods N] [--connections N] [--mib N] [--idle S]
                                  [--stdin-mib N]
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import tempfile

from twisted.internet import defer

from tests.stress import common

MIB = 1024 * 1024


async def flood(url: str, connections: int, mib: int, scratch: str, seed: int) -> None:
    rng = random.Random(seed)
    clients = [await common.connect(url) for _ in range(connections)]
    work = []
    for index, client in enumerate(clients):
        size = rng.randint(mib // 2, mib) * MIB
        path = os.path.join(scratch, f"f{index}")
        content = base64.b64encode(rng.randbytes(size)).decode()
        work.append(_one_connection(client, index, path, content, size))
    await defer.gatherResults([defer.ensureDeferred(w) for w in work], consumeErrors=True)
    for client in clients:
        await client.close()


async def _one_connection(client: common.Client, index: int, path: str, content: str,
                          size: int) -> None:
    uri = "file://" + path
    closed = defer.Deferred()
    process_id = f"flood-{index}"

    def on_notification(message):
        if (message["method"] == "process/closed"
                and message["params"]["processId"] == process_id and not closed.called):
            closed.callback(None)

    client.on_notification = on_notification
    await client.call("process/start", {
        "processId": process_id, "argv": ["head", "-c", str(4 * size), "/dev/zero"],
        "cwd": "file:///", "env": {}, "tty": False})
    await client.call("fs/writeFile", {"path": uri, "dataBase64": content})
    await client.call("fs/readFile", {"path": uri})
    # Malformed: a string that never ends, diagnosed off the reactor thread.
    client.send_raw(b'{"id": 99, "method": "fs/readFile", "params": {"path": "' + b"x" * size)
    await client.call("environment/status")
    await closed
    await client.call("process/terminate", {"processId": process_id})


async def stdin_freed(kind: str, mib: int) -> dict:
    """
    RSS before, with C{mib} MiB queued for a child that does not read its
    stdin, and after terminating it.
    """
    server = common.Server(kind)
    try:
        client = await common.connect(server.url)
        before = (await common.settle(server.pid, 1.0)).rss_mib
        await client.call("process/start", {
            "processId": "sleeper", "argv": ["sleep", "600"], "cwd": "file:///",
            "env": {"PATH": "/usr/bin:/bin"}, "tty": False, "pipeStdin": True})
        chunk = base64.b64encode(random.Random(0).randbytes(MIB)).decode()
        for number in range(mib):
            reply = await client.call("process/write", {
                "processId": "sleeper", "chunk": chunk, "writeId": f"w{number}"})
            if reply.get("result", {}).get("status") != "accepted":
                raise RuntimeError(f"write {number} not accepted: {reply}")
        queued = (await common.settle(server.pid, 1.0)).rss_mib
        await client.call("process/terminate", {"processId": "sleeper"})
        terminated = (await common.settle(server.pid, 3.0)).rss_mib
        await client.close()
        problems = common.log_problems(server.log_text())
    finally:
        server.stop()
    return {"before": before, "queued": queued, "terminated": terminated,
            "log_problems": problems}


async def measure(kind: str, untuned: bool, floods: int, connections: int, mib: int,
                  idle: float) -> dict:
    server = common.Server(kind, untuned=untuned)
    scratch = tempfile.mkdtemp(prefix="execserver-stress-memory-", dir="/var/tmp")
    try:
        rss = [(await common.settle(server.pid)).rss_mib]
        for number in range(floods):
            await flood(server.url, connections, mib, scratch, number)
            rss.append((await common.settle(server.pid)).rss_mib)
        await common.sleep(idle)
        rss.append(common.Resources.of(server.pid).rss_mib)
        problems = common.log_problems(server.log_text())
    finally:
        server.stop()
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)
    return {"rss": rss, "log_problems": problems}


async def main(args) -> common.Report:
    command = (f"python -m tests.stress.memory --floods {args.floods} --connections "
               f"{args.connections} --mib {args.mib} --idle {args.idle:g} "
               f"--stdin-mib {args.stdin_mib}")
    if args.reference:
        command += " --reference"
    report = common.Report(
        "Memory given back after floods", command,
        ("server", "start RSS (MiB)", "peak after a flood (MiB)", "after the last flood (MiB)",
         f"idle {args.idle:g} s later (MiB)", "idle/start"))
    variants = [("ours, allocator tuned", "ours", False), ("ours, glibc defaults", "ours", True)]
    if args.reference:
        variants.append(("reference", "reference", False))
    for label, kind, untuned in variants:
        result = await measure(kind, untuned, args.floods, args.connections, args.mib, args.idle)
        rss = result["rss"]
        report.add(label, rss[0], max(rss[1:-1]), rss[-2], rss[-1], f"{rss[-1] / rss[0]:.2f}x")
        report.figures[label] = result
        report.notes.append(f"{label}: RSS after each flood (MiB): "
                            + ", ".join(f"{value:.0f}" for value in rss[1:-1]))
        if result["log_problems"]:
            report.notes.append(f"{label}: log problems: {result['log_problems'][:5]}")
    if args.stdin_mib:
        for kind in ["ours"] + (["reference"] if args.reference else []):
            result = await stdin_freed(kind, args.stdin_mib)
            report.figures[f"stdin {kind}"] = result
            report.notes.append(
                f"{kind}: {args.stdin_mib} MiB written to a child that does not read: RSS "
                f"{result['before']:.0f} MiB before, {result['queued']:.0f} MiB queued, "
                f"{result['terminated']:.0f} MiB 3 s after terminate")
    return report


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--floods", type=int, default=7)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--mib", type=int, default=8,
                        help="largest file, MiB (its base64 must fit a 16 MiB frame)")
    parser.add_argument("--idle", type=float, default=90.0)
    parser.add_argument("--stdin-mib", type=int, default=64,
                        help="written to a child that never reads its stdin")
    parser.add_argument("--reference", action="store_true", help="also measure the reference")
    return parser


if __name__ == "__main__":
    common.program(parser(), main)
