"""
The rendezvous relay between a harness and an executor: protobuf
C{RelayMessageFrame}s (L{frames}, schema in C{proto/}, generated module
L{relay_pb2} rebuilt by C{scripts/regen-proto}), the per-stream reorder
buffer in front of the Noise cipher (L{ordering}), and the WebSockets that
carry the frames (L{socket}) with their Ping/Pong liveness check
(L{watchdog}). Limits are in L{limits}.
"""
