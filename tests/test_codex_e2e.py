"""
End to end: the real codex CLI runs its tools through the reference
exec-server and through ours, over WebSocket, over stdio and through a
rendezvous (codex a Noise harness, the server a remote executor), with a
scripted model; what codex reports to the model must be the same, up to what is
random by nature and the documented differences (docs/compatibility.md).

See tests/codex/ for the harness and docs/codex-e2e.md for what codex does.
"""

from __future__ import annotations

import signal

from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from tests.codex import scenarios, targets
from tests.httpserver import Origin
from tests.codex.compare import differences
from tests.codex.runner import run_codex
from tests.codex.scenario import Scenario
from tests.codex.targets import Connection


class CodexTestCase(unittest.TestCase):
    """
    Tests that run a scenario through the reference and through our server.
    """

    timeout = 300

    async def compare(self, scenario: Scenario, connection: Connection, **options) -> None:
        reference_target, our_target = targets.pair(connection, **options)
        # One after the other: the scenarios wait for output with deadlines,
        # and the machine has few cores.
        reference = await run_codex(scenario, reference_target)
        ours = await run_codex(scenario, our_target)
        problems = [run.diagnosis() for run in (reference, ours) if run.problems()]
        if problems:
            self.fail("\n\n".join(problems))
        found = differences(reference, ours)
        if found:
            self.fail(f"{scenario.name}: codex reported other tool outputs through our server:\n"
                      + "\n".join(found))


def compared(scenario: Scenario, connection: Connection, **options):
    """
    A test method that runs C{scenario} through both servers over
    C{connection}, configured with C{options} (see L{targets.Target}).
    """

    def test(self):
        return ensureDeferred(self.compare(scenario, connection, **options))

    test.__doc__ = f"The {scenario.name} scenario over {connection.name}."
    return test


class WebSocketTests(CodexTestCase):
    """
    Codex finds the server through C{CODEX_EXEC_SERVER_URL}.
    """

    test_commands = compared(scenarios.COMMANDS, targets.WEBSOCKET)
    test_terminal = compared(scenarios.TERMINAL, targets.WEBSOCKET)
    test_files = compared(scenarios.FILES, targets.WEBSOCKET)


class StdioTests(CodexTestCase):
    """
    Codex spawns the server from C{environments.toml}.
    """

    test_commands = compared(scenarios.COMMANDS, targets.STDIO)
    test_terminal = compared(scenarios.TERMINAL, targets.STDIO)
    test_files = compared(scenarios.FILES, targets.STDIO)


class WebSocketEnvironmentTests(CodexTestCase):
    """
    Codex finds the server's URL in C{environments.toml}; one scenario, as
    only how codex connects differs from L{WebSocketTests}.
    """

    test_commands = compared(scenarios.COMMANDS, targets.WEBSOCKET_ENVIRONMENT)


class AuthenticatedWebSocketTests(CodexTestCase):
    """
    Codex reaches a server started with C{--ws-auth}: the URL and
    C{auth_bearer_token} come from C{environments.toml}.
    """

    test_capability_token = compared(scenarios.COMMANDS, targets.CAPABILITY_TOKEN_ENVIRONMENT)
    test_signed_bearer_token = compared(scenarios.COMMANDS, targets.SIGNED_BEARER_TOKEN_ENVIRONMENT)


class IgnoredSignalsTests(CodexTestCase):
    """
    A server started as a shell's C{&} starts it, with SIGINT and SIGQUIT
    ignored: Ctrl-C must still reach a program in a terminal.
    """

    test_terminal = compared(
        scenarios.TERMINAL, targets.WEBSOCKET,
        ignored_signals=(signal.SIGINT, signal.SIGQUIT), variant="background",
    )


class SandboxTests(CodexTestCase):
    """
    Codex in its sandbox modes: every command and every patch write carries
    the sandbox, which the exec-server enforces. A local HTTP server shows
    that the network is closed.
    """

    async def setUp(self):
        self.origin = await Origin().start()
        self.addCleanup(self.origin.stop)

    async def test_workspace_write(self):
        await self.compare(scenarios.workspace_write(self.origin.port_number), targets.WEBSOCKET,
                           codex_config={"sandbox_mode": "workspace-write"}, variant="workspace-write")

    async def test_read_only(self):
        await self.compare(scenarios.read_only(self.origin.port_number), targets.WEBSOCKET,
                           codex_config={"sandbox_mode": "read-only"}, variant="read-only")


class RelayTests(CodexTestCase):
    """
    Codex is a Noise harness: the server is a remote executor behind our
    rendezvous.
    """

    test_commands = compared(scenarios.COMMANDS, targets.RELAY)
    test_terminal = compared(scenarios.TERMINAL, targets.RELAY)
    test_files = compared(scenarios.FILES, targets.RELAY)


class TwoNodeRelayTests(CodexTestCase):
    """
    Codex is a Noise harness of a two-node rendezvous cluster (Redis): it
    reaches node B, which forwards it to the executor's node A.
    """

    test_commands = compared(scenarios.COMMANDS, targets.TWO_NODE_RELAY)
    test_terminal = compared(scenarios.TERMINAL, targets.TWO_NODE_RELAY)
