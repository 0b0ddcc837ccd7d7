"""
End-to-end encryption of relay streams: the hybrid IK handshake
C{Noise_hybridIK_25519+MLKEM768_AESGCM_SHA256} (L{handshake}), identities
and their public key JSON (L{keys}), Noise's cipher and symmetric states
(L{symmetric}), the record channel that carries JSON-RPC messages
(L{records}) and the stream transport that runs it over a relay socket
(L{channel}). Limits are in L{limits}; exceptions in L{errors}.

The primitives come from C{cryptography} (X25519, ML-KEM-768, AES-GCM,
SHA-256, HMAC); the state machine is ours, since no Python Noise library
supports hybrid KEM patterns.
"""
