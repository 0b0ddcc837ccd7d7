"""
C{execserver-client --registry} against the reference executor behind our
rendezvous: the same commands as with C{--url}, with defaults from the
variables codex reads, and clear usage errors.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from tests import support
from tests.remoteenv import ENVIRONMENT_ID, TOKEN, RemoteEnvironment
from tests.test_cli import STDIN_STAYS_OPEN, _Cli


class RemoteCliTests(unittest.TestCase):
    def setUp(self):
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.remote = await RemoteEnvironment(self).start()
        self.workdir = support.scratch_directory(self, "execserver-remote-cli-")

    async def run_cli(self, *args, env: dict[str, str] | None = None,
                      stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        cli = _Cli(stdin)
        argv = [sys.executable, "-m", "execserver.client.cli", *args]
        reactor.spawnProcess(cli, argv[0], argv, env=support.server_environment(env))
        code = await support.with_timeout(cli.ended)
        return code, cli.out, cli.err

    def options(self, token: str = TOKEN) -> list[str]:
        return ["--registry", self.remote.registry_url, "--environment-id", ENVIRONMENT_ID,
                "--token-file", self.remote.token_file(token)]

    async def test_exec_runs_through_the_relay(self):
        self.assertEqual(
            await self.run_cli(*self.options(), "exec", "-n", "--",
                               "sh", "-c", "echo out; echo err >&2; exit 3"),
            (3, b"out\n", b"err\n"))

    async def test_stdin_is_forwarded(self):
        code, out, err = await self.run_cli(*self.options(), "exec", "--", "head", "-c", "5",
                                            stdin=b"hello world")
        self.assertEqual((code, out), (0, b"hello"))
        # The reference executor cannot close the command's stdin: exec says
        # so if the command still runs when our stdin has ended.
        self.assertIn(err, (b"", STDIN_STAYS_OPEN))

    async def test_cat_reads_a_file(self):
        path = os.path.join(self.workdir, "file")
        data = os.urandom(300 * 1024)
        with open(path, "wb") as f:
            f.write(data)
        self.assertEqual(await self.run_cli(*self.options(), "cat", path), (0, data, b""))

    async def test_the_codex_variables_are_the_defaults(self):
        code, out, err = await self.run_cli("--json", "info", env={
            "CODEX_EXEC_SERVER_NOISE_REGISTRY_URL": self.remote.registry_url + "/",
            "CODEX_EXEC_SERVER_NOISE_ENVIRONMENT_ID": f" {ENVIRONMENT_ID} ",
            "CODEX_EXEC_SERVER_NOISE_AUTH_TOKEN": TOKEN,
            "CODEX_EXEC_SERVER_URL": "ws://127.0.0.1:1",
        })
        self.assertEqual((code, err), (0, b""))
        info = json.loads(out)
        self.assertEqual((info["platformOs"], info["executorVersion"]), ("linux", "0.169.0"))

    async def test_a_wrong_token_is_reported(self):
        code, out, err = await self.run_cli(*self.options("not-the-token"), "ls", "/")
        self.assertEqual((code, out), (1, b""))
        self.assertIn(b"authentication failed (401): missing or invalid bearer token", err)
        self.assertNotIn(b"not-the-token", err)

    async def test_usage_errors(self):
        cases = [
            (["--url", "ws://127.0.0.1:1", "--registry", self.remote.registry_url, "info"],
             b"give either --url or --registry"),
            (["--registry", self.remote.registry_url, "info"], b"--registry needs --environment-id"),
            (["--registry", self.remote.registry_url, "--environment-id", ENVIRONMENT_ID, "info"],
             b"--registry needs a token"),
        ]
        for args, message in cases:
            code, _, err = await self.run_cli(*args)
            self.assertEqual(code, 2)
            self.assertIn(message, err)
