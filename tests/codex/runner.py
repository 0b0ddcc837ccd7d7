"""
One run of the real codex CLI against one target.

    run = await run_codex(scenario, target)
    run.normalized["label"]   # what codex told the model, comparable

The runner makes a scratch directory (below C{/var/tmp}: with C{CODEX_HOME}
under C{/tmp} codex creates no helper aliases, which sandboxed runs need)
with an empty C{HOME}: codex runs commands in login shells (C{bash -lc}),
and a user's profile (this machine's runs C{pyenv init}, whose concurrent
rehashes print errors at random) must not add to their output. It then
writes codex's C{config.toml} (the scripted model as provider, approvals
off, no sandbox) and C{environments.toml}, serves the scripted model, lets
the target's connection start the server, and runs
C{codex exec --json ... PROMPT} as a child process with an empty stdin.

Set C{EXECSERVER_E2E_KEEP=1} to keep the scratch directories; codex's
rollout files (the whole conversation, with every tool output) are in
C{home/sessions/} there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests import support
from tests.codex.model import ScriptedModel, listen
from tests.codex.normalize import normalize_outputs
from tests.codex.scenario import Scenario
from tests.codex.targets import ENVIRONMENT_ID, RunDirectories, Target

#: Where scratch directories go; see the module docstring.
SCRATCH_ROOT = "/var/tmp"

#: How long one codex run may take before it counts as hung.
CODEX_TIMEOUT = 120.0

#: The provider name codex is configured with.
PROVIDER = "scripted"

#: How much of codex's stderr a failure message shows.
STDERR_TAIL = 4000

#: How much of an output a failure message shows.
SHOWN_OUTPUT = 2000

#: codex's C{config.toml}, before a target's C{codex_config}.
DEFAULT_CONFIG: dict[str, Any] = {
    "model": "e2e-scripted-model",
    "model_provider": PROVIDER,
    "approval_policy": "never",
    "sandbox_mode": "danger-full-access",
}


def toml_value(value: Any) -> str:
    """
    A TOML value; a JSON string is also a TOML basic string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def toml_table(values: Mapping[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in values.items())


def config_toml(model_url: str, overrides: Mapping[str, Any]) -> str:
    provider = {
        "name": PROVIDER,
        "base_url": model_url,
        "wire_api": "responses",
        "requires_openai_auth": False,
        # Fail at once instead of retrying with backoff when the script is broken.
        "request_max_retries": 0,
        "stream_max_retries": 0,
    }
    return toml_table({**DEFAULT_CONFIG, **overrides}) + f"\n[model_providers.{PROVIDER}]\n" + toml_table(provider)


def environments_toml(environments: list[dict[str, Any]]) -> str:
    text = toml_table({"default": ENVIRONMENT_ID, "include_local": False})
    for environment in environments:
        text += "\n[[environments]]\n" + toml_table(environment)
    return text


class _Codex(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)


@dataclass
class CodexRun:
    """
    What one codex run produced.

    @ivar outputs: every C{function_call_output} codex sent, by call label.
    @ivar normalized: the same, comparable (see L{tests.codex.normalize}).
    @ivar events: codex's C{--json} event lines.
    """

    target: Target
    scenario: Scenario
    outputs: dict[str, Any]
    normalized: dict[str, str]
    exit_code: int | None
    stderr: str
    events: list[dict] = field(default_factory=list)
    model_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """
        Why this run cannot be compared: codex failed, the script broke, or
        a call got no answer or not the expected one.
        """
        found = list(self.model_errors)
        if self.exit_code != 0:
            found.append(f"codex exited with {self.exit_code}")
        for call in self.scenario.calls():
            text = self.normalized.get(call.label)
            if text is None:
                found.append(f"no output for {call.label!r}")
                continue
            for expected in call.expect:
                if expected not in text:
                    found.append(f"output of {call.label!r} lacks {expected!r}:\n"
                                 + text[:SHOWN_OUTPUT])
        return found

    def diagnosis(self) -> str:
        errors = [event for event in self.events if event.get("type") in ("error", "turn.failed")
                  or event.get("item", {}).get("type") == "error"]
        return (f"{self.target.name}, scenario {self.scenario.name}:\n"
                + "\n".join(self.problems())
                + "\ncodex's error events: " + json.dumps(errors)
                + "\ncodex's stderr (end):\n" + self.stderr[-STDERR_TAIL:])


def _make_directories() -> RunDirectories:
    # The same length for every target: codex's token counts include paths.
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="execserver-codex-", dir=SCRATCH_ROOT))
    directories = RunDirectories(
        scratch=scratch,
        home=os.path.join(scratch, "home"),
        workdir=os.path.join(scratch, "work"),
        server_home=os.path.join(scratch, "server-home"),
        user_home=os.path.join(scratch, "user-home"),
    )
    for path in (directories.home, directories.workdir, directories.server_home,
                 directories.user_home):
        os.mkdir(path)
    return directories


def _write_files(workdir: str, files: Mapping[str, bytes]) -> None:
    for relative, data in files.items():
        path = os.path.join(workdir, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def _events(stdout: bytes) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"type": "unparsed", "line": line.decode("utf-8", "replace")})
    return events


async def _run_codex_process(reactor, directories: RunDirectories, prompt: str,
                             env: dict[str, str]) -> tuple[int | None, _Codex]:
    codex = support.reference_binary()
    argv = [codex, "exec", "--skip-git-repo-check", "--strict-config", "--json",
            "--color", "never", "-C", directories.workdir, prompt]
    process = _Codex()
    transport = reactor.spawnProcess(process, codex, argv, env=env, path=directories.workdir)
    try:
        exit_code = await support.with_timeout(process.ended, CODEX_TIMEOUT)
    except BaseException:
        try:
            transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        await process.ended
        raise
    return exit_code, process


async def run_codex(scenario: Scenario, target: Target, reactor=None) -> CodexRun:
    """
    Run codex through C{target} with the scripted model playing C{scenario}.
    """
    if reactor is None:
        from twisted.internet import reactor
    directories = _make_directories()
    model = ScriptedModel(scenario)
    port = await listen(reactor, model)
    attachment = None
    try:
        _write_files(directories.workdir, scenario.files)
        model_url = f"http://127.0.0.1:{port.getHost().port}/v1"
        with open(os.path.join(directories.home, "config.toml"), "w") as f:
            f.write(config_toml(model_url, target.codex_config))
        attachment = await target.connection.attach(target, directories)
        if attachment.environments:
            with open(os.path.join(directories.home, "environments.toml"), "w") as f:
                f.write(environments_toml(attachment.environments))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": directories.user_home,
            "LANG": "C.UTF-8",
            "CODEX_HOME": directories.home,
            **attachment.env,
        }
        started = time.monotonic()
        exit_code, process = await _run_codex_process(reactor, directories, scenario.prompt, env)
        seconds = time.monotonic() - started
    finally:
        try:
            if attachment is not None and attachment.close is not None:
                await attachment.close()
        finally:
            await port.stopListening()
            if not os.environ.get("EXECSERVER_E2E_KEEP"):
                shutil.rmtree(directories.scratch, ignore_errors=True)
    return CodexRun(
        target=target,
        scenario=scenario,
        outputs=model.outputs,
        normalized=normalize_outputs(model.outputs, scenario.calls(), directories.scratch),
        exit_code=exit_code,
        stderr=process.stderr.decode("utf-8", "replace"),
        events=_events(process.stdout),
        model_errors=model.errors,
        seconds=seconds,
    )
