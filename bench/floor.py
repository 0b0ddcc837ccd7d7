"""
The machine's floor, measured in the same run as a benchmark: what no
server could beat here.

* spawn + wait: start C{/bin/true} from Python with its output on pipes
  (as a server must), read both to EOF and reap it
* loopback WebSocket round trip: a small message sent by the raw client
  (bench/raw.py) to an echo server in a child process that does nothing
  but frame the message back
* pipe read rate: C{head -c N /dev/zero} read from a 1 MiB pipe in 1 MiB
  reads

    python bench/floor.py --echo     (the echo server: prints its port)
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, raw  # noqa: E402

PIPE_BYTES = 1024 * 1024


def spawn_wait(rounds: int) -> list[float]:
    """
    Seconds per start, EOF on both pipes and reap of C{/bin/true}.
    """
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        child = subprocess.Popen(["/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        child.stdout.read()
        child.stderr.read()
        child.wait()
        child.stdout.close()
        child.stderr.close()
        times.append(time.perf_counter() - started)
    return times


def pipe_rate(mib: int) -> float:
    """
    MiB/s read from a child writing C{mib} MiB into a pipe.
    """
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    started = time.perf_counter()
    child = subprocess.Popen(["head", "-c", str(mib * 1024 * 1024), "/dev/zero"],
                             stdout=write_end)
    os.close(write_end)
    total = 0
    while data := os.read(read_end, PIPE_BYTES):
        total += len(data)
    child.wait()
    os.close(read_end)
    return total / (1024 * 1024) / (time.perf_counter() - started)


class EchoServer:
    """
    The echo server in a child process.
    """

    def __init__(self) -> None:
        self.popen = subprocess.Popen([sys.executable, __file__, "--echo"], stdout=subprocess.PIPE)
        self.url = f"ws://127.0.0.1:{int(self.popen.stdout.readline())}"

    def stop(self) -> None:
        self.popen.kill()
        self.popen.wait()


async def websocket_round_trips(rounds: int) -> list[float]:
    """
    Seconds per round trip of a small message over a loopback WebSocket.
    """
    server = EchoServer()
    try:
        client = raw.RawClient(server.url)
        await client.open()
        times = []
        for n in range(rounds + 20):
            started = time.perf_counter()
            await client.call("process/start", {"processId": f"echo-{n}", "argv": ["/bin/true"]})
            times.append(time.perf_counter() - started)
        client.close()
        await client.closed
        return times[20:]
    finally:
        server.stop()


async def measure(spawn_rounds: int = 300, echo_rounds: int = 1000, pipe_mib: int = 256) -> dict:
    """
    The floors: spawn + wait p50, WebSocket round trip p50 (seconds) and
    pipe read rate (MiB/s).
    """
    spawn = common.median(spawn_wait(spawn_rounds))
    echo = common.median(await websocket_round_trips(echo_rounds))
    pipe = max(pipe_rate(pipe_mib) for _ in range(3))
    return {"spawn": spawn, "echo": echo, "pipe": pipe}


def rows(floor: dict) -> list[str]:
    return [
        "Machine floor, same run:",
        f"* spawn + wait of /bin/true from Python, p50: {floor['spawn'] * 1000:.3f} ms",
        f"* loopback WebSocket round trip (raw client, echo server), p50: "
        f"{floor['echo'] * 1000:.3f} ms",
        f"* spawn + round trip: {(floor['spawn'] + floor['echo']) * 1000:.3f} ms",
        f"* pipe read rate (1 MiB pipe, 1 MiB reads): {floor['pipe']:.0f} MiB/s",
    ]


def appended(table: str, floor: dict) -> str:
    """
    A benchmark's table followed by the floor and the load of its run.
    """
    return "\n".join([table, "", *rows(floor), common.load_line()])


def _serve_echo() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    print(listener.getsockname()[1], flush=True)
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(4096)
    received = received[received.index(b"\r\n\r\n") + 4:]
    connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
    while True:
        while (frame := _frame_bounds(received)) is None:
            data = connection.recv(65536)
            if not data:
                return
            received += data
        header, length = frame
        mask = received[header - 4:header]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(received[header:header + length]))
        received = received[header + length:]
        if length < 126:
            connection.sendall(struct.pack("!BB", 0x81, length) + payload)
        else:
            connection.sendall(struct.pack("!BBH", 0x81, 126, length) + payload)


def _frame_bounds(data: bytes) -> tuple[int, int] | None:
    """
    (header length with the mask key, payload length) of the masked client
    frame at the start of C{data} (under 64 KiB), once it is all there.
    """
    if len(data) < 2:
        return None
    length = data[1] & 0x7F
    header = 6
    if length == 126:
        if len(data) < 4:
            return None
        length = struct.unpack("!H", data[2:4])[0]
        header = 8
    if len(data) < header + length:
        return None
    return header, length


if __name__ == "__main__" and sys.argv[1:] == ["--echo"]:
    _serve_echo()
