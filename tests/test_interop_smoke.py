from tests.interop import InteropTestCase, interop


async def echo(peer):
    await peer.handshake()
    await peer.call("environment/status")
    await peer.call("process/start", {
        "processId": "p1", "argv": ["/bin/echo", "hi"], "cwd": "file:///tmp",
        "env": {}, "tty": False,
    })
    await peer.process_events("p1")
    await peer.call("process/read", {"processId": "p1"})


class Smoke(InteropTestCase):
    test_echo = interop(echo)
