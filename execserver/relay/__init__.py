"""
The rendezvous relay between a harness and an executor: protobuf
C{RelayMessageFrame}s (L{frames}, schema in C{proto/}, generated module
L{relay_pb2} rebuilt by C{scripts/regen-proto}) and the per-stream reorder
buffer in front of the Noise cipher (L{ordering}). Limits are in L{limits}.
"""
