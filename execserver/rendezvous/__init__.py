"""
A rendezvous for remote mode: the environment registry codex's executor
and harness call (L{registry}), and the relay that joins the executor's
socket to harness sockets by stream id (L{websocket}, L{router}), on one
HTTP site (L{site}). It holds no keys and decrypts nothing: it routes
ciphertext and hands out short-lived, single-use tickets and
authorizations (L{store}). Limits are in L{limits}.
"""
