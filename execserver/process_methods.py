"""
The C{process/*} methods: start, read, write, signal, terminate; and our
extensions C{process/closeStdin} and the C{process/ack} notification.
"""

from __future__ import annotations

import fnmatch
import os
import signal as signals
from typing import Any

from twisted.internet.defer import TimeoutError, ensureDeferred

from execserver import audit, environment, oserrors
from execserver import params as P
from execserver import paths, rpc, sandbox, uuids
from execserver.extensions import ACK_METHOD
from execserver.process import ManagedProcess
from execserver.sandbox import runner
from execserver.sandbox.bridge import ProxyBridge
from execserver.sandbox.policy import Plan
from execserver.server import Method, ServerConnection
from execserver.spawn import ChildSpec

FAMILY = "exec"

#: Variables the child never sees, whatever the request asks.
_ALWAYS_REMOVED = ("CODEX_EXEC_SERVER_EXIT_ON_STDIN_CLOSE", "CODEX_TOOL_CALL_ID")
_ALWAYS_REMOVED_ANY_CASE = frozenset(name.upper() for name in (
    "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN",
    "NODE_REPL_AUTH_TOKEN",
    "OPENAI_FEDERATION_RULE_ID",
    "OPENAI_IDENTITY_TOKEN_FILE",
    "OPENAI_WORKLOAD_IDENTITY_CONTEXT",
))

#: What C{envPolicy.inherit: "core"} keeps of the server's environment.
_CORE_VARIABLES = frozenset((
    "PATH", "SHELL", "TMPDIR", "TEMP", "TMP", "HOME", "LANG", "LC_ALL",
    "LC_CTYPE", "LOGNAME", "USER",
))
_DEFAULT_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")

#: Where a bare program name is looked up when the child has no PATH (the
#: reference's libc default, musl's).
DEFAULT_PATH = "/usr/local/bin:/bin:/usr/bin"

EnvPolicy = P.Struct("ExecEnvPolicy", [
    P.Field("inherit", P.Enum("ShellEnvironmentPolicyInherit", ["core", "all", "none"])),
    P.Field("ignoreDefaultExcludes", P.Bool()),
    P.Field("exclude", P.Seq(P.String())),
    P.Field("set", P.Map(P.String())),
    P.Field("includeOnly", P.Seq(P.String())),
])

#: Who asked for a process: the harness's thread and tool call. The child
#: sees them as CODEX_THREAD_ID and CODEX_TOOL_CALL_ID.
ExecMetadata = P.Struct("ExecMetadata", [
    P.Field("threadId", P.Optional(P.Custom(uuids.parse)), default=None),
    P.Field("toolCallId", P.Optional(P.String()), default=None),
])

#: Where a child under managed networking may find its proxies.
ManagedNetwork = P.Struct("ManagedNetworkSandboxContext", [
    P.Field("loopbackPorts", P.Seq(P.Int("u16")), default=[]),
    P.Field("allowLocalBinding", P.Bool(), default=False),
])

# In the reference's declaration order, which positional params follow.
StartParams = P.Struct("WireExecParams", [
    P.Field("processId", P.String()),
    P.Field("metadata", P.Optional(ExecMetadata)),
    P.Field("argv", P.Seq(P.String())),
    P.Field("cwd", sandbox.PathUri),
    P.Field("envPolicy", P.Optional(EnvPolicy)),
    P.Field("shellSnapshot", P.Optional(P.AnyValue())),
    P.Field("env", P.Map(P.String())),
    P.Field("tty", P.Bool()),
    P.Field("pipeStdin", P.Bool(), default=False),
    P.Field("arg0", P.Optional(P.String())),
    P.Field("sandbox", P.Optional(sandbox.SandboxContext)),
    P.Field("enforceManagedNetwork", P.Bool(), default=False),
    P.Field("managedNetwork", P.Optional(ManagedNetwork)),
    P.Field("networkProxy", P.Optional(P.AnyValue())),
])

ReadParams = P.Struct("ReadParams", [
    P.Field("processId", P.String()),
    P.Field("afterSeq", P.Optional(P.Int("u64"))),
    P.Field("maxBytes", P.Optional(P.Int("usize"))),
    P.Field("waitMs", P.Optional(P.Int("u64"))),
])

WriteParams = P.Struct("WriteParams", [
    P.Field("processId", P.String()),
    P.Field("chunk", P.Base64()),
    P.Field("writeId", P.String()),
])

SignalParams = P.Struct("SignalParams", [
    P.Field("processId", P.String()),
    P.Field("signal", P.Enum("ProcessSignal", ["interrupt"])),
])

TerminateParams = P.Struct("TerminateParams", [
    P.Field("processId", P.String()),
])

CloseStdinParams = P.Struct("CloseStdinParams", [
    P.Field("processId", P.String()),
])

AckParams = P.Struct("AckParams", [
    P.Field("processId", P.String()),
    P.Field("seq", P.Int("u64")),
])


def _matches(name: str, patterns) -> bool:
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def child_environment(env: dict[str, str], policy: dict | None,
                      metadata: dict | None = None) -> dict[str, str]:
    """
    The child's environment: exactly C{env}, or C{env} over what the policy
    keeps of ours; with C{metadata}, the thread and tool call it names and
    no other.
    """
    if policy is None:
        result = dict(env)
    else:
        inherit = policy["inherit"]
        if inherit == "all":
            result = dict(os.environ)
        elif inherit == "core":
            result = {k: v for k, v in os.environ.items() if k in _CORE_VARIABLES}
        else:
            result = {}
        if not policy["ignoreDefaultExcludes"]:
            result = {k: v for k, v in result.items() if not _matches(k, _DEFAULT_EXCLUDES)}
        result = {k: v for k, v in result.items() if not _matches(k, policy["exclude"])}
        result.update(policy["set"])
        if policy["includeOnly"]:
            result = {k: v for k, v in result.items() if _matches(k, policy["includeOnly"])}
        result.update(env)
    for name in _ALWAYS_REMOVED:
        result.pop(name, None)
    if metadata is not None:
        result.pop("CODEX_THREAD_ID", None)
        if metadata["threadId"] is not None:
            result["CODEX_THREAD_ID"] = metadata["threadId"]
        tool_call = metadata["toolCallId"]
        # A value no environment can hold is left out, as the reference does.
        if tool_call is not None and "\0" not in tool_call:
            result["CODEX_TOOL_CALL_ID"] = tool_call
    return {k: v for k, v in result.items() if k.upper() not in _ALWAYS_REMOVED_ANY_CASE}


def find_program(name: str, env: dict[str, str]) -> str:
    """
    Resolve a program as C{execvp} would, searching the child's PATH.

    @raise OSError: as exec would fail.
    """
    if "/" in name:
        return name
    first_error = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        if first_error is None and os.path.exists(candidate):
            first_error = PermissionError(13, "Permission denied")
    raise first_error or FileNotFoundError(2, "No such file or directory")


def _process(connection: ServerConnection, process_id: str) -> ManagedProcess | None:
    return connection.session.processes.get(process_id)


def _check_spawnable(program: str, argv: list[str], env: dict[str, str], tty: bool) -> None:
    if not program:
        raise rpc.internal_error(f"missing program for {'PTY' if tty else 'pipe'} spawn")
    if any("\0" in arg for arg in argv):
        raise rpc.internal_error("nul byte found in provided data")
    if any("\0" in key or "\0" in value for key, value in env.items()):
        raise rpc.internal_error("data provided contains a nul byte")


def _cwd(uri: str) -> bytes:
    try:
        return paths.to_host_path(uri)
    except paths.ForeignPathError as e:
        raise rpc.invalid_params(f"cwd URI `{uri}` is not valid on this exec-server host: {e}") from None


def _sandbox_plan(context: dict, managed_network: dict | None) -> Plan:
    """
    How to confine a child as C{context} asks, reaching only its proxies
    if C{managed_network} is given.

    @raise rpc.RpcError: the context is invalid, or this executor cannot
        enforce it (never run unconfined instead).
    """
    restrictive = sandbox.restricts(context)
    try:
        return runner.sandboxing.plan(context, restrictive, managed_network=managed_network)
    except paths.ForeignPathError as e:
        raise rpc.invalid_params(f"invalid sandbox permission path URI: {e}") from None
    except runner.SandboxUnavailable as e:
        raise rpc.invalid_params(str(e)) from None


def start(connection: ServerConnection, p: dict) -> dict:
    session = connection.session
    if p["sandbox"] is None:
        cwd = _cwd(p["cwd"])
    argv = p["argv"]
    if not argv:
        raise rpc.invalid_params("argv must not be empty")
    plan = None
    if p["sandbox"] is not None:
        managed_network = None
        if p["enforceManagedNetwork"]:
            managed_network = p["managedNetwork"] or {"loopbackPorts": [], "allowLocalBinding": False}
        plan = _sandbox_plan(p["sandbox"], managed_network)
        cwd = _cwd(p["cwd"])
    process_id = p["processId"]
    if process_id in session.processes:
        raise rpc.invalid_request(f"process {process_id} already exists")
    tty = p["tty"]
    env = child_environment(p["env"], p["envPolicy"], p["metadata"])
    if tty and "SHELL" not in env:
        # As the reference does: an interactive terminal knows its shell.
        env["SHELL"] = environment.detect_shell()["path"]
    args = list(argv)
    if p["arg0"] is not None:
        args[0] = p["arg0"]
    _check_spawnable(argv[0], args, env, tty)
    wrapped = plan is not None and plan.wrap
    executable = argv[0]
    if not wrapped:
        # A wrapped child's program is found inside its sandbox.
        try:
            executable = find_program(argv[0], env)
        except OSError as e:
            raise rpc.internal_error(oserrors.describe(e)) from None
    launch = runner.sandboxing.launch(plan or runner.UNCONFINED, argv[0], args, executable, env)
    spec = ChildSpec(
        executable=launch.executable,
        argv=launch.argv,
        cwd=os.fsdecode(cwd),
        env=env,
        tty=tty,
        pipe_stdin=p["pipeStdin"],
        pass_fds=launch.pass_fds,
        before_exec=launch.before_exec,
    )
    process = ManagedProcess(session, process_id, spec, sandboxed=plan is not None)
    confinement = plan or runner.UNCONFINED
    runner.sandboxing.targets.acquire(confinement)
    # What the child holds is let go of when it ends, before its
    # process/closed goes out (ManagedProcess.start adds that next).
    if confinement.created or confinement.stand_ins:
        process.child.finished.addBoth(_released, confinement)
    if launch.bridge is not None:
        process.child.finished.addBoth(_bridge_stopped, launch.bridge)
    try:
        process.start()
    except OSError as e:
        runner.sandboxing.targets.release(confinement)
        if launch.bridge is not None:
            launch.bridge.stop()
        raise rpc.internal_error(oserrors.describe(e)) from None
    finally:
        launch.close()
    if launch.bridge is not None:
        launch.bridge.start(session.reactor)
    session.processes[process_id] = process
    sandbox_type = runner.SANDBOX_TYPE if plan is not None else "none"
    audit.record("process.start", session=session.id, process=process_id, argv0=argv[0],
                 cwd=os.fsdecode(cwd), tty=tty, sandbox=sandbox_type)
    connection.server.metrics.process_started(process.child, connection.server.clock)
    return {"processId": process_id, "sandboxType": sandbox_type}


def _released(result: Any, plan: Plan) -> Any:
    runner.sandboxing.targets.release(plan)
    return result


def _bridge_stopped(result: Any, bridge: ProxyBridge) -> Any:
    bridge.stop()
    return result


def _ready(snapshot: dict, after_seq: int) -> bool:
    return bool(
        snapshot["chunks"]
        or snapshot["closed"]
        or (snapshot["exited"] and after_seq < snapshot["nextSeq"] - 1)
    )


async def _long_poll(clock, process: ManagedProcess, after_seq, max_bytes, deadline) -> dict:
    while True:
        snapshot = process.snapshot(after_seq, max_bytes)
        remaining = deadline - clock.seconds()
        if _ready(snapshot, after_seq) or remaining <= 0:
            return snapshot
        try:
            await process.changed().addTimeout(remaining, clock)
        except TimeoutError:
            return process.snapshot(after_seq, max_bytes)


def read(connection: ServerConnection, p: dict) -> Any:
    process = _process(connection, p["processId"])
    if process is None:
        raise rpc.invalid_request(f"unknown process id {p['processId']}")
    after_seq = p["afterSeq"] or 0
    if connection.session.acknowledging:
        # Asking for what follows N says that everything up to N arrived.
        process.acknowledge(after_seq)
    max_bytes = p["maxBytes"]
    snapshot = process.snapshot(after_seq, max_bytes)
    wait_ms = p["waitMs"] or 0
    if wait_ms == 0 or _ready(snapshot, after_seq):
        return snapshot
    clock = connection.server.clock
    deadline = clock.seconds() + wait_ms / 1000.0
    return ensureDeferred(_long_poll(clock, process, after_seq, max_bytes, deadline))


def write(connection: ServerConnection, p: dict) -> dict:
    if not p["writeId"]:
        raise rpc.invalid_params("writeId must not be empty")
    process = _process(connection, p["processId"])
    if process is None:
        return {"status": "unknownProcess"}
    return {"status": process.write(p["chunk"], p["writeId"])}


def signal(connection: ServerConnection, p: dict) -> dict:
    process = _process(connection, p["processId"])
    if process is not None and process.running:
        try:
            process.child.signal_group(signals.SIGINT)
        except OSError as e:
            raise rpc.internal_error(f"failed to signal process: {oserrors.describe(e)}") from None
    return {}


def close_stdin(connection: ServerConnection, p: dict) -> dict:
    """
    Our extension: the reference cannot end a child's stdin, so a child
    that reads to the end of its input would wait forever.
    """
    process = _process(connection, p["processId"])
    if process is None:
        raise rpc.invalid_request(f"unknown process id {p['processId']}")
    process.close_stdin()
    return {}


def ack(connection: ServerConnection, p: dict) -> None:
    """
    Our extension: the client has every event of the process up to C{seq},
    which may now leave the replay window. A process that is gone has
    nothing left to acknowledge.
    """
    process = _process(connection, p["processId"])
    if process is not None:
        process.acknowledge(p["seq"])


def terminate(connection: ServerConnection, p: dict) -> dict:
    process = _process(connection, p["processId"])
    if process is None:
        return {"running": False}
    return {"running": process.terminate()}


METHODS = {
    "process/start": Method(FAMILY, StartParams, start),
    "process/read": Method(FAMILY, ReadParams, read),
    "process/write": Method(FAMILY, WriteParams, write),
    "process/signal": Method(FAMILY, SignalParams, signal, control=True),
    "process/terminate": Method(FAMILY, TerminateParams, terminate, control=True),
    # In the lane of process/write, so that it follows the writes sent before it.
    "process/closeStdin": Method(FAMILY, CloseStdinParams, close_stdin),
    ACK_METHOD: Method(FAMILY, AckParams, ack, notification=True),
}
