from twisted.application.service import ServiceMaker

execserver = ServiceMaker(
    "execserver",
    "execserver.service",
    "Serve the codex exec-server protocol over a local WebSocket or stdio",
    "execserver",
)
