"""
A remote environment for tests: our rendezvous on a loopback port, with an
executor registered and connected behind it, and a capture of every frame
the rendezvous routes. A L{TamperingRouter} plays a misbehaving relay on
request.

The executor, in a child process, is one of (L{EXECUTORS}):

  - C{reference}: C{codex exec-server --remote};
  - C{ours}: C{twistd execserver-remote};
  - C{reference-forward}: C{codex exec-server forward --connect} in front
    of our local WebSocket server;
  - C{ours-forward}: C{twistd execserver-remote --connect} in front of the
    reference's local WebSocket server.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, error, protocol, reactor, ssl
from twisted.internet.defer import Deferred

from execserver.relay.frames import FrameKind, parse_frame
from execserver.rendezvous.router import Router
from execserver.rendezvous.site import Rendezvous, site
from execserver.rendezvous.store import BearerTokens, IRendezvousStore
from tests import support

ENVIRONMENT_ID = "env-1"
TOKEN = "remote-test-token"

EXECUTORS = ("reference", "ours", "reference-forward", "ours-forward")


class TamperingRouter(Router):
    """
    Records every frame it delivers (C{captured}: direction, frame, raw)
    and, when armed, flips one ciphertext bit of the next data frame going
    one way (on one stream, if given). C{harness_peers} are the open harness
    sockets, C{executor_peer} the executor's latest.
    """

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.captured = []
        self._armed: tuple[str, str | None] | None = None
        self.tampered: list[str] = []
        self.harness_peers: list = []
        self.executor_peer = None

    def executor_connected(self, environment_id, peer) -> None:
        self.executor_peer = peer
        super().executor_connected(environment_id, peer)

    def harness_connected(self, environment_id, peer) -> bool:
        self.harness_peers.append(peer)
        return super().harness_connected(environment_id, peer)

    def harness_lost(self, peer) -> None:
        self.harness_peers.remove(peer)
        super().harness_lost(peer)

    def arm(self, direction: str, stream_id: str | None = None) -> None:
        self._armed = (direction, stream_id)

    def deliver(self, peer, direction, environment_id, raw, frame=None):
        if frame is None:
            frame = parse_frame(raw)
        if (self._armed in ((direction, None), (direction, frame.stream_id))
                and frame.kind is FrameKind.DATA):
            self._armed = None
            self.tampered.append(frame.stream_id)
            raw = raw[:-1] + bytes([raw[-1] ^ 1])
        self.captured.append((direction, frame, raw))
        super().deliver(peer, direction, environment_id, raw, frame)

    def streams(self, direction: str, kind: FrameKind) -> list[str]:
        return [frame.stream_id for d, frame, _ in self.captured
                if d == direction and frame.kind is kind]


class _Executor(protocol.ProcessProtocol):
    def __init__(self, token: str) -> None:
        self.token = token
        self.output = b""
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.token.encode() + b"\n")
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output = (self.output + data)[-64 * 1024:]

    def processEnded(self, reason) -> None:
        self.ended.callback(None)


def self_signed_localhost() -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    """A certificate for C{localhost}, and the trust root that accepts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (ssl.PrivateCertificate.loadPEM(key_pem + certificate_pem),
            ssl.Certificate.loadPEM(certificate_pem))


class RemoteEnvironment:
    """
    Start with L{start}; stopped when the test ends.

    @ivar registry_url: where harnesses (and the executor) find the registry.
    @ivar tls_registry_url: the same over https (when started with TLS),
        whose bundles point at C{wss://}; C{trust_root} accepts it.
    """

    def __init__(self, testcase, store: IRendezvousStore | None = None,
                 tls: bool = False, executor: str = "reference") -> None:
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}")
        self.testcase = testcase
        self.executor_kind = executor
        self.router = TamperingRouter(reactor)
        self.rendezvous = Rendezvous(reactor, BearerTokens({ENVIRONMENT_ID: TOKEN}),
                                     store=store, router=self.router)
        self.tls = tls
        self.trust_root = None
        self.tls_registry_url = None
        self.executor: _Executor | None = None

    async def start(self) -> "RemoteEnvironment":
        testcase = self.testcase
        http = site(self.rendezvous)
        port = reactor.listenTCP(0, http, interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        self.registry_url = f"http://127.0.0.1:{port.getHost().port}"
        if self.tls:
            certificate, self.trust_root = self_signed_localhost()
            tls_port = reactor.listenSSL(0, http, certificate.options(), interface="127.0.0.1")
            testcase.addCleanup(tls_port.stopListening)
            self.tls_registry_url = f"https://localhost:{tls_port.getHost().port}"
        # PTYs and sandboxes need a CODEX_HOME outside /tmp.
        home = tempfile.mkdtemp(prefix="execserver-remote-", dir="/var/tmp")
        testcase.addCleanup(shutil.rmtree, home, True)
        argv = await self._executor_argv()
        self.executor = _Executor(TOKEN)
        process = reactor.spawnProcess(
            self.executor, argv[0], argv,
            env=support.server_environment({"CODEX_HOME": home}), path=home)
        self.executor_pid = process.pid
        testcase.addCleanup(lambda: defer.ensureDeferred(self._stop(process)))
        try:
            await support.with_timeout(self.router.when_executor(ENVIRONMENT_ID))
        except defer.TimeoutError:
            raise RuntimeError(f"the {self.executor_kind} executor did not connect:\n"
                               + self.executor.output.decode(errors="replace")) from None
        return self

    async def _executor_argv(self) -> list[str]:
        registration = ["--remote", self.registry_url, "--environment-id", ENVIRONMENT_ID,
                        "--registration-bearer-stdin"]
        kind = self.executor_kind
        if kind.endswith("-forward"):
            # The forwarder of one implementation in front of the other's server.
            backend = await support.serve(self.testcase, "ours" if kind == "reference-forward"
                                          else "reference")
            registration += ["--connect", backend.url]
        if kind.startswith("reference"):
            binary = support.reference_binary()
            command = ["forward"] if kind == "reference-forward" else []
            return [binary, "exec-server", *command, *registration]
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "execserver-remote", *registration]

    def cut_executor_socket(self) -> None:
        """Drop the executor's socket, as a failing network would."""
        self.router.executor_peer.abort()

    async def _stop(self, process) -> None:
        if not self.executor.ended.called:
            try:
                process.signalProcess("TERM")
            except error.ProcessExitedAlready:
                pass
        await support.with_timeout(self.executor.ended)

    def cut_harness_sockets(self) -> None:
        """Drop every harness socket, as a failing network would."""
        for peer in list(self.router.harness_peers):
            peer.abort()

    def token_file(self, token: str = TOKEN) -> str:
        directory = support.scratch_directory(self.testcase, "execserver-token-")
        path = os.path.join(directory, "token")
        with open(path, "w") as f:
            f.write(token + "\n")
        return path
