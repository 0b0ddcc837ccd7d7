from twisted.application.service import ServiceMaker

execserver = ServiceMaker(
    "execserver",
    "execserver.service",
    "Serve the codex exec-server protocol over a local WebSocket or stdio",
    "execserver",
)

execserver_remote = ServiceMaker(
    "execserver-remote",
    "execserver.remote.tap",
    "Serve the codex exec-server protocol to harnesses through a rendezvous, end-to-end encrypted",
    "execserver-remote",
)

execserver_rendezvous = ServiceMaker(
    "execserver-rendezvous",
    "execserver.rendezvous.tap",
    "Run an environment registry and rendezvous for remote exec-servers",
    "execserver-rendezvous",
)
