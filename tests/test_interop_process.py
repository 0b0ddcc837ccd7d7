"""
process/* against the reference: the same exchanges, the same answers.

Deliberate differences (docs/compatibility.md) are not compared here; they
are specified in tests/test_process.py.
"""

import base64
import signal

from tests.interop import InteropTestCase, interop, run_against


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def start(process_id, argv, **extra):
    params = {"processId": process_id, "argv": argv, "cwd": "file:///tmp",
              "env": {"PATH": "/usr/bin:/bin"}, "tty": False}
    params.update(extra)
    return params


VALID = start("v", ["/bin/true"])


async def start_param_errors(peer):
    await peer.handshake()
    for field in ("processId", "argv", "cwd", "env", "tty"):
        params = dict(VALID)
        del params[field]
        await peer.call("process/start", params, label=f"without {field}")
    wrong_types = {"string": "s", "number": 1, "float": 1.5, "true": True, "null": None,
                   "list": [], "map": {}}
    for field in ("processId", "argv", "cwd", "env", "tty", "pipeStdin", "arg0",
                  "envPolicy", "sandbox", "enforceManagedNetwork"):
        for name, value in wrong_types.items():
            if value == VALID.get(field):
                continue
            params = dict(VALID, processId=f"t-{field}-{name}")
            params[field] = value
            reply = await peer.call("process/start", params, label=f"{field}={name}", record=False)
            if "error" in reply:
                peer.record(f"{field}={name}", reply)
    for params in (None, "x", 5, {}, {"processId": "e1"}, {"tty": "no", "processId": "x"},
                   {"processId": "o", "argv": "x", "cwd": 5}, {"cwd": 5, "argv": "x", "processId": "o"}):
        await peer.call("process/start", params, label=f"params {params!r}")
    await peer.call("process/start", dict(VALID, argv=["/bin/true", 1]), label="argv element")
    await peer.call("process/start", dict(VALID, env={"A": 1}), label="env value")


async def start_semantic_errors(peer):
    await peer.handshake()
    await peer.call("process/start", dict(VALID, argv=[]), label="empty argv")
    await peer.call("process/start", dict(VALID, argv=[], cwd="file:///C:/x"), label="foreign cwd first")
    await peer.call("process/start", dict(VALID, cwd="file://host/x"), label="host cwd")
    await peer.call("process/start", dict(VALID, cwd="/tmp"), label="native cwd")
    await peer.call("process/start", dict(VALID, cwd="http://x/"), label="http cwd")
    await peer.call("process/start", dict(VALID, cwd="file:///tmp?x=1"), label="query cwd")
    await peer.call("process/start", dict(VALID, cwd="file:///tmp#f"), label="fragment cwd")
    await peer.call("process/start", dict(VALID, cwd="file:///nonexistent"), label="missing cwd")
    await peer.call("process/start", dict(VALID, processId="n", argv=["no-such-program"]), label="missing program")
    await peer.call("process/start", dict(VALID, processId="d", argv=["/tmp"]), label="directory program")
    await peer.call("process/start", dict(VALID, processId="dt", argv=["/tmp"], tty=True),
                    label="directory program on a terminal")
    await peer.call("process/start", dict(VALID, processId="e", argv=[""]), label="empty program")
    await peer.call("process/start", dict(VALID, processId="z", argv=["/bin/echo", "a\0b"]), label="nul arg")
    await peer.call("process/start", dict(VALID, processId="z", env={"A": "a\0b"}), label="nul env")
    await peer.call("process/start", dict(VALID, processId="dup", argv=["/bin/sleep", "100"]))
    await peer.call("process/start", dict(VALID, processId="dup"), label="duplicate id")
    await peer.call("process/start", dict(VALID, processId="dup", argv=[]), label="empty argv beats duplicate")
    await peer.call("process/terminate", {"processId": "dup"})
    await peer.process_events("dup")
    policy = {"inherit": "bogus", "ignoreDefaultExcludes": False, "exclude": [], "set": {}, "includeOnly": []}
    await peer.call("process/start", dict(VALID, envPolicy=policy), label="bad inherit")
    await peer.call("process/start", dict(VALID, envPolicy={"inherit": "core"}), label="policy fields")
    await peer.call("process/start", dict(VALID, envPolicy=dict(policy, inherit=1)), label="inherit type")


async def output_and_exit(peer):
    await peer.handshake()
    await peer.call("process/start", start("p", ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]))
    await peer.process_events("p")
    await peer.call("process/read", {"processId": "p"}, record=False)
    for code in ("TERM", "KILL", "INT", "HUP"):
        await peer.call("process/start", start(code, ["/bin/sh", "-c", f"kill -{code} $$"]))
        await peer.process_events(code)


async def environment_and_arguments(peer):
    await peer.handshake()
    await peer.call("process/start", start("env", ["/usr/bin/env"], env={"ONLY": "this"}))
    await peer.process_events("env")
    removed = {"CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE": "1", "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": "x",
               "Node_Repl_Auth_Token": "y", "OPENAI_IDENTITY_TOKEN_FILE": "z",
               "CODEX_EXEC_SERVER_OTHER": "keep", "MY_SECRET": "fromreq",
               "codex_exec_server_exit_on_stdin_close": "lower"}
    await peer.call("process/start", start("removed", ["/usr/bin/env"], env=removed))
    events = await peer.process_events("removed", label="removed variables")
    del events
    await peer.call("process/start", start("equals", ["/usr/bin/env"], env={"A=B": "c"}))
    await peer.process_events("equals")
    await peer.call("process/start", start("bare", ["true"], env={}))
    await peer.process_events("bare")
    await peer.call("process/start", start("arg0", ["/bin/sh", "-c", "echo $0"], arg0="renamed"))
    await peer.process_events("arg0")
    await peer.call("process/start", start("cwd", ["/bin/pwd"], cwd="file:///usr/./bin/../lib"))
    await peer.process_events("cwd")
    await peer.call("process/start", start("group", [
        "/bin/sh", "-c", 'test "$(ps -o pgid= -p $$ | tr -d " ")" = $$ && echo leader']))
    await peer.process_events("group")
    await peer.call("process/start", start("stdin", ["/bin/sh", "-c", "ls -l /proc/self/fd/0 | grep -o /dev/null"]))
    await peer.process_events("stdin")
    policy = {"inherit": "none", "ignoreDefaultExcludes": False, "exclude": ["SETV"],
              "set": {"SETV": "sv", "X_TOKEN": "t"}, "includeOnly": []}
    await peer.call("process/start", start("policy", ["/usr/bin/env"], env={}, envPolicy=policy))
    await peer.process_events("policy")
    policy = {"inherit": "core", "ignoreDefaultExcludes": False, "exclude": [],
              "set": {}, "includeOnly": ["LANG"]}
    await peer.call("process/start", start("core", ["/usr/bin/env"], env={"REQ": "r"}, envPolicy=policy))
    await peer.process_events("core")


THREAD = "67e55044-10b1-426f-9247-bb680e5fe0c8"


async def metadata(peer):
    """
    The 14th field of WireExecParams: the thread and tool call a process
    runs for, handed to the child as CODEX_THREAD_ID and CODEX_TOOL_CALL_ID.
    """
    await peer.handshake()
    show = ["/bin/sh", "-c", "env | grep ^CODEX_ | sort"]
    inherited = {"CODEX_THREAD_ID": "from-env", "CODEX_TOOL_CALL_ID": "from-env",
                 "codex_tool_call_id": "lower", "PATH": "/usr/bin:/bin"}
    cases = {
        "both": {"threadId": THREAD, "toolCallId": "call_1"},
        "upper simple thread": {"threadId": THREAD.replace("-", "").upper()},
        "braced thread": {"threadId": "{" + THREAD + "}"},
        "urn thread": {"threadId": "urn:uuid:" + THREAD},
        "empty": {},
        "null fields": {"threadId": None, "toolCallId": None},
        "empty tool call": {"toolCallId": ""},
        "nul in tool call": {"toolCallId": "a\0b"},
        "unknown member": {"toolCallId": "t", "other": 1},
    }
    for label, value in cases.items():
        process_id = f"m-{label}"
        await peer.call("process/start", start(process_id, show, env=inherited, metadata=value),
                        label=f"start {label}")
        await peer.process_events(process_id, label=f"env {label}")
    await peer.call("process/start", start("m-null", show, env=inherited, metadata=None))
    await peer.process_events("m-null", label="env null metadata")
    await peer.call("process/start", start("m-tty", show, env=inherited, tty=True,
                                           metadata={"toolCallId": "t"}))
    await peer.process_events("m-tty", label="env under a terminal")
    for bad in ("", "5", "é", "{00000000000000000000000000000000}", "67e550-4105b1426f9247bb680e5fe0c",
                "F9168C5E-CEB2-4faa-B6BF1-02BF39FA1E4", "URN:UUID:" + THREAD, "{" + THREAD,
                THREAD + "0", "67e55044-10b1-426f-9247-bb680e5fe0c", 5, [], {}):
        await peer.call("process/start", start("bad", ["/bin/true"], metadata={"threadId": bad}),
                        label=f"threadId {bad!r}")
    for bad in (5, True, [], {}):
        await peer.call("process/start", start("bad", ["/bin/true"], metadata={"toolCallId": bad}),
                        label=f"toolCallId {bad!r}")
    for bad in (5, "x", [None, None, None]):
        await peer.call("process/start", start("bad", ["/bin/true"], metadata=bad), label=f"metadata {bad!r}")
    positional = ["pos", [THREAD, "call_2"], show, "file:///tmp", None, None,
                  {"PATH": "/usr/bin:/bin"}, False, False, None, None, False, None, None]
    await peer.call("process/start", positional, label="positional, in the reference's order")
    await peer.process_events("pos", label="env positional")
    for length in (1, 2, 7, 8, 13, 15):
        await peer.call("process/start", (positional + [None])[:length], label=f"{length} positional")


async def read_rules(peer):
    await peer.handshake()
    script = "printf aaaa; read x; printf bbbbbb; read x; printf cc; read x"
    await peer.call("process/start", start("r", ["/bin/sh", "-c", script], pipeStdin=True))
    for n, expected in enumerate((4, 10, 12)):
        while True:
            reply = await peer.call("process/read", {"processId": "r", "waitMs": 5000}, record=False)
            chunks = reply["result"]["chunks"]
            if sum(len(base64.b64decode(c["chunk"])) for c in chunks) >= expected:
                break
        await peer.call("process/write", {"processId": "r", "chunk": b64(b"\n"), "writeId": f"w{n}"})
    await peer.process_events("r", exact=True)
    for params in ({}, {"afterSeq": 1}, {"afterSeq": 3}, {"afterSeq": 100},
                   {"afterSeq": 18446744073709551615}, {"maxBytes": 0}, {"maxBytes": 1},
                   {"maxBytes": 10}, {"maxBytes": 11}, {"maxBytes": 12}, {"maxBytes": 100},
                   {"afterSeq": 3, "maxBytes": 100}, {"afterSeq": 3, "maxBytes": 100, "waitMs": 1000},
                   {"afterSeq": None, "maxBytes": None, "waitMs": None}):
        await peer.call("process/read", dict(params, processId="r"), label=f"read {params}")


async def read_errors(peer):
    await peer.handshake()
    await peer.call("process/read", {"processId": "nosuch"})
    for params in ({"processId": "r", "afterSeq": -1}, {"processId": "r", "afterSeq": 1.5},
                   {"processId": "r", "maxBytes": -1}, {"processId": "r", "waitMs": 1000.0},
                   {"processId": "r", "afterSeq": 18446744073709551616},
                   {"processId": "r", "afterSeq": "1"}, {"processId": "r", "waitMs": "x"},
                   {"processId": "r", "maxBytes": "x"}, {"processId": "r", "afterSeq": True},
                   {"processId": "r", "afterSeq": -1, "maxBytes": "x"},
                   {"processId": "r", "maxBytes": "x", "afterSeq": -1},
                   {}, None, {"processId": 5}, {"processId": None}):
        await peer.call("process/read", params, label=f"read {params!r}")


async def long_poll(peer):
    await peer.handshake()
    await peer.call("process/start", start("w", ["/bin/sh", "-c", "read x; printf x; sleep 100"], pipeStdin=True))
    await peer.call("process/read", {"processId": "w", "waitMs": 0}, label="no wait")
    await peer.call("process/read", {"processId": "w", "waitMs": 100}, label="short wait")
    await peer.call("process/write", {"processId": "w", "chunk": b64(b"\n"), "writeId": "go"})
    await peer.call("process/read", {"processId": "w", "waitMs": 20000}, label="woken by output")
    await peer.call("process/start", start("e", ["/bin/sh", "-c", "sleep 0.2; exit 4"]))
    reply = await peer.call("process/read", {"processId": "e", "waitMs": 10000}, record=False)
    # Whether the close is already known when the exit wakes the reader is
    # timing in the reference.
    peer.record("woken by exit", {key: reply["result"][key] for key in ("chunks", "exited", "exitCode")})
    await peer.call("process/terminate", {"processId": "w"})


async def serial_order(peer):
    await peer.handshake()
    await peer.call("process/start", start("sl", ["/bin/sleep", "100"]))
    ids = [
        peer.request("process/read", {"processId": "sl", "waitMs": 300}),
        peer.request("environment/status"),
        peer.request("process/start", start("p2", ["/bin/echo", "x"])),
        peer.request("process/terminate", {"processId": "sl"}),
    ]
    order = []
    while len(order) < len(ids):
        message = await peer.queue.next(lambda m: "id" in m)
        order.append(ids.index(message["id"]))
    peer.record("reply order", order)


async def write_statuses(peer):
    await peer.handshake()
    await peer.call("process/start", start("cat", ["/bin/cat"], pipeStdin=True))
    for write_id, data in (("write-1", b"first\n"), ("write-1", b"first\n"),
                           ("write-1", b"other\n"), ("write-2", b"second\n"), (" ", b" \n")):
        await peer.call("process/write", {"processId": "cat", "chunk": b64(data), "writeId": write_id})
    await peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": ""}, label="empty id")
    await peer.call("process/write", {"processId": "cat", "chunk": ""}, label="missing id")
    await peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": None}, label="null id")
    await peer.call("process/write", {"processId": "nope", "chunk": "", "writeId": "w"}, label="unknown")
    await peer.call("process/write", {"processId": "nope", "chunk": "", "writeId": ""}, label="empty id first")
    await peer.call("process/write", {"processId": "nope", "chunk": "!!", "writeId": ""}, label="decode first")
    for chunk in ("!!", "aGk", "a", "aGl=", "YR==", "aGVsbG9=", "aGk==", "=", "A===", "aGk=\n",
                  " aGk=", "aG k=", "aGk-", "aGk_", "éééé", 1, None, [], {}):
        await peer.call("process/write", {"processId": "cat", "chunk": chunk, "writeId": "b"},
                        label=f"chunk {chunk!r}")
    # The reference writes to stdin in the background: what cat echoed is
    # only known once it arrives, not when the write is acknowledged.
    await peer.output_until("cat", b"first\nsecond\n \n")
    await peer.call("process/terminate", {"processId": "cat"})
    await peer.process_events("cat")
    await peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": "after-kill"})
    await peer.call("process/write", {"processId": "cat", "chunk": "", "writeId": "write-2"},
                    label="remembered id after kill")
    await peer.call("process/start", start("closed", ["/bin/sleep", "100"]))
    await peer.call("process/write", {"processId": "closed", "chunk": "", "writeId": "w"}, label="stdin closed")
    await peer.call("process/start", start("nat", ["/bin/true"], pipeStdin=True))
    await peer.process_events("nat")
    await peer.call("process/write", {"processId": "nat", "chunk": b64(b"x"), "writeId": "w"}, label="after exit")
    await peer.call("process/terminate", {"processId": "closed"})


async def signals_and_terminate(peer):
    await peer.handshake()
    await peer.call("process/start", start("sg", ["/bin/sleep", "100"]))
    for name in ("INT", "SIGINT", "Interrupt", "", None, 2, {}, ["interrupt"], {"interrupt": None}):
        await peer.call("process/signal", {"processId": "sg", "signal": name}, label=f"signal {name!r}")
    await peer.process_events("sg")
    await peer.call("process/signal", {"processId": "nope", "signal": "interrupt"}, label="unknown")
    await peer.call("process/signal", {"processId": "nope", "signal": "bogus"}, label="enum first")
    await peer.call("process/signal", {"processId": "sg"}, label="missing signal")
    await peer.call("process/start", start("t", ["/bin/sleep", "100"]))
    await peer.call("process/terminate", {"processId": "t"}, label="running")
    await peer.process_events("t")
    await peer.call("process/terminate", {"processId": "t"}, label="exited")
    await peer.call("process/terminate", {"processId": "nope"}, label="unknown")
    await peer.call("process/terminate", {}, label="missing id")
    await peer.call("process/terminate", {"processId": 1}, label="id type")


async def grandchild_holds_output(peer):
    await peer.handshake()
    await peer.call("process/start", start("gc", ["/bin/sh", "-c", "sleep 0.3 & echo hi"]))
    await peer.process_events("gc")


async def pty(peer):
    await peer.handshake()
    await peer.call("process/start", start("t", ["/bin/sh", "-c", "stty size; tty >/dev/null && echo tty"], tty=True))
    await peer.process_events("t")
    await peer.call("process/start", start("i", ["/bin/sh", "-c", "read x; echo got:$x"], tty=True))
    await peer.call("process/write", {"processId": "i", "chunk": b64(b"hello\n"), "writeId": "w"})
    await peer.process_events("i")
    await peer.call("process/start", start("env", ["/usr/bin/env"], tty=True, env={"PATH": "/usr/bin"}))
    await peer.process_events("env")
    await peer.call("process/start", start("eof", ["/bin/cat"], tty=True))
    await peer.call("process/write", {"processId": "eof", "chunk": b64(b"\x04"), "writeId": "w"})
    await peer.process_events("eof")


async def inherited_dispositions(peer):
    """
    A server started with signals ignored (nohup, a shell's C{&}) gives its
    children some of them back: under a terminal SIGHUP, SIGINT and SIGQUIT
    (so Ctrl-C interrupts), in pipe mode SIGINT only.
    """
    await peer.handshake()
    script = "grep -E '^Sig(Ign|Blk)' /proc/self/status"
    for tty in (False, True):
        await peer.call("process/start", start(f"tty={tty}", ["/bin/sh", "-c", script], tty=tty))
        await peer.process_events(f"tty={tty}")


async def resume_session(peer):
    await peer.handshake()
    await peer.call("process/start", start("s", ["/bin/sh", "-c", "read x; echo after:$x"], pipeStdin=True))
    session_id = peer.session_ids[0]
    other = await peer.reconnect()
    await other.handshake(resume=session_id)
    await peer.close()
    again = await peer.reconnect()
    await again.handshake(resume=session_id)
    await again.call("process/read", {"processId": "s"})
    await again.call("process/write", {"processId": "s", "chunk": b64(b"x\n"), "writeId": "w"})
    await again.process_events("s")
    await again.handshake(resume=session_id)
    fresh = await peer.reconnect()
    await fresh.handshake(resume="00000000-0000-0000-0000-000000000000")
    await fresh.handshake(resume="")
    await fresh.handshake()
    await fresh.call("process/read", {"processId": "s"}, label="other session's process")


class StartTests(InteropTestCase):
    test_param_errors = interop(start_param_errors)
    test_semantic_errors = interop(start_semantic_errors)
    test_output_and_exit = interop(output_and_exit)
    test_environment_and_arguments = interop(environment_and_arguments)
    test_metadata = interop(metadata)
    test_grandchild_holds_output = interop(grandchild_holds_output)
    test_pty = interop(pty)
    test_inherited_dispositions = interop(
        inherited_dispositions,
        ignored_signals=(signal.SIGHUP, signal.SIGINT, signal.SIGQUIT),
    )


class ReadWriteTests(InteropTestCase):
    test_read_rules = interop(read_rules)
    test_read_errors = interop(read_errors)
    test_long_poll = interop(long_poll)
    test_serial_order = interop(serial_order)
    test_write_statuses = interop(write_statuses)
    test_signals_and_terminate = interop(signals_and_terminate)


class SessionTests(InteropTestCase):
    test_resume = interop(resume_session)


async def concurrent_lanes(peer):
    for method in ("environment/info", "initialize", "environment/info"):
        params = {"clientName": "x"} if method == "initialize" else None
        peer.request(method, params)
    replies = [await peer.queue.next(lambda m: "id" in m) for _ in range(3)]
    peer.record("before initialized, in order", [
        (r["id"], r.get("error", {}).get("message")) for r in replies])
    peer.send({"method": "initialized"})
    await peer.call("process/start", start("sl", ["/bin/sleep", "100"]))
    read = peer.request("process/read", {"processId": "sl", "waitMs": 1500})
    quick = [peer.request("environment/status"), peer.request("no/such"),
             peer.request("process/terminate", {"processId": "sl"})]
    order = []
    while len(order) < 4:
        message = await peer.queue.next(lambda m: "id" in m)
        order.append(message["id"])
    peer.record("quick requests answered", sorted(order[:3]) == sorted(quick))
    peer.record("the long poll, woken by the kill, last", order[3] == read)


class ConcurrencyTests(InteropTestCase):
    test_concurrent_lanes = interop(concurrent_lanes, args=["--concurrent-requests", "4"])


async def close_stdin(peer):
    await peer.call("process/closeStdin", {"processId": "c"}, label="before initialize")
    await peer.handshake()
    await peer.call("process/start", start("c", ["/bin/sh", "-c", "cat; echo end"], pipeStdin=True))
    await peer.call("process/write", {"processId": "c", "chunk": b64(b"hello\n"), "writeId": "w"})
    await peer.output_until("c", b"hello\n")
    reply = await peer.call("process/closeStdin", {"processId": "c"})
    if "error" in reply:
        # The child's stdin stays open: it would wait forever.
        await peer.call("process/terminate", {"processId": "c"})
    await peer.process_events("c")


class CloseStdinTests(InteropTestCase):
    """
    process/closeStdin is our extension (docs/compatibility.md): ours ends
    the child's input, the reference does not know the method.
    """

    async def test_ours_closes_stdin(self):
        transcript = dict(await run_against("ours", close_stdin))
        self.assertEqual(transcript["before initialize"], {"error": {
            "code": -32600, "message": "client must call initialize before using exec methods"}})
        self.assertEqual(transcript["process/closeStdin"], {"result": {}})
        self.assertEqual(transcript["events c"]["output"], {"stdout": "end\n"})
        self.assertEqual(transcript["events c"]["exitCode"], 0)

    async def test_the_reference_does_not_know_it(self):
        transcript = dict(await run_against("reference", close_stdin))
        unknown = {"code": -32601,
                   "message": "exec-server stub does not implement `process/closeStdin` yet"}
        self.assertEqual(transcript["before initialize"], {"error": unknown})
        self.assertEqual(transcript["process/closeStdin"], {"error": unknown})
        self.assertEqual(transcript["events c"]["output"], {})
        self.assertEqual(transcript["events c"]["exitCode"], 137)
