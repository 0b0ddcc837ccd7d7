"""
Filesystem benchmarks, ours against the reference in one run, with the
machine's floor (bench/floor.py) measured in the same run:

* fs/readFile of a 16 MiB file (MiB/s), with the raw client (bench/raw.py:
  the data sliced out of the reply and decoded, nothing else parsed) and
  with the JSON client of bench/common.py
* an 8 MiB file streamed through fs/open + fs/readBlock in 1 MiB blocks (MiB/s)
* fs/walk of a 10 000-entry tree (seconds per walk, until the reply's last
  byte; the raw client parses it after the clock stops)

    python bench/bench_fs.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pybase64  # noqa: E402

from bench import common, floor, raw  # noqa: E402

BLOCK = 1024 * 1024


def make_fixture(root: str) -> dict[str, str]:
    big = os.path.join(root, "sixteen")
    with open(big, "wb") as f:
        f.write(os.urandom(16 * BLOCK))
    eight = os.path.join(root, "eight")
    with open(eight, "wb") as f:
        f.write(os.urandom(8 * BLOCK))
    tree = os.path.join(root, "tree")
    # 100 directories of 99 files: 10 000 entries below the root.
    for d in range(100):
        directory = os.path.join(tree, f"d{d:03}")
        os.makedirs(directory)
        for n in range(99):
            open(os.path.join(directory, f"f{n:03}"), "w").close()
    return {name: "file://" + path for name, path in
            (("sixteen", big), ("eight", eight), ("tree", tree))}


async def read_file(client: common.Client, uri: str, rounds: int) -> float:
    started = common.now()
    for _ in range(rounds):
        reply = await client.call("fs/readFile", {"path": uri})
        assert len(pybase64.b64decode(reply["result"]["dataBase64"])) == 16 * BLOCK
    return 16 * rounds / (common.now() - started)


async def raw_read_file(client: raw.RawClient, uri: str, rounds: int) -> float:
    started = common.now()
    for _ in range(rounds):
        decoded = await client.call("fs/readFile", {"path": uri}, count=b"dataBase64")
        assert decoded == 16 * BLOCK, decoded
    return 16 * rounds / (common.now() - started)


async def raw_walk(client: raw.RawClient, uri: str, rounds: int) -> float:
    options = {"maxDepth": 2, "maxDirectories": 10000, "maxEntries": 50000,
               "followDirectorySymlinks": False}
    elapsed = 0.0
    for _ in range(rounds):
        started = common.now()
        reply = await client.call("fs/walk", {"path": uri, "options": options})
        elapsed += common.now() - started
        entries = json.loads(reply)["result"]["entries"]
        assert len(entries) == 10000, len(entries)
    return elapsed / rounds


async def stream_blocks(client: common.Client, uri: str, rounds: int) -> float:
    started = common.now()
    for n in range(rounds):
        handle = f"bench{n}"
        await client.call("fs/open", {"handleId": handle, "path": uri})
        offset = 0
        while True:
            reply = await client.call("fs/readBlock", {"handleId": handle, "offset": offset, "len": BLOCK})
            offset += len(pybase64.b64decode(reply["result"]["chunk"]))
            if reply["result"]["eof"]:
                break
        await client.call("fs/close", {"handleId": handle})
        assert offset == 8 * BLOCK
    return 8 * rounds / (common.now() - started)


async def walk(client: common.Client, uri: str, rounds: int) -> float:
    options = {"maxDepth": 2, "maxDirectories": 10000, "maxEntries": 50000,
               "followDirectorySymlinks": False}
    started = common.now()
    for _ in range(rounds):
        reply = await client.call("fs/walk", {"path": uri, "options": options})
        assert len(reply["result"]["entries"]) == 10000, len(reply["result"]["entries"])
    return (common.now() - started) / rounds


async def main(args) -> str:
    machine = await floor.measure()
    fixture = make_fixture(tempfile.mkdtemp(prefix="execserver-bench-fs-"))
    servers = {kind: common.Server(kind) for kind in ("reference", "ours")}
    results = {}
    try:
        for kind, server in servers.items():
            client = await common.connect(server.url)
            client.transport.protocol.maxMessagePayloadSize = 0
            client.transport.protocol.maxFramePayloadSize = 0
            await read_file(client, fixture["sixteen"], 1)  # warm up
            raw_client = await raw.connect(server.url)
            await raw_read_file(raw_client, fixture["sixteen"], 1)
            results[kind] = {
                "raw_read": await raw_read_file(raw_client, fixture["sixteen"], args.rounds),
                "read": await read_file(client, fixture["sixteen"], args.rounds),
                "blocks": await stream_blocks(client, fixture["eight"], args.rounds),
                "raw_walk": await raw_walk(raw_client, fixture["tree"], args.rounds),
                "walk": await walk(client, fixture["tree"], args.rounds),
            }
            client.close()
            raw_client.close()
    finally:
        for server in servers.values():
            server.stop()
    ref, ours = results["reference"], results["ours"]
    table = common.report("Filesystem benchmark (bench/bench_fs.py)", [
        common.Row("fs/readFile 16 MiB, raw client", "MiB/s", ref["raw_read"], ours["raw_read"],
                   "≥ 3x", "higher"),
        common.Row("fs/readFile 16 MiB, JSON client", "MiB/s", ref["read"], ours["read"], "-",
                   "higher"),
        common.Row("fs/open+readBlock 8 MiB", "MiB/s", ref["blocks"], ours["blocks"], "≥ 1.0x", "higher"),
        common.Row("fs/walk 10 000 entries, raw client", "ms", ref["raw_walk"] * 1000,
                   ours["raw_walk"] * 1000, "≤ 0.5x", "lower"),
        common.Row("fs/walk 10 000 entries, JSON client", "ms", ref["walk"] * 1000,
                   ours["walk"] * 1000, "-", "lower"),
    ])
    return floor.appended(table, machine)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    common.run(lambda: main(args))
