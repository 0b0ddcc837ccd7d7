"""
Filesystem benchmarks, ours against the reference in one run:

* fs/readFile of a 16 MiB file (MiB/s)
* an 8 MiB file streamed through fs/open + fs/readBlock in 1 MiB blocks (MiB/s)
* fs/walk of a 10 000-entry tree (seconds per walk)

    python bench/bench_fs.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pybase64  # noqa: E402

from bench import common  # noqa: E402

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
    fixture = make_fixture(tempfile.mkdtemp(prefix="execserver-bench-fs-"))
    servers = {kind: common.Server(kind) for kind in ("reference", "ours")}
    results = {}
    try:
        for kind, server in servers.items():
            client = await common.connect(server.url)
            client.transport.protocol.maxMessagePayloadSize = 0
            client.transport.protocol.maxFramePayloadSize = 0
            await read_file(client, fixture["sixteen"], 1)  # warm up
            results[kind] = {
                "read": await read_file(client, fixture["sixteen"], args.rounds),
                "blocks": await stream_blocks(client, fixture["eight"], args.rounds),
                "walk": await walk(client, fixture["tree"], args.rounds),
            }
            client.close()
    finally:
        for server in servers.values():
            server.stop()
    ref, ours = results["reference"], results["ours"]
    return common.report("Filesystem benchmark (bench/bench_fs.py)", [
        common.Row("fs/readFile 16 MiB", "MiB/s", ref["read"], ours["read"], "≥ 1.0x", "higher"),
        common.Row("fs/open+readBlock 8 MiB", "MiB/s", ref["blocks"], ours["blocks"], "≥ 1.0x", "higher"),
        common.Row("fs/walk 10 000 entries", "ms", ref["walk"] * 1000, ours["walk"] * 1000, "≤ 1.0x", "lower"),
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    common.run(lambda: main(args))
